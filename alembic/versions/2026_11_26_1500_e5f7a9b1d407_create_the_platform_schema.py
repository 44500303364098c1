"""Create the platform schema: roles, tables, row-level security, monitoring, dashboards, audit.

Revision ID: e5f7a9b1d407
Revises:
Create Date: 2026-11-26 15:00:00 UTC

The baseline: the seven revisions of 0.1.0 development squashed into one, frozen. It
keeps the id of their head, so a database already at that head is at this revision and
nothing runs again. Everything it runs is written here, as raw SQL or as entities
(platform_db.ddl.entities) defined at module level; nothing is read from the package's
current definitions, so editing platform_db/ddl/ never changes what this revision does.
A later revision that changes one of these objects names it: replaces="e5f7a9b1d407.<name>".

Roles are created only if missing (they are cluster-wide); a pre-existing platform_app
is stripped of anything that would let it bypass RLS. Needs a superuser, or a role with
CREATEROLE for the roles and BYPASSRLS for platform_admin. The tables are new and empty
here, so indexes are built in the transaction (and CONCURRENTLY is not available for
partitioned tables anyway).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from platform_db.ddl.entities import (
    Function,
    MaterializedView,
    PartitionProtection,
    Policy,
    RowLevelSecurity,
    ScheduledJob,
    TableGrants,
    Trigger,
    View,
)
from platform_db.migration.operations import create_entity, drop_entity

revision: str = "e5f7a9b1d407"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = ("platform_db",)
depends_on: str | Sequence[str] | None = None

CREATE_ROLES = """
DO $roles$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT * FROM (VALUES ('platform_owner', false), ('platform_app', false),
                              ('platform_admin', true)) AS v(name, bypass)
    LOOP
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = r.name) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN %s', r.name,
                           CASE WHEN r.bypass THEN 'BYPASSRLS' ELSE 'NOBYPASSRLS' END);
            EXECUTE format('COMMENT ON ROLE %I IS %L', r.name, 'created by platform-db');
        END IF;
    END LOOP;

    -- A pre-existing role must not be able to defeat isolation.
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'platform_app'
               AND (rolsuper OR rolbypassrls OR rolcreaterole OR rolcreatedb)) THEN
        ALTER ROLE platform_app NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOCREATEDB;
    END IF;
    IF pg_catalog.pg_has_role('platform_app', 'platform_owner', 'MEMBER')
       OR pg_catalog.pg_has_role('platform_app', 'platform_admin', 'MEMBER') THEN
        RAISE EXCEPTION 'platform_app is a member of platform_owner or platform_admin'
            USING HINT = 'Revoke that membership: request-serving logins must be subject to RLS.';
    END IF;
    IF NOT (SELECT rolbypassrls FROM pg_catalog.pg_roles WHERE rolname = 'platform_admin') THEN
        ALTER ROLE platform_admin BYPASSRLS;
    END IF;
END
$roles$
"""

DROP_ROLES = """
DO $roles$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT rolname FROM pg_catalog.pg_roles
        WHERE rolname IN ('platform_app', 'platform_admin', 'platform_owner')
          AND pg_catalog.shobj_description(oid, 'pg_authid') = 'created by platform-db'
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

CREATE_PLATFORM_SCHEMA = """
CREATE SCHEMA IF NOT EXISTS platform AUTHORIZATION platform_owner;
GRANT USAGE ON SCHEMA platform TO platform_app, platform_admin;
GRANT USAGE ON SCHEMA public TO platform_app, platform_admin;
"""

PERFORMANCE_METRICS = """
CREATE TABLE platform.performance_metrics (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    captured_at timestamptz NOT NULL DEFAULT now(),
    metric text NOT NULL,
    value double precision,
    details jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX ix_performance_metrics_captured ON platform.performance_metrics (captured_at);
CREATE INDEX ix_performance_metrics_metric ON platform.performance_metrics (metric, captured_at);
COMMENT ON TABLE platform.performance_metrics IS
    'Snapshots written by platform.snapshot_performance_metrics(); pruned by cleanup_old_performance_metrics().';
REVOKE ALL ON platform.performance_metrics FROM PUBLIC;
GRANT SELECT ON platform.performance_metrics TO platform_admin;
"""

GRANT_READ_ALL_STATS = """
-- platform_admin sees other sessions' statements in the monitoring views. Left in
-- place by the downgrade: another database of the cluster may rely on it.
GRANT pg_read_all_stats TO platform_admin;
"""

REFRESH_LOG = """
CREATE TABLE platform.matview_refresh_log (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    view_name text NOT NULL,
    started_at timestamptz NOT NULL,
    finished_at timestamptz NOT NULL,
    duration_ms double precision NOT NULL,
    was_concurrent boolean NOT NULL,
    row_count bigint
);
CREATE INDEX ix_matview_refresh_log_view ON platform.matview_refresh_log (view_name, finished_at);
REVOKE ALL ON platform.matview_refresh_log FROM PUBLIC;
GRANT SELECT ON platform.matview_refresh_log TO platform_admin;
"""

CRON_JOB_TYPE = """
CREATE TYPE platform.cron_job AS (name text, schedule text, command text);
"""

current_tenant_id_function = Function(
    name="platform.current_tenant_id",
    arguments="",
    definition="""RETURNS uuid
    LANGUAGE sql STABLE PARALLEL SAFE
    RETURN nullif(pg_catalog.current_setting('app.current_tenant_id', true), '')::uuid""",
    execute=("platform_app", "platform_admin"),
    comment="The tenant of the current transaction (app.current_tenant_id), NULL when none is set.",
)

current_user_id_function = Function(
    name="platform.current_user_id",
    arguments="",
    definition="""RETURNS uuid
    LANGUAGE sql STABLE PARALLEL SAFE
    RETURN nullif(pg_catalog.current_setting('app.current_user_id', true), '')::uuid""",
    execute=("platform_app", "platform_admin"),
    comment="The acting user of the current transaction (app.current_user_id), NULL when none is set.",
)

protect_partitions_function = Function(
    name="platform.protect_partitions",
    arguments="parent regclass",
    definition="""RETURNS integer
LANGUAGE plpgsql
AS $fn$
DECLARE
    part regclass;
    pol record;
    n integer := 0;
    parent_rls boolean;
    parent_force boolean;
BEGIN
    SELECT relrowsecurity, relforcerowsecurity INTO parent_rls, parent_force
    FROM pg_catalog.pg_class WHERE oid = parent;
    FOR part IN
        SELECT relid FROM pg_catalog.pg_partition_tree(parent) WHERE relid <> parent
    LOOP
        IF parent_rls THEN
            EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', part);
        END IF;
        IF parent_force THEN
            EXECUTE format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', part);
        END IF;
        FOR pol IN
            SELECT p.polname,
                   CASE p.polcmd WHEN 'r' THEN 'SELECT' WHEN 'a' THEN 'INSERT'
                                 WHEN 'w' THEN 'UPDATE' WHEN 'd' THEN 'DELETE'
                                 ELSE 'ALL' END AS cmd,
                   CASE WHEN p.polpermissive THEN 'PERMISSIVE' ELSE 'RESTRICTIVE' END AS kind,
                   CASE WHEN p.polroles = '{0}' THEN 'PUBLIC'
                        ELSE (SELECT string_agg(quote_ident(rolname), ', ')
                              FROM pg_catalog.pg_roles WHERE oid = ANY (p.polroles)) END AS roles,
                   pg_catalog.pg_get_expr(p.polqual, p.polrelid) AS qual,
                   pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid) AS check_expr
            FROM pg_catalog.pg_policy p
            WHERE p.polrelid = parent
              AND NOT EXISTS (SELECT FROM pg_catalog.pg_policy c
                              WHERE c.polrelid = part AND c.polname = p.polname)
        LOOP
            EXECUTE format('CREATE POLICY %I ON %s AS %s FOR %s TO %s%s%s',
                           pol.polname, part, pol.kind, pol.cmd, pol.roles,
                           CASE WHEN pol.qual IS NULL THEN ''
                                ELSE format(' USING (%s)', pol.qual) END,
                           CASE WHEN pol.check_expr IS NULL THEN ''
                                ELSE format(' WITH CHECK (%s)', pol.check_expr) END);
        END LOOP;
        -- Reached through the parent only.
        EXECUTE format('REVOKE ALL ON %s FROM PUBLIC, platform_app', part);
        n := n + 1;
    END LOOP;
    RETURN n;
END
$fn$""",
    comment="Give every partition below parent the parent's RLS flags and policies and no app grants.",
)

