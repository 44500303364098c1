"""Clear optional references by trigger instead of ON DELETE SET NULL

Revision ID: 23cc90dd189b
Revises: 412a27b7f5fe
Create Date: 2026-12-07 20:31:14.837047+00:00
"""

from collections.abc import Sequence

from alembic import op

from platform_db.ddl.entities import Function, Trigger
from platform_db.migration.operations import create_entity, drop_entity

revision: str = "23cc90dd189b"
down_revision: str | Sequence[str] | None = "412a27b7f5fe"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The definitions this revision runs, frozen here (platform_db.ddl.entities). A later
# revision that changes one points back at it: replaces="23cc90dd189b.<name>".
clear_references_function = Function(
    name="platform.clear_references",
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
    comment="Trigger: before a row of a tenant table is deleted, set to NULL the optional references to it (what ON DELETE SET NULL (col) did; Citus refuses that action).",
)

form_submissions_clear_leads_source_submission_id_trigger = Trigger(
    on="public.form_submissions",
    name="clear_leads_source_submission_id",
    function="platform.clear_references",
    timing="BEFORE",
    events=("DELETE",),
    arguments=(
        "public.leads",
        "source_submission_id,source_submission_created_at",
        "id,created_at",
    ),
)

forms_clear_leads_form_id_trigger = Trigger(
    on="public.forms",
    name="clear_leads_form_id",
    function="platform.clear_references",
    timing="BEFORE",
    events=("DELETE",),
    arguments=("public.leads", "form_id", "id"),
)

leads_clear_form_submissions_lead_id_trigger = Trigger(
    on="public.leads",
    name="clear_form_submissions_lead_id",
    function="platform.clear_references",
    timing="BEFORE",
    events=("DELETE",),
    arguments=("public.form_submissions", "lead_id", "id"),
)

users_clear_pages_author_id_trigger = Trigger(
    on="public.users",
    name="clear_pages_author_id",
    function="platform.clear_references",
    timing="BEFORE",
    events=("DELETE",),
    arguments=("public.pages", "author_id", "id"),
)


def upgrade() -> None:
    # The four optional references change from ON DELETE SET NULL (col), which Citus
    # refuses on keys that include the distribution column, to plain foreign keys plus a
    # BEFORE DELETE trigger on the referenced table that clears them (one schema for both
    # engines, docs/SCALING.md). PostgreSQL cannot change a foreign key's action in
    # place: each is dropped and added again under the same name, which checks the
    # existing rows again while writes to both tables wait (deploy off-peak on a large
    # database). Added NOT VALID and validated later, the keys would stay unvalidated in
    # every database migrated from scratch; and PostgreSQL 15 cannot add a NOT VALID
    # foreign key to the partitioned form_submissions at all.
    op.drop_constraint(
        "fk_form_submissions_tenant_id_lead_id_leads", "form_submissions", type_="foreignkey"
    )
    op.create_foreign_key(
        "fk_form_submissions_tenant_id_lead_id_leads",
        "form_submissions",
        "leads",
        ["tenant_id", "lead_id"],
        ["tenant_id", "id"],
    )
    op.drop_constraint("fk_leads_tenant_id_form_id_forms", "leads", type_="foreignkey")
    op.create_foreign_key(
        "fk_leads_tenant_id_form_id_forms",
        "leads",
        "forms",
        ["tenant_id", "form_id"],
        ["tenant_id", "id"],
    )
    op.drop_constraint("fk_leads_source_submission", "leads", type_="foreignkey")
    op.create_foreign_key(
        "fk_leads_source_submission",
        "leads",
        "form_submissions",
        ["tenant_id", "source_submission_id", "source_submission_created_at"],
        ["tenant_id", "id", "created_at"],
    )
    op.drop_constraint("fk_pages_tenant_id_author_id_users", "pages", type_="foreignkey")
    op.create_foreign_key(
        "fk_pages_tenant_id_author_id_users",
        "pages",
        "users",
        ["tenant_id", "author_id"],
        ["tenant_id", "id"],
    )
    create_entity(clear_references_function)
    create_entity(form_submissions_clear_leads_source_submission_id_trigger)
    create_entity(forms_clear_leads_form_id_trigger)
    create_entity(leads_clear_form_submissions_lead_id_trigger)
    create_entity(users_clear_pages_author_id_trigger)


def downgrade() -> None:
    # Back to ON DELETE SET NULL (col); on a Citus-distributed database PostgreSQL's
    # action cannot be restored (Citus refuses it): undistribute first.
    drop_entity(users_clear_pages_author_id_trigger)
    drop_entity(leads_clear_form_submissions_lead_id_trigger)
    drop_entity(forms_clear_leads_form_id_trigger)
    drop_entity(form_submissions_clear_leads_source_submission_id_trigger)
    drop_entity(clear_references_function)
    op.drop_constraint("fk_pages_tenant_id_author_id_users", "pages", type_="foreignkey")
    op.create_foreign_key(
        "fk_pages_tenant_id_author_id_users",
        "pages",
        "users",
        ["tenant_id", "author_id"],
        ["tenant_id", "id"],
        ondelete="SET NULL (author_id)",
    )
    op.drop_constraint("fk_leads_source_submission", "leads", type_="foreignkey")
    op.create_foreign_key(
        "fk_leads_source_submission",
        "leads",
        "form_submissions",
        ["tenant_id", "source_submission_id", "source_submission_created_at"],
        ["tenant_id", "id", "created_at"],
        ondelete="SET NULL (source_submission_id, source_submission_created_at)",
    )
    op.drop_constraint("fk_leads_tenant_id_form_id_forms", "leads", type_="foreignkey")
    op.create_foreign_key(
        "fk_leads_tenant_id_form_id_forms",
        "leads",
        "forms",
        ["tenant_id", "form_id"],
        ["tenant_id", "id"],
        ondelete="SET NULL (form_id)",
    )
    op.drop_constraint(
        "fk_form_submissions_tenant_id_lead_id_leads", "form_submissions", type_="foreignkey"
    )
    op.create_foreign_key(
        "fk_form_submissions_tenant_id_lead_id_leads",
        "form_submissions",
        "leads",
        ["tenant_id", "lead_id"],
        ["tenant_id", "id"],
        ondelete="SET NULL (lead_id)",
    )
