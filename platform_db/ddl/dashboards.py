"""Tenant dashboards: materialized views, their tenant-filtered views, refresh and scheduling.

Materialized views cannot carry RLS, so they live in schema `platform`, closed to
platform_app. Tenants read their own rows through security-barrier views in `public`
filtered by `platform.current_tenant_id()`; platform_admin reads the materialized views
directly, across tenants.

The materialized views are owned by platform_admin, the analytics role: REFRESH runs the
query as the view's owner, and under the forced RLS of the tenant tables the usual owner
(platform_owner, no BYPASSRLS) would see no rows at all. Every count comes from its own
table in its own subquery, so joining them never multiplies rows.
"""

from __future__ import annotations

from dataclasses import dataclass

from platform_db.ddl.security import ADMIN_ROLE, APP_ROLE, OWNER_ROLE, PLATFORM_SCHEMA, ident

S = PLATFORM_SCHEMA


@dataclass(frozen=True, slots=True)
class MaterializedView:
    """A materialized view in `platform`, its unique key, and the tenant view over it."""

    name: str
    query: str
    unique_columns: tuple[str, ...]
    tenant_view: str

    @property
    def qualified(self) -> str:
        return f"{S}.{ident(self.name)}"

    @property
    def unique_index(self) -> str:
        return f"uq_{self.name}"

    def create(self) -> list[str]:
        cols = ", ".join(ident(c) for c in self.unique_columns)
        return [
            f"CREATE MATERIALIZED VIEW {self.qualified} AS\n{self.query}\nWITH DATA",
            # REFRESH ... CONCURRENTLY needs a unique index over all rows.
            f"CREATE UNIQUE INDEX {self.unique_index} ON {self.qualified} ({cols})",
            f"REVOKE ALL ON {self.qualified} FROM PUBLIC",
            f"GRANT SELECT ON {self.qualified} TO {OWNER_ROLE}",
            f"ALTER MATERIALIZED VIEW {self.qualified} OWNER TO {ADMIN_ROLE}",
            f"""CREATE VIEW public.{ident(self.tenant_view)} WITH (security_barrier) AS
    SELECT * FROM {self.qualified} WHERE tenant_id = {S}.current_tenant_id()""",
            f"REVOKE ALL ON public.{ident(self.tenant_view)} FROM PUBLIC",
            f"GRANT SELECT ON public.{ident(self.tenant_view)} TO {APP_ROLE}, {ADMIN_ROLE}",
        ]

    def drop(self) -> list[str]:
        return [
            f"DROP VIEW IF EXISTS public.{ident(self.tenant_view)}",
            f"DROP MATERIALIZED VIEW IF EXISTS {self.qualified}",
        ]


TENANT_PERFORMANCE_SUMMARY = MaterializedView(
    name="tenant_performance_summary",
    unique_columns=("tenant_id",),
    tenant_view="tenant_dashboard",
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
)

LEAD_FUNNEL_MONTHLY = MaterializedView(
    name="lead_funnel_monthly",
    unique_columns=("tenant_id", "month"),
    tenant_view="tenant_lead_funnel",
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
)

SUBMISSIONS_DAILY = MaterializedView(
    name="form_submissions_daily",
    unique_columns=("tenant_id", "form_id", "day"),
    tenant_view="tenant_submission_activity",
    # The last 400 days: enough for a year-over-year chart, and a refresh reads only
    # the partitions of those months.
    query="""SELECT tenant_id,
       form_id,
       (created_at AT TIME ZONE 'UTC')::date AS day,
       count(*) AS submissions,
       count(lead_id) AS with_lead,
       now() AS refreshed_at
FROM public.form_submissions
WHERE created_at >= date_trunc('day', now()) - interval '400 days'
GROUP BY tenant_id, form_id, (created_at AT TIME ZONE 'UTC')::date""",
)