unprotect_partitions_function = Function(
    name="platform.unprotect_partitions",
    arguments="parent regclass",
    definition="""RETURNS integer
LANGUAGE plpgsql
AS $fn$
DECLARE
    part regclass;
    pol record;
    n integer := 0;
BEGIN
    FOR part IN
        SELECT relid FROM pg_catalog.pg_partition_tree(parent) WHERE relid <> parent
    LOOP
        FOR pol IN SELECT polname FROM pg_catalog.pg_policy WHERE polrelid = part LOOP
            EXECUTE format('DROP POLICY %I ON %s', pol.polname, part);
        END LOOP;
        EXECUTE format('ALTER TABLE %s NO FORCE ROW LEVEL SECURITY', part);
        EXECUTE format('ALTER TABLE %s DISABLE ROW LEVEL SECURITY', part);
        n := n + 1;
    END LOOP;
    RETURN n;
END
$fn$""",
)

ensure_form_submission_partitions_function = Function(
    name="platform.ensure_form_submission_partitions",
    arguments="months_ahead integer DEFAULT 3, start_month date DEFAULT NULL",
    definition="""RETURNS TABLE (partition_name text, action text, rows_moved bigint)
LANGUAGE plpgsql
AS $fn$
DECLARE
    first_month date;
    m date;
    lo timestamptz;
    hi timestamptz;
    part text;
    n bigint;
BEGIN
    IF months_ahead IS NULL OR months_ahead < 0 OR months_ahead > 120 THEN
        RAISE EXCEPTION 'months_ahead must be between 0 and 120, got %', months_ahead;
    END IF;
    first_month := date_trunc('month',
        coalesce(start_month, (pg_catalog.now() AT TIME ZONE 'UTC')::date))::date;

    -- Serialise concurrent runs (cron and a deploy at once).
    PERFORM pg_catalog.pg_advisory_xact_lock(
        pg_catalog.hashtext('platform.ensure_form_submission_partitions'));

    IF pg_catalog.to_regclass('public.form_submissions_default') IS NULL THEN
        EXECUTE 'CREATE TABLE public.form_submissions_default PARTITION OF public.form_submissions DEFAULT';
        partition_name := 'form_submissions_default'; action := 'created'; rows_moved := 0;
        RETURN NEXT;
    END IF;

    FOR i IN 0..months_ahead LOOP
        m := (first_month + pg_catalog.make_interval(months => i))::date;
        part := 'form_submissions_' || pg_catalog.to_char(m, 'YYYY_MM');
        CONTINUE WHEN pg_catalog.to_regclass('public.' || part) IS NOT NULL;
        lo := m::timestamp AT TIME ZONE 'UTC';
        hi := (m + interval '1 month')::timestamp AT TIME ZONE 'UTC';

        IF NOT EXISTS (SELECT FROM public.form_submissions_default
                       WHERE created_at >= lo AND created_at < hi) THEN
            EXECUTE format('CREATE TABLE public.%I PARTITION OF public.form_submissions '
                           'FOR VALUES FROM (%L) TO (%L)', part, lo, hi);
            n := 0;
        ELSE
            -- CREATE ... PARTITION OF would fail while the default partition holds rows
            -- of this month: build the partition beside it, move the rows, attach it.
            -- The rows leave the table only for the length of this transaction, so
            -- foreign-key actions (leads referencing a submission) must not fire: the
            -- delete runs with session_replication_role = replica, which needs a
            -- superuser or SET privilege on that parameter (PostgreSQL 15+).
            EXECUTE format('CREATE TABLE public.%I (LIKE public.form_submissions INCLUDING DEFAULTS '
                           'INCLUDING CONSTRAINTS INCLUDING GENERATED)', part);
            EXECUTE format('INSERT INTO public.%I SELECT * FROM public.form_submissions_default '
                           'WHERE created_at >= %L AND created_at < %L', part, lo, hi);
            GET DIAGNOSTICS n = ROW_COUNT;
            BEGIN
                PERFORM pg_catalog.set_config('session_replication_role', 'replica', true);
            EXCEPTION WHEN insufficient_privilege THEN
                RAISE EXCEPTION 'the default partition holds % rows of %; moving them needs a superuser',
                    n, pg_catalog.to_char(m, 'YYYY-MM')
                    USING HINT = 'Run this as a superuser, or GRANT SET ON PARAMETER session_replication_role to the caller.';
            END;
            DELETE FROM public.form_submissions_default WHERE created_at >= lo AND created_at < hi;
            PERFORM pg_catalog.set_config('session_replication_role', 'origin', true);
            EXECUTE format('ALTER TABLE public.form_submissions ATTACH PARTITION public.%I '
                           'FOR VALUES FROM (%L) TO (%L)', part, lo, hi);
        END IF;
        partition_name := part; action := 'created'; rows_moved := n;
        RETURN NEXT;
    END LOOP;

    PERFORM platform.protect_partitions('public.form_submissions'::regclass);
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'platform_owner') THEN
        FOR part IN
            SELECT c.relname FROM pg_catalog.pg_partition_tree('public.form_submissions'::regclass) t
            JOIN pg_catalog.pg_class c ON c.oid = t.relid
            WHERE c.relowner <> 'platform_owner'::regrole
        LOOP
            EXECUTE format('ALTER TABLE public.%I OWNER TO platform_owner', part);
        END LOOP;
    END IF;
END
$fn$""",
    comment="Create the default partition and monthly form_submissions partitions from start_month (default: this month, UTC) to months_ahead months later, moving rows of those months out of the default partition. Idempotent.",
)

tenants_public_table_privileges = TableGrants(
    on="public.tenants",
    role="PUBLIC",
)

tenants_platform_app_table_privileges = TableGrants(
    on="public.tenants",
    role="platform_app",
    privileges=("SELECT",),
)

tenants_platform_admin_table_privileges = TableGrants(
    on="public.tenants",
    role="platform_admin",
    privileges=("SELECT", "INSERT", "UPDATE", "DELETE"),
)

users_row_level_security = RowLevelSecurity(
    on="public.users",
)

users_tenant_isolation_policy = Policy(
    name="tenant_isolation",
    using="tenant_id = platform.current_tenant_id()",
    check="tenant_id = platform.current_tenant_id()",
    on="public.users",
)

users_public_table_privileges = TableGrants(
    on="public.users",
    role="PUBLIC",
)

users_platform_app_table_privileges = TableGrants(
    on="public.users",
    role="platform_app",
    privileges=("SELECT", "INSERT", "UPDATE", "DELETE"),
)

users_platform_admin_table_privileges = TableGrants(
    on="public.users",
    role="platform_admin",
    privileges=("SELECT", "INSERT", "UPDATE", "DELETE"),
)

pages_row_level_security = RowLevelSecurity(
    on="public.pages",
)

pages_tenant_isolation_policy = Policy(
    name="tenant_isolation",
    using="tenant_id = platform.current_tenant_id()",
    check="tenant_id = platform.current_tenant_id()",
    on="public.pages",
)

pages_public_table_privileges = TableGrants(
    on="public.pages",
    role="PUBLIC",
)

pages_platform_app_table_privileges = TableGrants(
    on="public.pages",
    role="platform_app",
    privileges=("SELECT", "INSERT", "UPDATE", "DELETE"),
)

pages_platform_admin_table_privileges = TableGrants(
    on="public.pages",
    role="platform_admin",
    privileges=("SELECT", "INSERT", "UPDATE", "DELETE"),
)

forms_row_level_security = RowLevelSecurity(
    on="public.forms",
)

forms_tenant_isolation_policy = Policy(
    name="tenant_isolation",
    using="tenant_id = platform.current_tenant_id()",
    check="tenant_id = platform.current_tenant_id()",
    on="public.forms",
)

forms_public_table_privileges = TableGrants(
    on="public.forms",
    role="PUBLIC",
)

forms_platform_app_table_privileges = TableGrants(
    on="public.forms",
    role="platform_app",
    privileges=("SELECT", "INSERT", "UPDATE", "DELETE"),
)

forms_platform_admin_table_privileges = TableGrants(
    on="public.forms",
    role="platform_admin",
    privileges=("SELECT", "INSERT", "UPDATE", "DELETE"),
)

leads_row_level_security = RowLevelSecurity(
    on="public.leads",
)

leads_tenant_isolation_policy = Policy(
    name="tenant_isolation",
    using="tenant_id = platform.current_tenant_id()",
    check="tenant_id = platform.current_tenant_id()",
    on="public.leads",
)

leads_public_table_privileges = TableGrants(
    on="public.leads",
    role="PUBLIC",
)

leads_platform_app_table_privileges = TableGrants(
    on="public.leads",
    role="platform_app",
    privileges=("SELECT", "INSERT", "UPDATE", "DELETE"),
)

