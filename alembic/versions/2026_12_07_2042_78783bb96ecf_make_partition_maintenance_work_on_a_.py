"""Make partition maintenance work on a Citus-distributed database

Revision ID: 78783bb96ecf
Revises: 23cc90dd189b
Create Date: 2026-12-07 20:42:08.525422+00:00
"""

from collections.abc import Sequence

from platform_db.ddl.entities import Function
from platform_db.migration.operations import replace_entity

revision: str = "78783bb96ecf"
down_revision: str | Sequence[str] | None = "23cc90dd189b"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The definitions this revision runs, frozen here (platform_db.ddl.entities). A later
# revision that changes one points back at it: replaces="78783bb96ecf.<name>".
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
    distributed boolean;
    dist_column text;
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

    -- On Citus, new partitions are distributed with their parent (co-located).
    distributed := false;
    IF pg_catalog.to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL THEN
        EXECUTE 'SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition '
                'WHERE logicalrelid = $1)' INTO distributed USING parent;
    END IF;
    IF distributed THEN
        SET LOCAL citus.multi_shard_modify_mode = 'sequential';
        SET LOCAL citus.enable_unsafe_triggers = on;
    END IF;
    IF distributed THEN
        EXECUTE 'SELECT pg_catalog.column_to_column_name(logicalrelid, partkey) '
                'FROM pg_catalog.pg_dist_partition WHERE logicalrelid = $1'
            INTO dist_column USING parent;
    END IF;

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
        -- SELECT 1: Citus cannot plan an empty target list on a distributed table.
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I.%I WHERE %I >= $1 AND %I < $2)',
                       nsp, default_part, key_column, key_column)
            INTO busy USING lo, hi;
        IF NOT busy THEN
            EXECUTE format('CREATE TABLE %I.%I PARTITION OF %s FOR VALUES FROM (%L) TO (%L)',
                           nsp, part, parent, lo, hi);
            n := 0;
        ELSE
            -- The default partition holds rows of this month: build the partition beside
            -- it, move the rows, attach it. The delete runs with session_replication_role
            -- = replica so that no trigger (the audit trigger, audit_log's append-only
            -- guard, the clearing of references to the rows, foreign-key checks) fires
            -- for rows that only change partition; that needs a superuser or SET
            -- privilege on the parameter. SET LOCAL, not set_config(): Citus sends only
            -- SET LOCAL on to the workers, where the shards' triggers fire.
            EXECUTE format('CREATE TABLE %I.%I (LIKE %s INCLUDING DEFAULTS '
                           'INCLUDING CONSTRAINTS INCLUDING GENERATED)', nsp, part, parent);
            IF distributed THEN
                -- Distributed (empty) before the rows arrive, so that they go shard to
                -- co-located shard on the workers and the attach finds it co-located.
                EXECUTE 'SELECT create_distributed_table($1, $2, colocate_with => $3)'
                    USING format('%I.%I', nsp, part)::regclass, dist_column,
                          parent::text;
            END IF;
            EXECUTE format('INSERT INTO %I.%I SELECT * FROM %I.%I WHERE %I >= $1 AND %I < $2',
                           nsp, part, nsp, default_part, key_column, key_column)
                USING lo, hi;
            GET DIAGNOSTICS n = ROW_COUNT;
            BEGIN
                SET LOCAL session_replication_role = replica;
            EXCEPTION WHEN insufficient_privilege THEN
                RAISE EXCEPTION 'the default partition of % holds % rows of %; moving them needs a superuser',
                    parent, n, pg_catalog.to_char(m, 'YYYY-MM')
                    USING HINT = 'Run this as a superuser, or GRANT SET ON PARAMETER session_replication_role to the caller.';
            END;
            EXECUTE format('DELETE FROM %I.%I WHERE %I >= $1 AND %I < $2',
                           nsp, default_part, key_column, key_column) USING lo, hi;
            SET LOCAL session_replication_role = origin;
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
    distributed boolean;
BEGIN
    IF retention IS NULL OR retention < interval '1 month' THEN
        RAISE EXCEPTION 'retention must be at least 1 month, got %', retention;
    END IF;
    cutoff := pg_catalog.now() - retention;
    -- On Citus: the update of every tenant's leads and the DDL share one connection per
    -- worker.
    distributed := false;
    IF pg_catalog.to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL THEN
        EXECUTE 'SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition '
                'WHERE logicalrelid = $1)' INTO distributed USING 'public.form_submissions'::regclass;
    END IF;
    IF distributed THEN
        SET LOCAL citus.multi_shard_modify_mode = 'sequential';
        SET LOCAL citus.enable_unsafe_triggers = on;
    END IF;
    PERFORM pg_catalog.set_config('lock_timeout', '5s', true);
    -- The lock platform.ensure_monthly_partitions takes for this table: never both at once.
    PERFORM pg_catalog.pg_advisory_xact_lock(
        pg_catalog.hashtext('platform.ensure_monthly_partitions:' || 'public.form_submissions'::regclass::oid::text));

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


def upgrade() -> None:
    # ### commands auto generated by Alembic - please adjust! ###
    replace_entity(
        ensure_monthly_partitions_function,
        replaces="412a27b7f5fe.ensure_monthly_partitions_function",
    )
    replace_entity(
        retire_form_submission_partitions_function,
        replaces="cacc0a4ef960.retire_form_submission_partitions_function",
    )
    # ### end Alembic commands ###


def downgrade() -> None:
    # ### commands auto generated by Alembic - please adjust! ###
    replace_entity(
        retire_form_submission_partitions_function,
        replace_with="cacc0a4ef960.retire_form_submission_partitions_function",
    )
    replace_entity(
        ensure_monthly_partitions_function,
        replace_with="412a27b7f5fe.ensure_monthly_partitions_function",
    )
    # ### end Alembic commands ###
