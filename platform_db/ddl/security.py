"""Roles, the tenant setting and its functions, the tenant policy, object ownership.

The roles themselves (platform_owner, platform_app, platform_admin) are created by the
baseline revision, which holds their SQL; this module names them. What a tenant-owned
table gets is platform_db.ddl.tenant_table; partitions copy their parent's policies (see
platform_db.ddl.partitions).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from platform_db.ddl.entities import (
    ADMIN_ROLE,
    APP_ROLE,
    OWNER_ROLE,
    PLATFORM_SCHEMA,
    ROW_PRIVILEGES,
    TABLE_PRIVILEGES,
    Function,
    Policy,
    TableGrants,
    ident,
)

ROLES = (OWNER_ROLE, APP_ROLE, ADMIN_ROLE)
ROLE_COMMENT = "created by platform-db"

TENANT_SETTING = "app.current_tenant_id"
USER_SETTING = "app.current_user_id"
POLICY_NAME = "tenant_isolation"


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


# Small STABLE SQL functions: the planner inlines them into the policy, so a policy reads
# `tenant_id = <value>` and `(tenant_id, ...)` indexes are used. `missing_ok` makes a
# never-set setting NULL and nullif() turns the empty string an ended transaction leaves
# behind into NULL: either way `tenant_id = NULL` matches no row and fails WITH CHECK.
# Every role that can query a tenant table must be able to execute them.
CURRENT_TENANT_ID = Function(
    name=f"{PLATFORM_SCHEMA}.current_tenant_id",
    arguments="",
    definition=f"""RETURNS uuid
    LANGUAGE sql STABLE PARALLEL SAFE
    RETURN nullif(pg_catalog.current_setting('{TENANT_SETTING}', true), '')::uuid""",
    execute=(APP_ROLE, ADMIN_ROLE),
    comment=f"The tenant of the current transaction ({TENANT_SETTING}), NULL when none is set.",
)

CURRENT_USER_ID = Function(
    name=f"{PLATFORM_SCHEMA}.current_user_id",
    arguments="",
    definition=f"""RETURNS uuid
    LANGUAGE sql STABLE PARALLEL SAFE
    RETURN nullif(pg_catalog.current_setting('{USER_SETTING}', true), '')::uuid""",
    execute=(APP_ROLE, ADMIN_ROLE),
    comment=f"The acting user of the current transaction ({USER_SETTING}), NULL when none is set.",
)

SETTING_FUNCTIONS: tuple[Function, ...] = (CURRENT_TENANT_ID, CURRENT_USER_ID)

TENANT_PREDICATE = f"tenant_id = {PLATFORM_SCHEMA}.current_tenant_id()"

# The policy of every tenant-owned table: a session sees and writes its tenant's rows only.
TENANT_POLICY = Policy(POLICY_NAME, using=TENANT_PREDICATE, check=TENANT_PREDICATE)


def platform_table_grants(table: str) -> tuple[TableGrants, ...]:
    """A platform-level table (tenants): readable by the app, writable by admins."""
    t = f"public.{ident(table)}"
    return (
        TableGrants(t, "PUBLIC", ()),
        TableGrants(t, APP_ROLE, ("SELECT",)),
        TableGrants(t, ADMIN_ROLE, ROW_PRIVILEGES),
    )


def claim_ownership_sql(relations: list[str]) -> str:
    """SQL that makes platform_owner own the schema `platform`, everything in it but the
    materialized views and the functions owned by platform_admin, the given relations of
    `public` and every partition below them.

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
          -- Left to platform_admin on purpose: the tenant search functions, SECURITY
          -- DEFINER so that full-text search runs without RLS (platform_db.ddl.search);
          -- `alembic check` compares every function's owner with its definition.
          AND pg_catalog.pg_get_userbyid(p.proowner) <> '{ADMIN_ROLE}'
    LOOP
        EXECUTE format('ALTER %s %s OWNER TO {OWNER_ROLE}', obj.kind, obj.fn);
    END LOOP;
END
$own$
"""


__all__ = [
    "ADMIN_ROLE",
    "APP_ROLE",
    "CURRENT_TENANT_ID",
    "CURRENT_USER_ID",
    "OWNER_ROLE",
    "PLATFORM_SCHEMA",
    "ROW_PRIVILEGES",
    "TABLE_PRIVILEGES",
    "TENANT_POLICY",
    "Policy",
    "claim_ownership_sql",
    "ident",
    "platform_table_grants",
    "scram_sha_256",
]
