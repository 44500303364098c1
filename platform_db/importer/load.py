"""Load one collection: stream -> COPY into staging -> set-based checks -> move -> verify.

PostgreSQL refuses COPY FROM into a table with row-level security enabled, and a bulk
path should not fire one INSERT per document anyway, so rows go first into a temporary
staging table shaped like the target (types from the models), by COPY. Then, in SQL:

1. checks that need other rows mark staged rows as rejected, with a reason code:
   the same id twice in the dump; the tenant does not exist (in `tenants`, never taken on
   trust from the document); a reference that resolves nowhere, or only in another
   tenant; a slug/email/subdomain already used by a different row;
2. (form_submissions) the months the rows need get their partitions, in a short
   transaction of their own, so historical rows do not pile into the default partition;
3. the move, in ONE transaction per collection: `INSERT ... SELECT ... ON CONFLICT
   (tenant-scoped key) DO UPDATE ... WHERE the row differs`, so re-importing the same
   dump rewrites nothing, and a changed document updates its row;
4. verification in the same transaction: every accepted row is looked up in the target
   and compared column by column, per tenant, with a checksum on each side.

Identifiers in the SQL come from the table specs (code), values are bound or COPY'd.
"""

from __future__ import annotations

import gc
import gzip
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from platform_db.importer.convert import (
    EXTRA_STAGING,
    SOURCE_COLUMNS,
    Converter,
    DateWindow,
    staging_columns,
)
from platform_db.importer.documents import TOO_DEEP, RejectError, parse_document
from platform_db.importer.ids import InvalidReferenceError, display_id, id_to_uuid
from platform_db.importer.mapping import CollectionMapping, TableSpec
from platform_db.importer.progress import NoProgress, Progress
from platform_db.importer.reader import SourceFile
from platform_db.importer.report import CollectionReport, RejectsWriter


class Mode(StrEnum):
    IMPORT = "import"  # write, then verify what was written
    DRY_RUN = "dry-run"  # every check, nothing written
    VERIFY = "verify"  # nothing written; compare the dump with what the tables hold


@dataclass
class RunState:
    """What one run remembers between collections."""

    mode: Mode
    # Dates outside this window are rejects (default: 1990-01-01 to 10 years ahead).
    dates: DateWindow = field(default_factory=DateWindow.default)
    # Staging tables kept for later collections' reference checks (dry run / verify,
    # where the earlier collections' rows were not written).
    staged: dict[str, str] = field(default_factory=dict)
    # Rejected documents per table: id -> where and why, to explain dangling references.
    rejected: dict[str, dict[uuid.UUID, str]] = field(default_factory=dict)
    counter: int = 0

    def staging_name(self, table: str) -> str:
        self.counter += 1
        return f"import_{table}_{self.counter}"


class CollectionFailedError(RuntimeError):
    """A collection could not be loaded; nothing of it was written."""


ProgressFactory = Callable[[str, int], Progress]


