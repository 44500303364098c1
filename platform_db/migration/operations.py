"""Migration operations of platform-db, for revisions written by hand or by autogenerate.

Each operation is an Alembic `MigrateOperation` (so autogenerate can emit it, reverse it
for the downgrade and render it) with a typed function that revisions call::

    from platform_db.migration.operations import protect_tenant_table

    def upgrade() -> None:
        op.create_table("notes", ...)
        protect_tenant_table("notes")

The SQL comes from the package's one definitions: platform_db.ddl.tenant_table for a
tenant-owned table, platform_db.ddl.dashboards.MaterializedView for a dashboard view.
(They are not added to Alembic's `op` namespace: a typed function is what mypy, which
checks the revisions, can see.)

`create_index_concurrently` / `drop_index_concurrently` are the way to change indexes of
a table that already holds data: CONCURRENTLY, outside the transaction, re-runnable, and
under the same lock_timeout as the rest of the migration.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from alembic.autogenerate import renderers
from alembic.autogenerate.api import AutogenContext
from alembic.operations import MigrateOperation, Operations

from platform_db.ddl import audit
from platform_db.ddl.dashboards import MaterializedView
from platform_db.ddl.security import (
    APP_ROLE,
    PLATFORM_SCHEMA,
    TENANT_POLICY,
    Policy,
    ident,
)
from platform_db.ddl.tenant_table import FULL_PROTECTION, TenantProtection, TenantTable

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
    if not _TIMEOUT.match(value):
        raise ValueError(
            f"PLATFORM_DB_MIGRATION_LOCK_TIMEOUT must look like 5s, 500ms or 1min, not {value!r}"
        )
    return value


# --------------------------------------------------------------------------------------
# Tenant-owned tables
# --------------------------------------------------------------------------------------


def _execute_all(operations: Operations, statements: Sequence[str]) -> None:
    for statement in statements:
        operations.execute(sa.text(statement))


class ProtectTenantTableOp(MigrateOperation):
    """Give a table everything a tenant-owned table gets (TenantTable.protect())."""

    def __init__(self, table: TenantTable) -> None:
        self.table = table

    def reverse(self) -> UnprotectTenantTableOp:
        return UnprotectTenantTableOp(self.table)

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("protect_tenant_table", self.table.qualified, _protection_summary(self.table))


class UnprotectTenantTableOp(MigrateOperation):
    """The exact reverse of ProtectTenantTableOp."""

    def __init__(self, table: TenantTable) -> None:
        self.table = table

    def reverse(self) -> ProtectTenantTableOp:
        return ProtectTenantTableOp(self.table)

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("unprotect_tenant_table", self.table.qualified)


@Operations.implementation_for(ProtectTenantTableOp)
def _protect(operations: Operations, operation: ProtectTenantTableOp) -> None:
    _execute_all(operations, operation.table.protect())


@Operations.implementation_for(UnprotectTenantTableOp)
def _unprotect(operations: Operations, operation: UnprotectTenantTableOp) -> None:
    _execute_all(operations, operation.table.unprotect())


def _protection_summary(table: TenantTable) -> str:
    p = table.protection
    parts = [
        "RLS forced" if p.rls else f"NO RLS ({p.reason})",
        f"policies {', '.join(x.name for x in p.policies) or 'none'}",
        f"{APP_ROLE}: {', '.join(p.app_privileges) or 'nothing'}",
        "audit trigger" if p.audit else f"NOT audited ({p.reason})",
    ]
    return "; ".join(parts)


def protect_tenant_table(
    table: str,
    *,
    key: tuple[str, ...] = ("id",),
    audit_exclude: tuple[str, ...] = (),
    protection: TenantProtection = FULL_PROTECTION,
) -> None:
    """RLS enabled and forced, its policies, grants and the audit trigger on a new table.

    `key`: the primary key columns besides tenant_id (recorded as the audit row key);
    `audit_exclude`: columns never written to the audit trail (generated columns);
    `protection`: the model's `__tenant_protection__` when it is not the default.
    """
    op.invoke(ProtectTenantTableOp(TenantTable(table, key, audit_exclude, protection)))


def unprotect_tenant_table(
    table: str,
    *,
    key: tuple[str, ...] = ("id",),
    audit_exclude: tuple[str, ...] = (),
    protection: TenantProtection = FULL_PROTECTION,
) -> None:
    """Remove what protect_tenant_table added (the downgrade of a new tenant table)."""
    op.invoke(UnprotectTenantTableOp(TenantTable(table, key, audit_exclude, protection)))


# --- drift repairs emitted by autogenerate (platform_db.migration.autogenerate) -------------------------


class SetRowLevelSecurityOp(MigrateOperation):
    def __init__(
        self, table: str, *, enabled: bool, forced: bool, was_enabled: bool, was_forced: bool
    ) -> None:
        self.table = ident(table)
        self.enabled, self.forced = enabled, forced
        self.was_enabled, self.was_forced = was_enabled, was_forced

    def reverse(self) -> SetRowLevelSecurityOp:
        return SetRowLevelSecurityOp(
            self.table,
            enabled=self.was_enabled,
            forced=self.was_forced,
            was_enabled=self.enabled,
            was_forced=self.forced,
        )

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return (
            "set_row_level_security",
            f"public.{self.table}",
            f"enabled={self.enabled}, forced={self.forced} "
            f"(database: enabled={self.was_enabled}, forced={self.was_forced})",
        )


@Operations.implementation_for(SetRowLevelSecurityOp)
def _set_rls(operations: Operations, operation: SetRowLevelSecurityOp) -> None:
    t = f"public.{operation.table}"
    _execute_all(
        operations,
        [
            f"ALTER TABLE {t} {'ENABLE' if operation.enabled else 'DISABLE'} ROW LEVEL SECURITY",
            f"ALTER TABLE {t} {'' if operation.forced else 'NO '}FORCE ROW LEVEL SECURITY",
        ],
    )


def set_row_level_security(table: str, *, enabled: bool, forced: bool) -> None:
    """Enable/disable and force/unforce row-level security of `public.<table>`."""
    op.invoke(
        SetRowLevelSecurityOp(
            table, enabled=enabled, forced=forced, was_enabled=enabled, was_forced=forced
        )
    )


class CreatePolicyOp(MigrateOperation):
    def __init__(self, table: str, policy: Policy) -> None:
        self.table = ident(table)
        self.policy = policy

    def reverse(self) -> DropPolicyOp:
        return DropPolicyOp(self.table, self.policy)

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("create_policy", f"public.{self.table}", self.policy.name)


class DropPolicyOp(MigrateOperation):
    def __init__(self, table: str, policy: Policy) -> None:
        self.table = ident(table)
        self.policy = policy

    def reverse(self) -> CreatePolicyOp:
        return CreatePolicyOp(self.table, self.policy)

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return (
            "drop_policy",
            f"public.{self.table}",
            self.policy.name,
            self.policy.create_sql(f"public.{self.table}").replace("\n", " "),
        )


@Operations.implementation_for(CreatePolicyOp)
def _create_policy(operations: Operations, operation: CreatePolicyOp) -> None:
    operations.execute(sa.text(operation.policy.create_sql(f"public.{operation.table}")))


@Operations.implementation_for(DropPolicyOp)
def _drop_policy(operations: Operations, operation: DropPolicyOp) -> None:
    operations.execute(sa.text(operation.policy.drop_sql(f"public.{operation.table}")))


def create_policy(table: str, policy: Policy) -> None:
    op.invoke(CreatePolicyOp(table, policy))


def drop_policy(table: str, policy: Policy) -> None:
    op.invoke(DropPolicyOp(table, policy))


class _AuditTriggerOp(MigrateOperation):
    """What both directions carry: the table, the key and excluded columns, the trigger."""

    def __init__(
        self,
        table: str,
        *,
        key: tuple[str, ...] = ("id",),
        audit_exclude: tuple[str, ...] = (),
        definition: str | None = None,
        name: str = audit.AUDIT_TRIGGER,
    ) -> None:
        self.table = ident(table)
        self.key, self.audit_exclude = key, tuple(sorted(audit_exclude))
        self.definition, self.name = definition, ident(name)

    def _args(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "audit_exclude": self.audit_exclude,
            "definition": self.definition,
            "name": self.name,
        }


class CreateAuditTriggerOp(_AuditTriggerOp):
    """The package's audit trigger, or (in a downgrade) a trigger definition from the catalog."""

    def reverse(self) -> DropAuditTriggerOp:
        return DropAuditTriggerOp(self.table, **self._args())

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("create_audit_trigger", f"public.{self.table}", self.name)

    def sql(self) -> str:
        return self.definition or audit.create_audit_trigger(
            self.table, self.key, self.audit_exclude
        )


