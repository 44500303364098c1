"""What `alembic revision --autogenerate` and `alembic check` see beyond tables and columns.

Alembic compares tables, columns, indexes and constraints; it knows nothing of row-level
security, policies, grants, triggers or materialized views. This comparator (registered
when this module is imported, as alembic/env.py does) compares every tenant-owned table
of the target metadata with the one definition (platform_db.ddl.tenant_table) and every
dashboard materialized view with dashboards.MATERIALIZED_VIEWS, and emits the operations
of platform_db.migration.operations that repair what differs:

- a new tenant-owned model: `protect_tenant_table(...)` after its `op.create_table`;
- RLS disabled or not forced: `set_row_level_security(...)`;
- a policy missing, altered or added: `create_policy` / `drop_policy`. Policies are
  compared by meaning: the expected policies are created on a scratch temporary table
  shaped like the real one, inside a savepoint that is rolled back, and PostgreSQL's own
  deparsed form (pg_get_expr) of both is compared, with command, roles and permissive
  flag - so spelling, parentheses or whitespace do not matter, what the policy does does;
- grants that are not exactly the definition's: `set_table_privileges(...)`;
- the audit trigger missing, disabled, altered or duplicated: `create_audit_trigger` /
  `drop_audit_trigger` (matched by function, timing, events and arguments, not by name);
- partitions whose RLS, policies or privileges differ from the definition:
  `protect_partitions(...)`;
- a dashboard materialized view whose query, unique index or tenant view differs (the
  query compared through pg_get_viewdef of a scratch temporary view):
  `replace_materialized_view(...)`.

Nothing here ever proposes dropping a table, a partition or anything else the package
manages; the env.py name filters keep partitions out of Alembic's own comparison.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from alembic.autogenerate import comparators
from alembic.autogenerate.api import AutogenContext
from alembic.operations import MigrateOperation
from alembic.operations.ops import CreateTableOp, UpgradeOps
from alembic.util import DispatchPriority, PriorityDispatchResult
from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

from platform_db.ddl import audit, dashboards
from platform_db.ddl.dashboards import MaterializedView
from platform_db.ddl.security import ADMIN_ROLE, APP_ROLE, PLATFORM_SCHEMA, Policy
from platform_db.ddl.tenant_table import TenantTable, tenant_tables
from platform_db.migration.operations import (
    CreateAuditTriggerOp,
    CreateMaterializedViewOp,
    CreatePolicyOp,
    DropAuditTriggerOp,
    DropPolicyOp,
    ProtectPartitionsOp,
    ProtectTenantTableOp,
    ReplaceMaterializedViewOp,
    SetRowLevelSecurityOp,
    SetTablePrivilegesOp,
)

_COMMANDS = {"*": "ALL", "r": "SELECT", "a": "INSERT", "w": "UPDATE", "d": "DELETE"}
# pg_trigger.tgtype bits: ROW (1) | INSERT (4) | DELETE (8) | UPDATE (16); AFTER = no BEFORE (2)
# or INSTEAD (64) bit.
_AUDIT_TGTYPE = 1 | 4 | 8 | 16


@dataclass(frozen=True, slots=True)
class _LivePolicy:
    name: str
    permissive: bool
    command: str
    roles: tuple[str, ...]
    using: str | None
    check: str | None

    @property
    def meaning(self) -> tuple[Any, ...]:
        return (self.permissive, self.command, self.roles, self.using, self.check)

    def as_policy(self) -> Policy:
        return Policy(
            self.name,
            using=self.using,
            check=self.check,
            command=self.command,
            roles=self.roles,
            permissive=self.permissive,
        )


_POLICIES_SQL = """
SELECT CAST(p.polrelid AS bigint) AS rel, p.polname, p.polpermissive, p.polcmd,
       ARRAY(SELECT CASE WHEN r = 0 THEN 'PUBLIC' ELSE pg_catalog.pg_get_userbyid(r)::text END
             FROM pg_catalog.unnest(p.polroles) r ORDER BY 1) AS roles,
       pg_catalog.pg_get_expr(p.polqual, p.polrelid) AS qual,
       pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid) AS with_check
