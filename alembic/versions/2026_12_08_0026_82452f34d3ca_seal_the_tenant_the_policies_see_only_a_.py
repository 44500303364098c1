"""Seal the tenant: the policies see only a tenant the application sealed

Revision ID: 82452f34d3ca
Revises: 8a0bf8bd3781
Create Date: 2026-12-08 00:26:32.828725+00:00
"""

from collections.abc import Sequence

from alembic import op

from platform_db.ddl.entities import Function
from platform_db.migration.operations import create_entity, drop_entity, replace_entity

revision: str = "82452f34d3ca"
down_revision: str | Sequence[str] | None = "8a0bf8bd3781"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The definitions this revision runs, frozen here (platform_db.ddl.entities). A later
# revision that changes one points back at it: replaces="82452f34d3ca.<name>".
current_tenant_id_function = Function(
    name="platform.current_tenant_id",
    arguments="",
    definition="""RETURNS uuid
LANGUAGE plpgsql STABLE SECURITY DEFINER PARALLEL RESTRICTED
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    _tenant text := pg_catalog.current_setting('app.current_tenant_id', true);
    _user text := coalesce(pg_catalog.current_setting('app.current_user_id', true), '');
    _seal text[] := pg_catalog.string_to_array(
        pg_catalog.current_setting('app.tenant_seal', true), '.');
    _k record;
    _step bigint;
BEGIN
    IF _tenant IS NULL OR _tenant = '' THEN
        RETURN NULL;
    END IF;
    SELECT s.enforced, s.unbound_seals, k.inner_pad, k.outer_pad INTO _k
    FROM platform.tenant_seal_settings AS s
    LEFT JOIN platform.tenant_seal_keys AS k
           ON k.key_id = _seal[1]
          AND (k.valid_until IS NULL OR k.valid_until > pg_catalog.now());
    IF FOUND AND NOT _k.enforced THEN  -- no settings row (a Citus worker not synced): closed
        RETURN _tenant::uuid;
    END IF;
    IF _k.inner_pad IS NOT NULL AND pg_catalog.cardinality(_seal) = 4
       AND (_seal[2] = pg_catalog.pg_backend_pid()::text OR (_seal[2] = '0' AND _k.unbound_seals))
    THEN
        _step := pg_catalog.floor(
            pg_catalog.date_part('epoch', pg_catalog.now()) / 60)::bigint;
        IF _seal[3] IN (_step::text, (_step - 1)::text, (_step + 1)::text)
           AND pg_catalog.md5(_seal[4]) = pg_catalog.md5(pg_catalog.encode(pg_catalog.sha256(
               _k.outer_pad || pg_catalog.sha256(_k.inner_pad || pg_catalog.convert_to(
                   _tenant || '|' || _user || '|' || _seal[2] || '|' || _seal[3], 'UTF8'))),
               'hex'))
        THEN
            RETURN _tenant::uuid;
        END IF;
    END IF;
    -- Unsealed: only a login that reads every tenant's rows anyway keeps its setting.
    IF EXISTS (SELECT FROM pg_catalog.pg_roles AS r
               WHERE r.rolname = SESSION_USER AND (r.rolsuper OR r.rolbypassrls)) THEN
        RETURN _tenant::uuid;
    END IF;
    RETURN NULL;
END
$fn$""",
    execute=("platform_app", "platform_admin"),
    comment="The tenant of the current transaction (app.current_tenant_id) when its seal (app.tenant_seal) verifies or sealing is not enforced; NULL otherwise.",
)

