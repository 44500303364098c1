"""The audit trail: `public.audit_log`, the trigger that fills it, and monthly partitions.

Every insert, update and delete on a tenant-owned table (unless its model opts out, see
platform_db.ddl.tenant_table) fires `platform.audit_row_change()`, which appends one row:
the row's tenant, the table, the row's key, the action, only the columns that changed
(old and new values), the acting user, the database login, the transaction id and the
time.

The acting user is `app.current_user_id` (through `platform.current_user_id()`), which
any SQL of the transaction can set: it is recorded as `actor_id` only when it names a
user of the row's tenant (`public.users`, read under the tenant policy, so a user of
another tenant or no user at all does not qualify). Otherwise the claim is kept apart in
`claimed_actor_id` and `actor_id` is NULL: a forged actor can be told from a real one.
Within its own tenant a request can still name any of the tenant's users; only the
sealed tenant (docs/SECURITY.md) would close that.

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

from platform_db.ddl.entities import Function, Trigger
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

# See the module docstring: the owner's INSERT through the trigger function.
AUDIT_APPEND_POLICY = Policy(
    "audit_append", using=None, check="true", command="INSERT", roles=(OWNER_ROLE,)
)

AUDIT_ROW_CHANGE = Function(
    name=AUDIT_FUNCTION,
    arguments="",
    definition=f"""RETURNS trigger
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
    claimed uuid := {S}.current_user_id();
    actor uuid;
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
        -- The claimed user counts only if it is a user of this row's tenant.
        actor := NULL;
        IF claimed IS NOT NULL AND EXISTS (
            SELECT FROM public.users u WHERE u.tenant_id = tenant AND u.id = claimed
        ) THEN
            actor := claimed;
        END IF;
        INSERT INTO public.{AUDIT_TABLE}
            (tenant_id, table_name, row_key, action, old_values, new_values,
             actor_id, claimed_actor_id, db_user, transaction_id, changed_at)
        VALUES (tenant, TG_ARGV[0], row_key, TG_OP, old_values, new_values,
                actor, CASE WHEN actor IS NULL THEN claimed END, session_user,
                pg_catalog.pg_current_xact_id()::text::bigint, pg_catalog.now());
    END LOOP;
    RETURN NULL;
END
$fn$""",
    comment="Trigger: append the change of one row of a tenant table to public.audit_log.",
)

AUDIT_LOG_REFUSE_CHANGE = Function(
    name=f"{S}.audit_log_refuse_change",
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

# Append-only even for superusers: every UPDATE or DELETE of an audit row is refused.
APPEND_ONLY = Trigger(
    on=f"public.{AUDIT_TABLE}",
    name=APPEND_ONLY_TRIGGER,
    function=f"{S}.audit_log_refuse_change",
    timing="BEFORE",
    events=("UPDATE", "DELETE"),
)


def audit_trigger_args(table: str, key: tuple[str, ...], exclude: tuple[str, ...]) -> list[str]:
    """The trigger's arguments, as the catalog stores them (pg_trigger.tgargs)."""
    return [
        ident(table),
        ",".join(ident(c) for c in key),
        ",".join(ident(c) for c in sorted(exclude)),
    ]


def audit_trigger(table: str, key: tuple[str, ...], exclude: tuple[str, ...] = ()) -> Trigger:
    """The trigger that records every row change of `public.<table>` in audit_log.

    On a partitioned table PostgreSQL clones the trigger to every partition, present and
    future; the first argument keeps the parent's name in the trail.
    """
    if not key:
        raise ValueError(f"{table}: an audited table needs key columns besides tenant_id")
    return Trigger(
        on=f"public.{ident(table)}",
        name=AUDIT_TRIGGER,
        function=AUDIT_FUNCTION,
        arguments=tuple(audit_trigger_args(table, key, exclude)),
    )
