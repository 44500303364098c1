"""close the pooled-connection channels and verify the audit actor

Revision ID: 412a27b7f5fe
Revises: d1432b8352a8
Create Date: 2026-12-07 20:34:05.786550+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from platform_db.ddl.entities import Function, PublicRevocation
from platform_db.migration.operations import create_entity, drop_entity, replace_entity

revision: str = "412a27b7f5fe"
down_revision: str | Sequence[str] | None = "d1432b8352a8"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The definitions this revision runs, frozen here (platform_db.ddl.entities). A later
# revision that changes one points back at it: replaces="412a27b7f5fe.<name>".
temporary_objects_public_revocation = PublicRevocation(
    name="temporary_objects",
    database=("TEMPORARY",),
)

large_objects_public_revocation = PublicRevocation(
    name="large_objects",
    functions=(
        "pg_catalog.lo_close(integer)",
        "pg_catalog.lo_creat(integer)",
        "pg_catalog.lo_create(oid)",
        "pg_catalog.lo_from_bytea(oid, bytea)",
        "pg_catalog.lo_get(oid)",
        "pg_catalog.lo_get(oid, bigint, integer)",
        "pg_catalog.lo_lseek(integer, integer, integer)",
        "pg_catalog.lo_lseek64(integer, bigint, integer)",
        "pg_catalog.lo_open(oid, integer)",
        "pg_catalog.lo_put(oid, bigint, bytea)",
        "pg_catalog.lo_tell(integer)",
        "pg_catalog.lo_tell64(integer)",
        "pg_catalog.lo_truncate(integer, integer)",
        "pg_catalog.lo_truncate64(integer, bigint)",
        "pg_catalog.lo_unlink(oid)",
        "pg_catalog.loread(integer, integer)",
        "pg_catalog.lowrite(integer, bytea)",
    ),
)

notifications_public_revocation = PublicRevocation(
    name="notifications",
    functions=("pg_catalog.pg_notify(text, text)",),
)

advisory_locks_public_revocation = PublicRevocation(
    name="advisory_locks",
    functions=(
        "pg_catalog.pg_advisory_lock(bigint)",
        "pg_catalog.pg_advisory_lock(integer, integer)",
        "pg_catalog.pg_advisory_lock_shared(bigint)",
        "pg_catalog.pg_advisory_lock_shared(integer, integer)",
        "pg_catalog.pg_advisory_unlock(bigint)",
        "pg_catalog.pg_advisory_unlock(integer, integer)",
        "pg_catalog.pg_advisory_unlock_shared(bigint)",
        "pg_catalog.pg_advisory_unlock_shared(integer, integer)",
        "pg_catalog.pg_advisory_xact_lock(bigint)",
        "pg_catalog.pg_advisory_xact_lock(integer, integer)",
        "pg_catalog.pg_advisory_xact_lock_shared(bigint)",
        "pg_catalog.pg_advisory_xact_lock_shared(integer, integer)",
        "pg_catalog.pg_try_advisory_lock(bigint)",
        "pg_catalog.pg_try_advisory_lock(integer, integer)",
        "pg_catalog.pg_try_advisory_lock_shared(bigint)",
        "pg_catalog.pg_try_advisory_lock_shared(integer, integer)",
        "pg_catalog.pg_try_advisory_xact_lock(bigint)",
        "pg_catalog.pg_try_advisory_xact_lock(integer, integer)",
        "pg_catalog.pg_try_advisory_xact_lock_shared(bigint)",
        "pg_catalog.pg_try_advisory_xact_lock_shared(integer, integer)",
        "pg_catalog.pg_advisory_unlock_all()",
    ),
)

signalling_backends_public_revocation = PublicRevocation(
    name="signalling_backends",
    functions=(
        "pg_catalog.pg_cancel_backend(integer)",
        "pg_catalog.pg_terminate_backend(integer, bigint)",
    ),
)

other_sessions_activity_public_revocation = PublicRevocation(
    name="other_sessions_activity",
    functions=(
        "pg_catalog.pg_stat_get_activity(integer)",
        "pg_catalog.pg_stat_get_backend_activity(integer)",
    ),
    relations=("pg_catalog.pg_stat_activity",),
)

prepared_statement_names_public_revocation = PublicRevocation(
    name="prepared_statement_names",
    functions=("pg_catalog.pg_prepared_statement()",),
    relations=("pg_catalog.pg_prepared_statements",),
)

settings_from_expressions_public_revocation = PublicRevocation(
    name="settings_from_expressions",
    functions=("pg_catalog.set_config(text, text, boolean)",),
)

random_seed_public_revocation = PublicRevocation(
    name="random_seed",
    functions=("pg_catalog.setseed(double precision)",),
)

inline_code_public_revocation = PublicRevocation(
    name="inline_code",
    languages=("plpgsql",),
)

ensure_monthly_partitions_function = Function(
    name="platform.ensure_monthly_partitions",
    arguments="parent regclass, months_ahead integer DEFAULT 3, start_month date DEFAULT NULL",
    definition="""RETURNS TABLE (partition_name text, action text, rows_moved bigint)
