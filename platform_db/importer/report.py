"""What an import read, rejected, wrote and verified: counters, the rejects file, output."""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TextIO

from platform_db.importer.ids import display_id
from platform_db.textfmt import write_table

MASK64 = (1 << 64) - 1


@dataclass(slots=True)
class TenantCounts:
    """One collection's rows of one tenant (a user in two tenants is two rows)."""

    read: int = 0  # documents (x tenants) read from the file
    rejected: int = 0  # of those, rejected (Python checks and SQL checks)
    accepted: int = 0  # staged rows that passed every check
    present: int = 0  # accepted rows found in the target table afterwards
    identical: int = 0  # ... with exactly the staged values
    inserted: int = 0
    updated: int = 0
    source_checksum: int = 0  # sum of 64-bit row hashes over the staged values
    target_checksum: int = 0  # the same over the target rows found
    refs: dict[str, list[int]] = field(default_factory=dict)  # column -> [expected, found]
    extra: int = 0  # target rows of this tenant that are not in the dump (verify only)

    def balanced(self, *, compare_target: bool) -> bool:
        if self.read != self.accepted + self.rejected:
            return False
        if not compare_target:
            return True
        return (
            self.present == self.accepted
            and self.identical == self.accepted
            and self.source_checksum == self.target_checksum
            and all(e == f for e, f in self.refs.values())
        )

    def as_dict(self, *, mode: str) -> dict[str, Any]:
        # A dry run compares nothing with the target and a verify writes nothing: what
        # they did not measure is None, not 0 (which would read as "lost").
        compare_target = mode != "dry-run"
        wrote = mode == "import"
        return {
            "read": self.read,
            "rejected": self.rejected,
            "accepted": self.accepted,
            "in_table": self.present if compare_target else None,
            "written": self.inserted + self.updated if wrote else None,
            "identical": self.identical if compare_target else None,
            "inserted": self.inserted if wrote else None,
            "updated": self.updated if wrote else None,
            "unchanged": self.identical - self.updated if compare_target else None,
            "checksum_source": f"{self.source_checksum & MASK64:016x}",
            "checksum_target": (
                f"{self.target_checksum & MASK64:016x}" if compare_target else None
            ),
            "references": {
                c: {"expected": e, "found": f if compare_target else None}
                for c, (e, f) in self.refs.items()
            },
            "extra_in_target": self.extra,
            "balanced": self.balanced(compare_target=compare_target),
        }


@dataclass(slots=True)
class CollectionReport:
    collection: str
    table: str
    file: str | None
    mode: str
    documents: int = 0
    tenants: dict[uuid.UUID | None, TenantCounts] = field(default_factory=dict)
    partitions: list[str] = field(default_factory=list)
    dropped_fields: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    skipped: str | None = None
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)  # seconds per step

    def tenant(self, tenant: uuid.UUID | None) -> TenantCounts:
        counts = self.tenants.get(tenant)
        if counts is None:
            counts = self.tenants[tenant] = TenantCounts()
        return counts

    @property
    def compare_target(self) -> bool:
        return self.mode != "dry-run"

    @property
    def total(self) -> TenantCounts:
        t = TenantCounts()
        for c in self.tenants.values():
            t.read += c.read
            t.rejected += c.rejected
            t.accepted += c.accepted
            t.present += c.present
            t.identical += c.identical
            t.inserted += c.inserted
            t.updated += c.updated
            t.source_checksum += c.source_checksum
            t.target_checksum += c.target_checksum
            t.extra += c.extra
            for col, (e, f) in c.refs.items():
                acc = t.refs.setdefault(col, [0, 0])
                acc[0] += e
                acc[1] += f
        return t

    @property
    def balanced(self) -> bool:
        if self.error is not None:
            return False
        return all(c.balanced(compare_target=self.compare_target) for c in self.tenants.values())

    def as_dict(self, names: dict[uuid.UUID, str]) -> dict[str, Any]:
        return {
            "collection": self.collection,
            "table": self.table,
            "file": self.file,
            "documents": self.documents,
            "skipped": self.skipped,
            "error": self.error,
            "seconds": round(self.seconds, 3),
            "phases": {k: round(v, 3) for k, v in self.phases.items()},
            "partitions_created": self.partitions,
            "fields_not_imported": self.dropped_fields,
            "balanced": self.balanced,
            "total": self.total.as_dict(mode=self.mode),
            "tenants": [
                {
                    "tenant": str(t) if t else None,
                    "tenant_object_id": display_id(t) if t else None,
                    "subdomain": names.get(t) if t else None,
                    **c.as_dict(mode=self.mode),
                }
                for t, c in sorted(self.tenants.items(), key=lambda kv: (kv[0] is None, str(kv[0])))
            ],
        }