def load_collection(  # noqa: PLR0915 - the steps of one collection, in order
    conn: psycopg.Connection[Any],
    mapping: CollectionMapping,
    path: Path,
    *,
    state: RunState,
    rejects: RejectsWriter,
    progress: ProgressFactory | None = None,
) -> CollectionReport:
    table = mapping.table
    report = CollectionReport(mapping.name, table.name, path.name, state.mode.value)
    started = time.monotonic()
    stage = state.staging_name(table.name)
    loader = _Loader(
        conn,
        mapping=mapping,
        path=path,
        stage=stage,
        state=state,
        rejects=rejects,
        report=report,
    )
    bar = progress(f"{mapping.name}", path.stat().st_size) if progress else NoProgress()
    phases = report.phases
    clock = time.monotonic()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.monotonic()
        phases[name] = phases.get(name, 0.0) + now - clock
        clock = now

    try:
        with conn.transaction():
            loader.create_staging()
            loader.copy(bar)
            lap("read+copy")
            bar.status("checking tenants, references and unique keys")
            loader.check()
        loader.report_sql_rejects()
        lap("check")
        if state.mode is Mode.IMPORT:
            if table.name == "form_submissions":
                with conn.transaction():
                    report.partitions = loader.ensure_partitions()
                lap("partitions")
            bar.status("moving rows into " + table.name)
            with conn.transaction():
                loader.move()
                lap("move")
                bar.status("verifying")
                loader.verify()
            lap("verify")
        else:
            with conn.transaction():
                if state.mode is Mode.DRY_RUN and table.name == "form_submissions":
                    report.partitions = [
                        f"form_submissions_{m:%Y_%m} (would be created)"
                        for m in loader.missing_months()
                    ]
                loader.verify()
            lap("verify")
    except psycopg.Error as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        report.error = f"{table.name}: {message}"
        raise CollectionFailedError(report.error) from exc
    except (OSError, EOFError, zlib.error) as exc:
        # An unreadable file, a corrupt or truncated .gz: the whole collection, not a
        # document, since nothing after the damage can be read.
        report.error = f"{table.name}: {unreadable(path, exc)}"
        raise CollectionFailedError(report.error) from None
    except CollectionFailedError as exc:
        report.error = f"{table.name}: {exc}"
        raise CollectionFailedError(report.error) from None
    finally:
        if state.mode is Mode.IMPORT or report.error is not None:
            _drop(conn, stage)
        else:
            state.staged[table.name] = stage
        report.seconds = time.monotonic() - started
    report.dropped_fields = dict(loader.converter.dropped_fields)
    return report


def unreadable(path: Path, exc: BaseException) -> str:
    """One line saying why a collection's file cannot be read."""
    if isinstance(exc, EOFError | zlib.error | gzip.BadGzipFile) or (
        path.name.endswith(".gz") and not isinstance(exc, FileNotFoundError | PermissionError)
    ):
        return (
            f"{path.name} is not a readable gzip file, or is truncated "
            f"({str(exc) or type(exc).__name__})"
        )
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return f"cannot read {path.name}: {reason}"


def _drop(conn: psycopg.Connection[Any], stage: str) -> None:
    if conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR:
        conn.rollback()
    with conn.transaction():
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(stage)))


def _hash(alias: str, columns: list[str]) -> sql.Composable:
    """A 64-bit hash of a row's values: the first 16 hex digits of md5(ROW(...)::text)."""
    cols = sql.SQL(", ").join(sql.Identifier(alias, c) for c in columns)
    return sql.SQL("('x' || left(md5(ROW({})::text), 16))::bit(64)::bigint").format(cols)


