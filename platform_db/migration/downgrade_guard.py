"""A downgrade that would drop tables holding rows refuses, unless told to destroy data.

Before the first step of a downgrade, the environment notes which tables hold rows
(`EXISTS`, cheap on any size): every ordinary table and partition outside `pg_catalog`,
`information_schema`, extensions' own tables and schema `platform` (whose two tables
hold the package's monitoring records, the matview refresh log and metric snapshots,
which the upgrade itself writes and no one would want to confirm away). After each
reverted revision it looks which of them are gone. If any is, and the run was not told
`destroy_data`, it rolls back to where the downgrade began, counts the rows of those
tables, and refuses, naming each table (partitions summed under their parent), its row
count, and the audit trail when `audit_log` is among them. Nothing is changed.

What it sees is what the revision actually did, whatever it is written with
(`op.drop_table`, `DROP SCHEMA ... CASCADE`, a detached partition's table dropped):
no list of tables per revision has to be kept in step with the revisions. Downgrades of
empty databases (tests, CI) drop only empty tables and run as before.

The opt-in: `platform-db downgrade --destroy-data REV`, `alembic -x destroy_data=true
downgrade REV`, or `platform_db.migration.runner.downgrade(conn, REV, destroy_data=True)`.
The tables dropped anyway are logged (WARNING).

Not covered: a downgrade that drops a column or deletes rows of a table it keeps; and a
revision whose downgrade runs an autocommit block (`drop_index_concurrently`) commits
what was reverted before it, so put such a step in a revision of its own (as
docs/SCHEMA_CHANGES.md already asks).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from alembic.util import CommandError
from sqlalchemy import Connection, text

log = logging.getLogger("alembic.runtime.platform_db")

DESTROY_DATA_ATTRIBUTE = "platform_db_destroy_data"
DESTROY_DATA_X_ARGUMENT = "destroy_data"
AUDIT_TRAIL = "public.audit_log"

_SAVEPOINT = "platform_db_downgrade_guard"
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off", ""}

_TABLES = """
SELECT c.oid::bigint AS oid, n.nspname AS schema, c.relname AS name,
       rn.nspname || '.' || r.relname AS root,
       r.relkind = 'p' AS partitioned,
       pg_catalog.has_table_privilege(c.oid, 'SELECT') AS readable,
       c.relrowsecurity AS rls
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_class r ON r.oid = COALESCE(pg_catalog.pg_partition_root(c.oid)::oid, c.oid)
JOIN pg_catalog.pg_namespace rn ON rn.oid = r.relnamespace
WHERE c.relkind = 'r' AND c.relpersistence <> 't'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'platform')
  AND n.nspname NOT LIKE 'pg\\_%'
  AND NOT EXISTS (
      SELECT FROM pg_catalog.pg_depend d
      WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid
        AND d.deptype = 'e')