@dataclass(slots=True)
class ImportReport:
    mode: str
    directory: str
    rejects_file: str | None
    collections: list[CollectionReport] = field(default_factory=list)
    unmapped_files: list[str] = field(default_factory=list)
    tenant_names: dict[uuid.UUID, str] = field(default_factory=dict)
    seconds: float = 0.0
    # One line per collection the export did not really deliver: its file is missing or
    # holds no document, or every document was rejected. A run with any is incomplete
    # (the CLI exits 1 unless --allow-partial).
    incomplete: list[str] = field(default_factory=list)

    @property
    def balanced(self) -> bool:
        return all(c.balanced for c in self.collections)

    @property
    def complete(self) -> bool:
        return not self.incomplete

    def find_incomplete(self) -> None:
        """Fill `incomplete` from the collections' reports."""
        lines = []
        for c in self.collections:
            if c.error is not None or (c.skipped and c.file is not None):
                continue  # a failed collection is already NOT BALANCED, with its reason
            if c.file is None:
                lines.append(f"{c.collection}: {c.skipped or 'file missing'}")
            elif c.documents == 0:
                lines.append(f"{c.collection}: {c.file} holds no documents")
            elif c.total.accepted == 0 and c.total.rejected > 0:
                lines.append(
                    f"{c.collection}: every one of its {c.documents} documents was rejected"
                )
        if self.collections and all(c.documents == 0 for c in self.collections):
            lines.insert(0, "the export is empty: no collection file holds a document")
        self.incomplete = lines

    @property
    def rejected(self) -> int:
        return sum(c.total.rejected for c in self.collections)

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "directory": self.directory,
            "rejects_file": self.rejects_file,
            "balanced": self.balanced,
            "complete": self.complete,
            "incomplete": self.incomplete,
            "rejected": self.rejected,
            "seconds": round(self.seconds, 3),
            "unmapped_files": self.unmapped_files,
            "collections": [c.as_dict(self.tenant_names) for c in self.collections],
        }

    def write_text(self, out: TextIO) -> None:
        verb = {"import": "imported", "dry-run": "checked (dry run)", "verify": "verified"}
        out.write(
            f"platform-db import-mongo: {self.directory} {verb[self.mode]} in {self.seconds:.1f} s\n\n"
        )
        rows: list[list[object]] = []
        for c in self.collections:
            if c.skipped:
                rows.append([c.collection, c.table, *[""] * 8, f"skipped: {c.skipped}"])
                continue
            total = c.total
            for t, counts in [(None, total), *sorted(c.tenants.items(), key=lambda kv: str(kv[0]))]:
                label = c.collection if counts is total else "  " + self._tenant_label(t)
                ok = counts.balanced(compare_target=c.compare_target) and not c.error
                refs = ", ".join(
                    f"{col} {f}/{e}" if c.compare_target else f"{col} {e} resolved"
                    for col, (e, f) in counts.refs.items()
                )
                rows.append(
                    [
                        label,
                        c.table if counts is total else "",
                        counts.read,
                        counts.rejected,
                        counts.accepted,
                        counts.present if c.compare_target else "-",
                        counts.inserted + counts.updated if c.mode == "import" else "-",
                        f"{counts.inserted}/{counts.updated}" if c.mode == "import" else "-",
                        f"{counts.target_checksum & MASK64:016x}" if c.compare_target else "-",
                        refs or "-",
                        (
                            "ok"
                            if ok
                            else "FAILED"
                            if c.error and counts is total
                            else "NOT BALANCED"
                        )
                        + (f" ({c.error})" if c.error and counts is total else ""),
                    ]
                )
        write_table(
            out,
            [
                "collection / tenant",
                "table",
                "read",
                "rejected",
                "accepted",
                "in table",
                "written",
                "new/upd",
                "checksum",
                "references",
                "verdict",
            ],
            rows,
        )
        for c in self.collections:
            if c.partitions:
                out.write(f"\n{c.collection}: partitions created: {', '.join(c.partitions)}\n")
            if c.dropped_fields:
                fields = ", ".join(f"{k} ({n})" for k, n in sorted(c.dropped_fields.items()))
                out.write(f"\n{c.collection}: fields with no column, not imported: {fields}\n")
            extra = c.total.extra
            if extra:
                out.write(
                    f"\n{c.collection}: {extra} rows of these tenants are in {c.table} but not in the dump\n"
                )
        if self.unmapped_files:
            out.write(f"\nfiles with no mapping, not read: {', '.join(self.unmapped_files)}\n")
        out.write(f"\n{self._written()}\n")
        if self.rejected:
            out.write(f"\n{self.rejected} rejected: see {self.rejects_file}\n")
        for line in self.incomplete:
            out.write(f"\nINCOMPLETE: {line}\n")
        out.write("\nbalanced\n" if self.balanced else "\nNOT BALANCED\n")

    def _written(self) -> str:
        if self.mode == "dry-run":
            return "nothing written (dry run)"
        if self.mode == "verify":
            return "nothing written (verify)"
        new = sum(c.total.inserted for c in self.collections)
        updated = sum(c.total.updated for c in self.collections)
        if new + updated == 0:
            return "wrote nothing: every row was in the table as in the dump"
        return f"wrote {new + updated} rows ({new} new, {updated} updated)"

    def _tenant_label(self, tenant: uuid.UUID | None) -> str:
        if tenant is None:
            return "(no tenant)"
        name = self.tenant_names.get(tenant)
        return f"{name} ({display_id(tenant)})" if name else display_id(tenant)


