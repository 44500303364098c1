"""The audit trail: `public.audit_log`, the trigger that fills it, and monthly partitions.

Every insert, update and delete on a tenant-owned table (unless its model opts out, see
platform_db.ddl.tenant_table) fires `platform.audit_row_change()`, which appends one row:
the row's tenant, the table, the row's key, the action, only the columns that changed
(old and new values), the acting user (`app.current_user_id` through
`platform.current_user_id()`), the database login, the transaction id and the time.

Privileges. The trigger function is SECURITY DEFINER, owned by platform_owner (env.py
hands every function in `platform` to it), with a pinned search_path, so it writes
`audit_log` whoever changed the row, while nobody else can:

- platform_app and platform_admin get SELECT on `audit_log` and nothing else; there is
  no INSERT, UPDATE, DELETE or TRUNCATE to use, and the function cannot be called
  directly (trigger functions only run as triggers; EXECUTE is revoked as well).
- RLS on `audit_log` is enabled and forced like on every tenant table, so a tenant reads
  its own audit rows only, and even platform_owner reads through the tenant policy.
- Forced RLS also applies to the function's INSERT (it runs as the owner). The tenant
  policy alone would refuse audit rows written by platform-wide work that has no tenant
  set (imports, platform_admin, a cascade from deleting a tenant) - and those are the
  changes an audit trail must not lose. So `audit_log` has one more policy,
  `audit_append`: FOR INSERT, TO platform_owner only, WITH CHECK (true). It opens
  nothing to request-serving logins: they are never members of platform_owner (the
  roles revision refuses that) and have no INSERT privilege in the first place.
- Append-only holds against superusers too: a BEFORE UPDATE OR DELETE trigger refuses
  every change of an audit row. Retention is by month: detach or drop a partition.

`audit_log` has no foreign key to `tenants`: the history of a tenant outlives it (and
deleting a tenant is itself audited, row by row, through the cascade).
"""

from __future__ import annotations

from platform_db.ddl.security import (
    OWNER_ROLE,
    PLATFORM_SCHEMA,
    Policy,
    ident,
)

S = PLATFORM_SCHEMA
AUDIT_TABLE = "audit_log"
AUDIT_FUNCTION = f"{S}.audit_row_change"
AUDIT_TRIGGER = "audit_row_change"
APPEND_ONLY_TRIGGER = "audit_log_append_only"
PARTITIONS_FUNCTION = f"{S}.ensure_monthly_partitions"
DEFAULT_MONTHS_AHEAD = 3

# See the module docstring: the owner's INSERT through the trigger function.
AUDIT_APPEND_POLICY = Policy(
    "audit_append", using=None, check="true", command="INSERT", roles=(OWNER_ROLE,)
)

CREATE_AUDIT_FUNCTIONS = f"""
CREATE FUNCTION {AUDIT_FUNCTION}() RETURNS trigger
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
        INSERT INTO public.{AUDIT_TABLE}
            (tenant_id, table_name, row_key, action, old_values, new_values,
             actor_id, db_user, transaction_id, changed_at)
        VALUES (tenant, TG_ARGV[0], row_key, TG_OP, old_values, new_values,
                {S}.current_user_id(), session_user,
                pg_catalog.pg_current_xact_id()::text::bigint, pg_catalog.now());
    END LOOP;
    RETURN NULL;
END
$fn$;

COMMENT ON FUNCTION {AUDIT_FUNCTION}() IS
    'Trigger: append the change of one row of a tenant table to public.audit_log.';

CREATE FUNCTION {S}.audit_log_refuse_change() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Retire old audit rows by detaching or dropping a monthly partition.';
END
$fn$;

REVOKE ALL ON FUNCTION {AUDIT_FUNCTION}() FROM PUBLIC;
REVOKE ALL ON FUNCTION {S}.audit_log_refuse_change() FROM PUBLIC;
"""

DROP_AUDIT_FUNCTIONS = f"""
DROP FUNCTION IF EXISTS {S}.audit_log_refuse_change();
DROP FUNCTION IF EXISTS {AUDIT_FUNCTION}();
"""

