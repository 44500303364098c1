"""Monitoring objects in schema `platform`: views, alerts, metric snapshots.

pg_stat_statements is optional. `platform.slow_query_stats()` looks for it at run time
(in whatever schema it was created) and returns no rows when it is missing or not
preloaded; `platform.check_performance_alerts()` then reports an `info` alert saying so.
Every object here is readable by platform_admin (with pg_read_all_stats, to see other
sessions' queries) and closed to platform_app.
"""

from __future__ import annotations

from platform_db.ddl.entities import Function, View
from platform_db.ddl.security import ADMIN_ROLE, PLATFORM_SCHEMA

S = PLATFORM_SCHEMA

# Whether pg_stat_statements can be queried here, and where it lives.
PG_STAT_STATEMENTS_RELATION = Function(
    name=f"{S}.pg_stat_statements_relation",
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
    execute=(ADMIN_ROLE,),
)

SLOW_QUERY_STATS = Function(
    name=f"{S}.slow_query_stats",
    arguments="min_mean_ms double precision DEFAULT 100",
    definition=f"""RETURNS TABLE (
    queryid bigint, query text, calls bigint, mean_ms double precision,
    total_ms double precision, rows bigint, cache_hit_ratio double precision
)
LANGUAGE plpgsql STABLE
AS $fn$
DECLARE
    rel regclass := {S}.pg_stat_statements_relation();
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
    execute=(ADMIN_ROLE,),
)

SLOW_QUERIES = View(
    name=f"{S}.slow_queries",
    query=f"""SELECT * FROM {S}.slow_query_stats(100)""",
    readers=(ADMIN_ROLE,),
    comment="Statements of this database whose mean execution time is over 100 ms (pg_stat_statements; empty without it).",
)

# Leaf indexes (a partitioned index has no statistics of its own; its partitions do).
INDEX_USAGE_STATS = View(
    name=f"{S}.index_usage_stats",
    query=f"""SELECT s.schemaname AS schema_name,
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
             AND s.relname ~ ('^' || p.relname || '_\\d{{4}}_\\d{{2}}$')) AS detached_partition
FROM pg_catalog.pg_stat_user_indexes s
JOIN pg_catalog.pg_index i ON i.indexrelid = s.indexrelid
JOIN pg_catalog.pg_class tc ON tc.oid = s.relid
LEFT JOIN pg_catalog.pg_inherits pi ON pi.inhrelid = s.indexrelid
LEFT JOIN pg_catalog.pg_inherits pt ON pt.inhrelid = s.relid
WHERE s.schemaname IN ('public', '{S}')""",
    readers=(ADMIN_ROLE,),
)

TABLE_BLOAT_STATS = View(
    name=f"{S}.table_bloat_stats",
    query=f"""SELECT s.schemaname AS schema_name,
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
WHERE s.schemaname IN ('public', '{S}')""",
    readers=(ADMIN_ROLE,),
)

CACHE_HIT_RATIOS = View(
    name=f"{S}.cache_hit_ratios",
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
    readers=(ADMIN_ROLE,),
)

BLOCKING_LOCKS = View(
    name=f"{S}.blocking_locks",
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
    readers=(ADMIN_ROLE,),
)

PARTITION_STATUS = View(
    name=f"{S}.partition_status",
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
    readers=(ADMIN_ROLE,),
)

CHECK_PERFORMANCE_ALERTS = Function(
    name=f"{S}.check_performance_alerts",
    arguments="cache_hit_threshold double precision DEFAULT 0.95, slow_query_ms double precision DEFAULT 100, dead_ratio_threshold double precision DEFAULT 0.2, min_dead_rows bigint DEFAULT 1000, connection_ratio_threshold double precision DEFAULT 0.8, blocked_seconds double precision DEFAULT 5, min_table_scans bigint DEFAULT 1000, min_partitions_ahead integer DEFAULT 2, seq_rows_threshold bigint DEFAULT 1000000, min_live_rows bigint DEFAULT 10000",
    definition=f"""RETURNS TABLE (metric text, subject text, value numeric, threshold numeric,
               severity text, detail text)
LANGUAGE plpgsql STABLE
AS $fn$
DECLARE
    r record;
    n bigint;
    ratio numeric;
    ahead integer;
    this_month date;
