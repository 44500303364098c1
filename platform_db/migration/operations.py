"""The migration operations of platform-db: three generic entity operations, and index
builds for tables that hold data.

A revision creates, drops or replaces database objects that the models do not describe
(policies, grants, triggers, functions, views, materialized views, scheduled jobs: the
entities of platform_db.ddl.entities) with three operations, each an Alembic
`MigrateOperation` that autogenerate emits, reverses for the downgrade and renders::

    from platform_db.ddl.entities import Policy
    from platform_db.migration.operations import create_entity, replace_entity

    notes_tenant_isolation = Policy(name="tenant_isolation", on="public.notes", ...)

    def upgrade() -> None:
        create_entity(notes_tenant_isolation)
        replace_entity(lead_funnel_monthly, replaces="e5f7a9b1d407.lead_funnel_monthly")

    def downgrade() -> None:
        replace_entity(lead_funnel_monthly, replace_with="e5f7a9b1d407.lead_funnel_monthly")
        drop_entity(notes_tenant_isolation)

The definition a revision runs is the one written in that revision: `replaces=` names the
earlier revision (and the module-level name in it) that holds the previous definition, as
in Alembic's "Replaceable Objects" cookbook recipe; the downgrade puts that one back.
(They are typed functions rather than names on Alembic's `op`: mypy checks the revisions.)

`create_index_concurrently` / `drop_index_concurrently` are the way to change indexes of
a table that already holds data: CONCURRENTLY, outside the transaction, re-runnable, and
under the same lock_timeout as the rest of the migration.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from alembic.autogenerate import renderers
from alembic.autogenerate.api import AutogenContext
from alembic.operations import MigrateOperation, Operations

from platform_db.ddl.entities import Entity, ident
from platform_db.ddl.tenant_table import FULL_PROTECTION, TenantProtection, TenantTable
from platform_db.migration.locking import held_across_commit

# --------------------------------------------------------------------------------------
# Lock timeout
# --------------------------------------------------------------------------------------

_TIMEOUT = re.compile(r"^\d+(ms|s|min)?$")


def migration_lock_timeout() -> str:
    """lock_timeout of a migration run: PLATFORM_DB_MIGRATION_LOCK_TIMEOUT, default 5s.

    A deploy must never queue behind a long-running lock and stall the application's
    queries behind it: it gives up after this long instead, and is retried.
    """
    value = os.environ.get("PLATFORM_DB_MIGRATION_LOCK_TIMEOUT", "5s").strip()
    match = _TIMEOUT.match(value)
    if not match:
        raise ValueError(
            f"PLATFORM_DB_MIGRATION_LOCK_TIMEOUT must look like 5s, 500ms or 1min, not {value!r}"
        )
    if int(value[: len(value) - len(match.group(1) or "")]) == 0:
        # lock_timeout = 0 means "wait forever": the guard this setting exists for.
        raise ValueError(
            "PLATFORM_DB_MIGRATION_LOCK_TIMEOUT must be more than 0 (0 would let a deploy "
            f"wait forever behind a lock), not {value!r}; for example 5s"
        )
    return value


# --------------------------------------------------------------------------------------
# Entities: create, drop, replace
# --------------------------------------------------------------------------------------


def _execute_all(operations: Operations, statements: Sequence[str]) -> None:
    for statement in statements:
        operations.execute(sa.text(statement))


def resolve(operations: Operations, reference: str) -> Entity:
    """The entity that `<revision>.<name>` names: module attribute `name` of that revision."""
    revision, _, name = reference.partition(".")
    script = operations.get_context().script
    if not revision or not name or script is None:
        raise ValueError(f"expected '<revision>.<name>', not {reference!r}")
    found = script.get_revision(revision)
    if found is None:
        raise ValueError(f"{reference!r}: no revision {revision!r}")
    entity = getattr(found.module, name, None)
    if not isinstance(entity, Entity):
        raise ValueError(f"{reference!r}: revision {revision} has no entity named {name!r}")
    return entity


class EntityOp(MigrateOperation):
    """What the three operations share: the entity, and how `alembic check` shows it."""

    verb = "entity"

    def __init__(self, entity: Entity, *, reasons: Sequence[str] = ()) -> None:
        self.entity = entity
        self.reasons = tuple(reasons)
        # Set by autogenerate when it renders the entity at module level of the revision.
        self.variable: str | None = None

    def to_diff_tuple(self) -> tuple[Any, ...]:
        detail = "; ".join(self.reasons) or self.entity.summary()
        return (f"{self.verb}_{self.entity.kind}", self.entity.identity, detail)


class CreateEntityOp(EntityOp):
    verb = "create"

    def reverse(self) -> DropEntityOp:
        return DropEntityOp(self.entity)


class DropEntityOp(EntityOp):
    verb = "drop"

    def reverse(self) -> CreateEntityOp:
        return CreateEntityOp(self.entity)


class ReplaceEntityOp(EntityOp):
    """Turn the previous definition of an object into `entity`.

    The previous one is given (`previous`), or named in an earlier revision: `replaces`
    (upgrade: previous -> entity) or `replace_with` (downgrade: entity -> that one).

    `recreate`: drop the previous definition and create the new one, where PostgreSQL
    refuses to replace it in place (a function whose return type changes)."""

    verb = "replace"

    def __init__(
        self,
        entity: Entity,
        *,
        previous: Entity | None = None,
        replaces: str | None = None,
        replace_with: str | None = None,
        recreate: bool = False,
        reasons: Sequence[str] = (),
    ) -> None:
        super().__init__(entity, reasons=reasons)
        if sum(x is not None for x in (previous, replaces, replace_with)) != 1:
            raise ValueError("replace_entity needs exactly one of previous, replaces, replace_with")
        self.previous, self.replaces, self.replace_with = previous, replaces, replace_with
        self.recreate = recreate
        self.previous_variable: str | None = None

    def reverse(self) -> ReplaceEntityOp:
        if self.previous is not None:
            return ReplaceEntityOp(self.previous, previous=self.entity, recreate=self.recreate)
        if self.replaces is not None:
            return ReplaceEntityOp(self.entity, replace_with=self.replaces, recreate=self.recreate)
        return ReplaceEntityOp(self.entity, replaces=self.replace_with, recreate=self.recreate)


@Operations.implementation_for(CreateEntityOp)
def _create(operations: Operations, operation: CreateEntityOp) -> None:
    _execute_all(operations, operation.entity.create_sql())


@Operations.implementation_for(DropEntityOp)
def _drop(operations: Operations, operation: DropEntityOp) -> None:
    _execute_all(operations, operation.entity.drop_sql())


@Operations.implementation_for(ReplaceEntityOp)
def _replace(operations: Operations, operation: ReplaceEntityOp) -> None:
    if operation.replace_with is not None:
        previous, target = operation.entity, resolve(operations, operation.replace_with)
    else:
        target = operation.entity
        if operation.previous is not None:
            previous = operation.previous
        else:
            assert operation.replaces is not None
            previous = resolve(operations, operation.replaces)
    if operation.recreate:
        _execute_all(operations, [*previous.drop_sql(), *target.create_sql()])
    else:
        _execute_all(operations, target.replace_sql(previous))


def create_entity(entity: Entity) -> None:
    """Create a database object (a policy, grant, trigger, function, view, job, ...)."""
    op.invoke(CreateEntityOp(entity))


def drop_entity(entity: Entity) -> None:
    """Drop a database object: the reverse of create_entity."""
    op.invoke(DropEntityOp(entity))


def replace_entity(
    entity: Entity,
    *,
    previous: Entity | None = None,
    replaces: str | None = None,
    replace_with: str | None = None,
    recreate: bool = False,
) -> None:
    """Replace an object's definition, in place where PostgreSQL allows it.

    - `replaces="<revision>.<name>"`: the previous definition is that revision's entity;
    - `replace_with="<revision>.<name>"`: the reverse (a downgrade), back to that one;
    - `previous=<entity>`: the previous definition, given (what autogenerate writes when
      the database held something no revision defines);
    - `recreate=True`: drop the previous definition and create this one (autogenerate
      sets it where PostgreSQL cannot replace the object in place: a function whose
      return type changes).
    """
    op.invoke(
        ReplaceEntityOp(
            entity,
            previous=previous,
            replaces=replaces,
            replace_with=replace_with,
            recreate=recreate,
        )
    )


# --- tenant tables, as revisions written before the entity operations call them ---------


def protect_tenant_table(
    table: str,
    *,
    key: tuple[str, ...] = ("id",),
    audit_exclude: tuple[str, ...] = (),
    protection: TenantProtection = FULL_PROTECTION,
) -> None:
    """Create every entity of a new tenant table (TenantTable.entities(), today's definition).

    Deprecated for new revisions: autogenerate writes the entities themselves, frozen in
    the revision. Kept so that revisions that call it still run.
    """
    for entity in TenantTable(table, key, audit_exclude, protection).entities():
        create_entity(entity)


def unprotect_tenant_table(
    table: str,
    *,
    key: tuple[str, ...] = ("id",),
    audit_exclude: tuple[str, ...] = (),
    protection: TenantProtection = FULL_PROTECTION,
) -> None:
    """The reverse of protect_tenant_table."""
    for entity in reversed(TenantTable(table, key, audit_exclude, protection).entities()):
        drop_entity(entity)


# --------------------------------------------------------------------------------------
# Indexes on tables that hold data
# --------------------------------------------------------------------------------------


def _in_callers_transaction() -> bool:
    ctx = op.get_context()
    # Alembic does not commit a transaction it did not begin (a connection handed in
    # inside the caller's transaction), and CONCURRENTLY cannot run inside one.
    return not ctx.as_sql and bool(getattr(ctx, "_in_external_transaction", False))


def _migration_lock_kept(ctx: Any) -> contextlib.AbstractContextManager[None]:
    """The migration lock (platform_db.migration.locking) stays held while the autocommit
    block commits the migration's transaction: no other migration of the database starts
    in between."""

    def run(sql: str) -> None:
        op.execute(sa.text(sql))

    return held_across_commit(run, online_connection=None if ctx.as_sql else ctx.bind)


def create_index_concurrently(
    index_name: str,
    table_name: str,
    columns: Sequence[str | sa.TextClause],
    *,
    unique: bool = False,
    where: str | None = None,
    using: str | None = None,
    include: Sequence[str] = (),
    schema: str = "public",
) -> None:
    """CREATE INDEX CONCURRENTLY IF NOT EXISTS, outside the transaction, re-runnable.

    Writes to the table go on while the index builds. An INVALID index of that name (a
    build that was interrupted) is dropped first when running against a database; in an
    offline script (`--sql`) a guard stops with instructions instead, since a script
    cannot drop it conditionally. The migration's lock_timeout applies inside the
    autocommit block and again in the transaction that follows it.
    """
    ident(index_name)
    ident(table_name)
    ident(schema)
    if _in_callers_transaction():
        raise RuntimeError(
            f"create_index_concurrently({index_name!r}) cannot run inside the caller's "
            "transaction: pass a connection that is not in a transaction (alembic then "
            "commits around the index build), or run `platform-db upgrade`"
        )
    ctx = op.get_context()
    qualified = f"{schema}.{index_name}"
    invalid = False
    if ctx.as_sql:
        op.execute(sa.text(_INVALID_INDEX_GUARD.format(index=qualified)))
    else:
        invalid = bool(
            ctx.bind.scalar(  # type: ignore[union-attr]
                sa.text(
                    "SELECT NOT i.indisvalid FROM pg_catalog.pg_index i "
                    "WHERE i.indexrelid = pg_catalog.to_regclass(:name)"
                ),
                {"name": qualified},
            )
        )
    timeout = migration_lock_timeout()
    kw: dict[str, Any] = {"postgresql_concurrently": True}
    if where is not None:
        kw["postgresql_where"] = sa.text(where)
    if using is not None:
        kw["postgresql_using"] = using
    if include:
        kw["postgresql_include"] = list(include)
    with _migration_lock_kept(ctx):
        with ctx.autocommit_block():
            op.execute(sa.text(f"SET lock_timeout = '{timeout}'"))
            if invalid:
                op.execute(sa.text(f"DROP INDEX CONCURRENTLY IF EXISTS {qualified}"))
            op.create_index(
                index_name,
                table_name,
                list(columns),
                unique=unique,
                schema=schema,
                if_not_exists=True,
                **kw,
            )
            op.execute(sa.text("RESET lock_timeout"))
        op.execute(sa.text(f"SET LOCAL lock_timeout = '{timeout}'"))


def drop_index_concurrently(index_name: str, table_name: str, *, schema: str = "public") -> None:
    """DROP INDEX CONCURRENTLY IF EXISTS, outside the transaction (the reverse of the above)."""
    ident(index_name)
    if _in_callers_transaction():
        raise RuntimeError(
            f"drop_index_concurrently({index_name!r}) cannot run inside the caller's transaction"
        )
    timeout = migration_lock_timeout()
    ctx = op.get_context()
    with _migration_lock_kept(ctx):
        with ctx.autocommit_block():
            op.execute(sa.text(f"SET lock_timeout = '{timeout}'"))
            op.drop_index(
                index_name,
                table_name=table_name,
                schema=schema,
                postgresql_concurrently=True,
                if_exists=True,
            )
            op.execute(sa.text("RESET lock_timeout"))
        op.execute(sa.text(f"SET LOCAL lock_timeout = '{timeout}'"))


_INVALID_INDEX_GUARD = """DO $guard$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_index i
               WHERE i.indexrelid = pg_catalog.to_regclass('{index}') AND NOT i.indisvalid) THEN
        RAISE EXCEPTION 'index {index} is INVALID (an interrupted CREATE INDEX CONCURRENTLY)'
            USING HINT = 'DROP INDEX CONCURRENTLY {index}; then run this script again.';
    END IF;