class DropAuditTriggerOp(_AuditTriggerOp):
    def reverse(self) -> CreateAuditTriggerOp:
        return CreateAuditTriggerOp(self.table, **self._args())

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return (
            "drop_audit_trigger",
            f"public.{self.table}",
            self.name,
            self.definition or "the package's audit trigger",
        )


@Operations.implementation_for(CreateAuditTriggerOp)
def _create_audit_trigger(operations: Operations, operation: CreateAuditTriggerOp) -> None:
    operations.execute(sa.text(operation.sql()))


@Operations.implementation_for(DropAuditTriggerOp)
def _drop_audit_trigger(operations: Operations, operation: DropAuditTriggerOp) -> None:
    operations.execute(sa.text(audit.drop_audit_trigger(operation.table, operation.name)))


def create_audit_trigger(
    table: str,
    *,
    key: tuple[str, ...] = ("id",),
    audit_exclude: tuple[str, ...] = (),
    definition: str | None = None,
    name: str = audit.AUDIT_TRIGGER,
) -> None:
    """Record every row change of `public.<table>` in audit_log (the package's trigger).

    `definition` replaces the package's trigger by that exact CREATE TRIGGER statement:
    autogenerate uses it to restore, in a downgrade, a trigger it found in the catalog.
    """
    op.invoke(
        CreateAuditTriggerOp(
            table, key=key, audit_exclude=audit_exclude, definition=definition, name=name
        )
    )