LANGUAGE plpgsql
AS $fn$
DECLARE
    nsp text;
    base text;
    owner_name text;
    key_column text;
    default_part text;
    first_month date;
    m date;
    lo timestamptz;
    hi timestamptz;
    part text;
    busy boolean;
    n bigint;
BEGIN
    IF months_ahead IS NULL OR months_ahead < 0 OR months_ahead > 120 THEN
        RAISE EXCEPTION 'months_ahead must be between 0 and 120, got %', months_ahead;
    END IF;
    SELECT ns.nspname, c.relname, pg_catalog.pg_get_userbyid(c.relowner), a.attname
    INTO nsp, base, owner_name, key_column
    FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace ns ON ns.oid = c.relnamespace
    JOIN pg_catalog.pg_partitioned_table pt ON pt.partrelid = c.oid
    JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = pt.partattrs[0]
    WHERE c.oid = parent AND pt.partstrat = 'r' AND pt.partnatts = 1
      AND a.atttypid = 'timestamptz'::regtype;
    IF key_column IS NULL THEN
        RAISE EXCEPTION '% is not RANGE-partitioned by one timestamptz column', parent;
    END IF;
    first_month := date_trunc('month',
        coalesce(start_month, (pg_catalog.now() AT TIME ZONE 'UTC')::date))::date;
    default_part := base || '_default';

    -- Serialise concurrent runs for the same parent (cron and a deploy at once).
    FOR attempt IN 1..101 LOOP
        EXIT WHEN pg_catalog.pg_try_advisory_xact_lock(pg_catalog.hashtext('platform.ensure_monthly_partitions:' || parent::oid::text));
        IF attempt > 100 THEN
            RAISE EXCEPTION 'platform.ensure_monthly_partitions: another session has held its lock for 10 s'
                USING ERRCODE = 'lock_not_available',
                      HINT = 'Another run is in progress, or a session holds the lock: see '
                             'pg_locks WHERE locktype = ''advisory''; try again later.';
        END IF;
        PERFORM pg_catalog.pg_sleep(0.1);
    END LOOP;

    IF pg_catalog.to_regclass(format('%I.%I', nsp, default_part)) IS NULL THEN
        EXECUTE format('CREATE TABLE %I.%I PARTITION OF %s DEFAULT', nsp, default_part, parent);
        partition_name := default_part; action := 'created'; rows_moved := 0;
        RETURN NEXT;
    END IF;

    FOR i IN 0..months_ahead LOOP
        m := (first_month + pg_catalog.make_interval(months => i))::date;
        part := base || '_' || pg_catalog.to_char(m, 'YYYY_MM');
        CONTINUE WHEN pg_catalog.to_regclass(format('%I.%I', nsp, part)) IS NOT NULL;
        lo := m::timestamp AT TIME ZONE 'UTC';
        hi := (m + interval '1 month')::timestamp AT TIME ZONE 'UTC';
        EXECUTE format('SELECT EXISTS (SELECT FROM %I.%I WHERE %I >= $1 AND %I < $2)',
                       nsp, default_part, key_column, key_column)
            INTO busy USING lo, hi;
        IF NOT busy THEN
            EXECUTE format('CREATE TABLE %I.%I PARTITION OF %s FOR VALUES FROM (%L) TO (%L)',
                           nsp, part, parent, lo, hi);
            n := 0;
        ELSE
            -- The default partition holds rows of this month: build the partition beside
            -- it, move the rows, attach it. The delete runs with session_replication_role
            -- = replica so that no trigger (audit_log's append-only guard, foreign-key
            -- actions) fires for rows that only change partition; that needs a superuser
            -- or SET privilege on the parameter.
            EXECUTE format('CREATE TABLE %I.%I (LIKE %s INCLUDING DEFAULTS '
                           'INCLUDING CONSTRAINTS INCLUDING GENERATED)', nsp, part, parent);
            EXECUTE format('INSERT INTO %I.%I SELECT * FROM %I.%I WHERE %I >= $1 AND %I < $2',
                           nsp, part, nsp, default_part, key_column, key_column)
                USING lo, hi;
            GET DIAGNOSTICS n = ROW_COUNT;
            BEGIN
                PERFORM pg_catalog.set_config('session_replication_role', 'replica', true);
            EXCEPTION WHEN insufficient_privilege THEN
                RAISE EXCEPTION 'the default partition of % holds % rows of %; moving them needs a superuser',
                    parent, n, pg_catalog.to_char(m, 'YYYY-MM')
                    USING HINT = 'Run this as a superuser, or GRANT SET ON PARAMETER session_replication_role to the caller.';
            END;
            EXECUTE format('DELETE FROM %I.%I WHERE %I >= $1 AND %I < $2',
                           nsp, default_part, key_column, key_column) USING lo, hi;
            PERFORM pg_catalog.set_config('session_replication_role', 'origin', true);
            EXECUTE format('ALTER TABLE %s ATTACH PARTITION %I.%I FOR VALUES FROM (%L) TO (%L)',
                           parent, nsp, part, lo, hi);
        END IF;
        partition_name := part; action := 'created'; rows_moved := n;
        RETURN NEXT;
    END LOOP;

    -- Partitions get the parent's RLS and policies, no grants, and the parent's owner.
    PERFORM platform.protect_partitions(parent);
    FOR part IN
        SELECT c.relname FROM pg_catalog.pg_partition_tree(parent) t
        JOIN pg_catalog.pg_class c ON c.oid = t.relid
        WHERE t.relid <> parent AND pg_catalog.pg_get_userbyid(c.relowner) <> owner_name
    LOOP
        EXECUTE format('ALTER TABLE %I.%I OWNER TO %I', nsp, part, owner_name);
    END LOOP;
