"""Stream the documents of one mongoexport file, in bounded memory, with their positions.

mongoexport writes a collection in one of two forms:

* one document per line (the default), or with `--pretty` one indented document after
  another, each closed by a `}` alone at the start of a line;
* `--jsonArray`: `[doc,doc,...]` — on ONE line unless `--pretty` is given.

The second form means a multi-GB file may be a single line, so arrays are cut into
elements by a small scanner that reads fixed-size chunks and tracks only strings and
bracket depth; each element is then parsed by bson.json_util like a line is. (A
streaming parser such as ijson parses arrays too, but reports no positions and stops at
the first syntax error, which would lose every document after a bad one.)

Nothing here decides whether a document is valid: a broken one is still yielded, with a
`problem`, so that it reaches the rejects file with its position. `.gz` files are read
through gzip.
"""

from __future__ import annotations

import codecs
import gzip
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

CHUNK = 1 << 20
# A document that is still open after this many bytes is cut and rejected, so a file
# that is not what it claims to be cannot exhaust memory. BSON documents are at most
# 16 MiB; their Extended JSON text can be a few times larger.
MAX_DOCUMENT_BYTES = 128 << 20
# Rejected text longer than this is cut in the rejects file.
MAX_PROBLEM_TEXT = 4096

_WS = b" \t\r\n\x0c"
# A complete string on one line (JSON strings cannot hold a raw newline), a structural
# character, or a quote that does not close on this line or in this chunk.
_TOKEN = re.compile(r'"[^"\\\n]*(?:\\.[^"\\\n]*)*"|[{}\[\],]|"')
_STR_GAP = re.compile(r"[ \t\r\n\x0c,]*")
_PLAIN = json.JSONDecoder()
_UNCLOSED = (
    f"document not closed before the end of the file (the export may be truncated), "
    f"or longer than {MAX_DOCUMENT_BYTES} bytes"
)
_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True, slots=True)
class RawDocument:
    """The text of one document (or of what should have been one) and where it was."""

    text: bytes
    line: int  # 1-based line where it starts
    item: int  # 1-based position among the file's documents
    offset: int  # byte offset where it starts (in the decompressed stream)
    problem: str | None = None  # set when the file's structure is broken here