END
$guard$"""


# --------------------------------------------------------------------------------------
# Rendering (what autogenerate writes into a revision)
# --------------------------------------------------------------------------------------

_MODULE = "platform_db.migration.operations"


def _import(ctx: AutogenContext, name: str, module: str = _MODULE) -> str:
    ctx.imports.add(f"from {module} import {name}")
    return name


def render_entity(ctx: AutogenContext, entity: Entity) -> str:
    """The entity's constructor call, with the import it needs."""
    _import(ctx, type(entity).__name__, "platform_db.ddl.entities")
    return entity.render()


def _ref(ctx: AutogenContext, entity: Entity, variable: str | None) -> str:
    return variable if variable is not None else render_entity(ctx, entity)


@renderers.dispatch_for(CreateEntityOp)
def _render_create(ctx: AutogenContext, operation: CreateEntityOp) -> str:
    return f"{_import(ctx, 'create_entity')}({_ref(ctx, operation.entity, operation.variable)})"


@renderers.dispatch_for(DropEntityOp)
def _render_drop(ctx: AutogenContext, operation: DropEntityOp) -> str:
    return f"{_import(ctx, 'drop_entity')}({_ref(ctx, operation.entity, operation.variable)})"


@renderers.dispatch_for(ReplaceEntityOp)
def _render_replace(ctx: AutogenContext, operation: ReplaceEntityOp) -> str:
    fn = _import(ctx, "replace_entity")
    entity = _ref(ctx, operation.entity, operation.variable)
    recreate = ", recreate=True" if operation.recreate else ""
    if operation.replaces is not None:
        return f"{fn}({entity}, replaces={operation.replaces!r}{recreate})"
    if operation.replace_with is not None:
        return f"{fn}({entity}, replace_with={operation.replace_with!r}{recreate})"
    assert operation.previous is not None
    previous = _ref(ctx, operation.previous, operation.previous_variable)
    return f"{fn}({entity}, previous={previous}{recreate})"


