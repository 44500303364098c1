"""Roles, the tenant setting functions, row-level security and grants.

One definition of what a tenant-owned table gets (`protect_tenant_table`), used by the
revisions; partitions copy their parent's policies (see platform_db.ddl.partitions).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

OWNER_ROLE = "platform_owner"
APP_ROLE = "platform_app"
ADMIN_ROLE = "platform_admin"
ROLES = (OWNER_ROLE, APP_ROLE, ADMIN_ROLE)
ROLE_COMMENT = "created by platform-db"

TENANT_SETTING = "app.current_tenant_id"
USER_SETTING = "app.current_user_id"
POLICY_NAME = "tenant_isolation"
PLATFORM_SCHEMA = "platform"

_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def scram_sha_256(password: str, *, iterations: int = 4096, salt: bytes | None = None) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (RFC 5802 / 7677).

    `CREATE ROLE ... PASSWORD '<verifier>'` then sets the password without it ever
    reaching the server in clear: not in the server log, not in pg_stat_statements
    (which `platform-db doctor` reads). The same computation as libpq's
    PQencryptPasswordConn; ASCII passwords only, since PostgreSQL would SASLprep others.
    """
    if not password.isascii() or not password:
        raise ValueError("scram_sha_256 takes a non-empty ASCII password")
    salt = secrets.token_bytes(16) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def ident(name: str) -> str:
    """Return `name` if it is a plain lower-case identifier owned by code, else refuse it."""
    if not _IDENT.match(name):
        raise ValueError(f"refusing unexpected SQL identifier {name!r}")
    return name


CREATE_ROLES = f"""
DO $roles$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT * FROM (VALUES ('{OWNER_ROLE}', false), ('{APP_ROLE}', false),
                              ('{ADMIN_ROLE}', true)) AS v(name, bypass)
    LOOP
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = r.name) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN %s', r.name,
                           CASE WHEN r.bypass THEN 'BYPASSRLS' ELSE 'NOBYPASSRLS' END);
            EXECUTE format('COMMENT ON ROLE %I IS %L', r.name, '{ROLE_COMMENT}');
        END IF;
    END LOOP;

    -- A pre-existing role must not be able to defeat isolation.
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = '{APP_ROLE}'
               AND (rolsuper OR rolbypassrls OR rolcreaterole OR rolcreatedb)) THEN
        ALTER ROLE {APP_ROLE} NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOCREATEDB;
    END IF;
    IF pg_catalog.pg_has_role('{APP_ROLE}', '{OWNER_ROLE}', 'MEMBER')
       OR pg_catalog.pg_has_role('{APP_ROLE}', '{ADMIN_ROLE}', 'MEMBER') THEN
        RAISE EXCEPTION '{APP_ROLE} is a member of {OWNER_ROLE} or {ADMIN_ROLE}'
            USING HINT = 'Revoke that membership: request-serving logins must be subject to RLS.';
    END IF;
    IF NOT (SELECT rolbypassrls FROM pg_catalog.pg_roles WHERE rolname = '{ADMIN_ROLE}') THEN
        ALTER ROLE {ADMIN_ROLE} BYPASSRLS;
    END IF;
END
$roles$
"""

# Roles are cluster-wide: another database of the same cluster may still use them. Drop
# only the ones this package created, and keep any that something else depends on.
DROP_ROLES = f"""
DO $roles$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT rolname FROM pg_catalog.pg_roles
        WHERE rolname IN ('{APP_ROLE}', '{ADMIN_ROLE}', '{OWNER_ROLE}')
          AND pg_catalog.shobj_description(oid, 'pg_authid') = '{ROLE_COMMENT}'
    LOOP
        BEGIN
            EXECUTE format('DROP ROLE %I', r.rolname);
        EXCEPTION
            WHEN SQLSTATE '2BP01' THEN  -- dependent objects still exist
                RAISE NOTICE 'role % kept: other databases of this cluster still use it',
                    r.rolname;
            WHEN SQLSTATE '55P03' THEN  -- lock_not_available: a session elsewhere uses it
                RAISE NOTICE 'role % kept: a session of another database holds it', r.rolname;
        END;
    END LOOP;
END
$roles$
"""

