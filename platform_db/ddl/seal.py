"""The sealed tenant: the policies see only a tenant that the application sealed.

The tenant policy compares `tenant_id` with `platform.current_tenant_id()`. Without a
seal, that is whatever `app.current_tenant_id` holds, and any SQL the app login runs (an
injection) could set it. Sealed, the setting counts only together with `app.tenant_seal`:

    <key id>.<backend pid or 0>.<time step>.<hex HMAC-SHA256(key, "tenant|user|pid|step")>

which only a holder of the key can make. The service gets the key from its environment
(`PLATFORM_DB_TENANT_KEY`, platform_db.session.seal); the database keeps it in
`platform.tenant_seal_keys`, readable by its owner only (platform_owner; platform_app has
no privilege on it). The verification runs inside SECURITY DEFINER functions:

- `platform.current_tenant_id()` / `platform.current_user_id()` return the tenant / user
  only when the seal verifies: the named key is valid, the pid is this backend's
  (`pg_backend_pid()`; 0, "any backend", only where `unbound_seals` allows it: behind
  PgBouncer, and on Citus, whose workers run the policies in backends of their own), the
  step is the current 60-second step of the transaction's start time or one next to it,
  and the HMAC matches. Otherwise NULL: no rows, no writes. The policy calls it as
  `tenant_id = platform.current_tenant_id()` (Citus refuses subqueries in policies); the
  package's statements also say `tenant_id = :tenant`, so the planner evaluates the
  policy once per statement, as a one-time filter `current_tenant_id() = :tenant`; SQL
  without it gets the function as an index condition, once per index scan. PARALLEL
  RESTRICTED: `pg_backend_pid()` in a parallel worker is the worker's.
- `platform.set_tenant(tenant, user, seal)` sets the three settings for the transaction
  (SET LOCAL semantics). It is how the package's tenant hook sends them: a SELECT, whose
  literals pg_stat_statements stores as `$1, $2, $3` (a `SET LOCAL` is a utility
  statement, kept there with its text, one entry per distinct seal). set_config() is
  revoked from PUBLIC; the function has it as its owner's.
- `platform.tenant_seal_state()`: the keys' ids and fingerprints, whether sealing is
  enforced; what the start-up check of a service compares its key with.

Enforcement (`platform.tenant_seal_settings.enforced`): on, an unsealed or badly sealed
tenant sees nothing, except for a session whose login bypasses RLS anyway (superuser,
BYPASSRLS: it reads every row without any tenant, so a setting of its own costs nothing);
off, the setting counts as it is (a database moving to sealing, docs/SECURITY.md). The
revision that adds sealing turns it on for a database without tenants (a new one) and
leaves it off for one that has tenants (a running service upgrades first, then seals,
then enforces: `platform-db tenant-key`).
"""

from __future__ import annotations

from platform_db.ddl.entities import ADMIN_ROLE, APP_ROLE, PLATFORM_SCHEMA, Function

S = PLATFORM_SCHEMA
TENANT_SETTING = "app.current_tenant_id"
USER_SETTING = "app.current_user_id"
SEAL_SETTING = "app.tenant_seal"
KEYS_TABLE = f"{S}.tenant_seal_keys"
SETTINGS_TABLE = f"{S}.tenant_seal_settings"
# A seal names the 60-second step of the time it was made; the database takes the step of
# its transaction's start and the two next to it (clock skew, a transaction begun just
# after a step ended). Client and database must agree: a change is a new revision.
SEAL_STEP_SECONDS = 60