def drop_audit_trigger(
    table: str,
    *,
    key: tuple[str, ...] = ("id",),
    audit_exclude: tuple[str, ...] = (),
    definition: str | None = None,
    name: str = audit.AUDIT_TRIGGER,
) -> None:
    op.invoke(
        DropAuditTriggerOp(
            table, key=key, audit_exclude=audit_exclude, definition=definition, name=name
        )
    )


class SetTablePrivilegesOp(MigrateOperation):
    """Exactly these table privileges for one role (PUBLIC included) on `public.<table>`."""

    def __init__(
        self, table: str, role: str, privileges: tuple[str, ...], previous: tuple[str, ...]
    ) -> None:
        self.table = ident(table)
        self.role = role if role == "PUBLIC" else ident(role)
        self.privileges, self.previous = privileges, previous

    def reverse(self) -> SetTablePrivilegesOp:
        return SetTablePrivilegesOp(self.table, self.role, self.previous, self.privileges)

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return (
            "set_table_privileges",
            f"public.{self.table}",
            self.role,
            f"{', '.join(self.privileges) or 'nothing'} "
            f"(database: {', '.join(self.previous) or 'nothing'})",
        )


@Operations.implementation_for(SetTablePrivilegesOp)
def _set_privileges(operations: Operations, operation: SetTablePrivilegesOp) -> None:
    t, role = f"public.{operation.table}", operation.role
    statements = [f"REVOKE ALL ON {t} FROM {role}"]
    if operation.privileges:
        statements.append(f"GRANT {', '.join(operation.privileges)} ON {t} TO {role}")
    _execute_all(operations, statements)