CREATE_PLATFORM_SCHEMA = f"""
CREATE SCHEMA IF NOT EXISTS {PLATFORM_SCHEMA} AUTHORIZATION {OWNER_ROLE};
GRANT USAGE ON SCHEMA {PLATFORM_SCHEMA} TO {APP_ROLE}, {ADMIN_ROLE};
GRANT USAGE ON SCHEMA public TO {APP_ROLE}, {ADMIN_ROLE};
"""

DROP_PLATFORM_SCHEMA = f"""
REVOKE USAGE ON SCHEMA public FROM {APP_ROLE}, {ADMIN_ROLE};
DROP SCHEMA IF EXISTS {PLATFORM_SCHEMA} CASCADE;
"""

# Small STABLE SQL functions: the planner inlines them into the policy, so a policy reads
# `tenant_id = <value>` and `(tenant_id, ...)` indexes are used. `missing_ok` makes a
# never-set setting NULL and nullif() turns the empty string an ended transaction leaves
# behind into NULL: either way `tenant_id = NULL` matches no row and fails WITH CHECK.
CREATE_SETTING_FUNCTIONS = f"""
CREATE FUNCTION {PLATFORM_SCHEMA}.current_tenant_id() RETURNS uuid
    LANGUAGE sql STABLE PARALLEL SAFE
    RETURN nullif(pg_catalog.current_setting('{TENANT_SETTING}', true), '')::uuid;

COMMENT ON FUNCTION {PLATFORM_SCHEMA}.current_tenant_id() IS
    'The tenant of the current transaction ({TENANT_SETTING}), NULL when none is set.';

CREATE FUNCTION {PLATFORM_SCHEMA}.current_user_id() RETURNS uuid
    LANGUAGE sql STABLE PARALLEL SAFE
    RETURN nullif(pg_catalog.current_setting('{USER_SETTING}', true), '')::uuid;

COMMENT ON FUNCTION {PLATFORM_SCHEMA}.current_user_id() IS
    'The acting user of the current transaction ({USER_SETTING}), NULL when none is set.';
"""

DROP_SETTING_FUNCTIONS = f"""
DROP FUNCTION IF EXISTS {PLATFORM_SCHEMA}.current_user_id();
DROP FUNCTION IF EXISTS {PLATFORM_SCHEMA}.current_tenant_id();
"""

TENANT_PREDICATE = f"tenant_id = {PLATFORM_SCHEMA}.current_tenant_id()"

ROW_PRIVILEGES: tuple[str, ...] = ("SELECT", "INSERT", "UPDATE", "DELETE")
_COMMANDS = ("ALL", "SELECT", "INSERT", "UPDATE", "DELETE")


@dataclass(frozen=True, slots=True)
class Policy:
    """A row-level security policy as code: compared by meaning with the catalog's copy."""

    name: str
    using: str | None
    check: str | None
    command: str = "ALL"
    roles: tuple[str, ...] = ("PUBLIC",)
    permissive: bool = True

    def __post_init__(self) -> None:
        ident(self.name)
        if self.command not in _COMMANDS:
            raise ValueError(f"policy command must be one of {_COMMANDS}, not {self.command!r}")
        for role in self.roles:
            if role != "PUBLIC":
                ident(role)

    def create_sql(self, relation: str) -> str:
        """CREATE POLICY on `relation` (a schema-qualified name built from code)."""
        kind = "PERMISSIVE" if self.permissive else "RESTRICTIVE"
        sql = (
            f"CREATE POLICY {self.name} ON {relation}\n"
            f"    AS {kind} FOR {self.command} TO {', '.join(self.roles)}"
        )
        if self.using is not None:
            sql += f"\n    USING ({self.using})"
        if self.check is not None:
            sql += f"\n    WITH CHECK ({self.check})"
        return sql

    def drop_sql(self, relation: str) -> str:
        return f"DROP POLICY IF EXISTS {self.name} ON {relation}"