# What the revision that adds sealing creates (frozen there).
TABLES_SQL = (
    f"""CREATE TABLE {KEYS_TABLE} (
    key_id text PRIMARY KEY CONSTRAINT ck_tenant_seal_keys_key_id
        CHECK (key_id ~ '^[a-z0-9][a-z0-9_-]{{0,31}}$'),
    fingerprint text NOT NULL,
    inner_pad bytea NOT NULL CONSTRAINT ck_tenant_seal_keys_inner_pad
        CHECK (length(inner_pad) = 64),
    outer_pad bytea NOT NULL CONSTRAINT ck_tenant_seal_keys_outer_pad
        CHECK (length(outer_pad) = 64),
    created_at timestamp with time zone NOT NULL DEFAULT now(),
    valid_until timestamp with time zone
)""",
    f"REVOKE ALL ON {KEYS_TABLE} FROM PUBLIC",
    f"COMMENT ON TABLE {KEYS_TABLE} IS 'Keys of the tenant seal (HMAC-SHA256 inner and "
    "outer pads): platform-db tenant-key manages them. Readable by the owner only.'",
    f"""CREATE TABLE {SETTINGS_TABLE} (
    singleton boolean PRIMARY KEY DEFAULT true CONSTRAINT ck_tenant_seal_settings_singleton
        CHECK (singleton),
    enforced boolean NOT NULL,
    unbound_seals boolean NOT NULL DEFAULT false
)""",
    f"REVOKE ALL ON {SETTINGS_TABLE} FROM PUBLIC",
    f"COMMENT ON TABLE {SETTINGS_TABLE} IS 'Whether tenant seals are enforced, and whether "
    "seals not bound to a backend (behind PgBouncer) are taken: platform-db tenant-key.'",
    # Sealing is the default for a new database; a database with tenants keeps serving
    # its running service until that service seals (docs/SECURITY.md).
    f"INSERT INTO {SETTINGS_TABLE} (enforced) SELECT NOT EXISTS (SELECT FROM public.tenants)",
)
# The copies on each Citus worker (created by the revision, `platform-db distribute` and
# `platform-db tenant-key`; platform_db.session.seal.sync_workers fills them).
WORKER_TABLES_SQL = (
    f"""CREATE TABLE IF NOT EXISTS {KEYS_TABLE} (
    key_id text PRIMARY KEY, fingerprint text NOT NULL,
    inner_pad bytea NOT NULL, outer_pad bytea NOT NULL,
    created_at timestamp with time zone NOT NULL DEFAULT now(),
    valid_until timestamp with time zone)""",
    f"""CREATE TABLE IF NOT EXISTS {SETTINGS_TABLE} (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    enforced boolean NOT NULL, unbound_seals boolean NOT NULL DEFAULT false)""",
    f"REVOKE ALL ON {KEYS_TABLE}, {SETTINGS_TABLE} FROM PUBLIC",
    f"ALTER TABLE {KEYS_TABLE} OWNER TO platform_owner",
    f"ALTER TABLE {SETTINGS_TABLE} OWNER TO platform_owner",
)
DROP_TABLES_SQL = (f"DROP TABLE {SETTINGS_TABLE}", f"DROP TABLE {KEYS_TABLE}")


def _verified(result: str, *, empty: str = "_tenant") -> str:
    """The body of a function that returns `result` when the seal verifies (NULL, with no
    work, when the setting named by `empty` is empty)."""
    return f"""RETURNS uuid
LANGUAGE plpgsql STABLE SECURITY DEFINER PARALLEL RESTRICTED
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    _tenant text := pg_catalog.current_setting('{TENANT_SETTING}', true);
    _user text := coalesce(pg_catalog.current_setting('{USER_SETTING}', true), '');
    _seal text[] := pg_catalog.string_to_array(
        pg_catalog.current_setting('{SEAL_SETTING}', true), '.');
    _k record;
    _step bigint;
BEGIN
    IF _tenant IS NULL OR _tenant = ''{" OR _user = ''" if empty == "_user" else ""} THEN
        RETURN NULL;
    END IF;
    SELECT s.enforced, s.unbound_seals, k.inner_pad, k.outer_pad INTO _k
    FROM {SETTINGS_TABLE} AS s
    LEFT JOIN {KEYS_TABLE} AS k
           ON k.key_id = _seal[1]
          AND (k.valid_until IS NULL OR k.valid_until > pg_catalog.now());
    IF FOUND AND NOT _k.enforced THEN  -- no settings row (a Citus worker not synced): closed
        RETURN {result};
    END IF;
    IF _k.inner_pad IS NOT NULL AND pg_catalog.cardinality(_seal) = 4
       AND (_seal[2] = pg_catalog.pg_backend_pid()::text OR (_seal[2] = '0' AND _k.unbound_seals))
    THEN
        _step := pg_catalog.floor(
            pg_catalog.date_part('epoch', pg_catalog.now()) / {SEAL_STEP_SECONDS})::bigint;
        IF _seal[3] IN (_step::text, (_step - 1)::text, (_step + 1)::text)
           AND pg_catalog.md5(_seal[4]) = pg_catalog.md5(pg_catalog.encode(pg_catalog.sha256(
               _k.outer_pad || pg_catalog.sha256(_k.inner_pad || pg_catalog.convert_to(
                   _tenant || '|' || _user || '|' || _seal[2] || '|' || _seal[3], 'UTF8'))),
               'hex'))
        THEN
            RETURN {result};
        END IF;
    END IF;
    -- Unsealed: only a login that reads every tenant's rows anyway keeps its setting.
    IF EXISTS (SELECT FROM pg_catalog.pg_roles AS r
               WHERE r.rolname = SESSION_USER AND (r.rolsuper OR r.rolbypassrls)) THEN
        RETURN {result};
    END IF;
    RETURN NULL;
END
$fn$"""