END
$fn$""",
    comment="Create the default partition and monthly partitions <parent>_YYYY_MM of a table RANGE-partitioned by one timestamptz column, from start_month (default: this month, UTC) to months_ahead months later, moving rows of those months out of the default partition. Idempotent.",
)

refresh_performance_views_function = Function(
    name="platform.refresh_performance_views",
    arguments="",
    definition="""RETURNS TABLE (view_name text, was_concurrent boolean, duration_ms double precision)
LANGUAGE plpgsql
AS $fn$
DECLARE
    v text;
    started timestamptz;
    populated boolean;
BEGIN
    -- Two refreshes of the same view would only queue behind each other.
    FOR attempt IN 1..101 LOOP
        EXIT WHEN pg_catalog.pg_try_advisory_xact_lock(pg_catalog.hashtext('platform.refresh_performance_views'));
        IF attempt > 100 THEN
            RAISE EXCEPTION 'platform.refresh_performance_views: another session has held its lock for 10 s'
                USING ERRCODE = 'lock_not_available',
                      HINT = 'Another run is in progress, or a session holds the lock: see '
                             'pg_locks WHERE locktype = ''advisory''; try again later.';
        END IF;
        PERFORM pg_catalog.pg_sleep(0.1);
    END LOOP;
    FOREACH v IN ARRAY ARRAY['platform.tenant_performance_summary', 'platform.lead_funnel_monthly', 'platform.form_submissions_daily'] LOOP
        started := pg_catalog.clock_timestamp();
        SELECT m.ispopulated INTO populated FROM pg_catalog.pg_matviews m
        WHERE format('%I.%I', m.schemaname, m.matviewname) = v;
        -- CONCURRENTLY keeps readers unblocked; it needs a populated view.
        IF populated THEN
            EXECUTE format('REFRESH MATERIALIZED VIEW CONCURRENTLY %s', v);
        ELSE
            EXECUTE format('REFRESH MATERIALIZED VIEW %s', v);
        END IF;
        view_name := v;
        was_concurrent := populated;
        duration_ms := extract(epoch FROM pg_catalog.clock_timestamp() - started) * 1000;
        INSERT INTO platform.matview_refresh_log
            (view_name, started_at, finished_at, duration_ms, was_concurrent, row_count)
        SELECT v, started, pg_catalog.clock_timestamp(), refresh_performance_views.duration_ms,
               populated, c.reltuples::bigint
        FROM pg_catalog.pg_class c WHERE c.oid = v::regclass;
        RETURN NEXT;
    END LOOP;
    DELETE FROM platform.matview_refresh_log WHERE finished_at < now() - interval '30 days';