# The policy of every tenant-owned table: a session sees and writes its tenant's rows only.
TENANT_POLICY = Policy(POLICY_NAME, using=TENANT_PREDICATE, check=TENANT_PREDICATE)


def protect_tenant_table(
    table: str,
    *,
    rls: bool = True,
    policies: tuple[Policy, ...] = (TENANT_POLICY,),
    app_privileges: tuple[str, ...] = ROW_PRIVILEGES,
    admin_privileges: tuple[str, ...] = ROW_PRIVILEGES,
) -> list[str]:
    """What every tenant-owned table gets: forced RLS, its policies, precise grants.

    `platform_app` reads and writes rows (no TRUNCATE, REFERENCES or TRIGGER); RLS is
    forced so even the owner is filtered. For a partitioned table the existing
    partitions get the same RLS (platform.protect_partitions) but no grants: they are
    reached only through the parent. The full definition of a tenant-owned table (this
    plus the audit trigger, and the explicit opt-outs) is
    platform_db.ddl.tenant_table.TenantProtection.
    """
    t = ident(table)
    statements: list[str] = []
    if rls:
        statements += [
            f"ALTER TABLE public.{t} ENABLE ROW LEVEL SECURITY",
            f"ALTER TABLE public.{t} FORCE ROW LEVEL SECURITY",
            *(policy.create_sql(f"public.{t}") for policy in policies),
        ]
    statements.append(f"REVOKE ALL ON public.{t} FROM PUBLIC")
    for role, privileges in ((APP_ROLE, app_privileges), (ADMIN_ROLE, admin_privileges)):
        if privileges:
            statements.append(f"GRANT {', '.join(_privileges(privileges))} ON public.{t} TO {role}")
    statements.append(f"SELECT {PLATFORM_SCHEMA}.protect_partitions('public.{t}'::regclass)")
    return statements


def unprotect_tenant_table(
    table: str, *, rls: bool = True, policies: tuple[Policy, ...] = (TENANT_POLICY,)
) -> list[str]:
    """The exact reverse of protect_tenant_table (partitions included)."""
    t = ident(table)
    statements = [
        f"SELECT {PLATFORM_SCHEMA}.unprotect_partitions('public.{t}'::regclass)",
        f"REVOKE ALL ON public.{t} FROM {APP_ROLE}, {ADMIN_ROLE}",
    ]
    if rls:
        statements += [
            *(policy.drop_sql(f"public.{t}") for policy in reversed(policies)),
            f"ALTER TABLE public.{t} NO FORCE ROW LEVEL SECURITY",
            f"ALTER TABLE public.{t} DISABLE ROW LEVEL SECURITY",
        ]
    return statements


_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")


def _privileges(privileges: tuple[str, ...]) -> tuple[str, ...]:
    for p in privileges:
        if p not in _PRIVILEGES:
            raise ValueError(f"unknown table privilege {p!r}")
    return privileges


def grant_platform_table(table: str) -> list[str]:
    """A platform-level table (tenants): readable by the app, writable by admins."""
    t = ident(table)
    return [
        f"REVOKE ALL ON public.{t} FROM PUBLIC",
        f"GRANT SELECT ON public.{t} TO {APP_ROLE}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON public.{t} TO {ADMIN_ROLE}",
    ]


def revoke_platform_table(table: str) -> list[str]:
    t = ident(table)
    return [f"REVOKE ALL ON public.{t} FROM {APP_ROLE}, {ADMIN_ROLE}"]


