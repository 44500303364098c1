"""Revisions that run after `platform-db distribute`: the environment's Citus support.

When the database has the citus extension, the migration environment
(platform_db.migration.environment) runs each migration transaction with

- `citus.multi_shard_modify_mode = 'sequential'`: a revision mixes DDL and reads or
  writes of distributed tables in one transaction, which in Citus' default parallel mode
  opens several connections per worker and can wait for itself (a "distributed
  deadlock"); sequential mode uses one connection per worker;
- `citus.enable_unsafe_triggers = on`: a revision may create or replace a trigger on a
  distributed table (the audit trigger of a new tenant table), which runs on the shards.

And `op.create_table` of a tenant table (one with a `tenant_id` column) on a distributed
database creates it distributed: Citus refuses a foreign key from a local table to a
distributed one, which every new tenant table referencing another has. The table is
created without its foreign keys to other tenant tables, distributed by `tenant_id`
co-located with `users` (`create_distributed_table`, empty, so nothing is copied), and
the foreign keys are added right after, as the revision wrote them. The indexes, RLS,
policies, grants and triggers the revision creates next reach the shards through Citus.
A table created otherwise (raw SQL) is distributed by the next `platform-db distribute`.
Offline scripts (`--sql`) cannot ask the database and are not changed.
"""

from __future__ import annotations

import copy
from typing import Any

from alembic.operations import Operations, ops
from alembic.operations.toimpl import create_table as _alembic_create_table
from sqlalchemy import Column, Connection, ForeignKeyConstraint, text

# The option of context.configure() that tells create_table it may distribute.
CITUS_OPTION = "platform_db_citus"
DISTRIBUTION_COLUMN = "tenant_id"
ANCHOR = "public.users"

# Run first in every migration transaction on a database with citus (a no-op without).
SEQUENTIAL_SQL = """DO $citus$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'citus') THEN
        SET LOCAL citus.multi_shard_modify_mode = 'sequential';
        SET LOCAL citus.enable_unsafe_triggers = on;
    END IF;
END
$citus$"""


def has_citus(connection: Connection) -> bool:
    return bool(
        connection.scalar(
            text("SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'citus')")
        )
    )


def colocation_anchor(connection: Connection) -> str | None:
    """The table new tenant tables are co-located with, or None when nothing is
    distributed by tenant_id (then a new table stays local, as on plain PostgreSQL)."""
    found = connection.scalar(
        text(
            "SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) "
            "FROM pg_catalog.pg_dist_partition d "
            "JOIN pg_catalog.pg_class c ON c.oid = d.logicalrelid "
            "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            "WHERE d.partmethod = 'h' AND NOT c.relispartition "
            "AND pg_catalog.column_to_column_name(d.logicalrelid, d.partkey) = :column "
            "ORDER BY pg_catalog.format('%I.%I', n.nspname, c.relname) <> :anchor, 1 LIMIT 1"
        ),
        {"column": DISTRIBUTION_COLUMN, "anchor": ANCHOR},
    )
    return None if found is None else str(found)


def _target(fk: ForeignKeyConstraint) -> tuple[str | None, str, list[str]]:
    """(schema, table, columns) a not yet attached foreign key points at."""
    specs = [element._get_colspec() for element in fk.elements]
    parts = [str(spec).split(".") for spec in specs]
    schema = parts[0][-3] if len(parts[0]) > 2 else None
    return schema, parts[0][-2], [p[-1] for p in parts]


def _is_tenant_table(operation: ops.CreateTableOp) -> bool:
    return any(
        isinstance(item, Column) and item.name == DISTRIBUTION_COLUMN for item in operation.columns
    )


def _create_table(operations: Operations, operation: ops.CreateTableOp) -> Any:
    ctx = operations.migration_context
    if not ctx.opts.get(CITUS_OPTION) or ctx.as_sql or not _is_tenant_table(operation):
        return _alembic_create_table(operations, operation)
    bind = ctx.bind
    assert isinstance(bind, Connection)
    anchor = colocation_anchor(bind)
    if anchor is None:
        return _alembic_create_table(operations, operation)
    for item in operation.columns:
        if isinstance(item, Column) and any(
            fk.target_fullname.split(".")[-2] != "tenants" for fk in item.foreign_keys
        ):
            raise ValueError(
                f"{operation.table_name}.{item.name}: on a Citus-distributed database write "
                "a foreign key to another tenant table as sa.ForeignKeyConstraint([...]) in "
                "create_table, not inline on the column, so that it can be added after the "
                "table is distributed"
            )
    held = [
        item
        for item in operation.columns
        if isinstance(item, ForeignKeyConstraint) and _target(item)[1] != "tenants"
    ]
    stripped = copy.copy(operation)
    aside = {id(item) for item in held}  # by identity: a Column's == builds SQL
    stripped.columns = [item for item in operation.columns if id(item) not in aside]
    table = _alembic_create_table(operations, stripped)
    qualified = f"{operation.schema or 'public'}.{operation.table_name}"
    bind.execute(
        text(
            "SELECT create_distributed_table(CAST(:t AS regclass), :column, "
            "colocate_with => :anchor)"
        ),
        {"t": qualified, "column": DISTRIBUTION_COLUMN, "anchor": anchor},
    )
    for fk in held:
        schema, referent, remote = _target(fk)
        local = [str(c) for c in fk.column_keys]
        name = (
            str(fk.name)
            if fk.name is not None
            else f"fk_{operation.table_name}_{'_'.join(local)}_{referent}"
        )
        operations.create_foreign_key(
            name,
            operation.table_name,
            referent,
            local,
            remote,
            source_schema=operation.schema,
            referent_schema=schema,
            onupdate=fk.onupdate,
            ondelete=fk.ondelete,
            deferrable=fk.deferrable,
            initially=fk.initially,
            match=fk.match,
            **fk.dialect_kwargs,
        )
    return table


def _install() -> None:
    """Route op.create_table through _create_table (it falls back to Alembic's own)."""
    try:
        Operations.implementation_for(ops.CreateTableOp, replace=True)(_create_table)  # type: ignore[call-arg,unused-ignore]
    except TypeError:
        # Alembic before 1.17.2 has no replace= and refuses a second implementation
        # (an assertion): put ours in its dispatcher's registry in place of the built-in.
        Operations._to_impl._registry[(ops.CreateTableOp, "default")] = _create_table


_install()


__all__ = ["CITUS_OPTION", "SEQUENTIAL_SQL", "colocation_anchor", "has_citus"]