leads_platform_admin_table_privileges = TableGrants(
    on="public.leads",
    role="platform_admin",
    privileges=("SELECT", "INSERT", "UPDATE", "DELETE"),
)

form_submissions_row_level_security = RowLevelSecurity(
    on="public.form_submissions",
)

form_submissions_tenant_isolation_policy = Policy(
    name="tenant_isolation",
    using="tenant_id = platform.current_tenant_id()",
    check="tenant_id = platform.current_tenant_id()",
    on="public.form_submissions",
)

form_submissions_public_table_privileges = TableGrants(
    on="public.form_submissions",
    role="PUBLIC",
)

form_submissions_platform_app_table_privileges = TableGrants(
    on="public.form_submissions",
    role="platform_app",
    privileges=("SELECT", "INSERT", "UPDATE", "DELETE"),
)

form_submissions_platform_admin_table_privileges = TableGrants(
    on="public.form_submissions",
    role="platform_admin",
    privileges=("SELECT", "INSERT", "UPDATE", "DELETE"),
)

form_submissions_partitions_partition_protection = PartitionProtection("public.form_submissions")

pg_stat_statements_relation_function = Function(
    name="platform.pg_stat_statements_relation",
    arguments="",
    definition="""RETURNS regclass
LANGUAGE plpgsql STABLE
AS $fn$
DECLARE
    rel regclass;
BEGIN
    SELECT format('%I.pg_stat_statements', n.nspname)::regclass INTO rel
    FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
    WHERE e.extname = 'pg_stat_statements';
    IF rel IS NULL
       OR pg_catalog.current_setting('shared_preload_libraries') NOT LIKE '%pg_stat_statements%' THEN
        RETURN NULL;
    END IF;
    RETURN rel;
END
$fn$""",
    execute=("platform_admin",),
)

slow_query_stats_function = Function(
    name="platform.slow_query_stats",
    arguments="min_mean_ms double precision DEFAULT 100",
    definition="""RETURNS TABLE (
    queryid bigint, query text, calls bigint, mean_ms double precision,
    total_ms double precision, rows bigint, cache_hit_ratio double precision
)
LANGUAGE plpgsql STABLE
AS $fn$
DECLARE
    rel regclass := platform.pg_stat_statements_relation();
BEGIN
    IF rel IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY EXECUTE format(
        'SELECT s.queryid, s.query, s.calls, s.mean_exec_time, s.total_exec_time, s.rows,
                CASE WHEN s.shared_blks_hit + s.shared_blks_read = 0 THEN NULL
                     ELSE s.shared_blks_hit::double precision
                          / (s.shared_blks_hit + s.shared_blks_read) END
         FROM %s s
         JOIN pg_catalog.pg_database d ON d.oid = s.dbid AND d.datname = current_database()
         WHERE s.mean_exec_time > $1
         ORDER BY s.mean_exec_time DESC
         LIMIT 100', rel)
    USING min_mean_ms;
END
$fn$""",
    execute=("platform_admin",),
)

slow_queries_view = View(
    name="platform.slow_queries",
    query="SELECT * FROM platform.slow_query_stats(100)",
    readers=("platform_admin",),
    comment="Statements of this database whose mean execution time is over 100 ms (pg_stat_statements; empty without it).",
)

index_usage_stats_view = View(
    name="platform.index_usage_stats",
    query="""SELECT s.schemaname AS schema_name,
       s.relname AS table_name,
       s.indexrelname AS index_name,
       coalesce(pi.inhparent::regclass::text, s.indexrelname) AS parent_index,
       coalesce(pt.inhparent::regclass::text, s.relname) AS parent_table,
       s.idx_scan,
       s.idx_tup_read,
       s.idx_tup_fetch,
       pg_catalog.pg_relation_size(s.indexrelid) AS index_bytes,
       i.indisunique AS is_unique,
       i.indisprimary AS is_primary,
       CASE WHEN s.idx_scan = 0 THEN 'UNUSED'
            WHEN s.idx_scan < 100 THEN 'LOW_USAGE'
            ELSE 'HIGH_USAGE' END AS usage
FROM pg_catalog.pg_stat_user_indexes s
JOIN pg_catalog.pg_index i ON i.indexrelid = s.indexrelid
LEFT JOIN pg_catalog.pg_inherits pi ON pi.inhrelid = s.indexrelid
LEFT JOIN pg_catalog.pg_inherits pt ON pt.inhrelid = s.relid
WHERE s.schemaname IN ('public', 'platform')""",
    readers=("platform_admin",),
)

table_bloat_stats_view = View(
    name="platform.table_bloat_stats",
    query="""SELECT s.schemaname AS schema_name,
       s.relname AS table_name,
       s.n_live_tup AS live_rows,
       s.n_dead_tup AS dead_rows,
       CASE WHEN s.n_live_tup + s.n_dead_tup = 0 THEN 0
            ELSE round(s.n_dead_tup::numeric / (s.n_live_tup + s.n_dead_tup), 4) END
           AS dead_ratio,
       pg_catalog.pg_total_relation_size(s.relid) AS total_bytes,
       s.seq_scan, s.idx_scan,
       s.last_vacuum, s.last_autovacuum, s.last_analyze, s.last_autoanalyze
FROM pg_catalog.pg_stat_user_tables s
WHERE s.schemaname IN ('public', 'platform')""",
    readers=("platform_admin",),
)

cache_hit_ratios_view = View(
    name="platform.cache_hit_ratios",
    query="""SELECT 'tables'::text AS kind,
       sum(heap_blks_hit)::bigint AS hits,
       sum(heap_blks_read)::bigint AS reads,
       CASE WHEN sum(heap_blks_hit) + sum(heap_blks_read) = 0 THEN NULL
            ELSE round(sum(heap_blks_hit) / (sum(heap_blks_hit) + sum(heap_blks_read)), 4)
       END AS ratio
FROM pg_catalog.pg_statio_user_tables
UNION ALL
SELECT 'indexes', sum(idx_blks_hit)::bigint, sum(idx_blks_read)::bigint,
       CASE WHEN sum(idx_blks_hit) + sum(idx_blks_read) = 0 THEN NULL
            ELSE round(sum(idx_blks_hit) / (sum(idx_blks_hit) + sum(idx_blks_read)), 4) END
FROM pg_catalog.pg_statio_user_indexes
UNION ALL
SELECT 'database', blks_hit, blks_read,
       CASE WHEN blks_hit + blks_read = 0 THEN NULL
            ELSE round(blks_hit::numeric / (blks_hit + blks_read), 4) END
FROM pg_catalog.pg_stat_database WHERE datname = current_database()""",
    readers=("platform_admin",),
)

blocking_locks_view = View(
    name="platform.blocking_locks",
    query="""SELECT blocked.pid AS blocked_pid,
       blocked.usename AS blocked_user,
       blocked.application_name AS blocked_application,
       now() - blocked.query_start AS waiting_for,
       blocked.query AS blocked_query,
       blocking.pid AS blocking_pid,
       blocking.usename AS blocking_user,
       blocking.application_name AS blocking_application,
       blocking.state AS blocking_state,
       blocking.query AS blocking_query
FROM pg_catalog.pg_stat_activity blocked
CROSS JOIN LATERAL unnest(pg_catalog.pg_blocking_pids(blocked.pid)) AS b(pid)
JOIN pg_catalog.pg_stat_activity blocking ON blocking.pid = b.pid
WHERE blocked.datname = current_database()""",
    readers=("platform_admin",),
)

partition_status_view = View(
    name="platform.partition_status",
    query="""SELECT c.relname AS partition_name,
       pg_catalog.pg_get_expr(c.relpartbound, c.oid) AS bounds,
       c.relpartbound IS NOT NULL
           AND pg_catalog.pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT' AS is_default,
       c.reltuples::bigint AS estimated_rows,
       c.relrowsecurity AND c.relforcerowsecurity AS rls_forced,
       pg_catalog.pg_total_relation_size(c.oid) AS total_bytes
FROM pg_catalog.pg_inherits i
JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'public.form_submissions'::regclass""",
    readers=("platform_admin",),
)