def claim_ownership_sql(relations: list[str]) -> str:
    """SQL that makes platform_owner own the schema `platform`, everything in it but the
    materialized views, the given relations of `public` and every partition below them.

    Run by alembic/env.py after every migration run, so objects created by any revision
    (including ones written later) end up owned by the owner role. Does nothing when the
    role does not exist (before the first revision, after the last downgrade).
    """
    names = ", ".join(f"'{ident(r)}'" for r in sorted(relations))
    return f"""
DO $own$
DECLARE
    obj record;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = '{OWNER_ROLE}') THEN
        RETURN;
    END IF;
    IF EXISTS (SELECT FROM pg_catalog.pg_namespace
               WHERE nspname = '{PLATFORM_SCHEMA}' AND nspowner <> '{OWNER_ROLE}'::regrole) THEN
        ALTER SCHEMA {PLATFORM_SCHEMA} OWNER TO {OWNER_ROLE};
    END IF;
    FOR obj IN
        SELECT c.oid::regclass AS rel,
               CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'S' THEN 'SEQUENCE'
                              WHEN 'c' THEN 'TYPE' ELSE 'TABLE' END AS kind
        FROM pg_catalog.pg_class c
        WHERE c.relowner <> '{OWNER_ROLE}'::regrole
          -- Materialized views are left out on purpose: they belong to platform_admin
          -- (see platform_db.ddl.dashboards).
          AND c.relkind IN ('r', 'p', 'v', 'S', 'c')
          AND NOT (c.relkind = 'S' AND EXISTS (
                SELECT FROM pg_catalog.pg_depend d
                WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                  AND d.deptype IN ('a', 'i')))
          AND (c.relnamespace = pg_catalog.to_regnamespace('{PLATFORM_SCHEMA}')
               OR (c.relnamespace = 'public'::regnamespace AND EXISTS (
                     SELECT FROM pg_catalog.pg_partition_ancestors(c.oid) a
                     JOIN pg_catalog.pg_class p ON p.oid = a.relid
                     WHERE p.relname IN ({names})))
               OR (c.relnamespace = 'public'::regnamespace AND c.relname IN ({names})))
    LOOP
        EXECUTE format('ALTER %s %s OWNER TO {OWNER_ROLE}', obj.kind, obj.rel);
    END LOOP;
    FOR obj IN
        SELECT p.oid::regprocedure AS fn, CASE p.prokind WHEN 'p' THEN 'PROCEDURE'
                                                       ELSE 'FUNCTION' END AS kind
        FROM pg_catalog.pg_proc p
        WHERE p.pronamespace = pg_catalog.to_regnamespace('{PLATFORM_SCHEMA}')
          AND p.proowner <> '{OWNER_ROLE}'::regrole
    LOOP
        EXECUTE format('ALTER %s %s OWNER TO {OWNER_ROLE}', obj.kind, obj.fn);
    END LOOP;
END
$own$
"""


# The setting functions are what policies call: every role that can query a tenant
# table must be able to execute them. Nothing else in `platform` is for platform_app.
GRANT_FUNCTIONS = f"""
REVOKE ALL ON FUNCTION {PLATFORM_SCHEMA}.current_tenant_id() FROM PUBLIC;
REVOKE ALL ON FUNCTION {PLATFORM_SCHEMA}.current_user_id() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION {PLATFORM_SCHEMA}.current_tenant_id() TO {APP_ROLE}, {ADMIN_ROLE};
GRANT EXECUTE ON FUNCTION {PLATFORM_SCHEMA}.current_user_id() TO {APP_ROLE}, {ADMIN_ROLE};
"""

REVOKE_FUNCTIONS = f"""
REVOKE ALL ON FUNCTION {PLATFORM_SCHEMA}.current_tenant_id() FROM {APP_ROLE}, {ADMIN_ROLE};
REVOKE ALL ON FUNCTION {PLATFORM_SCHEMA}.current_user_id() FROM {APP_ROLE}, {ADMIN_ROLE};
GRANT EXECUTE ON FUNCTION {PLATFORM_SCHEMA}.current_tenant_id() TO PUBLIC;
GRANT EXECUTE ON FUNCTION {PLATFORM_SCHEMA}.current_user_id() TO PUBLIC;
"""
