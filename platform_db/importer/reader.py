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

import gzip
import io
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

# A complete string on one line (JSON strings cannot hold a raw newline), a structural
# byte, a newline, or a quote that does not close on this line or in this chunk.
_TOKEN = re.compile(rb'"[^"\\\n]*(?:\\.[^"\\\n]*)*"|[{}\[\],\n]|"')
_WS = b" \t\r\n\x0c"
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

    Only strings (skipped whole), brackets and commas are looked at; the bytes kept in
    memory are the current element and at most one chunk beyond it.
    """

    def __init__(self, reader: BinaryIO, base: int) -> None:
        self.reader = reader
        self.buf = bytearray()
        self.base = base  # stream offset of buf[0]
        self.pos = 0  # scan position in buf
        self.keep = base  # stream offset from which bytes must stay in buf
        self.eof = False

    def _fill(self) -> None:
        if self.pos > CHUNK and self.keep - self.base > CHUNK:
            drop = min(self.keep - self.base, self.pos)
            del self.buf[:drop]
            self.base += drop
            self.pos -= drop
        chunk = self.reader.read(CHUNK)
        if chunk:
            self.buf.extend(chunk)
        else:
            self.eof = True

    def _tokens(self) -> Iterator[tuple[bytes, int, int]]:
        buf = self.buf
        while True:
            m = _TOKEN.search(buf, self.pos)
            if m is None:
                if self.eof:
                    self.pos = len(buf)
                    return
                self.pos = len(buf)
                self._fill()
                continue
            start = m.start()
            if (
                m.end() - start == 1
                and buf[start] == 0x22
                and not self.eof
                and buf.find(b"\n", start) < 0
            ):
                # A string that may continue in the next chunk: read on, then look again.
                self.pos = start
                self._fill()
                continue
            self.pos = m.end()
            yield m.group(), self.base + start, self.base + m.end()

    def _text(self, start: int, end: int) -> bytes:
        return bytes(self.buf[start - self.base : end - self.base])

    def documents(self) -> Iterator[RawDocument]:  # noqa: PLR0912, PLR0915 - a state machine
        line = 1
        depth = 0
        started = closed = False
        elem_start: int | None = None
        elem_line = 1
        gap = self.base  # stream offset after the last separator at depth 0
        item = 0

        def doc(start: int, end: int, at_line: int, problem: str | None = None) -> RawDocument:
            nonlocal item
            item += 1
            text = self._text(start, end)
            if problem is not None:
                text = text[:MAX_PROBLEM_TEXT]
            return RawDocument(text.strip(_WS), at_line, item, start, problem)

        self._fill()
        for tok, start, end in self._tokens():
            if tok == b"\n":
                line += 1
                continue
            if not started:
                started = tok == b"["
                gap = self.keep = end
                continue
            if closed:
                yield doc(
                    start, len(self.buf) + self.base, line, "content after the end of the array"
                )
                return
            if depth == 0:
                stray = self._text(gap, start).strip(_WS)
                if tok in (b"{", b"["):
                    if stray:
                        yield doc(gap, start, line, "not a document: a value outside any object")
                    elem_start, elem_line, depth = start, line, 1
                    self.keep = start
                elif tok in (b",", b"]"):
                    if stray:
                        yield doc(gap, start, line)  # a scalar: json_util says what it is
                    gap = self.keep = end
                    closed = tok == b"]"
                elif tok == b"}":
                    yield doc(start, end, line, "unmatched '}'")
                    gap = self.keep = end
                # A string at depth 0 belongs to a stray value: the gap check reports it.
                continue
            if tok in (b"{", b"["):
                depth += 1
            elif tok in (b"}", b"]"):
                depth -= 1
                if depth == 0:
                    assert elem_start is not None
                    yield doc(elem_start, end, elem_line)
                    elem_start = None
                    gap = self.keep = end
            if (
                elem_start is not None
                and self.base + len(self.buf) - elem_start > MAX_DOCUMENT_BYTES
            ):
                yield doc(
                    elem_start, end, elem_line, f"document longer than {MAX_DOCUMENT_BYTES} bytes"
                )
                return
        end_of_data = self.base + len(self.buf)
        if elem_start is not None:
            yield doc(
                elem_start,
                end_of_data,
                elem_line,
                "file ends inside a document (the export may be truncated)",
            )
        elif started and not closed:
            if self._text(gap, end_of_data).strip(_WS):
                yield doc(
                    gap,
                    end_of_data,
                    line,
                    "file ends inside a document (the export may be truncated)",
                )
            else:
                yield doc(
                    end_of_data,
                    end_of_data,
                    line,
                    "file ends before the array is closed (the export may be truncated)",
                )