check_performance_alerts_function = Function(
    name="platform.check_performance_alerts",
    arguments="cache_hit_threshold double precision DEFAULT 0.95, slow_query_ms double precision DEFAULT 100, dead_ratio_threshold double precision DEFAULT 0.2, min_dead_rows bigint DEFAULT 1000, connection_ratio_threshold double precision DEFAULT 0.8, blocked_seconds double precision DEFAULT 5, min_table_scans bigint DEFAULT 1000, min_partitions_ahead integer DEFAULT 2, seq_rows_threshold bigint DEFAULT 1000000, min_live_rows bigint DEFAULT 10000",
    definition=r"""RETURNS TABLE (metric text, subject text, value numeric, threshold numeric,
               severity text, detail text)
LANGUAGE plpgsql STABLE
AS $fn$
DECLARE
    r record;
    n bigint;
    ratio numeric;
    ahead integer;
BEGIN
    -- Buffer cache: only meaningful once enough blocks were asked for.
    FOR r IN SELECT * FROM platform.cache_hit_ratios
             WHERE kind IN ('tables', 'indexes') AND hits + reads >= 10000 LOOP
        IF r.ratio < cache_hit_threshold THEN
            metric := 'cache_hit_ratio'; subject := r.kind; value := r.ratio;
            threshold := cache_hit_threshold;
            severity := CASE WHEN r.ratio < cache_hit_threshold - 0.1 THEN 'critical' ELSE 'warning' END;
            detail := format('%s of %s %s block reads came from shared_buffers',
                             r.hits, r.hits + r.reads, r.kind);
            RETURN NEXT;
        END IF;
    END LOOP;

    IF platform.pg_stat_statements_relation() IS NULL THEN
        metric := 'pg_stat_statements'; subject := NULL; value := NULL; threshold := NULL;
        severity := 'info';
        detail := 'pg_stat_statements is not available (add it to shared_preload_libraries and '
                  'CREATE EXTENSION pg_stat_statements): slow-query alerts are off';
        RETURN NEXT;
    ELSE
        FOR r IN SELECT * FROM platform.slow_query_stats(slow_query_ms) LIMIT 20 LOOP
            metric := 'slow_query'; subject := r.queryid::text;
            value := round(r.mean_ms::numeric, 1); threshold := slow_query_ms::numeric;
            severity := CASE WHEN r.mean_ms > 10 * slow_query_ms THEN 'critical' ELSE 'warning' END;
            detail := format('%s calls, mean %s ms: %s', r.calls, round(r.mean_ms::numeric, 1),
                             left(regexp_replace(r.query, '\s+', ' ', 'g'), 200));
            RETURN NEXT;
        END LOOP;
    END IF;

    -- An index nobody uses on a table that is being read: it only costs writes.
    FOR r IN
        SELECT u.parent_index, u.parent_table, sum(u.index_bytes) AS bytes
        FROM platform.index_usage_stats u
        JOIN platform.table_bloat_stats t
          ON t.schema_name = u.schema_name AND t.table_name = u.table_name
        WHERE NOT u.is_unique AND NOT u.is_primary
        GROUP BY u.parent_index, u.parent_table
        HAVING sum(u.idx_scan) = 0 AND sum(t.seq_scan + coalesce(t.idx_scan, 0)) >= min_table_scans
    LOOP
        metric := 'unused_index'; subject := r.parent_index; value := 0; threshold := 0;
        severity := 'warning';
        detail := format('never scanned since statistics were reset, on a busy table %s (%s)',
                         r.parent_table, pg_catalog.pg_size_pretty(r.bytes));
        RETURN NEXT;
    END LOOP;

    -- A big table read mostly by sequential scans: usually a query without a usable index.
    FOR r IN
        SELECT s.schemaname, s.relname, s.seq_scan, s.seq_tup_read, coalesce(s.idx_scan, 0) AS idx_scan,
               s.n_live_tup
        FROM pg_catalog.pg_stat_user_tables s
        WHERE s.schemaname IN ('public', 'platform')
          AND s.n_live_tup >= min_live_rows
          AND s.seq_tup_read >= seq_rows_threshold
          AND s.seq_scan > coalesce(s.idx_scan, 0)
    LOOP
        metric := 'seq_scan_heavy'; subject := r.schemaname || '.' || r.relname;
        value := r.seq_tup_read; threshold := seq_rows_threshold; severity := 'warning';
        detail := format('%s sequential scans read %s rows (%s index scans) of a %s-row table: '
                         'a query lacks a usable index (see slow_queries)',
                         r.seq_scan, r.seq_tup_read, r.idx_scan, r.n_live_tup);
        RETURN NEXT;
    END LOOP;

    FOR r IN SELECT * FROM platform.table_bloat_stats
             WHERE dead_rows >= min_dead_rows AND dead_ratio > dead_ratio_threshold LOOP
        metric := 'table_bloat'; subject := r.schema_name || '.' || r.table_name;
        value := r.dead_ratio; threshold := dead_ratio_threshold;
        severity := CASE WHEN r.dead_ratio > 0.5 THEN 'critical' ELSE 'warning' END;
        detail := format('%s dead of %s rows; last vacuum %s', r.dead_rows,
                         r.dead_rows + r.live_rows,
                         coalesce(greatest(r.last_vacuum, r.last_autovacuum)::text, 'never'));
        RETURN NEXT;
    END LOOP;

    SELECT count(*) INTO n FROM pg_catalog.pg_stat_activity WHERE backend_type = 'client backend';
    ratio := round(n::numeric / pg_catalog.current_setting('max_connections')::numeric, 4);
    IF ratio >= connection_ratio_threshold THEN
        metric := 'connections'; subject := NULL; value := ratio;
        threshold := connection_ratio_threshold;
        severity := CASE WHEN ratio >= 0.95 THEN 'critical' ELSE 'warning' END;
        detail := format('%s of max_connections = %s in use', n,
                         pg_catalog.current_setting('max_connections'));
        RETURN NEXT;
    END IF;

    SELECT count(DISTINCT blocked_pid) INTO n FROM platform.blocking_locks
    WHERE waiting_for > make_interval(secs => blocked_seconds);
    IF n > 0 THEN
        metric := 'blocked_queries'; subject := NULL; value := n; threshold := 0;
        severity := 'warning';
        detail := format('%s sessions waiting more than %s s on locks (see platform.blocking_locks)',
                         n, blocked_seconds);
        RETURN NEXT;
    END IF;

    -- Partition upkeep: rows piling up in the default partition, or months running out.
    SELECT count(*) INTO n FROM public.form_submissions_default;
    IF n > 0 THEN
        metric := 'default_partition_rows'; subject := 'form_submissions_default'; value := n;
        threshold := 0; severity := 'warning';
        detail := 'rows outside every monthly partition: run platform-db maintain '
                  '(platform.ensure_form_submission_partitions) to give them their months';
        RETURN NEXT;
    END IF;
    SELECT count(*) INTO ahead FROM platform.partition_status p
    WHERE NOT p.is_default
      AND substring(p.partition_name from '(\d{4}_\d{2})$')
          > to_char(now() AT TIME ZONE 'UTC', 'YYYY_MM');
    IF ahead < min_partitions_ahead THEN
        metric := 'partitions_ahead'; subject := 'form_submissions'; value := ahead;
        threshold := min_partitions_ahead; severity := CASE WHEN ahead = 0 THEN 'critical' ELSE 'warning' END;
        detail := format('only %s monthly partitions exist after the current month', ahead);
        RETURN NEXT;
    END IF;
END
$fn$""",
    execute=("platform_admin",),
)

snapshot_performance_metrics_function = Function(
    name="platform.snapshot_performance_metrics",
    arguments="",
    definition="""RETURNS integer
LANGUAGE plpgsql
AS $fn$
DECLARE
    n integer;
BEGIN
    INSERT INTO platform.performance_metrics (metric, value, details)
    SELECT 'cache_hit_ratio_' || kind, ratio, jsonb_build_object('hits', hits, 'reads', reads)
    FROM platform.cache_hit_ratios
    UNION ALL
    SELECT 'connections', count(*), jsonb_build_object(
               'max_connections', pg_catalog.current_setting('max_connections')::int)
    FROM pg_catalog.pg_stat_activity WHERE backend_type = 'client backend'
    UNION ALL
    SELECT 'dead_rows', sum(dead_rows), jsonb_build_object('tables', count(*))
    FROM platform.table_bloat_stats
    UNION ALL
    SELECT 'database_bytes', pg_catalog.pg_database_size(current_database()), '{}'::jsonb
    UNION ALL
    SELECT 'slow_queries', count(*), jsonb_build_object(
               'pg_stat_statements', platform.pg_stat_statements_relation() IS NOT NULL)
    FROM platform.slow_query_stats(100)
    UNION ALL
    SELECT 'alerts', count(*), coalesce(jsonb_object_agg(severity, c), '{}'::jsonb)
    FROM (SELECT severity, count(*) AS c FROM platform.check_performance_alerts() GROUP BY severity) a;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$fn$""",
)