class SourceFile:
    """A mongoexport file (plain or .gz) and how many of its bytes were read, for progress."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = path.stat().st_size
        self._raw: BinaryIO = path.open("rb")
        self._stream: BinaryIO = (
            gzip.GzipFile(fileobj=self._raw, mode="rb")  # type: ignore[assignment]
            if path.name.endswith(".gz")
            else self._raw
        )

    @property
    def consumed(self) -> int:
        return self._raw.tell()

    def documents(self) -> Iterator[RawDocument]:
        return read_documents(self._stream)

    def read_spans(self, spans: list[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        """The bytes at (offset, length) spans of the decompressed file, read in one pass."""
        out: dict[tuple[int, int], bytes] = {}
        with self.path.open("rb") as raw:
            stream: BinaryIO = (
                gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[assignment]
                if self.path.name.endswith(".gz")
                else raw
            )
            for offset, length in sorted(set(spans)):
                stream.seek(offset)
                out[(offset, length)] = stream.read(length)
        return out

    def close(self) -> None:
        self._stream.close()
        self._raw.close()

    def __enter__(self) -> SourceFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_documents(stream: BinaryIO) -> Iterator[RawDocument]:
    """Yield every document of a mongoexport stream (either form) in order."""
    reader: io.BufferedReader = (
        stream if isinstance(stream, io.BufferedReader) else io.BufferedReader(stream, CHUNK)  # type: ignore[arg-type]
    )
    head = reader.peek(4096)[:4096]
    skip = len(_BOM) if head.startswith(_BOM) else 0
    if head[skip:].lstrip(_WS)[:1] == b"[":
        reader.read(skip)
        yield from _ArrayScanner(reader, skip).documents()
    else:
        yield from _line_documents(reader)


def _line_documents(reader: BinaryIO) -> Iterator[RawDocument]:
    item = 0
    offset = 0
    pending: list[bytes] = []
    pending_size = 0
    start_line = start_offset = 0
    for lineno, raw_line in enumerate(reader, start=1):
        here = offset
        offset += len(raw_line)
        line = raw_line
        if lineno == 1 and line.startswith(_BOM):
            line = line[len(_BOM) :]
            here += len(_BOM)
        stripped = line.strip(_WS)
        if pending:
            if line[:1] != b"{":
                pending.append(line)
                pending_size += len(line)
                if line[:1] == b"}" and stripped == b"}":
                    item += 1
                    yield RawDocument(b"".join(pending), start_line, item, start_offset)
                    pending, pending_size = [], 0
                elif pending_size > MAX_DOCUMENT_BYTES:
                    item += 1
                    yield RawDocument(
                        b"".join(pending)[:MAX_PROBLEM_TEXT],
                        start_line,
                        item,
                        start_offset,
                        f"document longer than {MAX_DOCUMENT_BYTES} bytes",
                    )
                    pending, pending_size = [], 0
                continue
            # A new document starts at column 0: the pending one never closed.
            item += 1
            yield RawDocument(
                b"".join(pending)[:MAX_PROBLEM_TEXT],
                start_line,
                item,
                start_offset,
                "document never closed (a '}' alone at the start of a line was expected)",
            )
            pending, pending_size = [], 0
        if not stripped:
            continue
        if stripped == b"{":  # the first line of a pretty-printed document
            pending, pending_size = [line], len(line)
            start_line, start_offset = lineno, here
            continue
        item += 1
        yield RawDocument(stripped, lineno, item, here + len(line) - len(line.lstrip(_WS)))
    if pending:
        item += 1
        yield RawDocument(
            b"".join(pending)[:MAX_PROBLEM_TEXT],
            start_line,
            item,
            start_offset,
            "file ends inside a document (the export may be truncated)",
        )


class _ArrayScanner:
    """Cut a JSON array into its elements, reading fixed-size chunks.

    Fast path: the C JSON scanner (`json.JSONDecoder.raw_decode`) finds where a
    well-formed element ends. When it fails (a broken element, or one longer than what
    is buffered), a structural scan that looks only at strings and brackets finds the
    end instead, so a broken element is cut out whole and the next ones are found.
    Text is decoded with surrogateescape: invalid UTF-8 survives, byte for byte, to be
    rejected by the parser with its position. Memory: the current element and about
    two chunks.
    """

    def __init__(self, reader: BinaryIO, base: int) -> None:
        self.reader = reader
        self.decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
        self.s = ""
        self.pos = 0  # index in self.s
        self.byte = base  # byte offset of self.s[self.pos] in the stream
        self.line = 1
        self.eof = False
        self.item = 0

    def _fill(self, *, compact: bool = True) -> bool:
        """Read one more chunk; False at the end of the data."""
        if self.eof:
            return False
        if compact and self.pos > CHUNK:
            self.s = self.s[self.pos :]
            self.pos = 0
        chunk = self.reader.read(CHUNK)
        if not chunk:
            self.eof = True
            self.s += self.decoder.decode(b"", final=True)
            return False
        self.s += self.decoder.decode(chunk)
        return True

    def _advance(self, end: int) -> str:
        """Consume s[pos:end], keeping the byte offset and the line number."""
        text = self.s[self.pos : end]
        self.byte += len(text.encode("utf-8", "surrogateescape"))
        self.line += text.count("\n")
        self.pos = end
        return text

    def _doc(self, end: int, problem: str | None = None) -> RawDocument:
        line, offset = self.line, self.byte
        text = self._advance(end).encode("utf-8", "surrogateescape")
        self.item += 1
        if problem is not None:
            text = text[:MAX_PROBLEM_TEXT]
        return RawDocument(text.rstrip(_WS), line, self.item, offset, problem)

    def _scan_end(self, *, stop_at_separator: bool) -> int | None:
        """Where the value at pos ends, by strings and brackets only (the slow, sure way).

        With stop_at_separator (a stray value between elements): the next ',' or closing
        bracket at depth 0. None when the data ends first (or the value is too long).
        """
        depth = 0
        at = self.pos
        while True:
            m = _TOKEN.search(self.s, at)
            if m is None or (
                m.group() == '"' and not self.eof and self.s.find("\n", m.start()) < 0
            ):
                # Out of data, or a string that may go on in the next chunk.
                too_long = len(self.s) - self.pos > MAX_DOCUMENT_BYTES
                if too_long or (not self._fill(compact=False) and m is None):
                    return None
                at = m.start() if m is not None else at
                continue
            tok = m.group()
            at = m.end()
            if tok in "{[":
                depth += 1
            elif tok in "}]":
                if depth == 0:
                    return m.start() if stop_at_separator else m.end()
                depth -= 1
                if depth == 0 and not stop_at_separator:
                    return m.end()
            elif tok == "," and depth == 0 and stop_at_separator:
                return m.start()

    def documents(self) -> Iterator[RawDocument]:  # noqa: PLR0912 - a state machine
        self._fill()
        m = _STR_GAP.match(self.s, self.pos)
        self._advance(m.end() if m else self.pos)
        if self.s[self.pos : self.pos + 1] != "[":
            return
        self._advance(self.pos + 1)
        while True:
            while True:
                gap = _STR_GAP.match(self.s, self.pos)
                end = gap.end() if gap else self.pos
                if end < len(self.s) or not self._fill():
                    break
            self._advance(end)
            if self.pos >= len(self.s):
                yield self._doc(
                    self.pos, "file ends before the array is closed (the export may be truncated)"
                )
                return
            c = self.s[self.pos]
            if c == "]":
                self._advance(self.pos + 1)
                while not self.eof:
                    self._fill()
                if self.s[self.pos :].strip():
                    yield self._doc(len(self.s), "content after the end of the array")
                return
            if c in "{[":
                while len(self.s) - self.pos < CHUNK and self._fill():
                    pass
                try:
                    _, end = _PLAIN.raw_decode(self.s, self.pos)
                except (json.JSONDecodeError, RecursionError):  # too deep: scan it instead
                    found = self._scan_end(stop_at_separator=False)
                    if found is None:
                        yield self._doc(len(self.s), _UNCLOSED)
                        return
                    end = found
                yield self._doc(end)
                continue
            # A stray value (a number, a string, garbage): up to the next separator.
            found = self._scan_end(stop_at_separator=True)
            if found is None:
                yield self._doc(len(self.s), _UNCLOSED)
                return
            yield self._doc(max(found, self.pos + 1), "not a document: a value outside any object")
