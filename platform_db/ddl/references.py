"""Optional references between tenant tables: cleared by a trigger when their row goes.

Four references between tenant tables are optional: a page's author (`users`), a lead's
form (`forms`), a submission's lead (`leads`) and a lead's source submission
(`form_submissions`). Deleting the referenced row must keep the referencing row and
clear only the reference, never the tenant: once that was `ON DELETE SET NULL (col)`
(PostgreSQL 15), but Citus refuses SET NULL and SET DEFAULT actions on a foreign key that
includes the distribution column (`tenant_id`), which every composite key here does.

So that one schema serves both engines, the foreign keys are plain (`NO ACTION`: they
still refuse a reference to a row that does not exist, or to another tenant's) and a
`BEFORE DELETE` row trigger on the referenced table, `platform.clear_references()`,
clears the references to the row being deleted, in the same statement and transaction,
before the foreign key's end-of-statement check. On Citus the trigger runs on the shard,
and its UPDATE reaches only the co-located shard of the same tenant (local execution).

The trigger runs with the deleting session's rights and tenant: a tenant session clears
its own tenant's references (RLS lets it see exactly those), a platform-wide session
(superuser, BYPASSRLS) clears any. It changes rows, so the audit trail records the
cleared reference as an UPDATE of the referencing row, as the foreign-key action did.
Moving rows between partitions (platform.ensure_monthly_partitions) runs with
`session_replication_role = replica`, which silences it like every other trigger.
"""

from __future__ import annotations

from dataclasses import dataclass

from platform_db.ddl.entities import PLATFORM_SCHEMA, Function, Trigger, ident

S = PLATFORM_SCHEMA
CLEAR_FUNCTION = f"{S}.clear_references"

CLEAR_REFERENCES = Function(
    name=CLEAR_FUNCTION,
    arguments="",
    definition="""RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    -- TG_ARGV[0]: the referencing table (schema-qualified); TG_ARGV[1]: its columns that
    -- hold this row's key, comma-separated; TG_ARGV[2]: the columns of this table they
    -- hold, in the same order. Both tables are tenant tables: tenant_id is matched too.
    assignments text;
    matches text;
BEGIN
    -- The tenant itself is being deleted: its cascade deletes the referencing rows too.
    -- (Clearing them first would update a row the cascade may already have updated,
    -- which re-checks its key against the tenant that is gone.)
    IF NOT EXISTS (SELECT 1 FROM public.tenants t WHERE t.id = OLD.tenant_id) THEN
        RETURN OLD;
    END IF;
    SELECT pg_catalog.string_agg(pg_catalog.format('%I = NULL', u.c), ', '),
           pg_catalog.string_agg(pg_catalog.format('%I = ($2 ->> %L)::%s', u.c, u.k,
                                     pg_catalog.format_type(a.atttypid, a.atttypmod)),
                                 ' AND ')
    INTO assignments, matches
    FROM ROWS FROM (pg_catalog.unnest(pg_catalog.string_to_array(TG_ARGV[1], ',')),
                    pg_catalog.unnest(pg_catalog.string_to_array(TG_ARGV[2], ','))) AS u(c, k)
    JOIN pg_catalog.pg_attribute a ON a.attrelid = TG_RELID AND a.attname = u.k;
    EXECUTE pg_catalog.format('UPDATE %s SET %s WHERE tenant_id = $1 AND %s',
                              TG_ARGV[0], assignments, matches)
        USING OLD.tenant_id, pg_catalog.to_jsonb(OLD);
    RETURN OLD;
END
$fn$""",
    comment=(
        "Trigger: before a row of a tenant table is deleted, set to NULL the optional "
        "references to it (what ON DELETE SET NULL (col) did; Citus refuses that action)."
    ),
)


@dataclass(frozen=True, slots=True)
class OptionalReference:
    """`table(tenant_id, *columns) -> referenced(tenant_id, *referenced_columns)`,
    cleared when the referenced row is deleted."""

    table: str
    columns: tuple[str, ...]
    referenced: str
    referenced_columns: tuple[str, ...]

    def __post_init__(self) -> None:
        for name in (self.table, self.referenced, *self.columns, *self.referenced_columns):
            ident(name)
        if len(self.columns) != len(self.referenced_columns) or not self.columns:
            raise ValueError(f"{self.table}: columns and referenced columns must pair up")

    @property
    def trigger_name(self) -> str:
        return ident(f"clear_{self.table}_{self.columns[0]}")

    def trigger(self) -> Trigger:
        return Trigger(
            on=f"public.{self.referenced}",
            name=self.trigger_name,
            function=CLEAR_FUNCTION,
            timing="BEFORE",
            events=("DELETE",),
            arguments=(
                f"public.{self.table}",
                ",".join(self.columns),
                ",".join(self.referenced_columns),
            ),
        )


# Every optional reference between tenant tables (tests/test_schema.py holds the models'
# foreign keys to this list: none of them may say ON DELETE SET NULL again).
OPTIONAL_REFERENCES: tuple[OptionalReference, ...] = (
    OptionalReference("pages", ("author_id",), "users", ("id",)),
    OptionalReference("leads", ("form_id",), "forms", ("id",)),
    OptionalReference("form_submissions", ("lead_id",), "leads", ("id",)),
    OptionalReference(
        "leads",
        ("source_submission_id", "source_submission_created_at"),
        "form_submissions",
        ("id", "created_at"),
    ),
)

CLEAR_TRIGGERS: tuple[Trigger, ...] = tuple(r.trigger() for r in OPTIONAL_REFERENCES)