FROM pg_catalog.pg_policy p
WHERE p.polrelid = ANY(CAST(:oids AS oid[]))
"""

_PRIVILEGES_SQL = """
SELECT CAST(c.oid AS bigint) AS rel,
       CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_catalog.pg_get_userbyid(a.grantee)::text END
           AS grantee,
       a.privilege_type
FROM pg_catalog.pg_class c
CROSS JOIN LATERAL pg_catalog.aclexplode(
    coalesce(c.relacl, pg_catalog.acldefault('r', c.relowner))) a
WHERE c.oid = ANY(CAST(:oids AS oid[]))
  AND (a.grantee = 0 OR pg_catalog.pg_get_userbyid(a.grantee) IN (:app, :admin))
"""


def _policies(conn: Connection, oids: Sequence[int]) -> dict[int, dict[str, _LivePolicy]]:
    found: dict[int, dict[str, _LivePolicy]] = {}
    for r in conn.execute(text(_POLICIES_SQL), {"oids": list(oids)}):
        found.setdefault(int(r.rel), {})[r.polname] = _LivePolicy(
            r.polname, r.polpermissive, _COMMANDS[r.polcmd], tuple(r.roles), r.qual, r.with_check
        )
    return found


def _privileges(conn: Connection, oids: Sequence[int]) -> dict[int, dict[str, set[str]]]:
    found: dict[int, dict[str, set[str]]] = {}
    rows = conn.execute(
        text(_PRIVILEGES_SQL), {"oids": list(oids), "app": APP_ROLE, "admin": ADMIN_ROLE}
    )
    for r in rows:
        found.setdefault(int(r.rel), {}).setdefault(r.grantee, set()).add(r.privilege_type)
    return found


def _expected_policies(
    conn: Connection, specs: Sequence[TenantTable]
) -> dict[str, dict[str, _LivePolicy]]:
    """The expected policies of each table as PostgreSQL deparses them (see the docstring)."""
    wanted = [s for s in specs if s.protection.policies]
    if not wanted:
        return {}
    refs: dict[int, str] = {}
    savepoint = conn.begin_nested()
    try:
        for i, spec in enumerate(wanted):
            ref = f"platform_db_policy_ref_{i}"
            conn.execute(text(f"CREATE TEMP TABLE {ref} (LIKE {spec.qualified})"))
            for policy in spec.protection.policies:
                conn.execute(text(policy.create_sql(f"pg_temp.{ref}")))
            oid = conn.scalar(
                text("SELECT CAST(CAST(:r AS regclass) AS oid)"), {"r": f"pg_temp.{ref}"}
            )
            refs[int(oid)] = spec.qualified
        deparsed = _policies(conn, list(refs))
    finally:
        savepoint.rollback()
    return {refs[oid]: policies for oid, policies in deparsed.items()}


def _policy_ops(
    spec: TenantTable,
    live: dict[str, _LivePolicy],
    expected: dict[str, _LivePolicy],
) -> list[MigrateOperation]:
    ops: list[MigrateOperation] = []
    by_name = {p.name: p for p in spec.protection.policies}
    for name, have in sorted(live.items()):
        want = expected.get(name)
        if want is None or want.meaning != have.meaning:
            ops.append(DropPolicyOp(spec.name, have.as_policy()))
    for name, policy in by_name.items():
        have_or_none = live.get(name)
        want = expected.get(name)
        if have_or_none is None or (want is not None and want.meaning != have_or_none.meaning):
            ops.append(CreatePolicyOp(spec.name, policy))
    return ops


def _privilege_ops(spec: TenantTable, live: dict[str, set[str]]) -> list[MigrateOperation]:
    ops: list[MigrateOperation] = []
    p = spec.protection
    for role, want in (
        ("PUBLIC", ()),
        (APP_ROLE, p.app_privileges),
        (ADMIN_ROLE, p.admin_privileges),
    ):
        have = live.get(role, set())
        if have != set(want):
            ops.append(SetTablePrivilegesOp(spec.name, role, tuple(want), tuple(_ordered(have))))
    return ops


_PRIVILEGE_ORDER = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")


def _ordered(privileges: Iterable[str]) -> list[str]:
    rank = {p: i for i, p in enumerate(_PRIVILEGE_ORDER)}
    return sorted(privileges, key=lambda p: (rank.get(p, 99), p))


@dataclass(frozen=True, slots=True)
class _LiveTrigger:
    name: str
    is_audit: bool
    tgtype: int
    enabled: str
    plain: bool  # no WHEN condition, no column list
    args: tuple[str, ...]
    definition: str


_TRIGGERS_SQL = f"""
SELECT CAST(t.tgrelid AS bigint) AS rel, t.tgname,
       t.tgfoid = pg_catalog.to_regprocedure('{audit.AUDIT_FUNCTION}()') AS is_audit,
       t.tgtype, t.tgenabled, (t.tgqual IS NULL AND t.tgattr::text = '') AS plain,
       t.tgargs, pg_catalog.pg_get_triggerdef(t.oid) AS definition