class RejectsWriter:
    """The rejects file: one JSON object per line, with the document's own text.

    Fields: collection, file, line, item (position among the file's documents), offset
    (byte), tenant, id, reason, and the document as `document` (or `document_base64`
    when it is not UTF-8), so a fixed copy can be imported again.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.count = 0
        self._out: TextIO | None = None

    def write(
        self,
        *,
        collection: str,
        file: str,
        line: int,
        item: int,
        offset: int,
        tenant: uuid.UUID | None,
        doc_id: Any,
        reason: str,
        text: bytes | None,
    ) -> None:
        self.count += 1
        if self.path is None:
            return
        if self._out is None:
            self._out = self.path.open("w", encoding="utf-8")
        entry: dict[str, Any] = {
            "collection": collection,
            "file": file,
            "line": line,
            "item": item,
            "offset": offset,
            "tenant": display_id(tenant) if tenant else None,
            "id": display_id(doc_id) if doc_id is not None else None,
            "reason": reason,
        }
        if text is not None:
            try:
                entry["document"] = text.decode("utf-8")
            except UnicodeDecodeError:
                entry["document_base64"] = base64.b64encode(text).decode()
        self._out.write(json.dumps(entry, ensure_ascii=False) + "\n")

    def check_writable(self) -> None:
        """Raise OSError unless the rejects file can be written (it is not created here).

        Called before anything is imported: a run must not load collections and only
        then find it cannot say what it rejected. Missing directories are not created.
        """
        if self.path is None:
            return
        existed = self.path.exists()
        if existed and not self.path.is_file():
            raise IsADirectoryError(21, "not a file", str(self.path))
        with self.path.open("a", encoding="utf-8"):
            pass
        if not existed:
            self.path.unlink()

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