def set_table_privileges(table: str, role: str, privileges: tuple[str, ...]) -> None:
    op.invoke(SetTablePrivilegesOp(table, role, privileges, privileges))


class ProtectPartitionsOp(MigrateOperation):
    """Re-copy a parent's RLS flags and policies to all its partitions, revoke direct access.

    Idempotent, and its own reverse: a downgrade has no reason to unprotect partitions.
    """

    def __init__(self, table: str, problems: tuple[str, ...] = ()) -> None:
        self.table = ident(table)
        self.problems = problems

    def reverse(self) -> ProtectPartitionsOp:
        return ProtectPartitionsOp(self.table)

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("protect_partitions", f"public.{self.table}", "; ".join(self.problems))


@Operations.implementation_for(ProtectPartitionsOp)
def _protect_partitions(operations: Operations, operation: ProtectPartitionsOp) -> None:
    rel = f"'public.{operation.table}'::regclass"
    _execute_all(
        operations,
        [
            f"SELECT {PLATFORM_SCHEMA}.unprotect_partitions({rel})",
            f"SELECT {PLATFORM_SCHEMA}.protect_partitions({rel})",
        ],
    )


def protect_partitions(table: str) -> None:
    op.invoke(ProtectPartitionsOp(table))


# --------------------------------------------------------------------------------------
# Dashboard materialized views
# --------------------------------------------------------------------------------------


class CreateMaterializedViewOp(MigrateOperation):
    def __init__(self, view: MaterializedView) -> None:
        self.view = view

    def reverse(self) -> DropMaterializedViewOp:
        return DropMaterializedViewOp(self.view)

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("create_materialized_view", self.view.qualified)


class DropMaterializedViewOp(MigrateOperation):
    def __init__(self, view: MaterializedView) -> None:
        self.view = view

    def reverse(self) -> CreateMaterializedViewOp:
        return CreateMaterializedViewOp(self.view)

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("drop_materialized_view", self.view.qualified)


class ReplaceMaterializedViewOp(MigrateOperation):
    """Drop and re-create a materialized view with its unique index and tenant view."""

    def __init__(
        self, view: MaterializedView, previous: MaterializedView, reasons: tuple[str, ...] = ()
    ) -> None:
        self.view, self.previous, self.reasons = view, previous, reasons

    def reverse(self) -> ReplaceMaterializedViewOp:
        return ReplaceMaterializedViewOp(self.previous, self.view)

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("replace_materialized_view", self.view.qualified, "; ".join(self.reasons))


@Operations.implementation_for(CreateMaterializedViewOp)
def _create_mv(operations: Operations, operation: CreateMaterializedViewOp) -> None:
    _execute_all(operations, operation.view.create())


@Operations.implementation_for(DropMaterializedViewOp)
def _drop_mv(operations: Operations, operation: DropMaterializedViewOp) -> None:
    _execute_all(operations, operation.view.drop())


@Operations.implementation_for(ReplaceMaterializedViewOp)
def _replace_mv(operations: Operations, operation: ReplaceMaterializedViewOp) -> None:
    _execute_all(operations, [*operation.previous.drop(), *operation.view.create()])


def create_materialized_view(view: MaterializedView) -> None:
    op.invoke(CreateMaterializedViewOp(view))


def drop_materialized_view(view: MaterializedView) -> None:
    op.invoke(DropMaterializedViewOp(view))


def replace_materialized_view(view: MaterializedView, *, previous: MaterializedView) -> None:
    """Replace `previous` by `view` (both with their unique index and tenant view)."""
    op.invoke(ReplaceMaterializedViewOp(view, previous))


# --------------------------------------------------------------------------------------
# Indexes on tables that hold data
# --------------------------------------------------------------------------------------