FROM pg_catalog.pg_trigger t
WHERE t.tgrelid = ANY(CAST(:oids AS oid[])) AND NOT t.tgisinternal AND t.tgparentid = 0
"""


def _triggers(conn: Connection, oids: Sequence[int]) -> dict[int, list[_LiveTrigger]]:
    found: dict[int, list[_LiveTrigger]] = {}
    for r in conn.execute(text(_TRIGGERS_SQL), {"oids": list(oids)}):
        raw = bytes(r.tgargs or b"")
        args = tuple(a.decode() for a in raw.split(b"\x00")[:-1]) if raw else ()
        found.setdefault(int(r.rel), []).append(
            _LiveTrigger(
                r.tgname,
                bool(r.is_audit),
                int(r.tgtype),
                str(r.tgenabled),
                bool(r.plain),
                args,
                r.definition,
            )
        )
    return found


def _trigger_ops(spec: TenantTable, live: list[_LiveTrigger]) -> list[MigrateOperation]:
    expected_args = tuple(spec.audit_trigger_args)
    audit_triggers = [t for t in live if t.is_audit]

    def good(t: _LiveTrigger) -> bool:
        return (
            t.tgtype == _AUDIT_TGTYPE
            and t.enabled in ("O", "A")
            and t.plain
            and t.args == expected_args
        )

    keep = next((t for t in audit_triggers if good(t)), None) if spec.protection.audit else None
    ops: list[MigrateOperation] = []
    for t in sorted(audit_triggers, key=lambda t: t.name):
        if t is not keep:
            ops.append(
                DropAuditTriggerOp(
                    spec.name,
                    key=spec.key,
                    audit_exclude=spec.audited_exclude,
                    definition=t.definition,
                    name=t.name,
                )
            )
    if spec.protection.audit and keep is None:
        # Our trigger's name may be taken by a trigger that is not ours.
        for t in live:
            if t.name == audit.AUDIT_TRIGGER and not t.is_audit:
                ops.append(DropAuditTriggerOp(spec.name, definition=t.definition, name=t.name))
        ops.append(
            CreateAuditTriggerOp(spec.name, key=spec.key, audit_exclude=spec.audited_exclude)
        )
    return ops


_PARTITIONS_SQL = """
SELECT c.oid, c.relname, c.relrowsecurity, c.relforcerowsecurity
FROM pg_catalog.pg_partition_tree(CAST(:parent AS regclass)) t
JOIN pg_catalog.pg_class c ON c.oid = t.relid
WHERE t.relid <> CAST(:parent AS regclass)
ORDER BY c.relname
"""


def _partition_problems(
    conn: Connection, spec: TenantTable, expected: dict[str, _LivePolicy]
) -> list[str]:
    parts = conn.execute(text(_PARTITIONS_SQL), {"parent": spec.qualified}).all()
    if not parts:
        return []
    oids = [int(p.oid) for p in parts]
    policies = _policies(conn, oids)
    privileges = _privileges(conn, oids)
    want_rls = spec.protection.rls
    want = {n: p.meaning for n, p in expected.items()}
    problems = []
    for p in parts:
        rel = p.relname
        oid = int(p.oid)
        if (p.relrowsecurity, p.relforcerowsecurity) != (want_rls, want_rls):
            problems.append(
                f"{rel}: RLS enabled={p.relrowsecurity}, forced={p.relforcerowsecurity}"
            )
        have = {n: x.meaning for n, x in policies.get(oid, {}).items()}
        if have != want:
            problems.append(f"{rel}: policies {sorted(have)} differ from the definition")
        direct = {g: privs for g, privs in privileges.get(oid, {}).items() if g != ADMIN_ROLE}
        if any(direct.values()):
            problems.append(f"{rel}: direct privileges {sorted(direct)}")
    return problems


def compare_tenant_tables(
    conn: Connection,
    specs: Sequence[TenantTable],
    *,
    new_tables: Iterable[str] = (),
) -> list[MigrateOperation]:
    """The operations that make the database hold `specs` exactly (empty: no drift).

    `new_tables`: tables an earlier operation of the same revision creates; they get the
    full protection. Tables neither in the database nor in `new_tables` are skipped.
    """
    names = [s.name for s in specs]
    rows = conn.execute(
        text(
            "SELECT c.relname, c.oid, c.relkind, c.relrowsecurity, c.relforcerowsecurity "
            "FROM pg_catalog.pg_class c WHERE c.relnamespace = 'public'::regnamespace "
            "AND c.relkind IN ('r', 'p') AND c.relname = ANY(:names)"
        ),
        {"names": names},
    ).all()
    live = {r.relname: r for r in rows}
    creating = set(new_tables)
    ops: list[MigrateOperation] = []
    existing = [s for s in specs if s.name in live]
    for spec in specs:
        if spec.name not in live and spec.name in creating:
            ops.append(ProtectTenantTableOp(spec))
    if not existing:
        return ops
    oids = [int(live[s.name].oid) for s in existing]
    policies = _policies(conn, oids)
    privileges = _privileges(conn, oids)
    triggers = _triggers(conn, oids)
    expected = _expected_policies(conn, existing)
    for spec in existing:
        row = live[spec.name]
        oid = int(row.oid)
        rls = spec.protection.rls
        if (row.relrowsecurity, row.relforcerowsecurity) != (rls, rls):
            ops.append(
                SetRowLevelSecurityOp(
                    spec.name,
                    enabled=rls,
                    forced=rls,
                    was_enabled=row.relrowsecurity,
                    was_forced=row.relforcerowsecurity,
                )
            )
        want = expected.get(spec.qualified, {})
        policy_ops = _policy_ops(spec, policies.get(oid, {}), want)
        ops += policy_ops
        ops += _privilege_ops(spec, privileges.get(oid, {}))
        ops += _trigger_ops(spec, triggers.get(oid, []))
        if row.relkind == "p":
            problems = _partition_problems(conn, spec, want)
            if problems or policy_ops:
                ops.append(
                    ProtectPartitionsOp(spec.name, tuple(problems or ["parent's policies changed"]))
                )
    return ops


# --------------------------------------------------------------------------------------
# Dashboard materialized views
# --------------------------------------------------------------------------------------

_MATVIEW_SQL = f"""
SELECT pg_catalog.pg_get_viewdef(c.oid) AS definition,
       (SELECT ARRAY(SELECT a.attname::text
                     FROM pg_catalog.unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, n)
                     JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
                     ORDER BY k.n)
        FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
        WHERE i.indrelid = c.oid AND ic.relname = :index AND i.indisunique AND i.indisvalid
          AND i.indpred IS NULL AND i.indexprs IS NULL AND i.indnatts = i.indnkeyatts
          AND ic.relam = (SELECT oid FROM pg_catalog.pg_am WHERE amname = 'btree')) AS unique_columns
