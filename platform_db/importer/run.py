"""One import run: connect, check the role, load each collection in order, report."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy.engine import URL

from platform_db.importer.convert import DateWindow
from platform_db.importer.load import (
    CollectionFailedError,
    Mode,
    RunState,
    load_collection,
)
from platform_db.importer.mapping import FILE_SUFFIXES, CollectionMapping, ImportMapping
from platform_db.importer.progress import Progress
from platform_db.importer.report import CollectionReport, ImportReport, RejectsWriter

APPLICATION_NAME = "platform-db:import-mongo"


class ImportSetupError(RuntimeError):
    """The run cannot start: no such directory, a role that RLS would filter, ..."""


@dataclass(frozen=True, slots=True)
class ImportOptions:
    directory: Path
    mapping: ImportMapping
    mode: Mode = Mode.IMPORT
    rejects_path: Path | None = None
    role: str | None = None  # SET ROLE after connecting, e.g. platform_admin
    progress: bool = False
    only: Sequence[str] = ()  # collection names; empty means all
    dates: DateWindow | None = None  # plausible dates; None: 1990-01-01 to 10 years ahead


def conninfo(url: URL | str) -> str:
    """A libpq connection string from a SQLAlchemy URL (any driver) or a plain URL."""
    if isinstance(url, URL):
        return url.set(drivername="postgresql").render_as_string(hide_password=False)
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def connect(url: URL | str, *, role: str | None = None) -> psycopg.Connection[Any]:
    """A connection of its own for the import (never pooled), with its guard rails.

    `row_security = off` makes PostgreSQL raise an error, rather than silently filter,
    if a query would be subject to RLS: a role without BYPASSRLS fails loudly.
    """
    conn = psycopg.connect(
        conninfo(url),
        autocommit=True,
        application_name=APPLICATION_NAME,
        options="-c statement_timeout=0 -c lock_timeout=60s -c row_security=off "
        "-c idle_in_transaction_session_timeout=0",
    )
    try:
        if role:
            conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
        row = conn.execute(
            "SELECT current_user, rolsuper, rolbypassrls FROM pg_catalog.pg_roles "
            "WHERE rolname = current_user"
        ).fetchone()
        assert row is not None
        user, is_super, bypass = row
        if not (is_super or bypass):
            raise ImportSetupError(
                f"role {user} can neither bypass row-level security nor is a superuser; "
                "run the import as a superuser, or as a login that is a member of "
                "platform_admin with --role platform_admin (BYPASSRLS is not inherited "
                "through membership: the role must be SET)"
            )
    except BaseException:
        conn.close()
        raise
    return conn


def find_file(directory: Path, mapping: CollectionMapping) -> Path | None:
    for name in _expected_names(mapping):
        candidate = directory / name
        if candidate.is_file():
            return candidate
    return None


def run_import(url: URL | str, options: ImportOptions) -> ImportReport:
    """Import (or check, or verify) every mapped collection of a mongoexport directory."""
    directory = options.directory
    if not directory.is_dir():
        raise ImportSetupError(f"{directory} is not a directory")
    started = time.monotonic()
    report = ImportReport(
        options.mode.value,
        str(directory),
        str(options.rejects_path) if options.rejects_path else None,
    )
    collections = options.mapping.ordered()
    if options.only:
        unknown = set(options.only) - {c.name for c in collections}
        if unknown:
            raise ImportSetupError(f"no mapping for collection(s) {', '.join(sorted(unknown))}")
        collections = [c for c in collections if c.name in options.only]
    files = {c.name: find_file(directory, c) for c in collections}
    used = {f.name for f in files.values() if f is not None}
    report.unmapped_files = sorted(
        p.name
        for p in directory.iterdir()
        if p.is_file() and p.name.endswith(FILE_SUFFIXES) and p.name not in used
    )

    def bar(label: str, size: int) -> Progress:
        return Progress(label, size)

    state = RunState(options.mode, dates=options.dates or DateWindow.default())
    rejects_writer = RejectsWriter(options.rejects_path)
    try:
        rejects_writer.check_writable()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ImportSetupError(
            f"cannot write the rejects file {options.rejects_path}: {reason} "
            "(its directory must exist; nothing was imported)"
        ) from None
    conn = connect(url, role=options.role)
    try:
        with rejects_writer as rejects:
            failed: str | None = None
            for mapping in collections:
                path = files[mapping.name]
                if failed is not None or path is None:
                    skipped = CollectionReport(
                        mapping.name, mapping.table.name, None, options.mode.value
                    )
                    skipped.file = None if path is None else path.name
                    skipped.skipped = (
                        f"file missing: no {_expected(mapping)} in the directory"
                        if path is None
                        else f"not run: {failed} failed"
                    )
                    report.collections.append(skipped)
                    continue
                try:
                    result = load_collection(
                        conn,
                        mapping,
                        path,
                        state=state,
                        rejects=rejects,
                        progress=bar if options.progress else None,
                    )
                except CollectionFailedError as exc:
                    result = CollectionReport(
                        mapping.name, mapping.table.name, path.name, options.mode.value
                    )
                    result.error = f"{exc}; nothing of this collection was written"
                    failed = mapping.name
                report.collections.append(result)
            report.tenant_names = _tenant_names(conn, state, report)
        for stage in state.staged.values():
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(stage)))
    finally:
        conn.close()
    report.find_incomplete()
    report.seconds = time.monotonic() - started
    return report


def _expected_names(mapping: CollectionMapping) -> list[str]:
    return [mapping.file] if mapping.file else [mapping.name + s for s in FILE_SUFFIXES]


def _expected(mapping: CollectionMapping) -> str:
    if mapping.file:
        return mapping.file
    return f"{mapping.name}.json ({', '.join(FILE_SUFFIXES[1:])} read too)"


def _tenant_names(
    conn: psycopg.Connection[Any], state: RunState, report: ImportReport
) -> dict[uuid.UUID, str]:
    ids = sorted({t for c in report.collections for t in c.tenants if t is not None}, key=str)
    if not ids:
        return {}
    query: sql.SQL | sql.Composed = sql.SQL(
        "SELECT id, subdomain FROM public.tenants WHERE id = ANY(%(ids)s)"
    )
    staged = state.staged.get("tenants")
    if staged is not None:
        query = sql.SQL("{} UNION SELECT id, subdomain FROM {} WHERE id = ANY(%(ids)s)").format(
            query, sql.Identifier(staged)
        )
    return {r[0]: r[1] for r in conn.execute(query, {"ids": ids})}