"""


class DowngradeRefused(CommandError):
    """The downgrade would drop tables that hold rows, and was not told to."""


def destroy_data_requested(context: Any) -> bool:
    """`-x destroy_data=true` on the alembic command line, or the runner's/CLI's flag."""
    raw = context.get_x_argument(as_dictionary=True).get(DESTROY_DATA_X_ARGUMENT)
    if raw is not None:
        value = str(raw).strip().lower()
        if value not in _TRUE | _FALSE:
            raise CommandError(f"-x destroy_data must be true or false, not {raw!r}")
        if value in _TRUE:
            return True
    return bool(context.config.attributes.get(DESTROY_DATA_ATTRIBUTE, False))


@dataclass(frozen=True, slots=True)
class _Table:
    oid: int
    name: str  # schema.table
    root: str  # the partitioned table it is a partition of, else itself
    partitioned: bool
    countable: bool  # readable by this login, without row-level security hiding rows


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _tables_with_rows(connection: Connection) -> dict[int, _Table]:
    bypass = bool(
        connection.scalar(
            text(
                "SELECT rolsuper OR rolbypassrls FROM pg_catalog.pg_roles "
                "WHERE rolname = current_user"
            )
        )
    )
    tables = [
        _Table(
            oid=r.oid,
            name=f"{r.schema}.{r.name}",
            root=r.root,
            partitioned=r.partitioned,
            countable=r.readable and (bypass or not r.rls),
        )
        for r in connection.execute(text(_TABLES))
    ]
    # A table this login cannot read (or whose rows RLS hides from it) is taken to hold rows.
    held = {t.oid: t for t in tables if not t.countable}
    countable = [t for t in tables if t.countable]
    for i in range(0, len(countable), 200):
        chunk = countable[i : i + 200]
        query = " UNION ALL ".join(
            f"SELECT {t.oid}::bigint WHERE EXISTS (SELECT FROM ONLY "
            f"{_quote(t.name.split('.', 1)[0])}.{_quote(t.name.split('.', 1)[1])})"
            for t in chunk
        )
        by_oid = {t.oid: t for t in chunk}
        for (oid,) in connection.execute(text(query)):
            held[oid] = by_oid[oid]
    return held


class DowngradeGuard:
    """Alembic's on_version_apply callback of a downgrade run (see the module's doc)."""

    def __init__(self, connection: Connection, *, destroy_data: bool, target: str | None) -> None:
        self._connection = connection
        self._destroy = destroy_data
        self._target = target or "REVISION"
        self._held: dict[int, _Table] = {}
        self._transaction: str | None = None
        self._started = False

    def start(self) -> None:
        """Before the first step, inside the migration's transaction."""
        self._held = _tables_with_rows(self._connection)
        self._started = True
        if self._held and not self._destroy:
            self._transaction = self._connection.scalar(
                text("SELECT pg_catalog.pg_current_xact_id()::text")
            )
            self._connection.exec_driver_sql(f"SAVEPOINT {_SAVEPOINT}")

    def __call__(self, *, ctx: Any, step: Any, heads: Any, run_args: Any) -> None:
        del ctx, heads, run_args
        if not self._started or step.is_upgrade or not self._held:
            return
        existing = {
            (r[0], r[1])
            for r in self._connection.execute(
                text(
                    "SELECT c.oid::bigint, n.nspname || '.' || c.relname "
                    "FROM pg_catalog.pg_class c "
                    "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE c.oid = ANY(:oids)"
                ),
                {"oids": list(self._held)},
            )
        }
        gone = [t for t in self._held.values() if (t.oid, t.name) not in existing]
        if not gone:
            return
        revision = _describe(step)
        if not self._destroy:
            raise DowngradeRefused(self._refusal(revision, gone))
        for table in gone:
            del self._held[table.oid]
        trail = any(t.root == AUDIT_TRAIL for t in gone)
        log.warning(
            "reverting %s dropped %d table(s) that held rows (destroy_data): %s%s",
            revision,
            len(gone),
            ", ".join(sorted({t.root for t in gone})),
            "; this deleted the audit trail" if trail else "",
        )

    def _counts(self, gone: list[_Table]) -> dict[int, int] | None:
        """Row counts of the dropped tables, back at the start of the downgrade; None when
        an autocommit block has committed since (the savepoint is gone with it)."""
        current = self._connection.scalar(
            text("SELECT pg_catalog.pg_current_xact_id_if_assigned()::text")
        )
        if self._transaction is None or current != self._transaction:
            return None
        self._connection.exec_driver_sql(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}")
        counts: dict[int, int] = {}
        for table in gone:
            if table.countable:
                schema, name = table.name.split(".", 1)
                counts[table.oid] = int(
                    self._connection.scalar(
                        text(f"SELECT count(*) FROM ONLY {_quote(schema)}.{_quote(name)}")
                    )
                    or 0
                )
        return counts

    def _refusal(self, revision: str, gone: list[_Table]) -> str:
        counts = self._counts(gone)
        by_root: dict[str, list[_Table]] = defaultdict(list)
        for table in gone:
            by_root[table.root].append(table)
        lines = []
        width = max(len(root) for root in by_root)
        for root in sorted(by_root):
            parts = by_root[root]
            if counts is None:
                amount = "holds rows"
            elif any(not t.countable for t in parts):
                known = sum(counts.get(t.oid, 0) for t in parts)
                amount = f"{known:,} rows readable, more this login cannot read"
            else:
                total = sum(counts[t.oid] for t in parts)
                amount = f"{total:,} row{'s' if total != 1 else ''}"
            if parts[0].partitioned:
                amount += f" in {len(parts)} partition{'s' if len(parts) != 1 else ''}"
            if root == AUDIT_TRAIL:
                amount += " (the audit trail: every recorded change would be deleted)"
            lines.append(f"  {root:<{width}}  {amount}")
        trail = AUDIT_TRAIL in by_root
        undone = (
            "Nothing was changed."
            if counts is not None
            else "This step was rolled back; steps before an autocommit block stay reverted."
        )
        return (
            f"refusing to downgrade: reverting {revision} would drop "
            f"{len(by_root)} table{'s' if len(by_root) != 1 else ''} that hold rows"
            f"{', deleting the audit trail' if trail else ''}:\n"
            + "\n".join(lines)
            + f"\n{undone} To drop them with their rows, say so: "
            f"`platform-db downgrade --destroy-data {self._target}` or "
            f"`alembic -x destroy_data=true downgrade {self._target}`."
        )


def _describe(step: Any) -> str:
    revision = getattr(step, "up_revision_id", None) or "?"
    script = getattr(step, "up_revision", None)
    doc = (getattr(script, "doc", "") or "").strip().splitlines()
    return f"{revision} ({doc[0]})" if doc else str(revision)


__all__ = [
    "AUDIT_TRAIL",
    "DESTROY_DATA_ATTRIBUTE",
    "DESTROY_DATA_X_ARGUMENT",
    "DowngradeGuard",
    "DowngradeRefused",
    "destroy_data_requested",
]
