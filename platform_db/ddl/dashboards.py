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

from platform_db.ddl.entities import Function, MaterializedView, ScheduledJob, View
from platform_db.ddl.jobs import JOBS
from platform_db.ddl.partitions import bounded_advisory_lock
from platform_db.ddl.security import ADMIN_ROLE, APP_ROLE, PLATFORM_SCHEMA

S = PLATFORM_SCHEMA


# The current tenant's id, subdomain and updated_at (public.tenants), for the tenant
# views' row of a tenant the last refresh did not see. A function (plpgsql: never
# inlined), so that the tenant views read no distributed relation: see
# MaterializedView.tenant_source.
CURRENT_TENANT = Function(
    name=f"{S}.current_tenant",
    arguments="",
    # Not SETOF public.tenants: Citus refuses to distribute a table that an object of its
    # own depends on (the function on the table's row type) before the table itself.
    # (A function's result loses varchar(63): the tenant view casts it back.)
    definition=f"""RETURNS TABLE (id uuid, subdomain character varying, updated_at timestamp with time zone)
LANGUAGE plpgsql STABLE
AS $fn$
BEGIN
    RETURN QUERY SELECT t.id, t.subdomain, t.updated_at FROM public.tenants t
        WHERE t.id = {S}.current_tenant_id();
END
$fn$""",
    execute=(APP_ROLE, ADMIN_ROLE),
    comment="The row of public.tenants of the current tenant (app.current_tenant_id), if any.",
)
TENANT_SOURCE = f"{S}.current_tenant"

TENANT_PERFORMANCE_SUMMARY = MaterializedView(
    name="tenant_performance_summary",
    unique_columns=("tenant_id",),
    tenant_view="tenant_dashboard",
    tenant_source=TENANT_SOURCE,
    fenced=True,
    # A tenant created after the last refresh reads zeros, not nothing.
    new_tenant_row="""t.id, t.subdomain::character varying(63), 0::bigint, 0::bigint, 0::bigint,
           0::bigint, 0::bigint, 0::bigint, 0::bigint, 0::bigint, 0::bigint,
           0::bigint, 0::bigint, 0::bigint, 0::bigint, 0::bigint, 0::bigint,
           0::numeric, 0::bigint, 0::bigint, t.updated_at, r.refreshed_at""",
    # total_users, total_pages, total_leads: the seed's names; the rest beside them.
    query="""SELECT t.id AS tenant_id,
       t.subdomain,
       coalesce(u.total, 0) AS total_users,
       coalesce(p.total, 0) AS total_pages,
       coalesce(l.total, 0) AS total_leads,
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
    tenant_source=TENANT_SOURCE,
    fenced=True,
    new_tenant_row="""t.id, date_trunc('month', now() AT TIME ZONE 'UTC')::date,
           0::bigint, 0::bigint, 0::bigint, 0::bigint, 0::bigint, 0::bigint, 0::numeric,
           r.refreshed_at""",
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
    tenant_source=TENANT_SOURCE,
    fenced=True,
    new_tenant_row="""t.id, NULL::uuid, (now() AT TIME ZONE 'UTC')::date, 0::bigint, 0::bigint,
           r.refreshed_at""",
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

REFRESH_PERFORMANCE_VIEWS = Function(
    name=f"{S}.refresh_performance_views",
    arguments="",
    definition=f"""RETURNS TABLE (view_name text, was_concurrent boolean, duration_ms double precision)
LANGUAGE plpgsql
AS $fn$
DECLARE
    v text;
    started timestamptz;
    populated boolean;
BEGIN
    -- Two refreshes of the same view would only queue behind each other.
    {
        bounded_advisory_lock(
            f"pg_catalog.hashtext('{S}.refresh_performance_views')",
            f"{S}.refresh_performance_views",
        )
    }
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
$fn$""",
    comment="Refresh every dashboard materialized view (concurrently: readers are never blocked) and log it.",
)

MATVIEW_FRESHNESS = View(
    name=f"{S}.matview_freshness",
    query=f"""SELECT m.schemaname || '.' || m.matviewname AS view_name,
       m.ispopulated AS populated,
       l.finished_at AS last_refresh,
       round(extract(epoch FROM now() - l.finished_at)::numeric, 1) AS age_seconds,
       round(l.duration_ms::numeric, 1) AS last_duration_ms,
       l.was_concurrent
FROM pg_catalog.pg_matviews m
LEFT JOIN LATERAL (SELECT * FROM {S}.matview_refresh_log r
                   WHERE r.view_name = m.schemaname || '.' || m.matviewname
                   ORDER BY r.finished_at DESC LIMIT 1) l ON true
WHERE m.schemaname = '{S}'""",
    readers=(ADMIN_ROLE,),
)


def _jobs_array(jobs: tuple[ScheduledJob, ...]) -> str:
    rows = ", ".join(
        "ROW(" + ", ".join("$q$" + part + "$q$" for part in (j.name, j.schedule, j.command)) + ")"
        for j in jobs
    )
    return f"ARRAY[{rows}]::{S}.cron_job[]"


def scheduling_functions(jobs: tuple[ScheduledJob, ...] = JOBS) -> tuple[Function, Function]:
    """schedule_/unschedule_maintenance_jobs() over `jobs`: for a pg_cron installed after
    the migrations ran (the revisions schedule the jobs themselves where it is there)."""
    schedule = Function(
        name=f"{S}.schedule_maintenance_jobs",
        arguments="",
        definition=f"""RETURNS TABLE (job_name text, schedule text, job_id bigint)
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
$fn$""",
    )
    unschedule = Function(
        name=f"{S}.unschedule_maintenance_jobs",
        arguments="",
        definition=f"""RETURNS integer
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
$fn$""",
    )
    return schedule, unschedule


SCHEDULE_MAINTENANCE_JOBS, UNSCHEDULE_MAINTENANCE_JOBS = scheduling_functions()