# Names of platform_db.migration_ops before the entity operations (issue 12), and what
# replaces each: importing one says so instead of a bare "cannot import name".
_REMOVED: dict[str, str] = {
    "create_policy": "create_entity(Policy(...))",
    "drop_policy": "drop_entity(Policy(...))",
    "set_table_privileges": "create_entity(TableGrants(...)) or replace_entity(TableGrants(...))",
    "set_row_level_security": "create_entity(RowLevelSecurity(...))",
    "create_materialized_view": "create_entity(MaterializedView(...))",
    "drop_materialized_view": "drop_entity(MaterializedView(...))",
    "replace_materialized_view": "replace_entity(MaterializedView(...), replaces=...)",
    "create_audit_trigger": "create_entity(Trigger(...))",
    "drop_audit_trigger": "drop_entity(Trigger(...))",
    "protect_partitions": "create_entity(PartitionProtection(...))",
}


def __getattr__(name: str) -> Any:
    if name in _REMOVED:
        raise ImportError(
            f"{name} was removed from {__name__} (formerly platform_db.migration_ops) in 0.1: "
            f"use {_REMOVED[name]} with an entity of platform_db.ddl.entities "
            "(create_entity / drop_entity / replace_entity)",
            name=__name__,
        )
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CreateEntityOp",
    "DropEntityOp",
    "EntityOp",
    "ReplaceEntityOp",
    "create_entity",
    "create_index_concurrently",
    "drop_entity",
    "drop_index_concurrently",
    "migration_lock_timeout",
    "protect_tenant_table",
    "replace_entity",
    "unprotect_tenant_table",
]