def _in_callers_transaction() -> bool:
    ctx = op.get_context()
    # Alembic does not commit a transaction it did not begin (a connection handed in
    # inside the caller's transaction), and CONCURRENTLY cannot run inside one.
    return not ctx.as_sql and bool(getattr(ctx, "_in_external_transaction", False))


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
    with op.get_context().autocommit_block():
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
_KNOWN_POLICIES = {
    TENANT_POLICY: ("platform_db.ddl.security", "TENANT_POLICY"),
    audit.AUDIT_APPEND_POLICY: ("platform_db.ddl.audit", "AUDIT_APPEND_POLICY"),
}


def _import(ctx: AutogenContext, name: str, module: str = _MODULE) -> str:
    ctx.imports.add(f"from {module} import {name}")
    return name


def _str(value: str) -> str:
    if "\n" in value and '"""' not in value and "\\" not in value and not value.endswith('"'):
        return f'"""{value}"""'
    return repr(value)


def _tuple(values: Sequence[str]) -> str:
    inner = ", ".join(repr(v) for v in values)
    return f"({inner},)" if len(values) == 1 else f"({inner})"


def _render_policy(ctx: AutogenContext, policy: Policy) -> str:
    known = _KNOWN_POLICIES.get(policy)
    if known is not None:
        return _import(ctx, known[1], known[0])
    _import(ctx, "Policy", "platform_db.ddl.security")
    args = [repr(policy.name), f"using={_str(policy.using) if policy.using else None}"]
    args.append(f"check={_str(policy.check) if policy.check else None}")
    if policy.command != "ALL":
        args.append(f"command={policy.command!r}")
    if policy.roles != ("PUBLIC",):
        args.append(f"roles={_tuple(policy.roles)}")
    if not policy.permissive:
        args.append("permissive=False")
    return f"Policy({', '.join(args)})"


def _render_protection(ctx: AutogenContext, p: TenantProtection) -> str:
    _import(ctx, "TenantProtection", "platform_db.ddl.tenant_table")
    default = FULL_PROTECTION
    args = []
    if not p.rls:
        args.append("rls=False")
    if not p.audit:
        args.append("audit=False")
    if p.reason:
        args.append(f"reason={p.reason!r}")
    if p.audit_exclude:
        args.append(f"audit_exclude={_tuple(p.audit_exclude)}")
    if p.app_privileges != default.app_privileges:
        args.append(f"app_privileges={_tuple(p.app_privileges)}")
    if p.admin_privileges != default.admin_privileges:
        args.append(f"admin_privileges={_tuple(p.admin_privileges)}")
    if p.extra_policies:
        policies = ", ".join(_render_policy(ctx, x) for x in p.extra_policies)
        args.append(f"extra_policies=({policies},)")
    return f"TenantProtection({', '.join(args)})"


def _render_tenant_table_call(ctx: AutogenContext, fn: str, table: TenantTable) -> str:
    args = [repr(table.name)]
    if table.key != ("id",):
        args.append(f"key={_tuple(table.key)}")
    if table.audited_exclude:
        args.append(f"audit_exclude={_tuple(table.audited_exclude)}")
    if not table.protection.is_default:
        args.append(f"protection={_render_protection(ctx, table.protection)}")
    return f"{_import(ctx, fn)}({', '.join(args)})"


@renderers.dispatch_for(ProtectTenantTableOp)
def _render_protect(ctx: AutogenContext, operation: ProtectTenantTableOp) -> str:
    return _render_tenant_table_call(ctx, "protect_tenant_table", operation.table)


@renderers.dispatch_for(UnprotectTenantTableOp)
def _render_unprotect(ctx: AutogenContext, operation: UnprotectTenantTableOp) -> str:
    return _render_tenant_table_call(ctx, "unprotect_tenant_table", operation.table)


@renderers.dispatch_for(SetRowLevelSecurityOp)
def _render_set_rls(ctx: AutogenContext, operation: SetRowLevelSecurityOp) -> str:
    fn = _import(ctx, "set_row_level_security")
    return f"{fn}({operation.table!r}, enabled={operation.enabled}, forced={operation.forced})"


@renderers.dispatch_for(CreatePolicyOp)
def _render_create_policy(ctx: AutogenContext, operation: CreatePolicyOp) -> str:
    policy = _render_policy(ctx, operation.policy)
    return f"{_import(ctx, 'create_policy')}({operation.table!r}, {policy})"


