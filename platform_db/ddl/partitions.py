"""Partition functions: RLS for partitions, monthly partitions for form_submissions and
audit_log (one function, platform.ensure_monthly_partitions), retiring old months.

A partition reached by name does not use its parent's policies, so every partition gets
RLS enabled and forced and a copy of each of its parent's policies (read from the
catalog: the parent is the one definition). Partitions get no grants for platform_app:
rows are reached through the parent only.
"""

from __future__ import annotations

from platform_db.ddl.entities import Function
from platform_db.ddl.security import APP_ROLE, PLATFORM_SCHEMA

PARENT = "form_submissions"
DEFAULT_PARTITION = "form_submissions_default"
DEFAULT_MONTHS_AHEAD = 3
PARTITIONS_FUNCTION = f"{PLATFORM_SCHEMA}.ensure_monthly_partitions"


def bounded_advisory_lock(key: str, what: str, *, wait_s: int = 10) -> str:
    """PL/pgSQL that takes the transaction-level advisory lock `key` (an SQL bigint
    expression), waiting at most `wait_s` seconds, then fails naming `what` instead of
    hanging behind whoever holds it (statement_timeout still applies)."""
    tries = wait_s * 10
    return f"""FOR attempt IN 1..{tries + 1} LOOP
        EXIT WHEN pg_catalog.pg_try_advisory_xact_lock({key});
        IF attempt > {tries} THEN
            RAISE EXCEPTION '{what}: another session has held its lock for {wait_s} s'
                USING ERRCODE = 'lock_not_available',
                      HINT = 'Another run is in progress, or a session holds the lock: see '
                             'pg_locks WHERE locktype = ''advisory''; try again later.';
        END IF;
        PERFORM pg_catalog.pg_sleep(0.1);
    END LOOP;"""


def citus_sequential(relation: str) -> str:
    """PL/pgSQL that, when `relation` (a regclass expression) is a Citus-distributed table,
    switches the transaction to sequential mode and allows triggers on the shards
    (partitions clone their parent's), and sets the variable `distributed`.

    DDL on distributed tables in a transaction that has already read them in parallel
    (several connections per worker) would wait for itself: Citus reports it as a
    distributed deadlock. Sequential mode uses one connection per worker. Both settings
    are transaction-local. On plain PostgreSQL `distributed` is false and nothing else
    happens (the catalog table is looked up by name, so no Citus object is needed)."""
    return f"""distributed := false;
    IF pg_catalog.to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL THEN
        EXECUTE 'SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition '
                'WHERE logicalrelid = $1)' INTO distributed USING {relation};
    END IF;
    IF distributed THEN
        SET LOCAL citus.multi_shard_modify_mode = 'sequential';
        SET LOCAL citus.enable_unsafe_triggers = on;
    END IF;"""


PROTECT_PARTITIONS = Function(
    name=f"{PLATFORM_SCHEMA}.protect_partitions",
    arguments="parent regclass",
    definition=f"""RETURNS integer
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
                   CASE WHEN p.polroles = '{{0}}' THEN 'PUBLIC'
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
        EXECUTE format('REVOKE ALL ON %s FROM PUBLIC, {APP_ROLE}', part);
        n := n + 1;
    END LOOP;
    RETURN n;
END
$fn$""",
    comment="Give every partition below parent the parent's RLS flags and policies and no app grants.",
)

UNPROTECT_PARTITIONS = Function(
    name=f"{PLATFORM_SCHEMA}.unprotect_partitions",
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

# The one partition-maintenance function, for every table RANGE-partitioned by one
# timestamptz column (form_submissions, audit_log): `<parent>_YYYY_MM` (UTC months) and
# `<parent>_default`, the partition key read from the catalog.
ENSURE_MONTHLY_PARTITIONS = Function(
    name=PARTITIONS_FUNCTION,
    arguments=f"parent regclass, months_ahead integer DEFAULT {DEFAULT_MONTHS_AHEAD}, start_month date DEFAULT NULL",
    definition=f"""RETURNS TABLE (partition_name text, action text, rows_moved bigint)
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
    {
        bounded_advisory_lock(
            f"pg_catalog.hashtext('{PARTITIONS_FUNCTION}:' || parent::oid::text)",
            PARTITIONS_FUNCTION,
        )
    }

    -- On Citus, new partitions are distributed with their parent (co-located).
    {citus_sequential("parent")}
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
    PERFORM {PLATFORM_SCHEMA}.protect_partitions(parent);
    FOR part IN
        SELECT c.relname FROM pg_catalog.pg_partition_tree(parent) t
        JOIN pg_catalog.pg_class c ON c.oid = t.relid
        WHERE t.relid <> parent AND pg_catalog.pg_get_userbyid(c.relowner) <> owner_name
    LOOP
        EXECUTE format('ALTER TABLE %I.%I OWNER TO %I', nsp, part, owner_name);
    END LOOP;
END
$fn$""",
    comment=(
        "Create the default partition and monthly partitions <parent>_YYYY_MM of a table "
        "RANGE-partitioned by one timestamptz column, from start_month (default: this month, "
        "UTC) to months_ahead months later, moving rows of those months out of the default "
        "partition. Idempotent."
    ),
)


# The name form_submissions' callers (and its pg_cron job) know: the one function above.
ENSURE_FORM_SUBMISSION_PARTITIONS = Function(
    name=f"{PLATFORM_SCHEMA}.ensure_form_submission_partitions",
    arguments="months_ahead integer DEFAULT 3, start_month date DEFAULT NULL",
    definition=f"""RETURNS TABLE (partition_name text, action text, rows_moved bigint)
LANGUAGE sql
AS $fn$
    SELECT * FROM {PARTITIONS_FUNCTION}('public.{PARENT}'::regclass, months_ahead, start_month)
$fn$""",
    comment=(
        "Create the default partition and monthly form_submissions partitions from start_month "
        "(default: this month, UTC) to months_ahead months later, moving rows of those months "
        "out of the default partition. Idempotent. "
        "Shorthand for platform.ensure_monthly_partitions('public.form_submissions')."
    ),
)


RETIRE_FORM_SUBMISSION_PARTITIONS = Function(
    name=f"{PLATFORM_SCHEMA}.retire_form_submission_partitions",
    arguments="retention interval, drop_tables boolean DEFAULT false",
    definition=f"""RETURNS TABLE (partition_name text, action text, links_cleared bigint)
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
    {citus_sequential(f"'public.{PARENT}'::regclass")}
    PERFORM pg_catalog.set_config('lock_timeout', '5s', true);
    -- The lock platform.ensure_monthly_partitions takes for this table: never both at once.
    PERFORM pg_catalog.pg_advisory_xact_lock(
        pg_catalog.hashtext('{PARTITIONS_FUNCTION}:' || 'public.{PARENT}'::regclass::oid::text));

    FOR r IN
        SELECT c.relname,
               (regexp_match(pg_catalog.pg_get_expr(c.relpartbound, c.oid),
                             'FROM \\(''([^'']+)''\\) TO \\(''([^'']+)''\\)')) AS b
        FROM pg_catalog.pg_inherits i
        JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'public.{PARENT}'::regclass
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
        EXECUTE format('ALTER TABLE public.{PARENT} DETACH PARTITION public.%I', r.relname);
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
    comment=(
        "Detach (or drop) monthly form_submissions partitions that ended more than retention ago. "
        "A detached partition stays as a table of its own, still under RLS, for archiving."
    ),
)