CREATE_APPEND_ONLY_TRIGGER = f"""
CREATE TRIGGER {APPEND_ONLY_TRIGGER} BEFORE UPDATE OR DELETE ON public.{AUDIT_TABLE}
    FOR EACH ROW EXECUTE FUNCTION {S}.audit_log_refuse_change()
"""

DROP_APPEND_ONLY_TRIGGER = f"DROP TRIGGER IF EXISTS {APPEND_ONLY_TRIGGER} ON public.{AUDIT_TABLE}"


def _literal(value: str) -> str:
    # Only identifiers (checked by ident) and commas reach this: no quote to escape.
    if "'" in value or "\\" in value:
        raise ValueError(f"refusing unexpected trigger argument {value!r}")
    return f"'{value}'"


def audit_trigger_args(table: str, key: tuple[str, ...], exclude: tuple[str, ...]) -> list[str]:
    """The trigger's arguments, as the catalog stores them (pg_trigger.tgargs)."""
    return [
        ident(table),
        ",".join(ident(c) for c in key),
        ",".join(ident(c) for c in sorted(exclude)),
    ]


def create_audit_trigger(table: str, key: tuple[str, ...], exclude: tuple[str, ...] = ()) -> str:
    """CREATE TRIGGER that records every row change of `public.<table>` in audit_log.

    On a partitioned table PostgreSQL clones the trigger to every partition, present and
    future; the first argument keeps the parent's name in the trail.
    """
    if not key:
        raise ValueError(f"{table}: an audited table needs key columns besides tenant_id")
    args = ", ".join(_literal(a) for a in audit_trigger_args(table, key, exclude))
    return (
        f"CREATE TRIGGER {AUDIT_TRIGGER} AFTER INSERT OR UPDATE OR DELETE ON public.{ident(table)}\n"
        f"    FOR EACH ROW EXECUTE FUNCTION {AUDIT_FUNCTION}({args})"
    )


def drop_audit_trigger(table: str, name: str = AUDIT_TRIGGER) -> str:
    return f"DROP TRIGGER IF EXISTS {ident(name)} ON public.{ident(table)}"


# Generic monthly partitions of a table RANGE-partitioned by one timestamptz column:
# `<parent>_YYYY_MM` (UTC months) and `<parent>_default`. The same algorithm as
# platform.ensure_form_submission_partitions (which stays as it is: its callers and
# pg_cron job rely on it), with the partition key read from the catalog.
CREATE_ENSURE_MONTHLY_PARTITIONS = f"""
CREATE FUNCTION {PARTITIONS_FUNCTION}(
    parent regclass,
    months_ahead integer DEFAULT {DEFAULT_MONTHS_AHEAD},
    start_month date DEFAULT NULL
)
RETURNS TABLE (partition_name text, action text, rows_moved bigint)
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
        pg_catalog.hashtext('{PARTITIONS_FUNCTION}:' || parent::oid::text));

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
    PERFORM {S}.protect_partitions(parent);
    FOR part IN
        SELECT c.relname FROM pg_catalog.pg_partition_tree(parent) t
        JOIN pg_catalog.pg_class c ON c.oid = t.relid
        WHERE t.relid <> parent AND pg_catalog.pg_get_userbyid(c.relowner) <> owner_name
    LOOP
        EXECUTE format('ALTER TABLE %I.%I OWNER TO %I', nsp, part, owner_name);
    END LOOP;
END
$fn$;

COMMENT ON FUNCTION {PARTITIONS_FUNCTION}(regclass, integer, date) IS
    'Create the default partition and monthly partitions <parent>_YYYY_MM of a table '
    'RANGE-partitioned by one timestamptz column, from start_month (default: this month, '
    'UTC) to months_ahead months later, moving rows of those months out of the default '
    'partition. Idempotent.';

REVOKE ALL ON FUNCTION {PARTITIONS_FUNCTION}(regclass, integer, date) FROM PUBLIC;
"""

DROP_ENSURE_MONTHLY_PARTITIONS = f"""
DROP FUNCTION IF EXISTS {PARTITIONS_FUNCTION}(regclass, integer, date);
"""
