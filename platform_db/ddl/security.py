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
    PublicRevocation,
    TableGrants,
    ident,
)
from platform_db.ddl.seal import (
    CURRENT_TENANT_ID,
    CURRENT_USER_ID,
    SEAL_FUNCTIONS,
    SEAL_SETTING,
    TENANT_SETTING,
    USER_SETTING,
)

ROLES = (OWNER_ROLE, APP_ROLE, ADMIN_ROLE)
ROLE_COMMENT = "created by platform-db"

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


# The tenant and user functions verify the seal (platform_db.ddl.seal). A NULL tenant
# (none set, or not sealed) matches no row and fails WITH CHECK. The package's statements
# also say `tenant_id = :tenant` (platform_db.session.tenant_filter): the planner then
# turns the policy's comparison into a one-time filter, `current_tenant_id() = :tenant`,
# one verification per statement; without it (SQL written by hand) the function is an
# index condition of the `(tenant_id, ...)` indexes, evaluated once per index scan.
# Not a scalar subquery: Citus refuses subqueries in policies of distributed tables.
SETTING_FUNCTIONS: tuple[Function, ...] = SEAL_FUNCTIONS

TENANT_PREDICATE = f"tenant_id = {PLATFORM_SCHEMA}.current_tenant_id()"

# The policy of every tenant-owned table: a session sees and writes its tenant's rows only.
TENANT_POLICY = Policy(POLICY_NAME, using=TENANT_PREDICATE, check=TENANT_PREDICATE)


def _lo(*signatures: str) -> tuple[str, ...]:
    return tuple(f"pg_catalog.{s}" for s in signatures)


# What every role gets from PUBLIC by default and a request-serving login must not have:
# each is a way for one request to reach another's session, to leave something behind
# on a pooled connection, or to choose the tenant from inside an expression. Revoked from
# PUBLIC, kept for platform_owner (the functions it owns run with its rights) and
# platform_admin (maintenance). docs/SECURITY.md says what each closes and what stays.
PUBLIC_REVOCATIONS: tuple[PublicRevocation, ...] = (
    # CREATE TEMP VIEW users / FUNCTION / DOMAIN pg_temp.uuid: pg_temp is searched first,
    # so a temporary object shadows the tables for every later request on the connection.
    PublicRevocation("temporary_objects", database=("TEMPORARY",)),
    # A large object written under one tenant is readable under any other (one login).
    PublicRevocation(
        "large_objects",
        functions=_lo(
            "lo_close(integer)",
            "lo_creat(integer)",
            "lo_create(oid)",
            "lo_from_bytea(oid, bytea)",
            "lo_get(oid)",
            "lo_get(oid, bigint, integer)",
            "lo_lseek(integer, integer, integer)",
            "lo_lseek64(integer, bigint, integer)",
            "lo_open(oid, integer)",
            "lo_put(oid, bigint, bytea)",
            "lo_tell(integer)",
            "lo_tell64(integer)",
            "lo_truncate(integer, integer)",
            "lo_truncate64(integer, bigint)",
            "lo_unlink(oid)",
            "loread(integer, integer)",
            "lowrite(integer, bytea)",
        ),
    ),
    # The NOTIFY statement has no privilege to revoke (docs/SECURITY.md).
    PublicRevocation("notifications", functions=_lo("pg_notify(text, text)")),
    # Shared between all sessions: a request could hold the maintenance functions' keys.
    PublicRevocation(
        "advisory_locks",
        functions=_lo(
            *(
                f"{name}({args})"
                for name in (
                    "pg_advisory_lock",
                    "pg_advisory_lock_shared",
                    "pg_advisory_unlock",
                    "pg_advisory_unlock_shared",
                    "pg_advisory_xact_lock",
                    "pg_advisory_xact_lock_shared",
                    "pg_try_advisory_lock",
                    "pg_try_advisory_lock_shared",
                    "pg_try_advisory_xact_lock",
                    "pg_try_advisory_xact_lock_shared",
                )
                for args in ("bigint", "integer, integer")
            ),
            "pg_advisory_unlock_all()",
        ),
    ),
    # One login serves every tenant, and a role may signal its own backends.
    PublicRevocation(
        "signalling_backends",
        functions=_lo("pg_cancel_backend(integer)", "pg_terminate_backend(integer, bigint)"),
    ),
    # Other backends' query text (the same login's: every tenant's), literals included.
    PublicRevocation(
        "other_sessions_activity",
        functions=_lo("pg_stat_get_activity(integer)", "pg_stat_get_backend_activity(integer)"),
        relations=("pg_catalog.pg_stat_activity",),
    ),
    # The names of the session's prepared statements (platform_db.session.statements).
    PublicRevocation(
        "prepared_statement_names",
        functions=_lo("pg_prepared_statement()"),
        relations=("pg_catalog.pg_prepared_statements",),
    ),
    # The tenant is set with SET LOCAL; set_config() would let SQL injected into an
    # expression (a WHERE clause, a LATERAL subquery) switch the tenant mid-statement.
    PublicRevocation("settings_from_expressions", functions=_lo("set_config(text, text, boolean)")),
    # setseed() is session state that no reset clears (not even DISCARD ALL): a request
    # would choose the random() sequence of the next requests on its connection.
    PublicRevocation("random_seed", functions=_lo("setseed(double precision)")),
    # DO blocks: one statement looping over every tenant with EXECUTE 'SET LOCAL ...'.
    # Calling the package's plpgsql functions needs no USAGE on the language.
    PublicRevocation("inline_code", languages=("plpgsql",)),
)


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
    "PUBLIC_REVOCATIONS",
    "ROW_PRIVILEGES",
    "SEAL_SETTING",
    "TABLE_PRIVILEGES",
    "TENANT_POLICY",
    "TENANT_SETTING",
    "USER_SETTING",
    "Policy",
    "claim_ownership_sql",
    "ident",
    "platform_table_grants",
    "scram_sha_256",
]