FROM pg_catalog.pg_class c
WHERE c.relnamespace = '{PLATFORM_SCHEMA}'::regnamespace AND c.relname = :name AND c.relkind = 'm'
"""

_TENANT_VIEW_SQL = """
SELECT pg_catalog.pg_get_viewdef(c.oid) AS definition,
       coalesce('security_barrier=true' = ANY(c.reloptions), false) AS barrier
FROM pg_catalog.pg_class c
WHERE c.relnamespace = 'public'::regnamespace AND c.relname = :name AND c.relkind = 'v'
"""


def compare_materialized_views(
    conn: Connection, views: Sequence[MaterializedView]
) -> list[MigrateOperation]:
    ops: list[MigrateOperation] = []
    for i, view in enumerate(views):
        live = conn.execute(
            text(_MATVIEW_SQL), {"name": view.name, "index": view.unique_index}
        ).one_or_none()
        if live is None:
            ops.append(CreateMaterializedViewOp(view))
            continue
        reasons = []
        ref = f"platform_db_view_ref_{i}"
        want_query: str | None = None
        savepoint = conn.begin_nested()
        try:
            conn.execute(text(f"CREATE TEMP VIEW {ref} AS\n{view.query}"))
            want_query = conn.scalar(
                text("SELECT pg_catalog.pg_get_viewdef(CAST(:r AS regclass))"),
                {"r": f"pg_temp.{ref}"},
            )
        except DBAPIError as exc:
            # The new query does not run on the schema as it is (it needs something
            # this same revision adds): it differs, by definition.
            reasons.append(f"its new query does not run on the current schema: {exc.orig}")
        finally:
            savepoint.rollback()
        savepoint = conn.begin_nested()
        try:
            conn.execute(
                text(
                    f"CREATE TEMP VIEW {ref}_tenant WITH (security_barrier) AS "
                    f"SELECT * FROM {view.qualified} WHERE tenant_id = {PLATFORM_SCHEMA}.current_tenant_id()"
                )
            )
            want_tenant = conn.scalar(
                text("SELECT pg_catalog.pg_get_viewdef(CAST(:r AS regclass))"),
                {"r": f"pg_temp.{ref}_tenant"},
            )
        finally:
            savepoint.rollback()
        if want_query is not None and live.definition != want_query:
            reasons.append("its query differs from the definition")
        if tuple(live.unique_columns or ()) != view.unique_columns:
            reasons.append(
                f"unique index {view.unique_index} should be on ({', '.join(view.unique_columns)}), "
                f"found {'(' + ', '.join(live.unique_columns) + ')' if live.unique_columns else 'none usable'}"
            )
        tenant = conn.execute(text(_TENANT_VIEW_SQL), {"name": view.tenant_view}).one_or_none()
        if tenant is None:
            reasons.append(f"tenant view public.{view.tenant_view} is missing")
        elif tenant.definition != want_tenant or not tenant.barrier:
            reasons.append(f"tenant view public.{view.tenant_view} differs from the definition")
        if reasons:
            previous = MaterializedView(
                name=view.name,
                query=str(live.definition).rstrip().rstrip(";"),
                unique_columns=tuple(live.unique_columns or view.unique_columns),
                tenant_view=view.tenant_view,
            )
            ops.append(ReplaceMaterializedViewOp(view, previous, tuple(reasons)))
    return ops


# --------------------------------------------------------------------------------------
# The comparator
# --------------------------------------------------------------------------------------


def _created_tables(upgrade_ops: UpgradeOps) -> set[str]:
    return {
        o.table_name
        for o in upgrade_ops.ops
        if isinstance(o, CreateTableOp) and o.schema in (None, "public")
    }


@comparators.dispatch_for("schema", priority=DispatchPriority.LAST)
def _compare_platform_objects(
    autogen_context: AutogenContext, upgrade_ops: UpgradeOps, schemas: set[str | None]
) -> PriorityDispatchResult:
    # LAST: after Alembic's own table comparison, so protect_tenant_table follows the
    # create_table of its table (and precedes its drop in the downgrade).
    conn = autogen_context.connection
    if conn is None or autogen_context.metadata is None or None not in schemas:
        return PriorityDispatchResult.CONTINUE
    specs = [
        s
        for s in tenant_tables(autogen_context.metadata)
        if autogen_context.run_name_filters(s.name, "table", {"schema_name": None})
    ]
    upgrade_ops.ops.extend(
        compare_tenant_tables(conn, specs, new_tables=_created_tables(upgrade_ops))
    )
    upgrade_ops.ops.extend(compare_materialized_views(conn, dashboards.MATERIALIZED_VIEWS))
    return PriorityDispatchResult.CONTINUE


def drift(conn: Connection, metadata: Any) -> list[tuple[Any, ...]]:
    """What `alembic check` would report about the package-managed objects, as diff tuples.

    For code that has a connection but no Alembic environment (the test plugin).
    """
    ops = compare_tenant_tables(conn, tenant_tables(metadata))
    return [o.to_diff_tuple() for o in ops]


__all__ = ["compare_materialized_views", "compare_tenant_tables", "drift"]