cleanup_old_performance_metrics_function = Function(
    name="platform.cleanup_old_performance_metrics",
    arguments="retention interval DEFAULT '30 days'",
    definition="""RETURNS bigint
LANGUAGE plpgsql
AS $fn$
DECLARE
    n bigint;
BEGIN
    IF retention IS NULL OR retention < interval '1 hour' THEN
        RAISE EXCEPTION 'retention must be at least 1 hour, got %', retention;
    END IF;
    DELETE FROM platform.performance_metrics WHERE captured_at < now() - retention;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$fn$""",
)

retire_form_submission_partitions_function = Function(
    name="platform.retire_form_submission_partitions",
    arguments="retention interval, drop_tables boolean DEFAULT false",
    definition=r"""RETURNS TABLE (partition_name text, action text, links_cleared bigint)
LANGUAGE plpgsql
AS $fn$
DECLARE
    r record;
    cutoff timestamptz;
    n bigint;
BEGIN
    IF retention IS NULL OR retention < interval '1 month' THEN
        RAISE EXCEPTION 'retention must be at least 1 month, got %', retention;
    END IF;
    cutoff := pg_catalog.now() - retention;
    PERFORM pg_catalog.set_config('lock_timeout', '5s', true);
    PERFORM pg_catalog.pg_advisory_xact_lock(
        pg_catalog.hashtext('platform.ensure_form_submission_partitions'));

    FOR r IN
        SELECT c.relname,
               (regexp_match(pg_catalog.pg_get_expr(c.relpartbound, c.oid),
                             'FROM \(''([^'']+)''\) TO \(''([^'']+)''\)')) AS b
        FROM pg_catalog.pg_inherits i
        JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'public.form_submissions'::regclass
          AND pg_catalog.pg_get_expr(c.relpartbound, c.oid) <> 'DEFAULT'
        ORDER BY c.relname
    LOOP
        CONTINUE WHEN r.b IS NULL OR r.b[2]::timestamptz > cutoff;
        -- Leads keep their data; only the link to a submission that leaves the table goes.
        UPDATE public.leads
        SET source_submission_id = NULL, source_submission_created_at = NULL
        WHERE source_submission_created_at >= r.b[1]::timestamptz
          AND source_submission_created_at < r.b[2]::timestamptz;
        GET DIAGNOSTICS n = ROW_COUNT;
        EXECUTE format('ALTER TABLE public.form_submissions DETACH PARTITION public.%I', r.relname);
        IF drop_tables THEN
            EXECUTE format('DROP TABLE public.%I', r.relname);
        END IF;
        partition_name := r.relname;
        action := CASE WHEN drop_tables THEN 'dropped' ELSE 'detached' END;
        links_cleared := n;
        RETURN NEXT;
    END LOOP;
END
$fn$""",
    comment="Detach (or drop) monthly form_submissions partitions that ended more than retention ago. A detached partition stays as a table of its own, still under RLS, for archiving.",
)

tenant_performance_summary_materialized_view = MaterializedView(
    name="tenant_performance_summary",
    query="""SELECT t.id AS tenant_id,
       t.subdomain,
       coalesce(u.total, 0) AS users_total,
       coalesce(u.active, 0) AS users_active,
       coalesce(p.total, 0) AS pages_total,
       coalesce(p.published, 0) AS pages_published,
       coalesce(f.total, 0) AS forms_total,
       coalesce(f.active, 0) AS forms_active,
       coalesce(l.total, 0) AS leads_total,
       coalesce(l.new, 0) AS leads_new,
       coalesce(l.contacted, 0) AS leads_contacted,
       coalesce(l.qualified, 0) AS leads_qualified,
       coalesce(l.converted, 0) AS leads_converted,
       coalesce(l.lost, 0) AS leads_lost,
       CASE WHEN coalesce(l.total, 0) = 0 THEN 0::numeric
            ELSE round(l.converted::numeric / l.total, 4) END AS conversion_rate,
       coalesce(s.total, 0) AS submissions_total,
       coalesce(s.last_30_days, 0) AS submissions_30d,
       greatest(t.updated_at, u.last_change, p.last_change, f.last_change, l.last_change,
                s.last_change) AS last_activity_at,
       now() AS refreshed_at
FROM public.tenants t
LEFT JOIN (SELECT tenant_id, count(*) AS total, count(*) FILTER (WHERE is_active) AS active,
                  max(greatest(updated_at, last_login_at)) AS last_change
           FROM public.users GROUP BY tenant_id) u ON u.tenant_id = t.id
LEFT JOIN (SELECT tenant_id, count(*) AS total,
                  count(*) FILTER (WHERE status = 'published') AS published,
                  max(updated_at) AS last_change
           FROM public.pages GROUP BY tenant_id) p ON p.tenant_id = t.id
LEFT JOIN (SELECT tenant_id, count(*) AS total, count(*) FILTER (WHERE is_active) AS active,
                  max(updated_at) AS last_change
           FROM public.forms GROUP BY tenant_id) f ON f.tenant_id = t.id
LEFT JOIN (SELECT tenant_id, count(*) AS total,
                  count(*) FILTER (WHERE status = 'new') AS new,
                  count(*) FILTER (WHERE status = 'contacted') AS contacted,
                  count(*) FILTER (WHERE status = 'qualified') AS qualified,
                  count(*) FILTER (WHERE status = 'converted') AS converted,
                  count(*) FILTER (WHERE status = 'lost') AS lost,
                  max(updated_at) AS last_change
           FROM public.leads GROUP BY tenant_id) l ON l.tenant_id = t.id
LEFT JOIN (SELECT tenant_id, count(*) AS total,
                  count(*) FILTER (WHERE created_at >= now() - interval '30 days') AS last_30_days,
                  max(created_at) AS last_change
           FROM public.form_submissions GROUP BY tenant_id) s ON s.tenant_id = t.id""",
    unique_columns=("tenant_id",),
    tenant_view="tenant_dashboard",
)

lead_funnel_monthly_materialized_view = MaterializedView(
    name="lead_funnel_monthly",
    query="""SELECT tenant_id,
       date_trunc('month', created_at AT TIME ZONE 'UTC')::date AS month,
       count(*) AS leads_created,
       count(*) FILTER (WHERE status = 'new') AS still_new,
       count(*) FILTER (WHERE status = 'contacted') AS contacted,
       count(*) FILTER (WHERE status = 'qualified') AS qualified,
       count(*) FILTER (WHERE status = 'converted') AS converted,
       count(*) FILTER (WHERE status = 'lost') AS lost,
       round(count(*) FILTER (WHERE status = 'converted')::numeric / count(*), 4)
           AS conversion_rate,
       now() AS refreshed_at
FROM public.leads
GROUP BY tenant_id, date_trunc('month', created_at AT TIME ZONE 'UTC')::date""",
    unique_columns=("tenant_id", "month"),
    tenant_view="tenant_lead_funnel",
)