class _Loader:
    def __init__(
        self,
        conn: psycopg.Connection[Any],
        *,
        mapping: CollectionMapping,
        path: Path,
        stage: str,
        state: RunState,
        rejects: RejectsWriter,
        report: CollectionReport,
    ) -> None:
        self.conn = conn
        self.mapping = mapping
        self.table: TableSpec = mapping.table
        self.path = path
        self.stage = sql.Identifier(stage)
        self.target = sql.Identifier("public", self.table.name)
        self.state = state
        self.rejects = rejects
        self.report = report
        self.converter = Converter(mapping, dates=state.dates)
        # Columns moved into the target (and compared by verification).
        self.columns = [
            c
            for c in staging_columns(self.table)
            if c not in SOURCE_COLUMNS and c not in dict(EXTRA_STAGING.get(self.table.name, ()))
        ]
        self.refs = [f for f in self.table.refs if mapping.paths.get(f.column)]

    # -- 1. staging and COPY -------------------------------------------------------------

    def create_staging(self) -> None:
        cols: list[sql.Composable] = [
            sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(t))
            for c, t in (
                ("src_row", "bigint"),
                ("src_line", "bigint"),
                ("src_item", "bigint"),
                ("src_offset", "bigint"),
                ("src_len", "integer"),
            )
        ]
        for c in self.columns:
            col_table = self.table if c in self.table.columns else None
            sql_type = col_table.sql_type(c) if col_table else "timestamp with time zone"
            cols.append(sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(sql_type)))
        for c, t in EXTRA_STAGING.get(self.table.name, ()):
            cols.append(sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(t)))
        cols.append(sql.SQL("reject text, reject_detail text"))
        self.conn.execute(
            sql.SQL("CREATE TEMPORARY TABLE {} ({})").format(self.stage, sql.SQL(", ").join(cols))
        )

    def copy(self, bar: Progress) -> None:
        names = staging_columns(self.table)
        copy_sql = sql.SQL("COPY {} ({}) FROM STDIN").format(
            self.stage, sql.SQL(", ").join(sql.Identifier(c) for c in names)
        )
        # Parsing allocates millions of small acyclic objects; the cyclic collector would
        # scan them over and over for nothing (about a fifth of the time), so it pauses.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            self._stream(copy_sql, bar)
        finally:
            if gc_was_enabled:
                gc.enable()
        bar.finish()
        self.conn.execute(sql.SQL("ANALYZE {}").format(self.stage))

    def _stream(self, copy_sql: sql.Composed, bar: Progress) -> int:
        report = self.report
        converter = self.converter
        row_no = 0
        with SourceFile(self.path) as source, self.conn.cursor().copy(copy_sql) as copy:
            for raw in source.documents():
                report.documents += 1
                if report.documents % 512 == 0:
                    bar.update(source.consumed, report.documents)
                doc: dict[str, Any] | None = None
                try:
                    if raw.problem is not None:
                        raise RejectError(raw.problem)
                    doc = parse_document(raw.text)
                    rows = converter.convert(doc)
                    staged = [
                        converter.staging_row(
                            row, (row_no + i, raw.line, raw.item, raw.offset, len(raw.text))
                        )
                        for i, row in enumerate(rows, start=1)
                    ]
                except (RejectError, RecursionError) as error:
                    exc = error if isinstance(error, RejectError) else RejectError(TOO_DEEP)
                    tenants = converter.tenants_of(doc) if doc is not None else [None]
                    doc_id = self._doc_id(doc)
                    if self.table.name == "tenants":
                        tenants = [doc_id if isinstance(doc_id, uuid.UUID) else None]
                    for tenant in tenants:
                        counts = report.tenant(tenant)
                        counts.read += 1
                        counts.rejected += 1
                        self.rejects.write(
                            collection=self.mapping.name,
                            file=self.path.name,
                            line=raw.line,
                            item=raw.item,
                            offset=raw.offset,
                            tenant=tenant,
                            doc_id=doc_id,
                            reason=str(exc),
                            text=raw.text,
                        )
                    if isinstance(doc_id, uuid.UUID):
                        self._remember_reject(doc_id, raw.line, str(exc))
                    continue
                for row, staged_row in zip(rows, staged, strict=True):
                    row_no += 1
                    tenant = row.tenant_id if self.table.tenant_owned else row.values["id"]
                    report.tenant(tenant).read += 1
                    copy.write_row(staged_row)
            bar.update(source.consumed, report.documents)
        return row_no

    def _doc_id(self, doc: dict[str, Any] | None) -> Any:
        if doc is None or "_id" not in doc:
            return None
        try:
            return id_to_uuid(doc["_id"], table=self.table.name)
        except InvalidReferenceError:
            return None

    def _remember_reject(self, doc_id: uuid.UUID, line: int, reason: str) -> None:
        self.state.rejected.setdefault(self.table.name, {})[doc_id] = (
            f"{self.path.name} line {line}: {reason}"
        )

    # -- 2. set-based checks -----------------------------------------------------------

    def _source_of(self, table: str) -> sql.Composable:
        """Rows of `table` a reference may point at: the table, plus (dry run / verify)
        the accepted staged rows of an earlier collection that were not written."""
        target = sql.Identifier("public", table)
        cols = (
            sql.SQL("tenant_id, id, created_at")
            if table == "form_submissions"
            else (sql.SQL("tenant_id, id") if table != "tenants" else sql.SQL("id"))
        )
        staged = self.state.staged.get(table)
        if staged is None or self.state.mode is Mode.IMPORT:
            return sql.SQL("(SELECT {} FROM {})").format(cols, target)
        return sql.SQL(
            "(SELECT {c} FROM {t} UNION ALL SELECT {c} FROM {s} WHERE reject IS NULL)"
        ).format(c=cols, t=target, s=sql.Identifier(staged))

    def check(self) -> None:
        s = self.stage
        key = [c for c in self.table.key if c != "created_at"]
        run = self.conn.execute
        # The same document twice: the first occurrence wins.
        run(
            sql.SQL(
                """
                UPDATE {s} s SET reject = 'duplicate_id', reject_detail = d.first_line::text
                FROM (SELECT src_row, first_value(src_line) OVER w AS first_line,
                             row_number() OVER w AS n
                      FROM {s} WINDOW w AS (PARTITION BY {key} ORDER BY src_row)) d
                WHERE d.src_row = s.src_row AND d.n > 1
                """
            ).format(s=s, key=sql.SQL(", ").join(map(sql.Identifier, key)))
        )
        if self.table.tenant_owned:
            run(
                sql.SQL(
                    """
                    UPDATE {s} s SET reject = 'tenant_missing'
                    WHERE reject IS NULL
                      AND NOT EXISTS (SELECT FROM {tenants} t WHERE t.id = s.tenant_id)
                    """
                ).format(s=s, tenants=self._source_of("tenants"))
            )
        for ref in self.refs:
            assert ref.ref is not None
            col = sql.Identifier(ref.column)
            source = self._source_of(ref.ref)
            code = sql.Literal(f"ref_missing:{ref.column}")
            if ref.ref == "form_submissions":
                # The composite key needs the submission's created_at.
                run(
                    sql.SQL(
                        """
                        UPDATE {s} s SET source_submission_created_at = r.created_at
                        FROM {source} r
                        WHERE s.reject IS NULL AND r.tenant_id = s.tenant_id AND r.id = s.{col}
                        """
                    ).format(s=s, source=source, col=col)
                )
            run(
                sql.SQL(
                    """
                    UPDATE {s} s SET reject = {code}
                    WHERE s.reject IS NULL AND s.{col} IS NOT NULL
                      AND NOT EXISTS (SELECT FROM {source} r
                                      WHERE r.tenant_id = s.tenant_id AND r.id = s.{col})
                    """
                ).format(s=s, code=code, col=col, source=source)
            )
            # Of those, the ones that exist in another tenant: a cross-tenant reference.
            run(
                sql.SQL(
                    """
                    UPDATE {s} s SET reject = {cross}, reject_detail = o.tenant_id::text
                    FROM (SELECT DISTINCT ON (r.id) r.id, r.tenant_id FROM {source} r
                          WHERE r.id IN (SELECT {col} FROM {s} WHERE reject = {code})
                          ORDER BY r.id, r.tenant_id) o
                    WHERE s.reject = {code} AND o.id = s.{col}
                    """
                ).format(
                    s=s,
                    cross=sql.Literal(f"ref_cross_tenant:{ref.column}"),
                    source=source,
                    col=col,
                    code=code,
                )
            )
        scope = [sql.Identifier("tenant_id")] if self.table.tenant_owned else []
        if self.table.name == "forms":
            # A slug made from the title yields to an explicit one and to a smaller id.
            run(
                sql.SQL(
                    """
                    UPDATE {s} s SET slug = s.slug_alt
                    WHERE s.reject IS NULL AND s.slug_alt IS NOT NULL
                      AND (EXISTS (SELECT FROM {s} o
                                   WHERE o.reject IS NULL AND o.tenant_id = s.tenant_id
                                     AND o.slug = s.slug AND o.id <> s.id
                                     AND (o.slug_alt IS NULL OR o.id < s.id))
                           OR EXISTS (SELECT FROM {t} t
                                      WHERE t.tenant_id = s.tenant_id AND t.slug = s.slug
                                        AND t.id <> s.id))
                    """
                ).format(s=s, t=self.target)
            )
        for unique in self.table.unique:
            cols = [sql.Identifier(c) for c in unique]
            label = "+".join(unique)
            notnull = sql.SQL(" AND ").join(sql.SQL("{} IS NOT NULL").format(c) for c in cols)
            run(
                sql.SQL(
                    """
                    UPDATE {s} s SET reject = {code}, reject_detail = d.first_line::text
                    FROM (SELECT src_row, first_value(src_line) OVER w AS first_line,
                                 row_number() OVER w AS n
                          FROM {s} WHERE reject IS NULL AND {notnull}
                          WINDOW w AS (PARTITION BY {part} ORDER BY src_row)) d
                    WHERE d.src_row = s.src_row AND d.n > 1
                    """
                ).format(
                    s=s,
                    code=sql.Literal(f"unique_dup:{label}"),
                    notnull=notnull,
                    part=sql.SQL(", ").join([*scope, *cols]),
                )
            )
            match = sql.SQL(" AND ").join(
                sql.SQL("t.{c} = s.{c}").format(c=c) for c in [*scope, *cols]
            )
            run(
                sql.SQL(
                    """
                    UPDATE {s} s SET reject = {code}, reject_detail = t.id::text
                    FROM {t} t
                    WHERE s.reject IS NULL AND {match} AND t.id <> s.id
                    """
                ).format(s=s, code=sql.Literal(f"unique_taken:{label}"), t=self.target, match=match)
            )

    def report_sql_rejects(self) -> None:
        """Write the rows the checks rejected to the rejects file, with their text."""
        with self.conn.transaction():
            rows = self.conn.execute(
                sql.SQL(
                    """
                    SELECT src_line, src_item, src_offset, src_len, {tenant}, id, reject,
                           reject_detail, {refs}
                    FROM {s} WHERE reject IS NOT NULL ORDER BY src_row
                    """
                ).format(
                    s=self.stage,
                    tenant=sql.Identifier("tenant_id" if self.table.tenant_owned else "id"),
                    refs=sql.SQL(", ").join(
                        [sql.SQL("NULL::uuid")] + [sql.Identifier(r.column) for r in self.refs]
                    ),
                )
            ).fetchall()
        if not rows:
            return
        texts = SourceFile(self.path).read_spans([(r[2], r[3]) for r in rows])
        ref_index = {r.column: i for i, r in enumerate(self.refs)}
        for line, item, offset, length, tenant, doc_id, code, detail, _null, *ref_values in rows:
            reason = self._reason(code, detail, dict(zip(ref_index, ref_values, strict=True)))
            counts = self.report.tenant(tenant)
            counts.rejected += 1
            self._remember_reject(doc_id, line, reason)
            self.rejects.write(
                collection=self.mapping.name,
                file=self.path.name,
                line=line,
                item=item,
                offset=offset,
                tenant=tenant,
                doc_id=doc_id,
                reason=reason,
                text=texts.get((offset, length)),
            )

    def _reason(self, code: str, detail: str | None, refs: dict[str, Any]) -> str:
        kind, _, column = code.partition(":")
        if kind == "duplicate_id":
            return f"duplicate _id: the same document is already at line {detail}"
        if kind == "tenant_missing":
            return "tenant does not exist in tenants" + self._why_rejected("tenants", None)
        if kind in ("ref_missing", "ref_cross_tenant"):
            spec = self.table.field(column)
            assert spec.ref is not None
            target_id = refs.get(column)
            what = f"{column} -> {spec.ref} {display_id(target_id)}"
            if kind == "ref_cross_tenant":
                owner = display_id(uuid.UUID(detail)) if detail else "?"
                return f"cross-tenant reference: {what} belongs to tenant {owner}, not to this document's tenant"
            return f"dangling reference: {what} does not exist" + self._why_rejected(
                spec.ref, target_id
            )
        if kind == "unique_dup":
            return f"{column} is used by another document of the dump already (line {detail})"
        if kind == "unique_taken":
            other = display_id(uuid.UUID(detail)) if detail else "?"
            return f"{column} is already used by another row of {self.table.name} ({other})"
        return code

    def _why_rejected(self, table: str, doc_id: Any) -> str:
        if doc_id is None:
            return ""
        why = self.state.rejected.get(table, {}).get(doc_id)
        return f" (it was rejected: {why})" if why else ""

    # -- 3. partitions and the move ---------------------------------------------------

    def missing_months(self) -> list[Any]:
        """Months (first days) of accepted rows that have no partition of their own."""
        return [
            r[0]
            for r in self.conn.execute(
                sql.SQL(
                    """
                    SELECT m FROM (SELECT DISTINCT
                                      date_trunc('month', created_at AT TIME ZONE 'UTC')::date AS m
                                  FROM {s} WHERE reject IS NULL) months
                    WHERE to_regclass(format('public.form_submissions_%s', to_char(m, 'YYYY_MM')))
                          IS NULL
                    ORDER BY m
                    """
                ).format(s=self.stage)
            )
        ]

    def ensure_partitions(self) -> list[str]:
        months = self.missing_months()
        if not months:
            return []
        allowed = self.conn.execute(
            "SELECT has_function_privilege("
            "'platform.ensure_form_submission_partitions(integer, date)', 'EXECUTE')"
        ).fetchone()
        if not (allowed and allowed[0]):
            statements = "; ".join(
                f"SELECT platform.ensure_form_submission_partitions(0, DATE '{m:%Y-%m-%d}')"
                for m in months
            )
            raise CollectionFailedError(
                f"{len(months)} months of submissions have no partition and this role may not "
                f"create them; as a superuser run: {statements}"
            )
        created: list[str] = []
        for month in months:
            for part, action, _moved in self.conn.execute(
                "SELECT * FROM platform.ensure_form_submission_partitions("
                "months_ahead => 0, start_month => %s)",
                [month],
            ):
                if action == "created":
                    created.append(part)
        return created

    def move(self) -> None:
        s, t = self.stage, self.target
        cols = [sql.Identifier(c) for c in self.columns]
        key = [sql.Identifier(c) for c in self.table.key]
        non_key = [sql.Identifier(c) for c in self.columns if c not in self.table.key]
        owner = sql.Identifier("tenant_id" if self.table.tenant_owned else "id")
        if self.table.name == "form_submissions":
            # A document whose createdAt changed since the last import: one row per
            # document, so the old one (maybe in another partition) goes.
            self.conn.execute(
                sql.SQL(
                    """
                    DELETE FROM {t} t USING {s} s
                    WHERE s.reject IS NULL AND t.tenant_id = s.tenant_id AND t.id = s.id
                      AND t.created_at <> s.created_at
                    """
                ).format(t=t, s=s)
            )
        join = sql.SQL(" AND ").join(sql.SQL("t.{c} = s.{c}").format(c=c) for c in key)
        # Rows that exist already (partitioned tables cannot return xmax to tell).
        existing = {
            tenant: n
            for tenant, n in self.conn.execute(
                sql.SQL(
                    "SELECT s.{owner}, count(*) FROM {s} s JOIN {t} t ON {join} "
                    "WHERE s.reject IS NULL GROUP BY 1"
                ).format(owner=owner, s=s, t=t, join=join)
            )
        }
        query = sql.SQL(
            """
            WITH moved AS (
                INSERT INTO {t} AS t ({cols})
                SELECT {cols} FROM {s} WHERE reject IS NULL
                ON CONFLICT ({key}) DO UPDATE SET {sets}
                WHERE ({old}) IS DISTINCT FROM ({new})
                RETURNING t.{owner} AS owner
            )
            SELECT owner, count(*) FROM moved GROUP BY owner
            """
        ).format(
            t=t,
            s=s,
            cols=sql.SQL(", ").join(cols),
            key=sql.SQL(", ").join(key),
            sets=sql.SQL(", ").join(sql.SQL("{c} = EXCLUDED.{c}").format(c=c) for c in non_key),
            old=sql.SQL(", ").join(sql.SQL("t.{}").format(c) for c in non_key),
            new=sql.SQL(", ").join(sql.SQL("EXCLUDED.{}").format(c) for c in non_key),
            owner=owner,
        )
        accepted = {
            tenant: n
            for tenant, n in self.conn.execute(
                sql.SQL("SELECT {owner}, count(*) FROM {s} WHERE reject IS NULL GROUP BY 1").format(
                    owner=owner, s=s
                )
            )
        }
        for tenant, written in self.conn.execute(query):
            counts = self.report.tenant(tenant)
            counts.inserted = accepted.get(tenant, 0) - existing.get(tenant, 0)
            counts.updated = written - counts.inserted

    # -- 4. verification -----------------------------------------------------------------

    def verify(self) -> None:
        s, t = self.stage, self.target
        owner = sql.Identifier("tenant_id" if self.table.tenant_owned else "id")
        join = sql.SQL(" AND ").join(
            sql.SQL("t.{c} = s.{c}").format(c=sql.Identifier(c)) for c in self.table.key
        )
        cols = self.columns
        same = sql.SQL("({}) IS NOT DISTINCT FROM ({})").format(
            sql.SQL(", ").join(sql.Identifier("s", c) for c in cols),
            sql.SQL(", ").join(sql.Identifier("t", c) for c in cols),
        )
        ref_counts = [
            sql.SQL("count(s.{c}), count(t.{c})").format(c=sql.Identifier(r.column))
            for r in self.refs
        ]
        query = sql.SQL(
            """
            SELECT s.{owner}, count(*), count(t.id),
                   count(*) FILTER (WHERE t.id IS NOT NULL AND {same}),
                   coalesce(sum({hs}), 0), coalesce(sum({ht}) FILTER (WHERE t.id IS NOT NULL), 0)
                   {refs}
            FROM {s} s LEFT JOIN {t} t ON {join}
            WHERE s.reject IS NULL
            GROUP BY s.{owner}
            """
        ).format(
            owner=owner,
            same=same,
            hs=_hash("s", cols),
            ht=_hash("t", cols),
            refs=sql.SQL("").join(sql.SQL(", ") + r for r in ref_counts),
            s=s,
            t=t,
            join=join,
        )
        for row in self.conn.execute(query):
            tenant, accepted, present, identical, src_sum, dst_sum, *refs = row
            counts = self.report.tenant(tenant)
            counts.accepted, counts.present, counts.identical = accepted, present, identical
            counts.source_checksum, counts.target_checksum = int(src_sum), int(dst_sum)
            for i, ref in enumerate(self.refs):
                counts.refs[ref.column] = [refs[2 * i], refs[2 * i + 1]]
        if self.state.mode is Mode.VERIFY and self.table.tenant_owned:
            extra = sql.SQL(
                """
                SELECT t.tenant_id, count(*) FROM {t} t
                WHERE t.tenant_id IN (SELECT DISTINCT tenant_id FROM {s})
                  AND NOT EXISTS (SELECT FROM {s} s WHERE {join})
                GROUP BY t.tenant_id
                """
            ).format(t=t, s=s, join=join)
            for tenant, n in self.conn.execute(extra):
                self.report.tenant(tenant).extra = n