MATERIALIZED_VIEWS: tuple[MaterializedView, ...] = (
    TENANT_PERFORMANCE_SUMMARY,
    LEAD_FUNNEL_MONTHLY,
    SUBMISSIONS_DAILY,
)
TENANT_VIEWS: tuple[str, ...] = tuple(m.tenant_view for m in MATERIALIZED_VIEWS)

_views_array = "ARRAY[" + ", ".join(f"'{m.qualified}'" for m in MATERIALIZED_VIEWS) + "]"

CREATE_REFRESH = f"""
CREATE TABLE {S}.matview_refresh_log (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    view_name text NOT NULL,
    started_at timestamptz NOT NULL,
    finished_at timestamptz NOT NULL,
    duration_ms double precision NOT NULL,
    was_concurrent boolean NOT NULL,
    row_count bigint
);
CREATE INDEX ix_matview_refresh_log_view ON {S}.matview_refresh_log (view_name, finished_at);

CREATE FUNCTION {S}.refresh_performance_views()
RETURNS TABLE (view_name text, was_concurrent boolean, duration_ms double precision)
LANGUAGE plpgsql
AS $fn$
DECLARE
    v text;
    started timestamptz;
    populated boolean;
BEGIN
    -- Two refreshes of the same view would only queue behind each other.
    PERFORM pg_catalog.pg_advisory_xact_lock(
        pg_catalog.hashtext('{S}.refresh_performance_views'));
    FOREACH v IN ARRAY {_views_array} LOOP
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
        INSERT INTO {S}.matview_refresh_log
            (view_name, started_at, finished_at, duration_ms, was_concurrent, row_count)
        SELECT v, started, pg_catalog.clock_timestamp(), refresh_performance_views.duration_ms,
               populated, c.reltuples::bigint
        FROM pg_catalog.pg_class c WHERE c.oid = v::regclass;
        RETURN NEXT;
    END LOOP;
    DELETE FROM {S}.matview_refresh_log WHERE finished_at < now() - interval '30 days';
END
$fn$;

COMMENT ON FUNCTION {S}.refresh_performance_views() IS
    'Refresh every dashboard materialized view (concurrently: readers are never blocked) and log it.';

CREATE VIEW {S}.matview_freshness AS
    SELECT m.schemaname || '.' || m.matviewname AS view_name,
           m.ispopulated AS populated,
           l.finished_at AS last_refresh,
           round(extract(epoch FROM now() - l.finished_at)::numeric, 1) AS age_seconds,
           round(l.duration_ms::numeric, 1) AS last_duration_ms,
           l.was_concurrent
    FROM pg_catalog.pg_matviews m
    LEFT JOIN LATERAL (SELECT * FROM {S}.matview_refresh_log r
                       WHERE r.view_name = m.schemaname || '.' || m.matviewname
                       ORDER BY r.finished_at DESC LIMIT 1) l ON true
    WHERE m.schemaname = '{S}';

REVOKE ALL ON {S}.matview_refresh_log, {S}.matview_freshness FROM PUBLIC;
GRANT SELECT ON {S}.matview_refresh_log, {S}.matview_freshness TO {ADMIN_ROLE};
REVOKE ALL ON FUNCTION {S}.refresh_performance_views() FROM PUBLIC;
"""

DROP_REFRESH = f"""
DROP VIEW IF EXISTS {S}.matview_freshness;
DROP FUNCTION IF EXISTS {S}.refresh_performance_views();
DROP TABLE IF EXISTS {S}.matview_refresh_log;
"""

