"""Use the seed's names, give new tenants a dashboard row, count unused indexes over time

Revision ID: fbe2ab389375
Revises: cacc0a4ef960
Create Date: 2026-12-07 18:16:41.358506+00:00
"""

from collections.abc import Sequence

from platform_db.ddl.entities import Function, MaterializedView, View
from platform_db.migration.operations import replace_entity

revision: str = "fbe2ab389375"
down_revision: str | Sequence[str] | None = "cacc0a4ef960"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The definitions this revision runs, frozen here (platform_db.ddl.entities). A later
# revision that changes one points back at it: replaces="fbe2ab389375.<name>".
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

    -- An index nobody uses on a table that is being read: it only costs writes. Only
    -- after a week observed: its scan count unchanged since an `index_scans` snapshot
    -- (snapshot_performance_metrics) at least 7 days old and taken after the statistics
    -- were last reset. A database, an index or a statistics reset younger than that has
    -- no such snapshot, and a detached (retired) partition is read by nobody on purpose.
    FOR r IN
        WITH baseline AS (
            SELECT m.captured_at, m.details FROM platform.performance_metrics m
            WHERE m.metric = 'index_scans' AND m.captured_at <= now() - interval '7 days'
              AND m.captured_at >= coalesce(
                  (SELECT d.stats_reset FROM pg_catalog.pg_stat_database d
                   WHERE d.datname = current_database()), '-infinity'::timestamptz)
            ORDER BY m.captured_at DESC LIMIT 1)
        SELECT u.parent_index, u.parent_table, sum(u.index_bytes) AS bytes, b.captured_at
        FROM platform.index_usage_stats u
        JOIN platform.table_bloat_stats t
          ON t.schema_name = u.schema_name AND t.table_name = u.table_name
        CROSS JOIN baseline b
        WHERE NOT u.is_unique AND NOT u.is_primary AND NOT u.detached_partition
          AND b.details ? u.parent_index
        GROUP BY u.parent_index, u.parent_table, b.captured_at, b.details
        HAVING sum(u.idx_scan) = (b.details ->> u.parent_index)::numeric
           AND sum(t.seq_scan + coalesce(t.idx_scan, 0)) >= min_table_scans
    LOOP
        metric := 'unused_index'; subject := r.parent_index; value := 0; threshold := 0;
        severity := 'warning';
        detail := format('not scanned since %s (%s days), on a busy table %s (%s)',
                         to_char(r.captured_at, 'YYYY-MM-DD HH24:MI'),
                         extract(day FROM now() - r.captured_at),
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
    -- Scan counts of the indexes, hourly: check_performance_alerts() calls an index unused
    -- only when its count has not moved since a snapshot a week old.
    IF NOT EXISTS (SELECT FROM platform.performance_metrics
                   WHERE metric = 'index_scans' AND captured_at > now() - interval '55 minutes') THEN
        INSERT INTO platform.performance_metrics (metric, value, details)
        SELECT 'index_scans', count(*), coalesce(jsonb_object_agg(parent_index, scans), '{}'::jsonb)
        FROM (SELECT parent_index, sum(idx_scan) AS scans FROM platform.index_usage_stats
              WHERE NOT detached_partition GROUP BY parent_index) i;
        n := n + 1;
    END IF;
    RETURN n;
END
$fn$""",
)

index_usage_stats_view = View(
    name="platform.index_usage_stats",
    query=r"""SELECT s.schemaname AS schema_name,
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
            ELSE 'HIGH_USAGE' END AS usage,
       CASE WHEN s.idx_scan = 0 THEN 'UNUSED'
            WHEN s.idx_scan < 100 THEN 'LOW_USAGE'
            ELSE 'HIGH_USAGE' END AS usage_category,
       NOT tc.relispartition AND EXISTS (
           SELECT FROM pg_catalog.pg_class p
           WHERE p.relkind = 'p' AND p.relnamespace = tc.relnamespace
             AND s.relname ~ ('^' || p.relname || '_\d{4}_\d{2}$')) AS detached_partition
FROM pg_catalog.pg_stat_user_indexes s
JOIN pg_catalog.pg_index i ON i.indexrelid = s.indexrelid
JOIN pg_catalog.pg_class tc ON tc.oid = s.relid
LEFT JOIN pg_catalog.pg_inherits pi ON pi.inhrelid = s.indexrelid
LEFT JOIN pg_catalog.pg_inherits pt ON pt.inhrelid = s.relid
WHERE s.schemaname IN ('public', 'platform')""",
    readers=("platform_admin",),
)

tenant_performance_summary_materialized_view = MaterializedView(
    name="tenant_performance_summary",
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
    unique_columns=("tenant_id",),
    tenant_view="tenant_dashboard",
    new_tenant_row="""t.id, t.subdomain, 0::bigint, 0::bigint, 0::bigint,
           0::bigint, 0::bigint, 0::bigint, 0::bigint, 0::bigint, 0::bigint,
           0::bigint, 0::bigint, 0::bigint, 0::bigint, 0::bigint, 0::bigint,
           0::numeric, 0::bigint, 0::bigint, t.updated_at, r.refreshed_at""",
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
    new_tenant_row="""t.id, date_trunc('month', now() AT TIME ZONE 'UTC')::date,
           0::bigint, 0::bigint, 0::bigint, 0::bigint, 0::bigint, 0::bigint, 0::numeric,
           r.refreshed_at""",
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
    new_tenant_row="""t.id, NULL::uuid, (now() AT TIME ZONE 'UTC')::date, 0::bigint, 0::bigint,
           r.refreshed_at""",
)


def upgrade() -> None:
    # ### commands auto generated by Alembic - please adjust! ###
    replace_entity(
        check_performance_alerts_function, replaces="e5f7a9b1d407.check_performance_alerts_function"
    )
    replace_entity(
        snapshot_performance_metrics_function,
        replaces="e5f7a9b1d407.snapshot_performance_metrics_function",
    )
    replace_entity(index_usage_stats_view, replaces="e5f7a9b1d407.index_usage_stats_view")
    replace_entity(
        tenant_performance_summary_materialized_view,
        replaces="e5f7a9b1d407.tenant_performance_summary_materialized_view",
    )
    replace_entity(
        lead_funnel_monthly_materialized_view,
        replaces="e5f7a9b1d407.lead_funnel_monthly_materialized_view",
    )
    replace_entity(
        form_submissions_daily_materialized_view,
        replaces="e5f7a9b1d407.form_submissions_daily_materialized_view",
    )
    # ### end Alembic commands ###


def downgrade() -> None:
    # ### commands auto generated by Alembic - please adjust! ###
    replace_entity(
        form_submissions_daily_materialized_view,
        replace_with="e5f7a9b1d407.form_submissions_daily_materialized_view",
    )
    replace_entity(
        lead_funnel_monthly_materialized_view,
        replace_with="e5f7a9b1d407.lead_funnel_monthly_materialized_view",
    )
    replace_entity(
        tenant_performance_summary_materialized_view,
        replace_with="e5f7a9b1d407.tenant_performance_summary_materialized_view",
    )
    replace_entity(index_usage_stats_view, replace_with="e5f7a9b1d407.index_usage_stats_view")
    replace_entity(
        snapshot_performance_metrics_function,
        replace_with="e5f7a9b1d407.snapshot_performance_metrics_function",
    )
    replace_entity(
        check_performance_alerts_function,
        replace_with="e5f7a9b1d407.check_performance_alerts_function",
    )
    # ### end Alembic commands ###