CURRENT_TENANT_ID = Function(
    name=f"{S}.current_tenant_id",
    arguments="",
    definition=_verified("_tenant::uuid"),
    execute=(APP_ROLE, ADMIN_ROLE),
    comment=f"The tenant of the current transaction ({TENANT_SETTING}) when its seal "
    f"({SEAL_SETTING}) verifies or sealing is not enforced; NULL otherwise.",
)

CURRENT_USER_ID = Function(
    name=f"{S}.current_user_id",
    arguments="",
    definition=_verified("_user::uuid", empty="_user"),
    execute=(APP_ROLE, ADMIN_ROLE),
    comment=f"The acting user of the current transaction ({USER_SETTING}) when the tenant's "
    f"seal ({SEAL_SETTING}) verifies or sealing is not enforced; NULL otherwise.",
)

SET_TENANT = Function(
    name=f"{S}.set_tenant",
    arguments="tenant_id text, user_id text, seal text",
    # No SET clause: it would undo the settings when the function returns.
    definition=f"""RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
AS $fn$
BEGIN
    PERFORM pg_catalog.set_config('{TENANT_SETTING}', coalesce($1, ''), true),
            pg_catalog.set_config('{USER_SETTING}', coalesce($2, ''), true),
            pg_catalog.set_config('{SEAL_SETTING}', coalesce($3, ''), true);
END
$fn$""",
    execute=(APP_ROLE, ADMIN_ROLE),
    comment="Set the tenant, the acting user and the seal of the current transaction "
    "(the tenant hook's statement; set_config is not granted to the app).",
)

SEAL_STATE = Function(
    name=f"{S}.tenant_seal_state",
    arguments="",
    definition=f"""RETURNS TABLE (key_id text, fingerprint text,
    valid_until timestamp with time zone, enforced boolean, unbound_seals boolean)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT k.key_id, k.fingerprint, k.valid_until, s.enforced, s.unbound_seals
    FROM {SETTINGS_TABLE} AS s
    LEFT JOIN {KEYS_TABLE} AS k ON true
    ORDER BY k.created_at, k.key_id
$fn$""",
    execute=(APP_ROLE, ADMIN_ROLE),
    comment="The tenant seal's keys (ids and fingerprints, never the keys) and settings.",
)

SEAL_FUNCTIONS: tuple[Function, ...] = (CURRENT_TENANT_ID, CURRENT_USER_ID, SET_TENANT, SEAL_STATE)

__all__ = [
    "CURRENT_TENANT_ID",
    "CURRENT_USER_ID",
    "DROP_TABLES_SQL",
    "KEYS_TABLE",
    "SEAL_FUNCTIONS",
    "SEAL_SETTING",
    "SEAL_STATE",
    "SEAL_STEP_SECONDS",
    "SETTINGS_TABLE",
    "SET_TENANT",
    "TABLES_SQL",
    "TENANT_SETTING",
    "USER_SETTING",
    "WORKER_TABLES_SQL",
]
