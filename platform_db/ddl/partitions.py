"""Partition functions: RLS for partitions, and monthly form_submissions partitions.

A partition reached by name does not use its parent's policies, so every partition gets
RLS enabled and forced and a copy of each of its parent's policies (read from the
catalog: the parent is the one definition). Partitions get no grants for platform_app:
rows are reached through the parent only.
"""

from __future__ import annotations

from platform_db.ddl.security import APP_ROLE, OWNER_ROLE, PLATFORM_SCHEMA

PARENT = "form_submissions"
DEFAULT_PARTITION = "form_submissions_default"
DEFAULT_MONTHS_AHEAD = 3

CREATE_PROTECT_PARTITIONS = f"""
CREATE FUNCTION {PLATFORM_SCHEMA}.protect_partitions(parent regclass)
RETURNS integer
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
$fn$;

COMMENT ON FUNCTION {PLATFORM_SCHEMA}.protect_partitions(regclass) IS
    'Give every partition below parent the parent''s RLS flags and policies and no app grants.';

CREATE FUNCTION {PLATFORM_SCHEMA}.unprotect_partitions(parent regclass)
RETURNS integer
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
$fn$;

REVOKE ALL ON FUNCTION {PLATFORM_SCHEMA}.protect_partitions(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION {PLATFORM_SCHEMA}.unprotect_partitions(regclass) FROM PUBLIC;
"""

DROP_PROTECT_PARTITIONS = f"""
DROP FUNCTION IF EXISTS {PLATFORM_SCHEMA}.unprotect_partitions(regclass);
DROP FUNCTION IF EXISTS {PLATFORM_SCHEMA}.protect_partitions(regclass);
"""

# Month boundaries are UTC midnights, whatever the session's TimeZone.
CREATE_ENSURE_PARTITIONS = f"""
CREATE FUNCTION {PLATFORM_SCHEMA}.ensure_form_submission_partitions(
    months_ahead integer DEFAULT {DEFAULT_MONTHS_AHEAD},
    start_month date DEFAULT NULL
)
RETURNS TABLE (partition_name text, action text, rows_moved bigint)
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
        pg_catalog.hashtext('{PLATFORM_SCHEMA}.ensure_form_submission_partitions'));

    IF pg_catalog.to_regclass('public.{DEFAULT_PARTITION}') IS NULL THEN
        EXECUTE 'CREATE TABLE public.{DEFAULT_PARTITION} PARTITION OF public.{PARENT} DEFAULT';
        partition_name := '{DEFAULT_PARTITION}'; action := 'created'; rows_moved := 0;
        RETURN NEXT;
    END IF;

    FOR i IN 0..months_ahead LOOP
        m := (first_month + pg_catalog.make_interval(months => i))::date;
        part := 'form_submissions_' || pg_catalog.to_char(m, 'YYYY_MM');
        CONTINUE WHEN pg_catalog.to_regclass('public.' || part) IS NOT NULL;
        lo := m::timestamp AT TIME ZONE 'UTC';
        hi := (m + interval '1 month')::timestamp AT TIME ZONE 'UTC';

        IF NOT EXISTS (SELECT FROM public.{DEFAULT_PARTITION}
                       WHERE created_at >= lo AND created_at < hi) THEN
            EXECUTE format('CREATE TABLE public.%I PARTITION OF public.{PARENT} '
                           'FOR VALUES FROM (%L) TO (%L)', part, lo, hi);
            n := 0;
        ELSE
            -- CREATE ... PARTITION OF would fail while the default partition holds rows
            -- of this month: build the partition beside it, move the rows, attach it.
            -- The rows leave the table only for the length of this transaction, so
            -- foreign-key actions (leads referencing a submission) must not fire: the
            -- delete runs with session_replication_role = replica, which needs a
            -- superuser or SET privilege on that parameter (PostgreSQL 15+).
            EXECUTE format('CREATE TABLE public.%I (LIKE public.{PARENT} INCLUDING DEFAULTS '
                           'INCLUDING CONSTRAINTS INCLUDING GENERATED)', part);
            EXECUTE format('INSERT INTO public.%I SELECT * FROM public.{DEFAULT_PARTITION} '
                           'WHERE created_at >= %L AND created_at < %L', part, lo, hi);
            GET DIAGNOSTICS n = ROW_COUNT;
            BEGIN
                PERFORM pg_catalog.set_config('session_replication_role', 'replica', true);
            EXCEPTION WHEN insufficient_privilege THEN
                RAISE EXCEPTION 'the default partition holds % rows of %; moving them needs a superuser',
                    n, pg_catalog.to_char(m, 'YYYY-MM')
                    USING HINT = 'Run this as a superuser, or GRANT SET ON PARAMETER session_replication_role to the caller.';
            END;
            DELETE FROM public.{DEFAULT_PARTITION} WHERE created_at >= lo AND created_at < hi;
            PERFORM pg_catalog.set_config('session_replication_role', 'origin', true);
            EXECUTE format('ALTER TABLE public.{PARENT} ATTACH PARTITION public.%I '
                           'FOR VALUES FROM (%L) TO (%L)', part, lo, hi);
        END IF;
        partition_name := part; action := 'created'; rows_moved := n;
        RETURN NEXT;
    END LOOP;

    PERFORM {PLATFORM_SCHEMA}.protect_partitions('public.{PARENT}'::regclass);
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = '{OWNER_ROLE}') THEN
        FOR part IN
            SELECT c.relname FROM pg_catalog.pg_partition_tree('public.{PARENT}'::regclass) t
            JOIN pg_catalog.pg_class c ON c.oid = t.relid
            WHERE c.relowner <> '{OWNER_ROLE}'::regrole
        LOOP
            EXECUTE format('ALTER TABLE public.%I OWNER TO {OWNER_ROLE}', part);
        END LOOP;
    END IF;
END
$fn$;

COMMENT ON FUNCTION {PLATFORM_SCHEMA}.ensure_form_submission_partitions(integer, date) IS
    'Create the default partition and monthly form_submissions partitions from start_month '
    '(default: this month, UTC) to months_ahead months later, moving rows of those months '
    'out of the default partition. Idempotent.';

REVOKE ALL ON FUNCTION {PLATFORM_SCHEMA}.ensure_form_submission_partitions(integer, date)
    FROM PUBLIC;
"""

DROP_ENSURE_PARTITIONS = f"""
DROP FUNCTION IF EXISTS {PLATFORM_SCHEMA}.ensure_form_submission_partitions(integer, date);
"""

CREATE_RETIRE_PARTITIONS = f"""
CREATE FUNCTION {PLATFORM_SCHEMA}.retire_form_submission_partitions(
    retention interval,
    drop_tables boolean DEFAULT false
)
RETURNS TABLE (partition_name text, action text, links_cleared bigint)
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
        pg_catalog.hashtext('{PLATFORM_SCHEMA}.ensure_form_submission_partitions'));

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
$fn$;

COMMENT ON FUNCTION {PLATFORM_SCHEMA}.retire_form_submission_partitions(interval, boolean) IS
    'Detach (or drop) monthly form_submissions partitions that ended more than retention ago. '
    'A detached partition stays as a table of its own, still under RLS, for archiving.';

REVOKE ALL ON FUNCTION {PLATFORM_SCHEMA}.retire_form_submission_partitions(interval, boolean)
    FROM PUBLIC;
"""

DROP_RETIRE_PARTITIONS = f"""
DROP FUNCTION IF EXISTS {PLATFORM_SCHEMA}.retire_form_submission_partitions(interval, boolean);
"""