END
$fn$""",
    comment="Refresh every dashboard materialized view (concurrently: readers are never blocked) and log it.",
)

audit_row_change_function = Function(
    name="platform.audit_row_change",
    arguments="",
    definition="""RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- A caller with row_security = off (a BYPASSRLS import that wants an error rather than
-- silent filtering) must still be audited: the insert below runs under audit_log's RLS.
SET row_security = on
AS $fn$
DECLARE
    -- TG_ARGV[0]: the audited table (a partition's cloned trigger reports its parent);
    -- TG_ARGV[1]: its key columns without tenant_id, comma-separated;
    -- TG_ARGV[2]: columns never recorded (generated ones, secrets), comma-separated.
    key_columns text[] := pg_catalog.string_to_array(TG_ARGV[1], ',');
    skipped text[] := pg_catalog.string_to_array(TG_ARGV[2], ',');
    old_row jsonb;
    new_row jsonb;
    old_values jsonb;
    new_values jsonb;
    row_key jsonb;
    tenants uuid[];
    tenant uuid;
    claimed uuid := platform.current_user_id();
    actor uuid;
BEGIN
    IF TG_OP = 'INSERT' THEN
        new_row := pg_catalog.to_jsonb(NEW) - skipped;
        new_values := new_row - key_columns - 'tenant_id';
        tenants := ARRAY[NEW.tenant_id];
    ELSIF TG_OP = 'DELETE' THEN
        old_row := pg_catalog.to_jsonb(OLD) - skipped;
        old_values := old_row - key_columns - 'tenant_id';
        tenants := ARRAY[OLD.tenant_id];
    ELSE
        old_row := pg_catalog.to_jsonb(OLD) - skipped;
        new_row := pg_catalog.to_jsonb(NEW) - skipped;
        SELECT pg_catalog.jsonb_object_agg(n.key, o.value),
               pg_catalog.jsonb_object_agg(n.key, n.value)
        INTO old_values, new_values
        FROM pg_catalog.jsonb_each(new_row) n
        JOIN pg_catalog.jsonb_each(old_row) o ON o.key = n.key
        WHERE n.value IS DISTINCT FROM o.value;
        IF new_values IS NULL THEN
            RETURN NULL;  -- nothing changed: nothing to record
        END IF;
        -- A row moved to another tenant (platform-wide work only: RLS forbids it to
        -- tenants) is recorded in both tenants' trails.
        tenants := CASE WHEN OLD.tenant_id IS DISTINCT FROM NEW.tenant_id
                        THEN ARRAY[OLD.tenant_id, NEW.tenant_id]
                        ELSE ARRAY[NEW.tenant_id] END;
    END IF;
    row_key := CASE WHEN pg_catalog.cardinality(key_columns) = 1
                    THEN pg_catalog.jsonb_build_object(
                             key_columns[1], coalesce(old_row, new_row) -> key_columns[1])
                    ELSE (SELECT pg_catalog.jsonb_object_agg(k, coalesce(old_row, new_row) -> k)
                          FROM pg_catalog.unnest(key_columns) k) END;
    -- One INSERT ... VALUES per tenant (nearly always one): cheaper per row than an
    -- INSERT ... SELECT over the array.
    FOREACH tenant IN ARRAY tenants LOOP
        -- The claimed user counts only if it is a user of this row's tenant.
        actor := NULL;
        IF claimed IS NOT NULL AND EXISTS (
            SELECT FROM public.users u WHERE u.tenant_id = tenant AND u.id = claimed
        ) THEN
            actor := claimed;
        END IF;
        INSERT INTO public.audit_log
            (tenant_id, table_name, row_key, action, old_values, new_values,
             actor_id, claimed_actor_id, db_user, transaction_id, changed_at)
        VALUES (tenant, TG_ARGV[0], row_key, TG_OP, old_values, new_values,
                actor, CASE WHEN actor IS NULL THEN claimed END, session_user,
                pg_catalog.pg_current_xact_id()::text::bigint, pg_catalog.now());
    END LOOP;
    RETURN NULL;
END
$fn$""",
    comment="Trigger: append the change of one row of a tenant table to public.audit_log.",
)


def upgrade() -> None:
    # ### commands auto generated by Alembic - please adjust! ###
    op.add_column("audit_log", sa.Column("claimed_actor_id", sa.Uuid(), nullable=True))
    create_entity(temporary_objects_public_revocation)
    create_entity(large_objects_public_revocation)
    create_entity(notifications_public_revocation)
    create_entity(advisory_locks_public_revocation)
    create_entity(signalling_backends_public_revocation)
    create_entity(other_sessions_activity_public_revocation)
    create_entity(prepared_statement_names_public_revocation)
    create_entity(settings_from_expressions_public_revocation)
    create_entity(random_seed_public_revocation)
    create_entity(inline_code_public_revocation)
    replace_entity(
        ensure_monthly_partitions_function,
        replaces="e5f7a9b1d407.ensure_monthly_partitions_function",
    )
    replace_entity(
        refresh_performance_views_function,
        replaces="e5f7a9b1d407.refresh_performance_views_function",
    )
    replace_entity(audit_row_change_function, replaces="e5f7a9b1d407.audit_row_change_function")
    # ### end Alembic commands ###


def downgrade() -> None:
    # ### commands auto generated by Alembic - please adjust! ###
    replace_entity(audit_row_change_function, replace_with="e5f7a9b1d407.audit_row_change_function")
    replace_entity(
        refresh_performance_views_function,
        replace_with="e5f7a9b1d407.refresh_performance_views_function",
    )
    replace_entity(
        ensure_monthly_partitions_function,
        replace_with="e5f7a9b1d407.ensure_monthly_partitions_function",
    )
    drop_entity(inline_code_public_revocation)
    drop_entity(random_seed_public_revocation)
    drop_entity(settings_from_expressions_public_revocation)
    drop_entity(prepared_statement_names_public_revocation)
    drop_entity(other_sessions_activity_public_revocation)
    drop_entity(signalling_backends_public_revocation)
    drop_entity(advisory_locks_public_revocation)
    drop_entity(notifications_public_revocation)
    drop_entity(large_objects_public_revocation)
    drop_entity(temporary_objects_public_revocation)
    op.drop_column("audit_log", "claimed_actor_id")
    # ### end Alembic commands ###
