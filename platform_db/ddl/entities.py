"""One model of a database object that SQLAlchemy's models do not describe.

Policies, row-level security flags, table grants, triggers, functions, views,
materialized views (with their unique index and tenant view), scheduled jobs and the
partition protection of a partitioned table are each an `Entity`: a frozen dataclass of
plain values with the same small interface,

- `identity`: what names it in the database (`public.leads.tenant_isolation`);
- `create_sql()`, `drop_sql()`, `replace_sql(previous)`: the statements that make it so;
- `read(conn, wanted)`: the same kind of object as the catalog holds it, for the scope of
  `wanted` (a class method, one query per kind);
- `differences(conn, live)`: why the catalog's object does not mean the same as this one
  (empty: no drift). Where PostgreSQL normalises what it stores (policy expressions, view
  queries, function definitions), the definition is first created inside a savepoint that
  is rolled back, and PostgreSQL's own deparsed forms are compared, so spelling and
  layout never count, meaning does;
- `render()`: Python source that builds it again, for a revision.

The current definitions live beside this module (platform_db.ddl.*); revisions hold their
own frozen copies, rendered by autogenerate (platform_db.migration.autogenerate) and run by
the three generic operations of platform_db.migration.operations.

Identifiers are code-owned and checked (`ident`); SQL here is never built from input.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

OWNER_ROLE = "platform_owner"
APP_ROLE = "platform_app"
ADMIN_ROLE = "platform_admin"
PLATFORM_SCHEMA = "platform"

_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_QUALIFIED = re.compile(r"^[a-z_][a-z0-9_]{0,62}\.[a-z_][a-z0-9_]{0,62}$")
TABLE_PRIVILEGES: tuple[str, ...] = (
    "SELECT",
    "INSERT",
    "UPDATE",
    "DELETE",
    "TRUNCATE",
    "REFERENCES",
    "TRIGGER",
)
ROW_PRIVILEGES: tuple[str, ...] = TABLE_PRIVILEGES[:4]
_COMMANDS = ("ALL", "SELECT", "INSERT", "UPDATE", "DELETE")
# How Function.differences starts a reason when PostgreSQL refuses CREATE OR REPLACE (a
# changed return type): autogenerate then writes replace_entity(..., recreate=True).
CANNOT_REPLACE_IN_PLACE = "cannot be replaced in place"


def ident(name: str) -> str:
    """Return `name` if it is a plain lower-case identifier owned by code, else refuse it."""
    if not _IDENT.match(name):
        raise ValueError(f"refusing unexpected SQL identifier {name!r}")
    return name


def qualified(name: str) -> str:
    """Return `name` if it is `schema.object` of plain identifiers, else refuse it."""
    if not _QUALIFIED.match(name):
        raise ValueError(f"expected a schema-qualified name like public.leads, not {name!r}")
    return name


_QUOTED_ROLE = re.compile(r'^"(?:[^"\x00]|""){1,63}"$')


def role_name(role: str) -> str:
    """`PUBLIC`, a plain identifier, or (as read from the catalog) a quoted one."""
    if role == "PUBLIC" or _QUOTED_ROLE.match(role):
        return role
    return ident(role)


def literal(value: str) -> str:
    """A SQL string literal of a code-owned value."""
    return "'" + value.replace("'", "''") + "'"


def ordered_privileges(privileges: Iterable[str]) -> tuple[str, ...]:
    rank = {p: i for i, p in enumerate(TABLE_PRIVILEGES)}
    return tuple(sorted(set(privileges), key=lambda p: (rank.get(p, 99), p)))


def _render_value(value: Any) -> str:
    # Multi-line SQL stays readable: a triple-quoted string, raw where it has backslashes.
    if (
        isinstance(value, str)
        and "\n" in value
        and '"""' not in value
        and not value.endswith(('"', "\\"))
    ):
        return f'r"""{value}"""' if "\\" in value else f'"""{value}"""'
    if isinstance(value, tuple):
        inner = ", ".join(_render_value(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    return repr(value)


def _scalar(conn: Connection, sql: str, **params: Any) -> Any:
    return conn.execute(text(sql), params).scalar()


@dataclass(frozen=True)
class Entity:
    """What every kind of database object offers (see the module docstring)."""

    kind: ClassVar[str] = "entity"
    # Objects of kinds with a lower rank are created first and dropped last.
    rank: ClassVar[int] = 50

    @property
    def identity(self) -> str:
        raise NotImplementedError

    @property
    def table(self) -> str | None:
        """The table this object belongs to, when it belongs to one."""
        return None

    def create_sql(self) -> list[str]:
        raise NotImplementedError

    def drop_sql(self) -> list[str]:
        raise NotImplementedError

    def replace_sql(self, previous: Self) -> list[str]:
        """Turn `previous` (same identity) into this definition."""
        return [*previous.drop_sql(), *self.create_sql()]

    @classmethod
    def read(cls, conn: Connection, wanted: Sequence[Self]) -> dict[str, Self]:
        """The catalog's objects of this kind in the scope of `wanted`, by identity."""
        raise NotImplementedError

    def differences(self, conn: Connection, live: Self) -> list[str]:
        """Why `live` (read from the catalog) does not mean what this definition means."""
        return [] if self == live else ["differs from the definition"]

    def summary(self) -> str:
        """A short summary for `alembic check` and autogenerate's log."""
        return ""

    def render(self) -> str:
        """Python source that builds this entity again (for a revision)."""
        fields = [f for f in dataclasses.fields(self) if f.init]
        args = []
        for f in fields:
            value = getattr(self, f.name)
            if f.default is not dataclasses.MISSING and value == f.default:
                continue
            args.append(f"    {f.name}={_render_value(value)},")
        return f"{type(self).__name__}(\n" + "\n".join(args) + "\n)"


# --------------------------------------------------------------------------------------
# Row-level security flags
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RowLevelSecurity(Entity):
    """Row-level security of a table: enabled and forced (even the owner is filtered)."""

    kind: ClassVar[str] = "row_level_security"
    rank: ClassVar[int] = 20
    on: str
    enabled: bool = True
    forced: bool = True

    def __post_init__(self) -> None:
        qualified(self.on)

    @property
    def identity(self) -> str:
        return self.on

    @property
    def table(self) -> str | None:
        return self.on

    def create_sql(self) -> list[str]:
        return [
            f"ALTER TABLE {self.on} {'ENABLE' if self.enabled else 'DISABLE'} ROW LEVEL SECURITY",
            f"ALTER TABLE {self.on} {'' if self.forced else 'NO '}FORCE ROW LEVEL SECURITY",
        ]

    def drop_sql(self) -> list[str]:
        return [
            f"ALTER TABLE {self.on} NO FORCE ROW LEVEL SECURITY",
            f"ALTER TABLE {self.on} DISABLE ROW LEVEL SECURITY",
        ]

    def replace_sql(self, previous: Self) -> list[str]:
        return self.create_sql()

    @classmethod
    def read(cls, conn: Connection, wanted: Sequence[Self]) -> dict[str, Self]:
        rows = conn.execute(
            text(
                "SELECT n.nspname || '.' || c.relname AS name, c.relrowsecurity, "
                "c.relforcerowsecurity FROM pg_catalog.pg_class c "
                "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname || '.' || c.relname = ANY(:names)"
            ),
            {"names": [w.on for w in wanted]},
        )
        return {r.name: cls(r.name, r.relrowsecurity, r.relforcerowsecurity) for r in rows}

    def differences(self, conn: Connection, live: Self) -> list[str]:
        if (self.enabled, self.forced) == (live.enabled, live.forced):
            return []
        return [
            f"enabled={self.enabled}, forced={self.forced} "
            f"(database: enabled={live.enabled}, forced={live.forced})"
        ]

    def summary(self) -> str:
        return f"enabled={self.enabled}, forced={self.forced}"


# --------------------------------------------------------------------------------------
# Policies
# --------------------------------------------------------------------------------------

_POLCMD = {"*": "ALL", "r": "SELECT", "a": "INSERT", "w": "UPDATE", "d": "DELETE"}

_POLICIES_SQL = """
SELECT n.nspname || '.' || c.relname AS on_, p.polname, p.polpermissive, p.polcmd,
       ARRAY(SELECT CASE WHEN r = 0 THEN 'PUBLIC' ELSE pg_catalog.pg_get_userbyid(r)::text END
             FROM pg_catalog.unnest(p.polroles) r ORDER BY 1) AS roles,
       pg_catalog.pg_get_expr(p.polqual, p.polrelid) AS qual,
       pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid) AS with_check
FROM pg_catalog.pg_policy p
JOIN pg_catalog.pg_class c ON c.oid = p.polrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE p.polrelid = ANY(CAST(:oids AS oid[]))
"""


def _oids(conn: Connection, names: Iterable[str]) -> list[int]:
    rows = conn.execute(
        text("SELECT CAST(pg_catalog.to_regclass(n) AS oid) FROM unnest(CAST(:n AS text[])) n"),
        {"n": sorted(set(names))},
    )
    return [int(r[0]) for r in rows if r[0] is not None]


@dataclass(frozen=True)
class Policy(Entity):
    """A row-level security policy. `on` is the table; a policy template (as in
    TenantProtection.extra_policies) leaves it empty until `for_table()` sets it."""

    kind: ClassVar[str] = "policy"
    rank: ClassVar[int] = 30
    name: str
    using: str | None
    check: str | None
    command: str = "ALL"
    roles: tuple[str, ...] = ("PUBLIC",)
    permissive: bool = True
    on: str = ""

    def __post_init__(self) -> None:
        ident(self.name)
        if self.command not in _COMMANDS:
            raise ValueError(f"policy command must be one of {_COMMANDS}, not {self.command!r}")
        for role in self.roles:
            role_name(role)
        if self.on:
            qualified(self.on)

    def for_table(self, table: str) -> Policy:
        return dataclasses.replace(self, on=table)

    @property
    def identity(self) -> str:
        return f"{self.on}.{self.name}"

    @property
    def table(self) -> str | None:
        return self.on

    @property
    def meaning(self) -> tuple[Any, ...]:
        return (self.permissive, self.command, tuple(sorted(self.roles)), self.using, self.check)

    def create_sql(self) -> list[str]:
        if not self.on:
            raise ValueError(f"policy {self.name} has no table: use for_table()")
        kind = "PERMISSIVE" if self.permissive else "RESTRICTIVE"
        sql = (
            f"CREATE POLICY {self.name} ON {self.on}\n"
            f"    AS {kind} FOR {self.command} TO {', '.join(self.roles)}"
        )
        if self.using is not None:
            sql += f"\n    USING ({self.using})"
        if self.check is not None:
            sql += f"\n    WITH CHECK ({self.check})"
        return [sql]

    def drop_sql(self) -> list[str]:
        return [f"DROP POLICY IF EXISTS {self.name} ON {self.on}"]

    @classmethod
    def _from_rows(cls, rows: Iterable[Any]) -> dict[str, Self]:
        found: dict[str, Self] = {}
        for r in rows:
            policy = cls(
                r.polname,
                using=r.qual,
                check=r.with_check,
                command=_POLCMD[r.polcmd],
                roles=tuple(r.roles),
                permissive=r.polpermissive,
                on=r.on_,
            )
            found[policy.identity] = policy
        return found

    @classmethod
    def read(cls, conn: Connection, wanted: Sequence[Self]) -> dict[str, Self]:
        oids = _oids(conn, {w.on for w in wanted})
        return cls._from_rows(conn.execute(text(_POLICIES_SQL), {"oids": oids}))

    def differences(self, conn: Connection, live: Self) -> list[str]:
        # The definition on a scratch temporary table shaped like the real one, in a
        # savepoint that is rolled back: PostgreSQL deparses both the same way.
        savepoint = conn.begin_nested()
        try:
            conn.execute(text(f"CREATE TEMP TABLE platform_db_policy_ref (LIKE {self.on})"))
            ref = dataclasses.replace(self, on="pg_temp.platform_db_policy_ref")
            for statement in ref.create_sql():
                conn.execute(text(statement))
            oid = _scalar(conn, "SELECT CAST(to_regclass('pg_temp.platform_db_policy_ref') AS oid)")
            (want,) = self._from_rows(conn.execute(text(_POLICIES_SQL), {"oids": [oid]})).values()
        finally:
            savepoint.rollback()
        if want.meaning == live.meaning:
            return []
        return [f"database has: {live.create_sql()[0].replace(chr(10), ' ')}"]

    def summary(self) -> str:
        return self.name


# --------------------------------------------------------------------------------------
# Table grants
# --------------------------------------------------------------------------------------

_GRANTS_SQL = """
SELECT n.nspname || '.' || c.relname AS on_,
       CASE WHEN a.grantee = 0 THEN 'PUBLIC'
            ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(a.grantee)) END AS grantee,
       a.privilege_type, a.grantee = c.relowner AS is_owner
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN LATERAL pg_catalog.aclexplode(
    coalesce(c.relacl, pg_catalog.acldefault('r', c.relowner))) a
WHERE c.oid = ANY(CAST(:oids AS oid[]))
"""

# Column privileges ("REFERENCES (id, tenant_id)"), per table and grantee.
_COLUMN_GRANTS_SQL = """
SELECT n.nspname || '.' || c.relname AS on_,
       CASE WHEN a.grantee = 0 THEN 'PUBLIC'
            ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(a.grantee)) END AS grantee,
       a.privilege_type || ' (' || string_agg(pg_catalog.quote_ident(att.attname), ', '
                                              ORDER BY att.attnum) || ')' AS privilege
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_attribute att
  ON att.attrelid = c.oid AND att.attacl IS NOT NULL AND NOT att.attisdropped
CROSS JOIN LATERAL pg_catalog.aclexplode(att.attacl) a
WHERE c.oid = ANY(CAST(:oids AS oid[])) AND a.grantee <> c.relowner
GROUP BY 1, 2, a.privilege_type
ORDER BY 1, 2, 3
"""
_COLUMN_PRIVILEGE = re.compile(
    r'^(SELECT|INSERT|UPDATE|REFERENCES) \((?:[a-z_][a-z0-9_]*|"(?:[^"]|"")+")'
    r'(?:, (?:[a-z_][a-z0-9_]*|"(?:[^"]|"")+"))*\)$'
)


@dataclass(frozen=True)
class TableGrants(Entity):
    """Exactly these privileges on a table for one role (`PUBLIC` included): no more.

    `column_privileges` (`"REFERENCES (id, tenant_id)"`) are what the catalog holds on
    some columns only; a definition has none (read() returns them, and any is drift).
    Read for a wanted table, every other role that holds a privilege on it (its owner
    aside) is returned too, so that autogenerate proposes to revoke it (drop_entity)."""

    kind: ClassVar[str] = "table_privileges"
    rank: ClassVar[int] = 40
    on: str
    role: str
    privileges: tuple[str, ...] = ()
    column_privileges: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        qualified(self.on)
        role_name(self.role)
        unknown = set(self.privileges) - set(TABLE_PRIVILEGES)
        if unknown:
            raise ValueError(f"unknown table privileges {sorted(unknown)}")
        for privilege in self.column_privileges:
            if not _COLUMN_PRIVILEGE.match(privilege):
                raise ValueError(f"unexpected column privilege {privilege!r}")

    @property
    def identity(self) -> str:
        return f"{self.on}.{self.role}"

    @property
    def table(self) -> str | None:
        return self.on

    def create_sql(self) -> list[str]:
        statements = [f"REVOKE ALL ON {self.on} FROM {self.role}"]
        if self.privileges:
            statements.append(f"GRANT {', '.join(self.privileges)} ON {self.on} TO {self.role}")
        statements += [
            f"GRANT {privilege} ON {self.on} TO {self.role}" for privilege in self.column_privileges
        ]
        return statements

    def drop_sql(self) -> list[str]:
        return [f"REVOKE ALL ON {self.on} FROM {self.role}"]

    def replace_sql(self, previous: Self) -> list[str]:
        return self.create_sql()

    @classmethod
    def read(cls, conn: Connection, wanted: Sequence[Self]) -> dict[str, Self]:
        oids = _oids(conn, {w.on for w in wanted})
        have: dict[tuple[str, str], set[str]] = {}
        columns: dict[tuple[str, str], list[str]] = {}
        existing: set[str] = set()
        for r in conn.execute(text(_GRANTS_SQL), {"oids": oids}):
            existing.add(r.on_)
            if not r.is_owner:
                have.setdefault((r.on_, r.grantee), set()).add(r.privilege_type)
        for r in conn.execute(text(_COLUMN_GRANTS_SQL), {"oids": oids}):
            columns.setdefault((r.on_, r.grantee), []).append(r.privilege)
        found = {
            w.identity: cls(
                w.on,
                w.role,
                ordered_privileges(have.get((w.on, w.role), ())),
                tuple(columns.get((w.on, w.role), ())),
            )
            for w in wanted
            if w.on in existing
        }
        # Every other grantee of a wanted table: no definition grants it anything.
        for on, role in sorted({*have, *columns}):
            other = cls(on, role, ordered_privileges(have.get((on, role), ())))
            if other.identity not in found:
                found[other.identity] = dataclasses.replace(
                    other, column_privileges=tuple(columns.get((on, role), ()))
                )
        return found

    def differences(self, conn: Connection, live: Self) -> list[str]:
        reasons = []
        if set(self.privileges) != set(live.privileges):
            reasons.append(
                f"{', '.join(self.privileges) or 'nothing'} "
                f"(database: {', '.join(live.privileges) or 'nothing'})"
            )
        if set(self.column_privileges) != set(live.column_privileges):
            reasons.append(
                f"column privileges {'; '.join(live.column_privileges)} "
                f"(should be {'; '.join(self.column_privileges) or 'none'})"
            )
        return reasons

    def summary(self) -> str:
        held = [*self.privileges, *self.column_privileges]
        return f"{self.role}: {', '.join(held) or 'nothing'}"


# --------------------------------------------------------------------------------------
# Triggers
# --------------------------------------------------------------------------------------

# pg_trigger.tgtype bits
_TG_ROW, _TG_BEFORE, _TG_INSERT, _TG_DELETE, _TG_UPDATE, _TG_TRUNCATE, _TG_INSTEAD = (
    1,
    2,
    4,
    8,
    16,
    32,
    64,
)
_EVENT_BITS = (("INSERT", _TG_INSERT), ("UPDATE", _TG_UPDATE), ("DELETE", _TG_DELETE))

_TRIGGERS_SQL = """
SELECT n.nspname || '.' || c.relname AS on_, t.tgname, t.tgtype, t.tgenabled,
       t.tgfoid::regproc::text AS function,
       (t.tgqual IS NULL AND t.tgattr::text = '') AS plain,
       t.tgargs, pg_catalog.pg_get_triggerdef(t.oid) AS definition
FROM pg_catalog.pg_trigger t
JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE t.tgrelid = ANY(CAST(:oids AS oid[])) AND NOT t.tgisinternal AND t.tgparentid = 0
"""


@dataclass(frozen=True)
class Trigger(Entity):
    """A row trigger calling a function. Compared by meaning (timing, events, function,
    arguments, enabled), not by name: a renamed but identical trigger is no drift.

    `definition` holds a trigger read from the catalog that this model cannot express
    (a WHEN condition, a column list): it is then created from that text as it is.
    """

    kind: ClassVar[str] = "trigger"
    rank: ClassVar[int] = 60
    on: str
    name: str
    function: str
    timing: str = "AFTER"
    events: tuple[str, ...] = ("INSERT", "UPDATE", "DELETE")
    arguments: tuple[str, ...] = ()
    enabled: bool = True
    definition: str | None = None

    def __post_init__(self) -> None:
        qualified(self.on)
        ident(self.name)
        qualified(self.function)
        if self.timing not in ("AFTER", "BEFORE"):
            raise ValueError(f"trigger timing must be AFTER or BEFORE, not {self.timing!r}")
        if not self.events or set(self.events) - {"INSERT", "UPDATE", "DELETE"}:
            raise ValueError(f"trigger events must be INSERT, UPDATE or DELETE: {self.events}")
        for argument in self.arguments:
            if "'" in argument or "\\" in argument:
                raise ValueError(f"refusing unexpected trigger argument {argument!r}")

    @property
    def identity(self) -> str:
        return f"{self.on}.{self.name}"

    @property
    def table(self) -> str | None:
        return self.on

    @property
    def meaning(self) -> tuple[Any, ...]:
        return (
            self.function,
            self.timing,
            frozenset(self.events),
            self.arguments,
            self.enabled,
            self.definition is None,
        )

    def create_sql(self) -> list[str]:
        if self.definition is not None:
            statements = [self.definition]
        else:
            args = ", ".join(f"'{a}'" for a in self.arguments)
            statements = [
                f"CREATE TRIGGER {self.name} {self.timing} {' OR '.join(self.events)} "
                f"ON {self.on}\n    FOR EACH ROW EXECUTE FUNCTION {self.function}({args})"
            ]
        if not self.enabled:
            statements.append(f"ALTER TABLE {self.on} DISABLE TRIGGER {self.name}")
        return statements

    def drop_sql(self) -> list[str]:
        return [f"DROP TRIGGER IF EXISTS {self.name} ON {self.on}"]

    @classmethod
    def read(cls, conn: Connection, wanted: Sequence[Self]) -> dict[str, Self]:
        """Triggers on the wanted tables that call a wanted function or hold a wanted name.

        A live trigger identical to a wanted one under another name is returned under the
        wanted identity (and is then no drift)."""
        oids = _oids(conn, {w.on for w in wanted})
        functions = {(w.on, w.function) for w in wanted}
        names = {(w.on, w.name) for w in wanted}
        live: list[Self] = []
        for r in conn.execute(text(_TRIGGERS_SQL), {"oids": oids}):
            if (r.on_, r.function) not in functions and (r.on_, r.tgname) not in names:
                continue
            raw = bytes(r.tgargs or b"")
            args = tuple(a.decode() for a in raw.split(b"\x00")[:-1]) if raw else ()
            tgtype = int(r.tgtype)
            plain = bool(r.plain) and tgtype & (_TG_INSTEAD | _TG_TRUNCATE) == 0
            live.append(
                cls(
                    r.on_,
                    r.tgname,
                    r.function,
                    timing="BEFORE" if tgtype & _TG_BEFORE else "AFTER",
                    events=tuple(e for e, bit in _EVENT_BITS if tgtype & bit) or ("INSERT",),
                    arguments=args,
                    enabled=r.tgenabled in ("O", "A"),
                    definition=None if plain and tgtype & _TG_ROW else r.definition,
                )
            )
        found: dict[str, Self] = {t.identity: t for t in live}
        for w in wanted:
            if w.identity not in found or found[w.identity].meaning != w.meaning:
                twin = next(
                    (t for t in live if t.on == w.on and t.meaning == w.meaning),
                    None,
                )
                if twin is not None:
                    found.pop(twin.identity, None)
                    found[w.identity] = dataclasses.replace(twin, name=w.name)
        return found

    def differences(self, conn: Connection, live: Self) -> list[str]:
        if self.meaning == live.meaning:
            return []
        shown = live.definition or live.create_sql()[0].replace("\n", " ")
        return [f"database has: {shown}{'' if live.enabled else ' (disabled)'}"]

    def summary(self) -> str:
        return self.name


# --------------------------------------------------------------------------------------
# Functions
# --------------------------------------------------------------------------------------


def _split_arguments(arguments: str) -> list[str]:
    """Split an argument list at its top-level commas (not inside quotes or brackets)."""
    parts: list[str] = []
    current: list[str] = []
    depth, quoted = 0, False
    for ch in arguments:
        if ch == "'":
            quoted = not quoted
        elif not quoted and ch in "([":
            depth += 1
        elif not quoted and ch in ")]":
            depth -= 1
        elif not quoted and depth == 0 and ch == ",":
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    if "".join(current).strip():
        parts.append("".join(current).strip())
    return parts


def _without_defaults(arguments: str) -> str:
    """The argument list without DEFAULT clauses: what DROP/GRANT ON FUNCTION accept."""
    return ", ".join(
        re.split(r"\s+(?:DEFAULT\b|=)", a, maxsplit=1, flags=re.IGNORECASE)[0]
        for a in _split_arguments(arguments)
    )


def _normalise_space(value: str) -> str:
    return " ".join(value.split())


_FUNCTIONS_SQL = """
SELECT n.nspname || '.' || p.proname AS name,
       pg_catalog.pg_get_function_arguments(p.oid) AS arguments,
       pg_catalog.pg_get_functiondef(p.oid) AS functiondef,
       ARRAY(SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC'
                         ELSE pg_catalog.pg_get_userbyid(a.grantee)::text END
             FROM pg_catalog.aclexplode(coalesce(p.proacl,
                                                 pg_catalog.acldefault('f', p.proowner))) a
             WHERE a.privilege_type = 'EXECUTE' AND a.grantee <> p.proowner
             ORDER BY 1) AS execute,
       pg_catalog.obj_description(p.oid, 'pg_proc') AS comment,
       pg_catalog.pg_get_userbyid(p.proowner)::text AS owner
FROM pg_catalog.pg_proc p
JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
WHERE (n.nspname = ANY(:schemas) OR n.nspname || '.' || p.proname = ANY(:names))
  AND p.prokind = 'f'
ORDER BY p.oid
"""


@dataclass(frozen=True)
class Function(Entity):
    """A function: `CREATE OR REPLACE FUNCTION <name>(<arguments>) <definition>`.

    One function per name in its schema (no overloads). EXECUTE is revoked from PUBLIC
    and granted to `execute` only. Replaced in place when the argument list is unchanged,
    else dropped and created (which PostgreSQL refuses while a view or policy uses it).

    `owner`: None leaves the function to the migration run's owner hand-over (every
    function of schema `platform` ends up owned by platform_owner); a role here is set
    with `ALTER FUNCTION ... OWNER TO` and compared. A SECURITY DEFINER function that
    must not run under row-level security (the tenant search functions,
    platform_db.ddl.search) is owned by platform_admin, the NOLOGIN BYPASSRLS role; a
    function that does not say so and is found owned by platform_admin is drift.

    `on`: the table a function belongs to (a tenant table's search function), created
    with the table's other objects; None for the package's own functions.

    Read from the catalog: when the package's own functions are wanted, every function of
    schema `platform` (an unknown one there is drift); otherwise (a tenant table's
    objects only, a service's) only the functions defined, by name.
    """

    kind: ClassVar[str] = "function"
    rank: ClassVar[int] = 10
    name: str
    arguments: str
    definition: str
    execute: tuple[str, ...] = ()
    comment: str | None = None
    owner: str | None = None
    on: str | None = None

    def __post_init__(self) -> None:
        qualified(self.name)
        for role in self.execute:
            role_name(role)
        if self.owner is not None:
            role_name(self.owner)
        if self.on is not None:
            qualified(self.on)

    @property
    def table(self) -> str | None:
        return self.on

    @property
    def identity(self) -> str:
        return self.name

    @property
    def signature(self) -> str:
        return f"{self.name}({_without_defaults(self.arguments)})"

    def create_sql(self) -> list[str]:
        statements = [
            f"CREATE OR REPLACE FUNCTION {self.name}({self.arguments})\n{self.definition.strip()}",
            f"REVOKE ALL ON FUNCTION {self.signature} FROM PUBLIC",
        ]
        if self.execute:
            statements.append(
                f"GRANT EXECUTE ON FUNCTION {self.signature} TO {', '.join(self.execute)}"
            )
        if self.comment is not None:
            statements.append(f"COMMENT ON FUNCTION {self.signature} IS {literal(self.comment)}")
        if self.owner is not None:
            statements.append(f"ALTER FUNCTION {self.signature} OWNER TO {self.owner}")
        return statements

    def drop_sql(self) -> list[str]:
        return [f"DROP FUNCTION IF EXISTS {self.signature}"]

    def replace_sql(self, previous: Self) -> list[str]:
        if _normalise_space(_without_defaults(previous.arguments)) == _normalise_space(
            _without_defaults(self.arguments)
        ):
            statements = self.create_sql()
            if self.comment is None and previous.comment is not None:
                statements.append(f"COMMENT ON FUNCTION {self.signature} IS NULL")
            if set(previous.execute) - set(self.execute) - {"PUBLIC"}:
                gone = sorted(set(previous.execute) - set(self.execute))
                statements.append(f"REVOKE ALL ON FUNCTION {self.signature} FROM {', '.join(gone)}")
            if self.owner is None and previous.owner not in (None, OWNER_ROLE):
                statements.append(f"ALTER FUNCTION {self.signature} OWNER TO {OWNER_ROLE}")
            return statements
        return [*previous.drop_sql(), *self.create_sql()]

    @classmethod
    def _from_row(cls, r: Any, on: str | None = None) -> Self:
        header = f"CREATE OR REPLACE FUNCTION {r.name}({r.arguments})"
        definition = str(r.functiondef)
        if definition.startswith(header):
            definition = definition[len(header) :]
        return cls(
            r.name,
            r.arguments,
            definition.strip(),
            execute=tuple(r.execute),
            comment=r.comment,
            # The usual owner (every function of `platform` is handed to it) reads as
            # None, like a definition that leaves ownership to the hand-over.
            owner=None if r.owner == OWNER_ROLE else r.owner,
            on=on,
        )

    @classmethod
    def read(cls, conn: Connection, wanted: Sequence[Self]) -> dict[str, Self]:
        package = any(w.on is None and w.name.split(".")[0] == PLATFORM_SCHEMA for w in wanted)
        schemas = [PLATFORM_SCHEMA] if package else []
        tables = {w.name: w.on for w in wanted}
        found: dict[str, Self] = {}
        params = {"schemas": schemas, "names": sorted(tables)}
        for r in conn.execute(text(_FUNCTIONS_SQL), params):
            fn = cls._from_row(r, tables.get(r.name))
            # An overload of a name already seen is a function of its own (to drop).
            key = fn.identity if fn.identity not in found else f"{fn.name}({r.arguments})"
            found[key] = fn
        return found

    def _catalog_form(self, conn: Connection) -> Self | str:
        savepoint = conn.begin_nested()
        try:
            for statement in self.create_sql():
                conn.execute(text(statement))
            rows = conn.execute(
                text(_FUNCTIONS_SQL.replace("ORDER BY p.oid", "")),
                {"schemas": [], "names": [self.name]},
            ).all()
        except DBAPIError as exc:
            return f"{CANNOT_REPLACE_IN_PLACE}: {str(exc.orig).splitlines()[0]}"
        finally:
            savepoint.rollback()
        sig = _normalise_space(_without_defaults(self.arguments))
        for r in rows:
            if r.name == self.name and _normalise_space(_without_defaults(r.arguments)) == sig:
                return self._from_row(r, self.on)
        return self._from_row(rows[-1], self.on)

    def differences(self, conn: Connection, live: Self) -> list[str]:
        want = self._catalog_form(conn)
        if isinstance(want, str):
            return [want]
        reasons = []
        if _normalise_space(want.arguments) != _normalise_space(live.arguments):
            reasons.append(f"arguments ({live.arguments}) differ")
        elif want.definition != live.definition:
            reasons.append("its definition differs")
        # From the definition itself, not the replay: replaying it on the live function
        # keeps grants to other roles and the live comment, which would hide their drift.
        if set(self.execute) != set(live.execute):
            reasons.append(
                f"EXECUTE for {', '.join(sorted(self.execute)) or 'nobody'} "
                f"(database: {', '.join(live.execute) or 'nobody'})"
            )
        if self.comment != live.comment:
            reasons.append("its comment differs")
        if self.owner is not None and live.owner != self.owner:
            reasons.append(f"owned by {live.owner or OWNER_ROLE}, should be {self.owner}")
        elif self.owner is None and live.owner == ADMIN_ROLE:
            # platform_admin bypasses row-level security: only a definition may choose it.
            reasons.append(f"owned by {ADMIN_ROLE}, which bypasses row-level security")
        return reasons


# --------------------------------------------------------------------------------------
# Views
# --------------------------------------------------------------------------------------

_VIEWS_SQL = """
SELECT n.nspname || '.' || c.relname AS name,
       pg_catalog.pg_get_viewdef(c.oid) AS query,
       coalesce(c.reloptions, '{}') AS options,
       ARRAY(SELECT DISTINCT pg_catalog.pg_get_userbyid(a.grantee)::text
             FROM pg_catalog.aclexplode(coalesce(c.relacl, pg_catalog.acldefault('r', c.relowner))) a
             WHERE a.privilege_type = 'SELECT' AND a.grantee <> c.relowner AND a.grantee <> 0
             ORDER BY 1) AS readers,
       EXISTS (SELECT FROM pg_catalog.aclexplode(c.relacl) a WHERE a.grantee = 0) AS public,
       pg_catalog.obj_description(c.oid, 'pg_class') AS comment
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'v' AND (n.nspname = ANY(:schemas) OR n.nspname || '.' || c.relname = ANY(:names))
"""


@dataclass(frozen=True)
class View(Entity):
    """A view, readable (SELECT) by `readers` only, with its reloptions and comment.

    In schema `platform` every view is the package's (an unknown one is drift); in
    `public` only the views that are defined are compared."""

    kind: ClassVar[str] = "view"
    rank: ClassVar[int] = 70
    name: str
    query: str
    readers: tuple[str, ...] = ()
    options: tuple[str, ...] = ()
    comment: str | None = None

    def __post_init__(self) -> None:
        qualified(self.name)
        for role in self.readers:
            role_name(role)

    @property
    def identity(self) -> str:
        return self.name

    def create_sql(self) -> list[str]:
        options = f" WITH ({', '.join(self.options)})" if self.options else ""
        statements = [
            f"CREATE VIEW {self.name}{options} AS\n{self.query.strip()}",
            f"REVOKE ALL ON {self.name} FROM PUBLIC",
        ]
        if self.readers:
            statements.append(f"GRANT SELECT ON {self.name} TO {', '.join(self.readers)}")
        if self.comment is not None:
            statements.append(f"COMMENT ON VIEW {self.name} IS {literal(self.comment)}")
        return statements

    def drop_sql(self) -> list[str]:
        return [f"DROP VIEW IF EXISTS {self.name}"]

    @classmethod
    def read(cls, conn: Connection, wanted: Sequence[Self]) -> dict[str, Self]:
        rows = conn.execute(
            text(_VIEWS_SQL),
            {"schemas": [PLATFORM_SCHEMA], "names": [w.name for w in wanted]},
        )
        found: dict[str, Self] = {}
        for r in rows:
            readers = tuple(r.readers) + (("PUBLIC",) if r.public else ())
            options = tuple(o.replace("=true", "") for o in r.options)
            found[r.name] = cls(r.name, r.query, readers, options, r.comment)
        return found

    def differences(self, conn: Connection, live: Self) -> list[str]:
        reasons = []
        savepoint = conn.begin_nested()
        try:
            conn.execute(text(f"CREATE TEMP VIEW platform_db_view_ref AS\n{self.query}"))
            want_query = _scalar(
                conn, "SELECT pg_catalog.pg_get_viewdef('pg_temp.platform_db_view_ref'::regclass)"
            )
        except DBAPIError as exc:
            want_query = None
            reasons.append(f"its query does not run: {str(exc.orig).splitlines()[0]}")
        finally:
            savepoint.rollback()
        if want_query is not None and want_query != live.query:
            reasons.append("its query differs from the definition")
        if set(self.readers) != set(live.readers):
            reasons.append(
                f"readable by {', '.join(live.readers) or 'nobody'}, "
                f"should be {', '.join(self.readers) or 'nobody'}"
            )
        if set(self.options) != set(live.options):
            reasons.append(f"options {list(live.options)}, should be {list(self.options)}")
        if self.comment != live.comment:
            reasons.append("its comment differs")
        return reasons


# --------------------------------------------------------------------------------------
# Materialized views
# --------------------------------------------------------------------------------------


_ACCESS_SQL = """
SELECT pg_catalog.pg_get_userbyid(c.relowner)::text AS owner,
       ARRAY(SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC'
                         ELSE pg_catalog.pg_get_userbyid(a.grantee)::text END
                    || ' ' || a.privilege_type
             FROM pg_catalog.aclexplode(
                 coalesce(c.relacl, pg_catalog.acldefault('r', c.relowner))) a
             WHERE a.grantee <> c.relowner
             ORDER BY 1) AS grants,
       ARRAY(SELECT DISTINCT at.attname::text FROM pg_catalog.pg_attribute at
             WHERE at.attrelid = c.oid AND at.attacl IS NOT NULL ORDER BY 1) AS column_grants
FROM pg_catalog.pg_class c
WHERE c.oid = pg_catalog.to_regclass(:name)
"""


def _access_problems(
    conn: Connection, name: str, *, owner: str, grants: dict[str, set[str]]
) -> list[str]:
    """Why the owner and privileges of relation `name` are not exactly these (none for
    anyone else, PUBLIC included, and no column privileges)."""
    found = conn.execute(text(_ACCESS_SQL), {"name": name}).one_or_none()
    if found is None:
        return []
    problems = []
    if found.owner != owner:
        problems.append(f"{name} is owned by {found.owner}, should be {owner}")
    want = sorted(f"{role} {p}" for role, privileges in grants.items() for p in privileges)
    if sorted(found.grants) != want:
        problems.append(
            f"privileges on {name}: {', '.join(found.grants) or 'none'} "
            f"(should be {', '.join(want) or 'none'})"
        )
    if found.column_grants:
        problems.append(f"column privileges on {name} ({', '.join(found.column_grants)})")
    return problems


@dataclass(frozen=True)
class MaterializedView(Entity):
    """A materialized view in `platform`, its unique index (REFRESH ... CONCURRENTLY needs
    one), and the security-barrier view in `public` that shows a tenant its own rows.

    Owned by platform_admin (REFRESH runs the query as the owner; under forced RLS the
    owner role would see nothing); closed to platform_app, which reads the tenant view.
    Replacing one drops and re-creates all three, so the index is never lost.
    """

    kind: ClassVar[str] = "materialized_view"
    rank: ClassVar[int] = 80
    name: str
    query: str
    unique_columns: tuple[str, ...]
    tenant_view: str
    # The select list of the row a tenant reads when the view holds none of its rows (a
    # tenant created after the last refresh): over `t`, the tenant's row of public.tenants,
    # and `r.refreshed_at`, when the view's data dates from. None: the tenant view shows
    # only the view's rows. A definition with it also logs its creation (WITH DATA) in
    # platform.matview_refresh_log, so that row has a date before the first refresh.
    new_tenant_row: str | None = None
    # Where `t` comes from: None, `public.tenants` filtered to the current tenant (the
    # definitions before Citus support); else a set-returning function that returns the
    # current tenant's row of public.tenants (platform.current_tenant()). A Citus
    # coordinator re-plans a query that mixes its own relations with a distributed or
    # reference table (tenants) piece by piece, as the caller, who may not read the
    # materialized view: through the function the tenant view reads local relations only.
    tenant_source: str | None = None
    # True: the tenant view reads its rows through a subquery with OFFSET 0, which the
    # planner never flattens nor pushes a caller's condition into, so that condition runs
    # on the current tenant's rows only. False (the definitions before it): the view's
    # security_barrier alone, which did not hold over the UNION ALL of `new_tenant_row`
    # (the planner flattened the arms, and a cheap leaky condition such as `col::int = 1`
    # ran before the plpgsql tenant check on every row: tests/test_sealed_tenant.py).
    fenced: bool = False

    def __post_init__(self) -> None:
        ident(self.name)
        ident(self.tenant_view)
        if self.tenant_source is not None:
            qualified(self.tenant_source)
        for column in self.unique_columns:
            ident(column)

    @property
    def qualified(self) -> str:
        return f"{PLATFORM_SCHEMA}.{self.name}"

    @property
    def identity(self) -> str:
        return self.qualified

    @property
    def unique_index(self) -> str:
        return f"uq_{self.name}"

    def tenant_view_query(self) -> str:
        """The query of the tenant view in `public` (see `fenced`)."""
        if not self.fenced:
            return self._tenant_rows_query()
        return f"SELECT * FROM (\n    {self._tenant_rows_query()}\n    ) AS tenant_rows OFFSET 0"

    def _tenant_rows_query(self) -> str:
        own = f"SELECT * FROM {self.qualified} WHERE tenant_id = {PLATFORM_SCHEMA}.current_tenant_id()"
        if self.new_tenant_row is None:
            return own
        log = f"{PLATFORM_SCHEMA}.matview_refresh_log"
        if self.tenant_source is not None:
            return f"""{own}
    UNION ALL
    SELECT {self.new_tenant_row}
    FROM {self.tenant_source}() t
    CROSS JOIN LATERAL (SELECT coalesce(
        (SELECT m.refreshed_at FROM {self.qualified} m LIMIT 1),
        (SELECT max(l.finished_at) FROM {log} l WHERE l.view_name = {literal(self.qualified)})
    ) AS refreshed_at) r
    WHERE NOT EXISTS (SELECT 1 FROM {self.qualified} m WHERE m.tenant_id = t.id)"""
        return f"""{own}
    UNION ALL
    SELECT {self.new_tenant_row}
    FROM public.tenants t
    CROSS JOIN LATERAL (SELECT coalesce(
        (SELECT m.refreshed_at FROM {self.qualified} m LIMIT 1),
        (SELECT max(l.finished_at) FROM {log} l WHERE l.view_name = {literal(self.qualified)})
    ) AS refreshed_at) r
    WHERE t.id = {PLATFORM_SCHEMA}.current_tenant_id()
      AND NOT EXISTS (SELECT FROM {self.qualified} m WHERE m.tenant_id = t.id)"""

    def create_sql(self) -> list[str]:
        cols = ", ".join(self.unique_columns)
        created = []
        if self.new_tenant_row is not None:
            created = [
                f"""INSERT INTO {PLATFORM_SCHEMA}.matview_refresh_log
    (view_name, started_at, finished_at, duration_ms, was_concurrent, row_count)
SELECT {literal(self.qualified)}, now(), clock_timestamp(), 0, false, count(*)
FROM {self.qualified}"""
            ]
        return [
            f"CREATE MATERIALIZED VIEW {self.qualified} AS\n{self.query}\nWITH DATA",
            *created,
            f"CREATE UNIQUE INDEX {self.unique_index} ON {self.qualified} ({cols})",
            f"REVOKE ALL ON {self.qualified} FROM PUBLIC",
            f"GRANT SELECT ON {self.qualified} TO {OWNER_ROLE}",
            f"ALTER MATERIALIZED VIEW {self.qualified} OWNER TO {ADMIN_ROLE}",
            f"""CREATE VIEW public.{self.tenant_view} WITH (security_barrier) AS
    {self.tenant_view_query()}""",
            f"REVOKE ALL ON public.{self.tenant_view} FROM PUBLIC",
            f"GRANT SELECT ON public.{self.tenant_view} TO {APP_ROLE}, {ADMIN_ROLE}",
        ]

    def replace_sql(self, previous: Self) -> list[str]:
        """Only the fence changes: the tenant view is replaced in place (same columns,
        owner and grants), the materialized view and its data stay. Anything else drops
        and re-creates all three."""
        if dataclasses.replace(previous, fenced=self.fenced) == self:
            return [
                f"""CREATE OR REPLACE VIEW public.{self.tenant_view} WITH (security_barrier) AS
    {self.tenant_view_query()}"""
            ]
        return super().replace_sql(previous)

    def drop_sql(self) -> list[str]:
        return [
            f"DROP VIEW IF EXISTS public.{self.tenant_view}",
            f"DROP MATERIALIZED VIEW IF EXISTS {self.qualified}",
        ]

    # Kept for code written before the entity model.
    def create(self) -> list[str]:
        return self.create_sql()

    def drop(self) -> list[str]:
        return self.drop_sql()

    @classmethod
    def read(cls, conn: Connection, wanted: Sequence[Self]) -> dict[str, Self]:
        """The wanted materialized views only: another one in `platform` is not the
        package's to drop (its tenant view, index and downgrade could only be guessed)."""
        tenant_views = {w.name: w.tenant_view for w in wanted}
        rows = conn.execute(
            text(
                f"""
SELECT c.relname AS name, pg_catalog.pg_get_viewdef(c.oid) AS query,
       (SELECT ARRAY(SELECT a.attname::text
                     FROM pg_catalog.unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, n)
                     JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
                     ORDER BY k.n)
        FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
        WHERE i.indrelid = c.oid AND ic.relname = 'uq_' || c.relname AND i.indisunique
          AND i.indisvalid AND i.indpred IS NULL AND i.indexprs IS NULL
          AND i.indnatts = i.indnkeyatts
          AND ic.relam = (SELECT oid FROM pg_catalog.pg_am WHERE amname = 'btree'))
           AS unique_columns
FROM pg_catalog.pg_class c
WHERE c.relnamespace = '{PLATFORM_SCHEMA}'::regnamespace AND c.relkind = 'm'
  AND c.relname = ANY(:names)
"""
            ),
            {"names": sorted(tenant_views)},
        )
        found: dict[str, Self] = {}
        for r in rows:
            view = cls(
                r.name,
                str(r.query).rstrip().rstrip(";"),
                tuple(r.unique_columns or ()),
                tenant_views[r.name],
            )
            found[view.identity] = view
        return found

    def differences(self, conn: Connection, live: Self) -> list[str]:
        reasons = []
        savepoint = conn.begin_nested()
        try:
            conn.execute(text(f"CREATE TEMP VIEW platform_db_matview_ref AS\n{self.query}"))
            want_query = _scalar(
                conn,
                "SELECT pg_catalog.pg_get_viewdef('pg_temp.platform_db_matview_ref'::regclass)",
            )
        except DBAPIError as exc:
            # The new query does not run on the schema as it is (it needs something this
            # same revision adds): it differs, by definition.
            want_query = None
            reasons.append(f"its new query does not run on the current schema: {exc.orig}")
        finally:
            savepoint.rollback()
        if want_query is not None and str(want_query).rstrip().rstrip(";") != live.query:
            reasons.append("its query differs from the definition")
        if live.unique_columns != self.unique_columns:
            found = f"({', '.join(live.unique_columns)})" if live.unique_columns else "none usable"
            reasons.append(
                f"unique index {self.unique_index} should be on "
                f"({', '.join(self.unique_columns)}), found {found}"
            )
        savepoint = conn.begin_nested()
        try:
            conn.execute(
                text(
                    "CREATE TEMP VIEW platform_db_tenant_ref WITH (security_barrier) AS "
                    + self.tenant_view_query()
                )
            )
            want_tenant = _scalar(
                conn, "SELECT pg_catalog.pg_get_viewdef('pg_temp.platform_db_tenant_ref'::regclass)"
            )
        except DBAPIError:
            # The tenant view's new-tenant row does not fit the view as it is: it differs.
            want_tenant = None
        finally:
            savepoint.rollback()
        tenant = conn.execute(
            text(
                "SELECT pg_catalog.pg_get_viewdef(c.oid) AS definition, "
                "coalesce('security_barrier=true' = ANY(c.reloptions), false) AS barrier "
                "FROM pg_catalog.pg_class c WHERE c.relnamespace = 'public'::regnamespace "
                "AND c.relname = :name AND c.relkind = 'v'"
            ),
            {"name": self.tenant_view},
        ).one_or_none()
        if tenant is None:
            reasons.append(f"tenant view public.{self.tenant_view} is missing")
        elif want_tenant is None or tenant.definition != want_tenant or not tenant.barrier:
            reasons.append(f"tenant view public.{self.tenant_view} differs from the definition")
        # Who may read them: the materialized view holds every tenant's rows (closed to
        # platform_app), the tenant view only the current tenant's.
        reasons += _access_problems(
            conn, self.qualified, owner=ADMIN_ROLE, grants={OWNER_ROLE: {"SELECT"}}
        )
        if tenant is not None:
            reasons += _access_problems(
                conn,
                f"public.{self.tenant_view}",
                owner=OWNER_ROLE,
                grants={APP_ROLE: {"SELECT"}, ADMIN_ROLE: {"SELECT"}},
            )
        return reasons


# --------------------------------------------------------------------------------------
# Scheduled jobs (pg_cron)
# --------------------------------------------------------------------------------------

_HAS_PG_CRON = "SELECT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'pg_cron')"


@dataclass(frozen=True)
class ScheduledJob(Entity):
    """A pg_cron job, scheduled only where pg_cron is installed in this database.

    Without pg_cron the statements do nothing and nothing is compared; `platform-db
    maintain` runs the same jobs from the system's cron instead."""

    kind: ClassVar[str] = "scheduled_job"
    rank: ClassVar[int] = 90
    name: str
    schedule: str
    command: str

    def __post_init__(self) -> None:
        if not re.match(r"^[a-z0-9-]{1,63}$", self.name):
            raise ValueError(f"job names are lower-case words joined by '-', not {self.name!r}")
        for part in (self.schedule, self.command):
            if "$q$" in part or "$do$" in part:
                raise ValueError(f"refusing unexpected job text {part!r}")

    @property
    def identity(self) -> str:
        return f"cron.{self.name}"

    def create_sql(self) -> list[str]:
        return [
            f"""DO $do$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'pg_cron') THEN
        -- cron.schedule with a job name replaces the job of that name.
        PERFORM cron.schedule($q${self.name}$q$, $q${self.schedule}$q$, $q${self.command}$q$);
    END IF;
END
$do$"""
        ]

    def drop_sql(self) -> list[str]:
        return [
            f"""DO $do$
BEGIN
    -- Nested: cron.job can only be named once pg_cron is known to be there.
    IF EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'pg_cron') THEN
        IF EXISTS (SELECT FROM cron.job WHERE jobname = $q${self.name}$q$) THEN
            PERFORM cron.unschedule($q${self.name}$q$);
        END IF;
    END IF;
END
$do$"""
        ]

    def replace_sql(self, previous: Self) -> list[str]:
        return self.create_sql()

    @classmethod
    def read(cls, conn: Connection, wanted: Sequence[Self]) -> dict[str, Self]:
        if not _scalar(conn, _HAS_PG_CRON):
            return {w.identity: w for w in wanted}  # nothing to compare
        rows = conn.execute(
            text("SELECT jobname, schedule, command FROM cron.job WHERE jobname = ANY(:names)"),
            {"names": [w.name for w in wanted]},
        )
        return {f"cron.{r.jobname}": cls(r.jobname, r.schedule, r.command) for r in rows}

    def summary(self) -> str:
        return self.schedule


# --------------------------------------------------------------------------------------
# Partitions of a protected partitioned table
# --------------------------------------------------------------------------------------

_PARTITIONS_SQL = """
SELECT c.oid, c.relname, c.relrowsecurity, c.relforcerowsecurity
FROM pg_catalog.pg_partition_tree(CAST(:parent AS regclass)) t
JOIN pg_catalog.pg_class c ON c.oid = t.relid
WHERE t.relid <> CAST(:parent AS regclass)
ORDER BY c.relname
"""


# Triggers a partition inherited (cloned) from its parent, in another state than the
# parent's (an audit trigger disabled on one partition).
_PARTITION_TRIGGERS_SQL = """
SELECT c.relname, t.tgname, p.tgenabled AS want
FROM pg_catalog.pg_partition_tree(CAST(:parent AS regclass)) pt
JOIN pg_catalog.pg_class c ON c.oid = pt.relid
JOIN pg_catalog.pg_trigger t ON t.tgrelid = pt.relid
JOIN pg_catalog.pg_trigger p ON p.oid = t.tgparentid
WHERE pt.relid <> CAST(:parent AS regclass) AND t.tgenabled <> p.tgenabled
ORDER BY c.relname, t.tgname
"""

_SYNC_PARTITION_TRIGGERS = """DO $sync$
DECLARE
    t record;
BEGIN
    -- Cloned triggers of the partitions back in their parent trigger's state.
    FOR t IN
        SELECT pt.relid::regclass AS rel, tg.tgname, p.tgenabled AS want
        FROM pg_catalog.pg_partition_tree('{on}'::regclass) pt
        JOIN pg_catalog.pg_trigger tg ON tg.tgrelid = pt.relid
        JOIN pg_catalog.pg_trigger p ON p.oid = tg.tgparentid
        WHERE pt.relid <> '{on}'::regclass AND tg.tgenabled <> p.tgenabled
    LOOP
        EXECUTE format('ALTER TABLE %s %s TRIGGER %I', t.rel,
                       CASE t.want WHEN 'D' THEN 'DISABLE' WHEN 'R' THEN 'ENABLE REPLICA'
                                   WHEN 'A' THEN 'ENABLE ALWAYS' ELSE 'ENABLE' END,
                       t.tgname);
    END LOOP;
END
$sync$"""

_TRIGGER_STATES = {"O": "enabled", "D": "disabled", "R": "enabled on replica", "A": "always"}


@dataclass(frozen=True)
class PartitionProtection(Entity):
    """Every partition of `on` has the parent's RLS flags and policies and no grant of
    its own: a partition reached by name is as closed as its parent. Kept in step by
    platform.protect_partitions(), which partition maintenance also calls."""

    kind: ClassVar[str] = "partition_protection"
    rank: ClassVar[int] = 65
    on: str
    rls: bool = True
    problems: tuple[str, ...] = dataclasses.field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        qualified(self.on)

    @property
    def identity(self) -> str:
        return f"{self.on}.partitions"

    @property
    def table(self) -> str | None:
        return self.on

    def create_sql(self) -> list[str]:
        return [f"SELECT {PLATFORM_SCHEMA}.protect_partitions('{self.on}'::regclass)"]

    def drop_sql(self) -> list[str]:
        return [f"SELECT {PLATFORM_SCHEMA}.unprotect_partitions('{self.on}'::regclass)"]

    def replace_sql(self, previous: Self) -> list[str]:
        return [*self.drop_sql(), *self.create_sql(), _SYNC_PARTITION_TRIGGERS.format(on=self.on)]

    def render(self) -> str:
        args = [repr(self.on)] + ([] if self.rls else ["rls=False"])
        return f"PartitionProtection({', '.join(args)})"

    @classmethod
    def read(cls, conn: Connection, wanted: Sequence[Self]) -> dict[str, Self]:
        found: dict[str, Self] = {}
        for w in wanted:
            parts = conn.execute(text(_PARTITIONS_SQL), {"parent": w.on}).all()
            if not parts:
                found[w.identity] = w
                continue
            parent_policies = {
                policy.name: policy.meaning
                for policy in Policy.read(conn, [Policy("x", None, None, on=w.on)]).values()
            }
            part_names = [f"{w.on.split('.')[0]}.{p.relname}" for p in parts]
            policies: dict[str, dict[str, Any]] = {}
            scope = [Policy("x", None, None, on=n) for n in part_names]
            for policy in Policy.read(conn, scope).values():
                policies.setdefault(policy.on, {})[policy.name] = policy.meaning
            grants: dict[str, set[str]] = {}
            for r in conn.execute(text(_GRANTS_SQL), {"oids": [int(p.oid) for p in parts]}):
                if r.grantee in ("PUBLIC", APP_ROLE):
                    grants.setdefault(r.on_, set()).add(r.grantee)
            problems = []
            for p, name in zip(parts, part_names, strict=True):
                if (p.relrowsecurity, p.relforcerowsecurity) != (w.rls, w.rls):
                    problems.append(
                        f"{p.relname}: RLS enabled={p.relrowsecurity}, "
                        f"forced={p.relforcerowsecurity}"
                    )
                if policies.get(name, {}) != parent_policies:
                    problems.append(f"{p.relname}: policies differ from the parent's")
                if grants.get(name):
                    problems.append(f"{p.relname}: direct privileges {sorted(grants[name])}")
            for t in conn.execute(text(_PARTITION_TRIGGERS_SQL), {"parent": w.on}):
                problems.append(
                    f"{t.relname}: trigger {t.tgname} is not "
                    f"{_TRIGGER_STATES.get(t.want, t.want)} as on the parent"
                )
            found[w.identity] = dataclasses.replace(w, problems=tuple(problems))
        return found

    def differences(self, conn: Connection, live: Self) -> list[str]:
        return list(live.problems)


# --------------------------------------------------------------------------------------
# What PUBLIC may not use
# --------------------------------------------------------------------------------------

_SIGNATURE = re.compile(r"^pg_catalog\.[a-z_][a-z0-9_]*\((?:[a-z ]+(?:, ?[a-z ]+)*)?\)$")
_CATALOG_RELATION = re.compile(r"^pg_catalog\.[a-z_][a-z0-9_]*$")
_DATABASE_PRIVILEGES = ("CREATE", "TEMPORARY")
_CAN_REVOKE_CATALOG = (
    "(SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user)"
)
_CAN_REVOKE_DATABASE = (
    "(SELECT r.rolsuper OR pg_catalog.pg_has_role(current_user, d.datdba, 'USAGE') "
    "FROM pg_catalog.pg_roles r, pg_catalog.pg_database d "
    "WHERE r.rolname = current_user AND d.datname = pg_catalog.current_database())"
)
_PUBLIC_HOLDS_SQL = """
SELECT 'function' AS kind, f AS name,
       p.oid IS NOT NULL AND EXISTS (
           SELECT FROM pg_catalog.aclexplode(coalesce(p.proacl,
                                             pg_catalog.acldefault('f', p.proowner))) a
           WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE') AS open
FROM pg_catalog.unnest(CAST(:functions AS text[])) f
LEFT JOIN pg_catalog.pg_proc p ON p.oid = pg_catalog.to_regprocedure(f)
UNION ALL
SELECT 'relation', r,
       c.oid IS NOT NULL AND EXISTS (
           SELECT FROM pg_catalog.aclexplode(coalesce(c.relacl,
                                             pg_catalog.acldefault('r', c.relowner))) a
           WHERE a.grantee = 0 AND a.privilege_type = 'SELECT')
FROM pg_catalog.unnest(CAST(:relations AS text[])) r
LEFT JOIN pg_catalog.pg_class c ON c.oid = pg_catalog.to_regclass(r)
UNION ALL
SELECT 'language', l,
       g.oid IS NOT NULL AND EXISTS (
           SELECT FROM pg_catalog.aclexplode(coalesce(g.lanacl,
                                             pg_catalog.acldefault('l', g.lanowner))) a
           WHERE a.grantee = 0 AND a.privilege_type = 'USAGE')
FROM pg_catalog.unnest(CAST(:languages AS text[])) l
LEFT JOIN pg_catalog.pg_language g ON g.lanname = l
UNION ALL
SELECT 'database', g, EXISTS (
           SELECT FROM pg_catalog.pg_database d,
                pg_catalog.aclexplode(coalesce(d.datacl, pg_catalog.acldefault('d', d.datdba))) a
           WHERE d.datname = pg_catalog.current_database() AND a.grantee = 0
             AND a.privilege_type = g)
FROM pg_catalog.unnest(CAST(:database AS text[])) g
"""


@dataclass(frozen=True)
class PublicRevocation(Entity):
    """Privileges PUBLIC holds by default that no role but `keep_for` may use.

    `functions` (EXECUTE; `pg_catalog.lo_get(oid)`), `relations` (SELECT on catalog
    views), `languages` (USAGE: creating functions and running DO blocks in it; calling
    existing functions needs none) and `database` privileges (TEMPORARY, CREATE on the
    current database). Every
    role gets them from PUBLIC, platform_app included, so they are revoked from PUBLIC and
    granted back to `keep_for` only.

    Catalog objects belong to the bootstrap superuser: only a superuser can revoke them.
    A revision run by another role (a managed service's admin) warns and changes nothing,
    and read() then reports the entity as present (nothing a check could propose would
    run); `platform-db doctor` reports what stays open (docs/SECURITY.md). The database's
    privileges need its owner (or a superuser), with the same rule.
    """

    kind: ClassVar[str] = "public_revocation"
    rank: ClassVar[int] = 5
    name: str
    functions: tuple[str, ...] = ()
    relations: tuple[str, ...] = ()
    database: tuple[str, ...] = ()
    keep_for: tuple[str, ...] = (OWNER_ROLE, ADMIN_ROLE)
    languages: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        ident(self.name)
        for f in self.functions:
            if not _SIGNATURE.match(f):
                raise ValueError(f"not a pg_catalog function signature: {f!r}")
        for r in self.relations:
            if not _CATALOG_RELATION.match(r):
                raise ValueError(f"not a pg_catalog relation: {r!r}")
        for language in self.languages:
            ident(language)
        unknown = set(self.database) - set(_DATABASE_PRIVILEGES)
        if unknown:
            raise ValueError(f"unknown database privileges {sorted(unknown)}")
        for role in self.keep_for:
            role_name(role)
        if bool(self.database) and bool(self.functions or self.relations or self.languages):
            raise ValueError("database privileges and catalog objects need separate entities")

    @property
    def identity(self) -> str:
        return self.name

    @property
    def _can_revoke(self) -> str:
        return _CAN_REVOKE_DATABASE if self.database else _CAN_REVOKE_CATALOG

    def _statements(self, *, revoke: bool) -> list[str]:
        keep = ", ".join(self.keep_for)
        take, give = ("REVOKE", "GRANT") if revoke else ("GRANT", "REVOKE")
        to_public = "FROM PUBLIC" if revoke else "TO PUBLIC"
        to_keep = f"TO {keep}" if revoke else f"FROM {keep}"
        out: list[str] = []
        if self.functions:
            fs = ", ".join(self.functions)
            out.append(f"{take} EXECUTE ON FUNCTION {fs} {to_public};")
            if keep:
                out.append(f"{give} EXECUTE ON FUNCTION {fs} {to_keep};")
        if self.relations:
            rs = ", ".join(self.relations)
            out.append(f"{take} SELECT ON {rs} {to_public};")
            if keep:
                out.append(f"{give} SELECT ON {rs} {to_keep};")
        if self.languages:
            ls = ", ".join(self.languages)
            out.append(f"{take} USAGE ON LANGUAGE {ls} {to_public};")
            if keep:
                out.append(f"{give} USAGE ON LANGUAGE {ls} {to_keep};")
        if self.database:
            gs = ", ".join(self.database)
            out.append(
                f"EXECUTE pg_catalog.format('{take} {gs} ON DATABASE %I {to_public}', "
                "pg_catalog.current_database());"
            )
            if keep:
                out.append(
                    f"EXECUTE pg_catalog.format('{give} {gs} ON DATABASE %I {to_keep}', "
                    "pg_catalog.current_database());"
                )
        return out

    def _block(self, *, revoke: bool) -> str:
        what = "revoked from PUBLIC" if revoke else "given back to PUBLIC"
        who = "the owner of the database or a superuser" if self.database else "a superuser"
        body = "\n    ".join(self._statements(revoke=revoke))
        return f"""DO $revoke$
BEGIN
    IF NOT {self._can_revoke} THEN
        RAISE WARNING 'platform-db: {self.name} not {what}: only {who} can'
            USING HINT = 'See docs/SECURITY.md; platform-db doctor reports what stays open.';
        RETURN;
    END IF;
    {body}
END
$revoke$"""

    def create_sql(self) -> list[str]:
        return [self._block(revoke=True)]

    def drop_sql(self) -> list[str]:
        return [self._block(revoke=False)]

    def replace_sql(self, previous: Self) -> list[str]:
        return [*previous.drop_sql(), *self.create_sql()]

    @classmethod
    def read(cls, conn: Connection, wanted: Sequence[Self]) -> dict[str, Self]:
        found: dict[str, Self] = {}
        for w in wanted:
            rows = conn.execute(
                text(_PUBLIC_HOLDS_SQL),
                {
                    "functions": list(w.functions),
                    "relations": list(w.relations),
                    "languages": list(w.languages),
                    "database": list(w.database),
                },
            ).all()
            closed = {(r.kind, r.name) for r in rows if not r.open}
            if len(closed) == len(rows) or not _scalar(conn, f"SELECT {w._can_revoke}"):
                found[w.identity] = w
            elif closed:
                found[w.identity] = dataclasses.replace(
                    w,
                    functions=tuple(f for f in w.functions if ("function", f) in closed),
                    relations=tuple(r for r in w.relations if ("relation", r) in closed),
                    languages=tuple(g for g in w.languages if ("language", g) in closed),
                    database=tuple(g for g in w.database if ("database", g) in closed),
                )
        return found

    def open_to_public(self, conn: Connection) -> list[str]:
        """What PUBLIC (so platform_app) can still use of this entity's objects."""
        rows = conn.execute(
            text(_PUBLIC_HOLDS_SQL),
            {
                "functions": list(self.functions),
                "relations": list(self.relations),
                "languages": list(self.languages),
                "database": list(self.database),
            },
        )
        return [r.name for r in rows if r.open]

    def summary(self) -> str:
        count = len(self.functions) + len(self.relations) + len(self.languages) + len(self.database)
        return f"{count} privileges of PUBLIC, kept for {', '.join(self.keep_for)}"


# The kinds, in the order they are created (dropped in the reverse order).
KINDS: tuple[type[Entity], ...] = tuple(
    sorted(
        (
            PublicRevocation,
            Function,
            RowLevelSecurity,
            Policy,
            TableGrants,
            Trigger,
            PartitionProtection,
            View,
            MaterializedView,
            ScheduledJob,
        ),
        key=lambda k: k.rank,
    )
)

__all__ = [
    "ADMIN_ROLE",
    "APP_ROLE",
    "CANNOT_REPLACE_IN_PLACE",
    "KINDS",
    "OWNER_ROLE",
    "PLATFORM_SCHEMA",
    "ROW_PRIVILEGES",
    "TABLE_PRIVILEGES",
    "Entity",
    "Function",
    "MaterializedView",
    "PartitionProtection",
    "Policy",
    "PublicRevocation",
    "RowLevelSecurity",
    "ScheduledJob",
    "TableGrants",
    "Trigger",
    "View",
    "ident",
    "qualified",
]