# name, schedule, command. pg_cron runs each as the role that scheduled it. These are the
# jobs revision d4e6b8a0c306 schedules; CRON_JOBS below adds the later ones.
DASHBOARD_CRON_JOBS: tuple[tuple[str, str, str], ...] = (
    ("refresh-performance-views", "*/15 * * * *", f"SELECT {S}.refresh_performance_views()"),
    ("snapshot-performance-metrics", "*/5 * * * *", f"SELECT {S}.snapshot_performance_metrics()"),
    (
        "cleanup-performance-metrics",
        "17 3 * * *",
        f"SELECT {S}.cleanup_old_performance_metrics(interval '30 days')",
    ),
    (
        "ensure-form-submission-partitions",
        "7 2 * * *",
        f"SELECT * FROM {S}.ensure_form_submission_partitions(3)",
    ),
    (
        "cleanup-cron-history",
        "37 3 * * *",
        "DELETE FROM cron.job_run_details WHERE end_time < now() - interval '7 days'",
    ),
)
# Scheduled by the audit trail's revision (e5f7a9b1d407).
AUDIT_PARTITIONS_JOB = (
    "ensure-audit-log-partitions",
    "9 2 * * *",
    f"SELECT * FROM {S}.ensure_monthly_partitions('public.audit_log'::regclass, 3)",
)
CRON_JOBS: tuple[tuple[str, str, str], ...] = (*DASHBOARD_CRON_JOBS, AUDIT_PARTITIONS_JOB)


def _jobs_array(jobs: tuple[tuple[str, str, str], ...] = CRON_JOBS) -> str:
    rows = ", ".join("ROW(" + ", ".join("$q$" + part + "$q$" for part in job) + ")" for job in jobs)
    return f"ARRAY[{rows}]::{S}.cron_job[]"


def scheduling_functions(jobs: tuple[tuple[str, str, str], ...] = CRON_JOBS) -> str:
    """(Re)define schedule_/unschedule_maintenance_jobs() over `jobs`."""
    return f"""
CREATE OR REPLACE FUNCTION {S}.schedule_maintenance_jobs()
RETURNS TABLE (job_name text, schedule text, job_id bigint)
LANGUAGE plpgsql
AS $fn$
DECLARE
    j {S}.cron_job;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'pg_cron') THEN
        RAISE EXCEPTION 'pg_cron is not installed in database %', current_database()
            USING HINT = 'Without pg_cron, run `platform-db maintain` from cron (see docs/OPERATIONS.md).';
    END IF;
    FOREACH j IN ARRAY {_jobs_array(jobs)} LOOP
        job_name := j.name;
        schedule := j.schedule;
        -- cron.schedule with a job name replaces the job of that name: re-runnable.
        EXECUTE 'SELECT cron.schedule($1, $2, $3)' INTO job_id USING j.name, j.schedule, j.command;
        RETURN NEXT;
    END LOOP;
END
$fn$;

CREATE OR REPLACE FUNCTION {S}.unschedule_maintenance_jobs() RETURNS integer
LANGUAGE plpgsql
AS $fn$
DECLARE
    j {S}.cron_job;
    n integer := 0;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'pg_cron') THEN
        RETURN 0;
    END IF;
    FOREACH j IN ARRAY {_jobs_array(jobs)} LOOP
        IF EXISTS (SELECT FROM cron.job WHERE jobname = j.name) THEN
            PERFORM cron.unschedule(j.name);
            n := n + 1;
        END IF;
    END LOOP;
    RETURN n;
END
$fn$;

REVOKE ALL ON FUNCTION {S}.schedule_maintenance_jobs(), {S}.unschedule_maintenance_jobs()
    FROM PUBLIC;
"""


CREATE_SCHEDULING = f"""
CREATE TYPE {S}.cron_job AS (name text, schedule text, command text);
{scheduling_functions(DASHBOARD_CRON_JOBS)}
-- With pg_cron in this database, schedule now; without it nothing fails.
DO $do$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'pg_cron') THEN
        PERFORM {S}.schedule_maintenance_jobs();
    ELSE
        RAISE NOTICE 'pg_cron is not installed in this database: maintenance jobs not scheduled';
    END IF;
END
$do$;
"""

DROP_SCHEDULING = f"""
SELECT {S}.unschedule_maintenance_jobs();
DROP FUNCTION IF EXISTS {S}.unschedule_maintenance_jobs();
DROP FUNCTION IF EXISTS {S}.schedule_maintenance_jobs();
DROP TYPE IF EXISTS {S}.cron_job;
"""