BEGIN
    -- Buffer cache: only meaningful once enough blocks were asked for.
    FOR r IN SELECT * FROM {S}.cache_hit_ratios
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

    IF {S}.pg_stat_statements_relation() IS NULL THEN
        metric := 'pg_stat_statements'; subject := NULL; value := NULL; threshold := NULL;
        severity := 'info';
        detail := 'pg_stat_statements is not available (add it to shared_preload_libraries and '
                  'CREATE EXTENSION pg_stat_statements): slow-query alerts are off';
        RETURN NEXT;
    ELSE
        FOR r IN SELECT * FROM {S}.slow_query_stats(slow_query_ms) LIMIT 20 LOOP
            metric := 'slow_query'; subject := r.queryid::text;
            value := round(r.mean_ms::numeric, 1); threshold := slow_query_ms::numeric;
            severity := CASE WHEN r.mean_ms > 10 * slow_query_ms THEN 'critical' ELSE 'warning' END;
            detail := format('%s calls, mean %s ms: %s', r.calls, round(r.mean_ms::numeric, 1),
                             left(regexp_replace(r.query, '\\s+', ' ', 'g'), 200));
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
            SELECT m.captured_at, m.details FROM {S}.performance_metrics m
            WHERE m.metric = 'index_scans' AND m.captured_at <= now() - interval '7 days'
              AND m.captured_at >= coalesce(
                  (SELECT d.stats_reset FROM pg_catalog.pg_stat_database d
                   WHERE d.datname = current_database()), '-infinity'::timestamptz)
            ORDER BY m.captured_at DESC LIMIT 1)
        SELECT u.parent_index, u.parent_table, sum(u.index_bytes) AS bytes, b.captured_at
        FROM {S}.index_usage_stats u
        JOIN {S}.table_bloat_stats t
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
        WHERE s.schemaname IN ('public', '{S}')
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

    FOR r IN SELECT * FROM {S}.table_bloat_stats
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

    SELECT count(DISTINCT blocked_pid) INTO n FROM {S}.blocking_locks
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
    -- Consecutive months from the current one, each with its own partition: a partition
    -- far in the future (an imported date in 9999) must not hide next month's gap.
    ahead := 0;
    this_month := date_trunc('month', now() AT TIME ZONE 'UTC')::date;
    WHILE ahead <= 120 AND EXISTS (
        SELECT FROM {S}.partition_status p
        WHERE NOT p.is_default
          AND p.partition_name = 'form_submissions_'
              || to_char(this_month + make_interval(months => ahead), 'YYYY_MM')) LOOP
        ahead := ahead + 1;
    END LOOP;
    -- ahead counts the current month too: the months after it are one fewer.
    IF ahead = 0 OR ahead - 1 < min_partitions_ahead THEN
        metric := 'partitions_ahead'; subject := 'form_submissions';
        value := greatest(ahead - 1, 0); threshold := min_partitions_ahead;
        severity := CASE WHEN ahead <= 1 THEN 'critical' ELSE 'warning' END;
        detail := format('%s has no partition: only %s consecutive monthly partitions exist '
                         'after the current month',
                         to_char(this_month + make_interval(months => ahead), 'YYYY-MM'),
                         greatest(ahead - 1, 0));
        RETURN NEXT;
    END IF;
END
$fn$""",
    execute=(ADMIN_ROLE,),
)

SNAPSHOT_PERFORMANCE_METRICS = Function(
    name=f"{S}.snapshot_performance_metrics",
    arguments="",
    definition=f"""RETURNS integer
LANGUAGE plpgsql
AS $fn$
DECLARE
    n integer;
BEGIN
    INSERT INTO {S}.performance_metrics (metric, value, details)
    SELECT 'cache_hit_ratio_' || kind, ratio, jsonb_build_object('hits', hits, 'reads', reads)
    FROM {S}.cache_hit_ratios
    UNION ALL
    SELECT 'connections', count(*), jsonb_build_object(
               'max_connections', pg_catalog.current_setting('max_connections')::int)
    FROM pg_catalog.pg_stat_activity WHERE backend_type = 'client backend'
    UNION ALL
    SELECT 'dead_rows', sum(dead_rows), jsonb_build_object('tables', count(*))
    FROM {S}.table_bloat_stats
    UNION ALL
    SELECT 'database_bytes', pg_catalog.pg_database_size(current_database()), '{{}}'::jsonb
    UNION ALL
    SELECT 'slow_queries', count(*), jsonb_build_object(
               'pg_stat_statements', {S}.pg_stat_statements_relation() IS NOT NULL)
    FROM {S}.slow_query_stats(100)
    UNION ALL
    SELECT 'alerts', count(*), coalesce(jsonb_object_agg(severity, c), '{{}}'::jsonb)
    FROM (SELECT severity, count(*) AS c FROM {S}.check_performance_alerts() GROUP BY severity) a;
    GET DIAGNOSTICS n = ROW_COUNT;
    -- Scan counts of the indexes, hourly: check_performance_alerts() calls an index unused
    -- only when its count has not moved since a snapshot a week old.
    IF NOT EXISTS (SELECT FROM {S}.performance_metrics
                   WHERE metric = 'index_scans' AND captured_at > now() - interval '55 minutes') THEN
        INSERT INTO {S}.performance_metrics (metric, value, details)
        SELECT 'index_scans', count(*), coalesce(jsonb_object_agg(parent_index, scans), '{{}}'::jsonb)
        FROM (SELECT parent_index, sum(idx_scan) AS scans FROM {S}.index_usage_stats
              WHERE NOT detached_partition GROUP BY parent_index) i;
        n := n + 1;
    END IF;
    RETURN n;
END
$fn$""",
)

CLEANUP_OLD_PERFORMANCE_METRICS = Function(
    name=f"{S}.cleanup_old_performance_metrics",
    arguments="retention interval DEFAULT '30 days'",
    definition=f"""RETURNS bigint
LANGUAGE plpgsql
AS $fn$
DECLARE
    n bigint;
BEGIN
    IF retention IS NULL OR retention < interval '1 hour' THEN
        RAISE EXCEPTION 'retention must be at least 1 hour, got %', retention;
    END IF;
    DELETE FROM {S}.performance_metrics WHERE captured_at < now() - retention;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$fn$""",
)

FUNCTIONS: tuple[Function, ...] = (
    PG_STAT_STATEMENTS_RELATION,
    SLOW_QUERY_STATS,
    CHECK_PERFORMANCE_ALERTS,
    SNAPSHOT_PERFORMANCE_METRICS,
    CLEANUP_OLD_PERFORMANCE_METRICS,
)
VIEWS: tuple[View, ...] = (
    SLOW_QUERIES,
    INDEX_USAGE_STATS,
    TABLE_BLOAT_STATS,
    CACHE_HIT_RATIOS,
    BLOCKING_LOCKS,
    PARTITION_STATUS,
)
