"""Count only consecutive monthly partitions as ahead

Revision ID: d1432b8352a8
Revises: fbe2ab389375
Create Date: 2026-12-07 18:38:10.123212+00:00
"""

from collections.abc import Sequence

from platform_db.ddl.entities import Function
from platform_db.migration.operations import replace_entity

revision: str = "d1432b8352a8"
down_revision: str | Sequence[str] | None = "fbe2ab389375"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The definitions this revision runs, frozen here (platform_db.ddl.entities). A later
# revision that changes one points back at it: replaces="d1432b8352a8.<name>".
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
    this_month date;
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
    -- Consecutive months from the current one, each with its own partition: a partition
    -- far in the future (an imported date in 9999) must not hide next month's gap.
    ahead := 0;
    this_month := date_trunc('month', now() AT TIME ZONE 'UTC')::date;
    WHILE ahead <= 120 AND EXISTS (
        SELECT FROM platform.partition_status p
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
    execute=("platform_admin",),
)


def upgrade() -> None:
    # ### commands auto generated by Alembic - please adjust! ###
    replace_entity(
        check_performance_alerts_function, replaces="fbe2ab389375.check_performance_alerts_function"
    )
    # ### end Alembic commands ###


def downgrade() -> None:
    # ### commands auto generated by Alembic - please adjust! ###
    replace_entity(
        check_performance_alerts_function,
        replace_with="fbe2ab389375.check_performance_alerts_function",
    )
    # ### end Alembic commands ###