current_user_id_function = Function(
    name="platform.current_user_id",
    arguments="",
    definition="""RETURNS uuid
LANGUAGE plpgsql STABLE SECURITY DEFINER PARALLEL RESTRICTED
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    _tenant text := pg_catalog.current_setting('app.current_tenant_id', true);
    _user text := coalesce(pg_catalog.current_setting('app.current_user_id', true), '');
    _seal text[] := pg_catalog.string_to_array(
        pg_catalog.current_setting('app.tenant_seal', true), '.');
    _k record;
    _step bigint;
BEGIN
    IF _tenant IS NULL OR _tenant = '' OR _user = '' THEN
        RETURN NULL;
    END IF;
    SELECT s.enforced, s.unbound_seals, k.inner_pad, k.outer_pad INTO _k
    FROM platform.tenant_seal_settings AS s
    LEFT JOIN platform.tenant_seal_keys AS k
           ON k.key_id = _seal[1]
          AND (k.valid_until IS NULL OR k.valid_until > pg_catalog.now());
    IF FOUND AND NOT _k.enforced THEN  -- no settings row (a Citus worker not synced): closed
        RETURN _user::uuid;
    END IF;
    IF _k.inner_pad IS NOT NULL AND pg_catalog.cardinality(_seal) = 4
       AND (_seal[2] = pg_catalog.pg_backend_pid()::text OR (_seal[2] = '0' AND _k.unbound_seals))
    THEN
        _step := pg_catalog.floor(
            pg_catalog.date_part('epoch', pg_catalog.now()) / 60)::bigint;
        IF _seal[3] IN (_step::text, (_step - 1)::text, (_step + 1)::text)
           AND pg_catalog.md5(_seal[4]) = pg_catalog.md5(pg_catalog.encode(pg_catalog.sha256(
               _k.outer_pad || pg_catalog.sha256(_k.inner_pad || pg_catalog.convert_to(
                   _tenant || '|' || _user || '|' || _seal[2] || '|' || _seal[3], 'UTF8'))),
               'hex'))
        THEN
            RETURN _user::uuid;
        END IF;
    END IF;
    -- Unsealed: only a login that reads every tenant's rows anyway keeps its setting.
    IF EXISTS (SELECT FROM pg_catalog.pg_roles AS r
               WHERE r.rolname = SESSION_USER AND (r.rolsuper OR r.rolbypassrls)) THEN
        RETURN _user::uuid;
    END IF;
    RETURN NULL;
END
$fn$""",
    execute=("platform_app", "platform_admin"),
    comment="The acting user of the current transaction (app.current_user_id) when the tenant's seal (app.tenant_seal) verifies or sealing is not enforced; NULL otherwise.",
)

set_tenant_function = Function(
    name="platform.set_tenant",
    arguments="tenant_id text, user_id text, seal text",
    definition="""RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
AS $fn$
BEGIN
    PERFORM pg_catalog.set_config('app.current_tenant_id', coalesce($1, ''), true),
            pg_catalog.set_config('app.current_user_id', coalesce($2, ''), true),
            pg_catalog.set_config('app.tenant_seal', coalesce($3, ''), true);
END
$fn$""",
    execute=("platform_app", "platform_admin"),
    comment="Set the tenant, the acting user and the seal of the current transaction (the tenant hook's statement; set_config is not granted to the app).",
)

tenant_seal_state_function = Function(
    name="platform.tenant_seal_state",
    arguments="",
    definition="""RETURNS TABLE (key_id text, fingerprint text,
    valid_until timestamp with time zone, enforced boolean, unbound_seals boolean)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT k.key_id, k.fingerprint, k.valid_until, s.enforced, s.unbound_seals
    FROM platform.tenant_seal_settings AS s
    LEFT JOIN platform.tenant_seal_keys AS k ON true
    ORDER BY k.created_at, k.key_id
$fn$""",
    execute=("platform_app", "platform_admin"),
    comment="The tenant seal's keys (ids and fingerprints, never the keys) and settings.",
)