@renderers.dispatch_for(DropPolicyOp)
def _render_drop_policy(ctx: AutogenContext, operation: DropPolicyOp) -> str:
    policy = _render_policy(ctx, operation.policy)
    return f"{_import(ctx, 'drop_policy')}({operation.table!r}, {policy})"


def _render_trigger_call(
    ctx: AutogenContext, fn: str, operation: CreateAuditTriggerOp | DropAuditTriggerOp
) -> str:
    args = [repr(operation.table)]
    if operation.name != audit.AUDIT_TRIGGER:
        args.append(f"name={operation.name!r}")
    if operation.definition is not None:
        args.append(f"definition={_str(operation.definition)}")
    else:
        if operation.key != ("id",):
            args.append(f"key={_tuple(operation.key)}")
        if operation.audit_exclude:
            args.append(f"audit_exclude={_tuple(operation.audit_exclude)}")
    return f"{_import(ctx, fn)}({', '.join(args)})"


@renderers.dispatch_for(CreateAuditTriggerOp)
def _render_create_trigger(ctx: AutogenContext, operation: CreateAuditTriggerOp) -> str:
    return _render_trigger_call(ctx, "create_audit_trigger", operation)


@renderers.dispatch_for(DropAuditTriggerOp)
def _render_drop_trigger(ctx: AutogenContext, operation: DropAuditTriggerOp) -> str:
    return _render_trigger_call(ctx, "drop_audit_trigger", operation)


@renderers.dispatch_for(SetTablePrivilegesOp)
def _render_privileges(ctx: AutogenContext, operation: SetTablePrivilegesOp) -> str:
    fn = _import(ctx, "set_table_privileges")
    return f"{fn}({operation.table!r}, {operation.role!r}, {_tuple(operation.privileges)})"


@renderers.dispatch_for(ProtectPartitionsOp)
def _render_protect_partitions(ctx: AutogenContext, operation: ProtectPartitionsOp) -> str:
    return f"{_import(ctx, 'protect_partitions')}({operation.table!r})"


def _render_view(ctx: AutogenContext, view: MaterializedView) -> str:
    _import(ctx, "MaterializedView", "platform_db.ddl.dashboards")
    return (
        "MaterializedView(\n"
        f"    name={view.name!r},\n"
        f"    unique_columns={_tuple(view.unique_columns)},\n"
        f"    tenant_view={view.tenant_view!r},\n"
        f"    query={_str(view.query)},\n"
        ")"
    )


@renderers.dispatch_for(CreateMaterializedViewOp)
def _render_create_mv(ctx: AutogenContext, operation: CreateMaterializedViewOp) -> str:
    return f"{_import(ctx, 'create_materialized_view')}({_render_view(ctx, operation.view)})"


@renderers.dispatch_for(DropMaterializedViewOp)
def _render_drop_mv(ctx: AutogenContext, operation: DropMaterializedViewOp) -> str:
    return f"{_import(ctx, 'drop_materialized_view')}({_render_view(ctx, operation.view)})"


@renderers.dispatch_for(ReplaceMaterializedViewOp)
def _render_replace_mv(ctx: AutogenContext, operation: ReplaceMaterializedViewOp) -> str:
    fn = _import(ctx, "replace_materialized_view")
    return (
        f"{fn}(\n{_render_view(ctx, operation.view)},\n"
        f"previous={_render_view(ctx, operation.previous)},\n)"
    )


__all__ = [
    "create_audit_trigger",
    "create_index_concurrently",
    "create_materialized_view",
    "create_policy",
    "drop_audit_trigger",
    "drop_index_concurrently",
    "drop_materialized_view",
    "drop_policy",
    "migration_lock_timeout",
    "protect_partitions",
    "protect_tenant_table",
    "replace_materialized_view",
    "set_row_level_security",
    "set_table_privileges",
    "unprotect_tenant_table",
]