form_submissions_daily_materialized_view = MaterializedView(
    name="form_submissions_daily",
    query="""SELECT tenant_id,
       form_id,
       (created_at AT TIME ZONE 'UTC')::date AS day,
       count(*) AS submissions,
       count(lead_id) AS with_lead,
       now() AS refreshed_at
FROM public.form_submissions
WHERE created_at >= date_trunc('day', now()) - interval '400 days'
GROUP BY tenant_id, form_id, (created_at AT TIME ZONE 'UTC')::date""",
    unique_columns=("tenant_id", "form_id", "day"),
    tenant_view="tenant_submission_activity",
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
    PERFORM pg_catalog.pg_advisory_xact_lock(
        pg_catalog.hashtext('platform.refresh_performance_views'));
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

matview_freshness_view = View(
    name="platform.matview_freshness",
    query="""SELECT m.schemaname || '.' || m.matviewname AS view_name,
       m.ispopulated AS populated,
       l.finished_at AS last_refresh,
       round(extract(epoch FROM now() - l.finished_at)::numeric, 1) AS age_seconds,
       round(l.duration_ms::numeric, 1) AS last_duration_ms,
       l.was_concurrent
FROM pg_catalog.pg_matviews m
LEFT JOIN LATERAL (SELECT * FROM platform.matview_refresh_log r
                   WHERE r.view_name = m.schemaname || '.' || m.matviewname
                   ORDER BY r.finished_at DESC LIMIT 1) l ON true
WHERE m.schemaname = 'platform'""",
    readers=("platform_admin",),
)

schedule_maintenance_jobs_function = Function(
    name="platform.schedule_maintenance_jobs",
    arguments="",
    definition="""RETURNS TABLE (job_name text, schedule text, job_id bigint)
LANGUAGE plpgsql
AS $fn$
DECLARE
    j platform.cron_job;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'pg_cron') THEN
        RAISE EXCEPTION 'pg_cron is not installed in database %', current_database()
            USING HINT = 'Without pg_cron, run `platform-db maintain` from cron (see docs/OPERATIONS.md).';
    END IF;
    FOREACH j IN ARRAY ARRAY[ROW($q$refresh-performance-views$q$, $q$*/15 * * * *$q$, $q$SELECT platform.refresh_performance_views()$q$), ROW($q$snapshot-performance-metrics$q$, $q$*/5 * * * *$q$, $q$SELECT platform.snapshot_performance_metrics()$q$), ROW($q$cleanup-performance-metrics$q$, $q$17 3 * * *$q$, $q$SELECT platform.cleanup_old_performance_metrics(interval '30 days')$q$), ROW($q$ensure-form-submission-partitions$q$, $q$7 2 * * *$q$, $q$SELECT * FROM platform.ensure_form_submission_partitions(3)$q$), ROW($q$cleanup-cron-history$q$, $q$37 3 * * *$q$, $q$DELETE FROM cron.job_run_details WHERE end_time < now() - interval '7 days'$q$), ROW($q$ensure-audit-log-partitions$q$, $q$9 2 * * *$q$, $q$SELECT * FROM platform.ensure_monthly_partitions('public.audit_log'::regclass, 3)$q$)]::platform.cron_job[] LOOP
        job_name := j.name;
        schedule := j.schedule;
        -- cron.schedule with a job name replaces the job of that name: re-runnable.
        EXECUTE 'SELECT cron.schedule($1, $2, $3)' INTO job_id USING j.name, j.schedule, j.command;
        RETURN NEXT;
    END LOOP;
END
$fn$""",
)

unschedule_maintenance_jobs_function = Function(
    name="platform.unschedule_maintenance_jobs",
    arguments="",
    definition="""RETURNS integer
LANGUAGE plpgsql
AS $fn$
DECLARE
    j platform.cron_job;
    n integer := 0;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'pg_cron') THEN
        RETURN 0;
    END IF;
    FOREACH j IN ARRAY ARRAY[ROW($q$refresh-performance-views$q$, $q$*/15 * * * *$q$, $q$SELECT platform.refresh_performance_views()$q$), ROW($q$snapshot-performance-metrics$q$, $q$*/5 * * * *$q$, $q$SELECT platform.snapshot_performance_metrics()$q$), ROW($q$cleanup-performance-metrics$q$, $q$17 3 * * *$q$, $q$SELECT platform.cleanup_old_performance_metrics(interval '30 days')$q$), ROW($q$ensure-form-submission-partitions$q$, $q$7 2 * * *$q$, $q$SELECT * FROM platform.ensure_form_submission_partitions(3)$q$), ROW($q$cleanup-cron-history$q$, $q$37 3 * * *$q$, $q$DELETE FROM cron.job_run_details WHERE end_time < now() - interval '7 days'$q$), ROW($q$ensure-audit-log-partitions$q$, $q$9 2 * * *$q$, $q$SELECT * FROM platform.ensure_monthly_partitions('public.audit_log'::regclass, 3)$q$)]::platform.cron_job[] LOOP
        IF EXISTS (SELECT FROM cron.job WHERE jobname = j.name) THEN
            PERFORM cron.unschedule(j.name);
            n := n + 1;
        END IF;
    END LOOP;
    RETURN n;
END
$fn$""",
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
        INSERT INTO public.audit_log
            (tenant_id, table_name, row_key, action, old_values, new_values,
             actor_id, db_user, transaction_id, changed_at)
        VALUES (tenant, TG_ARGV[0], row_key, TG_OP, old_values, new_values,
                platform.current_user_id(), session_user,
                pg_catalog.pg_current_xact_id()::text::bigint, pg_catalog.now());
    END LOOP;
    RETURN NULL;
END
$fn$""",
    comment="Trigger: append the change of one row of a tenant table to public.audit_log.",
)

audit_log_refuse_change_function = Function(
    name="platform.audit_log_refuse_change",
    arguments="",
    definition="""RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Retire old audit rows by detaching or dropping a monthly partition.';
END
$fn$""",
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
    PERFORM pg_catalog.pg_advisory_xact_lock(
        pg_catalog.hashtext('platform.ensure_monthly_partitions:' || parent::oid::text));

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

audit_log_audit_log_append_only_trigger = Trigger(
    on="public.audit_log",
    name="audit_log_append_only",
    function="platform.audit_log_refuse_change",
    timing="BEFORE",
    events=("UPDATE", "DELETE"),
)

audit_log_row_level_security = RowLevelSecurity(
    on="public.audit_log",
)

audit_log_tenant_isolation_policy = Policy(
    name="tenant_isolation",
    using="tenant_id = platform.current_tenant_id()",
    check="tenant_id = platform.current_tenant_id()",
    on="public.audit_log",
)

audit_log_audit_append_policy = Policy(
    name="audit_append",
    using=None,
    check="true",
    command="INSERT",
    roles=("platform_owner",),
    on="public.audit_log",
)

audit_log_public_table_privileges = TableGrants(
    on="public.audit_log",
    role="PUBLIC",
)

audit_log_platform_app_table_privileges = TableGrants(
    on="public.audit_log",
    role="platform_app",
    privileges=("SELECT",),
)

audit_log_platform_admin_table_privileges = TableGrants(
    on="public.audit_log",
    role="platform_admin",
    privileges=("SELECT",),
)

audit_log_partitions_partition_protection = PartitionProtection("public.audit_log")

users_audit_row_change_trigger = Trigger(
    on="public.users",
    name="audit_row_change",
    function="platform.audit_row_change",
    arguments=("users", "id", ""),
)

pages_audit_row_change_trigger = Trigger(
    on="public.pages",
    name="audit_row_change",
    function="platform.audit_row_change",
    arguments=("pages", "id", "search_vector"),
)

forms_audit_row_change_trigger = Trigger(
    on="public.forms",
    name="audit_row_change",
    function="platform.audit_row_change",
    arguments=("forms", "id", ""),
)

leads_audit_row_change_trigger = Trigger(
    on="public.leads",
    name="audit_row_change",
    function="platform.audit_row_change",
    arguments=("leads", "id", ""),
)

form_submissions_audit_row_change_trigger = Trigger(
    on="public.form_submissions",
    name="audit_row_change",
    function="platform.audit_row_change",
    arguments=("form_submissions", "id,created_at", ""),
)

cron_refresh_performance_views_scheduled_job = ScheduledJob(
    name="refresh-performance-views",
    schedule="*/15 * * * *",
    command="SELECT platform.refresh_performance_views()",
)

cron_snapshot_performance_metrics_scheduled_job = ScheduledJob(
    name="snapshot-performance-metrics",
    schedule="*/5 * * * *",
    command="SELECT platform.snapshot_performance_metrics()",
)

cron_cleanup_performance_metrics_scheduled_job = ScheduledJob(
    name="cleanup-performance-metrics",
    schedule="17 3 * * *",
    command="SELECT platform.cleanup_old_performance_metrics(interval '30 days')",
)

cron_ensure_form_submission_partitions_scheduled_job = ScheduledJob(
    name="ensure-form-submission-partitions",
    schedule="7 2 * * *",
    command="SELECT * FROM platform.ensure_form_submission_partitions(3)",
)

cron_cleanup_cron_history_scheduled_job = ScheduledJob(
    name="cleanup-cron-history",
    schedule="37 3 * * *",
    command="DELETE FROM cron.job_run_details WHERE end_time < now() - interval '7 days'",
)

cron_ensure_audit_log_partitions_scheduled_job = ScheduledJob(
    name="ensure-audit-log-partitions",
    schedule="9 2 * * *",
    command="SELECT * FROM platform.ensure_monthly_partitions('public.audit_log'::regclass, 3)",
)


def upgrade() -> None:  # noqa: PLR0915 - the whole schema, in order
    # Roles (cluster-wide, created only if missing), schema platform, the tenant setting.
    op.execute(sa.text(CREATE_ROLES))
    op.execute(sa.text(CREATE_PLATFORM_SCHEMA))
    create_entity(current_tenant_id_function)
    create_entity(current_user_id_function)
    create_entity(protect_partitions_function)
    create_entity(unprotect_partitions_function)

    # Tables, keys and indexes (the models as of this revision).
    op.create_table(
        "tenants",
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("subdomain", sa.String(length=63), nullable=False),
        sa.Column("custom_domain", sa.String(length=253), nullable=True),
        sa.Column("industry_module", sa.String(length=64), nullable=True),
        sa.Column(
            "plan",
            sa.String(length=32),
            server_default="free",
            nullable=False,
        ),
        sa.Column(
            "status",
            sa.String(length=32),
            server_default="active",
            nullable=False,
        ),
        sa.Column(
            "settings",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "custom_domain = lower(custom_domain) AND custom_domain ~ '^[a-z0-9.-]+\\.[a-z]{2,}$'",
            name=op.f("ck_tenants_custom_domain_format"),
        ),
        sa.CheckConstraint(
            "jsonb_typeof(settings) = 'object'", name=op.f("ck_tenants_settings_is_object")
        ),
        sa.CheckConstraint(
            "subdomain ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'",
            name=op.f("ck_tenants_subdomain_format"),
        ),
        sa.CheckConstraint("length(btrim(name)) > 0", name=op.f("ck_tenants_name_not_blank")),
        sa.CheckConstraint(
            "plan IN ('free', 'starter', 'professional', 'enterprise')",
            name=op.f("ck_tenants_plan"),
        ),
        sa.CheckConstraint(
            "status IN ('trial', 'active', 'suspended', 'cancelled')",
            name=op.f("ck_tenants_status"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenants")),
    )
    op.create_index(
        "uq_tenants_custom_domain",
        "tenants",
        ["custom_domain"],
        unique=True,
        postgresql_where=sa.text("custom_domain IS NOT NULL"),
    )
    op.create_index("uq_tenants_subdomain", "tenants", ["subdomain"], unique=True)
    op.create_table(
        "forms",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("slug", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column(
            "fields",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'[]'::jsonb"),
            nullable=False,
        ),
        sa.Column(
            "settings",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("is_active", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("jsonb_typeof(fields) = 'array'", name=op.f("ck_forms_fields_is_array")),
        sa.CheckConstraint(
            "jsonb_typeof(settings) = 'object'", name=op.f("ck_forms_settings_is_object")
        ),
        sa.CheckConstraint("slug ~ '^[a-z0-9]+(-[a-z0-9]+)*$'", name=op.f("ck_forms_slug_format")),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_forms_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_forms")),
    )
    op.create_index("uq_forms_tenant_slug", "forms", ["tenant_id", "slug"], unique=True)
    op.create_table(
        "users",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("first_name", sa.String(length=100), nullable=True),
        sa.Column("last_name", sa.String(length=100), nullable=True),
        sa.Column(
            "role",
            sa.String(length=32),
            server_default="viewer",
            nullable=False,
        ),
        sa.Column("is_active", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("last_login_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "email = lower(email) AND email ~ '^[^@[:space:]]+@[^@[:space:]]+\\.[^@[:space:]]+$'",
            name=op.f("ck_users_email_format"),
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_users_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.CheckConstraint(
            "role IN ('owner', 'admin', 'editor', 'viewer')",
            name=op.f("ck_users_role"),
        ),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_users")),
    )
    op.create_index(
        "uq_users_tenant_email",
        "users",
        ["tenant_id", "email"],
        unique=True,
        postgresql_include=["first_name", "last_name", "role", "is_active"],
    )
    op.create_table(
        "leads",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("first_name", sa.String(length=100), nullable=True),
        sa.Column("last_name", sa.String(length=100), nullable=True),
        sa.Column("phone", sa.String(length=50), nullable=True),
        sa.Column("company", sa.String(length=200), nullable=True),
        sa.Column("source", sa.String(length=64), server_default="website", nullable=False),
        sa.Column(
            "status",
            sa.String(length=32),
            server_default="new",
            nullable=False,
        ),
        sa.Column("score", sa.SmallInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "status_changed_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("converted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lost_reason", sa.Text(), nullable=True),
        sa.Column("form_id", sa.Uuid(), nullable=True),
        sa.Column("source_submission_id", sa.Uuid(), nullable=True),
        sa.Column("source_submission_created_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "attributes",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "email = lower(email) AND email ~ '^[^@[:space:]]+@[^@[:space:]]+\\.[^@[:space:]]+$'",
            name=op.f("ck_leads_email_format"),
        ),
        sa.CheckConstraint(
            "jsonb_typeof(attributes) = 'object'", name=op.f("ck_leads_attributes_is_object")
        ),
        sa.CheckConstraint(
            "status <> 'converted' OR converted_at IS NOT NULL",
            name=op.f("ck_leads_converted_has_time"),
        ),
        sa.CheckConstraint(
            "(source_submission_id IS NULL) = (source_submission_created_at IS NULL)",
            name=op.f("ck_leads_source_submission_complete"),
        ),
        sa.CheckConstraint("score BETWEEN 0 AND 100", name=op.f("ck_leads_score_range")),
        sa.ForeignKeyConstraint(
            ["tenant_id", "form_id"],
            ["forms.tenant_id", "forms.id"],
            name=op.f("fk_leads_tenant_id_form_id_forms"),
            ondelete="SET NULL (form_id)",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_leads_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.CheckConstraint(
            "status IN ('new', 'contacted', 'qualified', 'converted', 'lost')",
            name=op.f("ck_leads_status"),
        ),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_leads")),
    )
    op.create_index(
        "ix_leads_tenant_form",
        "leads",
        ["tenant_id", "form_id"],
        unique=False,
        postgresql_where=sa.text("form_id IS NOT NULL"),
    )
    op.create_index(
        "ix_leads_tenant_source_submission",
        "leads",
        ["tenant_id", "source_submission_id", "source_submission_created_at"],
        unique=False,
        postgresql_where=sa.text("source_submission_id IS NOT NULL"),
    )
    op.create_table(
        "pages",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("slug", sa.String(length=200), nullable=False),
        sa.Column("title", sa.String(length=300), nullable=False),
        sa.Column("content", sa.Text(), server_default="", nullable=False),
        sa.Column("excerpt", sa.String(length=1000), nullable=True),
        sa.Column(
            "status",
            sa.String(length=32),
            server_default="draft",
            nullable=False,
        ),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("author_id", sa.Uuid(), nullable=True),
        sa.Column(
            "meta",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column(
            "search_vector",
            postgresql.TSVECTOR(),
            sa.Computed(
                "setweight(to_tsvector('english'::regconfig, coalesce(title, '')), 'A') || setweight(to_tsvector('english'::regconfig, coalesce(content, '')), 'B')",
                persisted=True,
            ),
            nullable=False,
        ),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("jsonb_typeof(meta) = 'object'", name=op.f("ck_pages_meta_is_object")),
        sa.CheckConstraint(
            "slug ~ '^[a-z0-9]+([-/][a-z0-9]+)*$'", name=op.f("ck_pages_slug_format")
        ),
        sa.CheckConstraint(
            "status <> 'published' OR published_at IS NOT NULL",
            name=op.f("ck_pages_published_has_time"),
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id", "author_id"],
            ["users.tenant_id", "users.id"],
            name=op.f("fk_pages_tenant_id_author_id_users"),
            ondelete="SET NULL (author_id)",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_pages_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.CheckConstraint(
            "status IN ('draft', 'published', 'archived')",
            name=op.f("ck_pages_status"),
        ),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_pages")),
    )
    op.create_index(
        "ix_pages_tenant_author",
        "pages",
        ["tenant_id", "author_id"],
        unique=False,
        postgresql_where=sa.text("author_id IS NOT NULL"),
    )
    op.create_index("uq_pages_tenant_slug", "pages", ["tenant_id", "slug"], unique=True)
    op.create_table(
        "form_submissions",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("form_id", sa.Uuid(), nullable=False),
        sa.Column("lead_id", sa.Uuid(), nullable=True),
        sa.Column(
            "data",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("ip_address", postgresql.INET(), nullable=True),
        sa.Column("user_agent", sa.String(length=1000), nullable=True),
        sa.Column("referrer", sa.String(length=2000), nullable=True),
        sa.CheckConstraint(
            "jsonb_typeof(data) = 'object'", name=op.f("ck_form_submissions_data_is_object")
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id", "form_id"],
            ["forms.tenant_id", "forms.id"],
            name=op.f("fk_form_submissions_tenant_id_form_id_forms"),
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id", "lead_id"],
            ["leads.tenant_id", "leads.id"],
            name=op.f("fk_form_submissions_tenant_id_lead_id_leads"),
            ondelete="SET NULL (lead_id)",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_form_submissions_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "id", "created_at", name=op.f("pk_form_submissions")),
        postgresql_partition_by="RANGE (created_at)",
    )
    op.create_index(
        "ix_form_submissions_tenant_lead",
        "form_submissions",
        ["tenant_id", "lead_id"],
        unique=False,
        postgresql_where=sa.text("lead_id IS NOT NULL"),
    )

    # leads and form_submissions reference each other: this side comes last.
    op.create_foreign_key(
        "fk_leads_source_submission",
        "leads",
        "form_submissions",
        ["tenant_id", "source_submission_id", "source_submission_created_at"],
        ["tenant_id", "id", "created_at"],
        ondelete="SET NULL (source_submission_id, source_submission_created_at)",
    )
    op.create_index("ix_users_tenant_role", "users", ["tenant_id", "role"], unique=False)
    op.create_index("ix_users_tenant_active", "users", ["tenant_id", "is_active"], unique=False)
    op.create_index(
        "ix_users_tenant_role_active",
        "users",
        ["tenant_id", "role", "is_active"],
        unique=False,
        postgresql_where=sa.text("is_active"),
    )
    op.create_index(
        "ix_pages_search", "pages", ["search_vector"], unique=False, postgresql_using="gin"
    )
    op.create_index(
        "ix_pages_tenant_published",
        "pages",
        ["tenant_id", "published_at"],
        unique=False,
        postgresql_where=sa.text("status = 'published'"),
    )
    op.create_index(
        "ix_leads_tenant_status", "leads", ["tenant_id", "status", "created_at"], unique=False
    )
    op.create_index("ix_leads_tenant_email", "leads", ["tenant_id", "email"], unique=False)
    op.create_index(
        "ix_leads_tenant_funnel",
        "leads",
        ["tenant_id", "created_at"],
        unique=False,
        postgresql_include=["status", "converted_at", "source"],
    )
    op.create_index(
        "ix_form_submissions_tenant_form_created",
        "form_submissions",
        ["tenant_id", "form_id", "created_at"],
        unique=False,
    )
    op.create_index(
        "ix_form_submissions_tenant_created",
        "form_submissions",
        ["tenant_id", "created_at"],
        unique=False,
    )
    op.create_index("ix_tenants_industry_module", "tenants", ["industry_module"], unique=False)

    # form_submissions: the default partition, this month and three ahead.
    create_entity(ensure_form_submission_partitions_function)
    op.execute(sa.text("SELECT * FROM platform.ensure_form_submission_partitions()"))

    # Row-level security, policies and grants; partitions follow their parent.
    create_entity(tenants_public_table_privileges)
    create_entity(tenants_platform_app_table_privileges)
    create_entity(tenants_platform_admin_table_privileges)
    create_entity(users_row_level_security)
    create_entity(users_tenant_isolation_policy)
    create_entity(users_public_table_privileges)
    create_entity(users_platform_app_table_privileges)
    create_entity(users_platform_admin_table_privileges)
    create_entity(pages_row_level_security)
    create_entity(pages_tenant_isolation_policy)
    create_entity(pages_public_table_privileges)
    create_entity(pages_platform_app_table_privileges)
    create_entity(pages_platform_admin_table_privileges)
    create_entity(forms_row_level_security)
    create_entity(forms_tenant_isolation_policy)
    create_entity(forms_public_table_privileges)
    create_entity(forms_platform_app_table_privileges)
    create_entity(forms_platform_admin_table_privileges)
    create_entity(leads_row_level_security)
    create_entity(leads_tenant_isolation_policy)
    create_entity(leads_public_table_privileges)
    create_entity(leads_platform_app_table_privileges)
    create_entity(leads_platform_admin_table_privileges)
    create_entity(form_submissions_row_level_security)
    create_entity(form_submissions_tenant_isolation_policy)
    create_entity(form_submissions_public_table_privileges)
    create_entity(form_submissions_platform_app_table_privileges)
    create_entity(form_submissions_platform_admin_table_privileges)
    create_entity(form_submissions_partitions_partition_protection)

    # Monitoring: metric snapshots, views, alerts; partition retirement.
    op.execute(sa.text(PERFORMANCE_METRICS))
    op.execute(sa.text(GRANT_READ_ALL_STATS))
    create_entity(pg_stat_statements_relation_function)
    create_entity(slow_query_stats_function)
    create_entity(slow_queries_view)
    create_entity(index_usage_stats_view)
    create_entity(table_bloat_stats_view)
    create_entity(cache_hit_ratios_view)
    create_entity(blocking_locks_view)
    create_entity(partition_status_view)
    create_entity(check_performance_alerts_function)
    create_entity(snapshot_performance_metrics_function)
    create_entity(cleanup_old_performance_metrics_function)
    create_entity(retire_form_submission_partitions_function)

    # Dashboards: materialized views with their tenant views, refresh, scheduling.
    create_entity(tenant_performance_summary_materialized_view)
    create_entity(lead_funnel_monthly_materialized_view)
    create_entity(form_submissions_daily_materialized_view)
    op.execute(sa.text(REFRESH_LOG))
    create_entity(refresh_performance_views_function)
    create_entity(matview_freshness_view)
    op.execute(sa.text(CRON_JOB_TYPE))
    create_entity(schedule_maintenance_jobs_function)
    create_entity(unschedule_maintenance_jobs_function)

    # The audit trail: audit_log (monthly partitions), its trigger on every tenant table.
    create_entity(audit_row_change_function)
    create_entity(audit_log_refuse_change_function)
    create_entity(ensure_monthly_partitions_function)
    op.create_table(
        "audit_log",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column(
            "changed_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("table_name", sa.Text(), nullable=False),
        sa.Column("row_key", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("old_values", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("new_values", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("actor_id", sa.Uuid(), nullable=True),
        sa.Column("db_user", sa.Text(), nullable=False),
        sa.Column("transaction_id", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(
            "action IN ('INSERT', 'UPDATE', 'DELETE')", name=op.f("ck_audit_log_action")
        ),
        sa.PrimaryKeyConstraint("tenant_id", "changed_at", "id", name=op.f("pk_audit_log")),
        postgresql_partition_by="RANGE (changed_at)",
    )
    op.create_index(
        "ix_audit_log_tenant_actor",
        "audit_log",
        ["tenant_id", "actor_id", "changed_at"],
        unique=False,
        postgresql_where=sa.text("actor_id IS NOT NULL"),
    )
    op.create_index(
        "ix_audit_log_tenant_row",
        "audit_log",
        ["tenant_id", "table_name", "row_key", "changed_at"],
        unique=False,
    )
    create_entity(audit_log_audit_log_append_only_trigger)
    create_entity(audit_log_row_level_security)
    create_entity(audit_log_tenant_isolation_policy)
    create_entity(audit_log_audit_append_policy)
    create_entity(audit_log_public_table_privileges)
    create_entity(audit_log_platform_app_table_privileges)
    create_entity(audit_log_platform_admin_table_privileges)
    create_entity(audit_log_partitions_partition_protection)
    op.execute(
        sa.text("SELECT * FROM platform.ensure_monthly_partitions('public.audit_log'::regclass)")
    )
    create_entity(users_audit_row_change_trigger)
    create_entity(pages_audit_row_change_trigger)
    create_entity(forms_audit_row_change_trigger)
    create_entity(leads_audit_row_change_trigger)
    create_entity(form_submissions_audit_row_change_trigger)

    # The maintenance jobs, where pg_cron is installed in this database.
    create_entity(cron_refresh_performance_views_scheduled_job)
    create_entity(cron_snapshot_performance_metrics_scheduled_job)
    create_entity(cron_cleanup_performance_metrics_scheduled_job)
    create_entity(cron_ensure_form_submission_partitions_scheduled_job)
    create_entity(cron_cleanup_cron_history_scheduled_job)
    create_entity(cron_ensure_audit_log_partitions_scheduled_job)


def downgrade() -> None:
    # Dropping schema platform drops its functions, views and materialized views, and with
    # them what depends on them: the tenant views in public, the policies and the audit
    # triggers. Dropping the tables then drops their partitions and grants.
    drop_entity(cron_ensure_audit_log_partitions_scheduled_job)
    drop_entity(cron_cleanup_cron_history_scheduled_job)
    drop_entity(cron_ensure_form_submission_partitions_scheduled_job)
    drop_entity(cron_cleanup_performance_metrics_scheduled_job)
    drop_entity(cron_snapshot_performance_metrics_scheduled_job)
    drop_entity(cron_refresh_performance_views_scheduled_job)
    op.execute(sa.text("DROP SCHEMA platform CASCADE"))
    op.execute(sa.text("REVOKE USAGE ON SCHEMA public FROM platform_app, platform_admin"))
    op.drop_table("audit_log")
    op.drop_constraint("fk_leads_source_submission", "leads", type_="foreignkey")
    op.drop_table("form_submissions")
    op.drop_table("pages")
    op.drop_table("leads")
    op.drop_table("users")
    op.drop_table("forms")
    op.drop_table("tenants")
    op.execute(sa.text(DROP_ROLES))