# The seal's keys and settings (platform_db.ddl.seal), before the functions that read
# them. Sealing is enforced at once on a database without tenants (a new one); one with
# tenants keeps taking unsealed tenants until `platform-db tenant-key enforce`.
TABLES = (
    "CREATE TABLE platform.tenant_seal_keys (\n    key_id text PRIMARY KEY CONSTRAINT ck_tenant_seal_keys_key_id\n        CHECK (key_id ~ '^[a-z0-9][a-z0-9_-]{0,31}$'),\n    fingerprint text NOT NULL,\n    inner_pad bytea NOT NULL CONSTRAINT ck_tenant_seal_keys_inner_pad\n        CHECK (length(inner_pad) = 64),\n    outer_pad bytea NOT NULL CONSTRAINT ck_tenant_seal_keys_outer_pad\n        CHECK (length(outer_pad) = 64),\n    created_at timestamp with time zone NOT NULL DEFAULT now(),\n    valid_until timestamp with time zone\n)",
    "REVOKE ALL ON platform.tenant_seal_keys FROM PUBLIC",
    "COMMENT ON TABLE platform.tenant_seal_keys IS 'Keys of the tenant seal (HMAC-SHA256 inner and outer pads): platform-db tenant-key manages them. Readable by the owner only.'",
    "CREATE TABLE platform.tenant_seal_settings (\n    singleton boolean PRIMARY KEY DEFAULT true CONSTRAINT ck_tenant_seal_settings_singleton\n        CHECK (singleton),\n    enforced boolean NOT NULL,\n    unbound_seals boolean NOT NULL DEFAULT false\n)",
    "REVOKE ALL ON platform.tenant_seal_settings FROM PUBLIC",
    "COMMENT ON TABLE platform.tenant_seal_settings IS 'Whether tenant seals are enforced, and whether seals not bound to a backend (behind PgBouncer) are taken: platform-db tenant-key.'",
    "INSERT INTO platform.tenant_seal_settings (enforced) SELECT NOT EXISTS (SELECT FROM public.tenants)",
)
# On a Citus cluster the policies run on the workers, in shard queries, which cannot read
# a Citus table: every worker gets local copies (`platform-db tenant-key` and
# `platform-db distribute` keep their rows equal to the coordinator's).
WORKER_TABLES = """
DO $citus$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'citus') THEN
        PERFORM run_command_on_workers(command) FROM unnest(ARRAY[
            $w$CREATE TABLE IF NOT EXISTS platform.tenant_seal_keys (
                key_id text PRIMARY KEY, fingerprint text NOT NULL,
                inner_pad bytea NOT NULL, outer_pad bytea NOT NULL,
                created_at timestamp with time zone NOT NULL DEFAULT now(),
                valid_until timestamp with time zone)$w$,
            $w$CREATE TABLE IF NOT EXISTS platform.tenant_seal_settings (
                singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
                enforced boolean NOT NULL, unbound_seals boolean NOT NULL DEFAULT false)$w$,
            $w$REVOKE ALL ON platform.tenant_seal_keys, platform.tenant_seal_settings FROM PUBLIC$w$,
            $w$ALTER TABLE platform.tenant_seal_keys OWNER TO platform_owner$w$,
            $w$ALTER TABLE platform.tenant_seal_settings OWNER TO platform_owner$w$,
            format($w$INSERT INTO platform.tenant_seal_settings (enforced, unbound_seals)
                      VALUES (%s, true) ON CONFLICT DO NOTHING$w$,
                   (SELECT enforced FROM platform.tenant_seal_settings))
        ]) AS command;
        -- Workers run the policies in backends of their own: seals cannot name them.
        UPDATE platform.tenant_seal_settings SET unbound_seals = true;
    END IF;
END
$citus$
"""


def upgrade() -> None:
    for statement in TABLES:
        op.execute(statement)
    op.execute(WORKER_TABLES)
    # ### commands auto generated by Alembic - please adjust! ###
    replace_entity(current_tenant_id_function, replaces="e5f7a9b1d407.current_tenant_id_function")
    replace_entity(current_user_id_function, replaces="e5f7a9b1d407.current_user_id_function")
    create_entity(set_tenant_function)
    create_entity(tenant_seal_state_function)
    # ### end Alembic commands ###


def downgrade() -> None:
    # ### commands auto generated by Alembic - please adjust! ###
    drop_entity(tenant_seal_state_function)
    drop_entity(set_tenant_function)
    replace_entity(current_user_id_function, replace_with="e5f7a9b1d407.current_user_id_function")
    replace_entity(
        current_tenant_id_function, replace_with="e5f7a9b1d407.current_tenant_id_function"
    )
    # ### end Alembic commands ###
    # (On Citus the workers' copies stay; nothing reads them once the functions are back.)
    op.execute("DROP TABLE platform.tenant_seal_settings")
    op.execute("DROP TABLE platform.tenant_seal_keys")
