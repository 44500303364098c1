"""Add the audit trail: audit_log, its trigger on every tenant table, monthly partitions.

Revision ID: e5f7a9b1d407
Revises: d4e6b8a0c306
Create Date: 2026-11-26 15:00:00 UTC

`audit_log` is tenant-owned (forced RLS: a tenant reads its own audit rows), read-only
for platform_app and platform_admin, append-only for everyone, and RANGE-partitioned by
month (this month and three ahead, plus the default partition; maintenance and pg_cron
create months ahead). `platform.audit_row_change()`, a SECURITY DEFINER function owned by
platform_owner, writes it from an AFTER ROW trigger on every tenant table: see
platform_db/ddl/audit.py for the privilege model. The audit_log table and indexes are
new and empty here, so they are created in the transaction (and CONCURRENTLY is not
available for partitioned tables anyway); adding a trigger takes a short SHARE ROW
EXCLUSIVE lock on each tenant table, under the migration's lock_timeout.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from platform_db.ddl import audit, dashboards
from platform_db.ddl.audit import AUDIT_APPEND_POLICY
from platform_db.ddl.tenant_table import TenantProtection
from platform_db.migration.operations import (
    create_audit_trigger,
    drop_audit_trigger,
    protect_tenant_table,
    unprotect_tenant_table,
)

revision: str = "e5f7a9b1d407"
down_revision: str | Sequence[str] | None = "d4e6b8a0c306"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

AUDIT_LOG_PROTECTION = TenantProtection(
    audit=False,
    reason="the audit trail does not audit itself",
    app_privileges=("SELECT",),
    admin_privileges=("SELECT",),
    extra_policies=(AUDIT_APPEND_POLICY,),
)

# Frozen here: the tenant tables of this revision, their keys and unrecorded columns.
AUDITED: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("users", ("id",), ()),
    ("pages", ("id",), ("search_vector",)),
    ("forms", ("id",), ()),
    ("leads", ("id",), ()),
    ("form_submissions", ("id", "created_at"), ()),
)

SCHEDULE_AUDIT_PARTITIONS = f"""
DO $do$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'pg_cron') THEN
        PERFORM cron.schedule($q${dashboards.AUDIT_PARTITIONS_JOB[0]}$q$,
                              $q${dashboards.AUDIT_PARTITIONS_JOB[1]}$q$,
                              $q${dashboards.AUDIT_PARTITIONS_JOB[2]}$q$);
    END IF;
END
$do$
"""

UNSCHEDULE_AUDIT_PARTITIONS = f"""
DO $do$
BEGIN
    -- Nested: cron.job can only be named once pg_cron is known to be there.
    IF EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'pg_cron') THEN
        IF EXISTS (SELECT FROM cron.job WHERE jobname = '{dashboards.AUDIT_PARTITIONS_JOB[0]}') THEN
            PERFORM cron.unschedule('{dashboards.AUDIT_PARTITIONS_JOB[0]}');
        END IF;
    END IF;
END
$do$
"""


def upgrade() -> None:
    op.execute(sa.text(audit.CREATE_AUDIT_FUNCTIONS))
    op.execute(sa.text(audit.CREATE_ENSURE_MONTHLY_PARTITIONS))
    op.create_table(
        "audit_log",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column(
            "changed_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("table_name", sa.Text(), nullable=False),
        sa.Column("row_key", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("old_values", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("new_values", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("actor_id", sa.Uuid(), nullable=True),
        sa.Column("db_user", sa.Text(), nullable=False),
        sa.Column("transaction_id", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(
            "action IN ('INSERT', 'UPDATE', 'DELETE')", name=op.f("ck_audit_log_action")
        ),
        sa.PrimaryKeyConstraint("tenant_id", "changed_at", "id", name=op.f("pk_audit_log")),
        postgresql_partition_by="RANGE (changed_at)",
    )
    op.create_index(
        "ix_audit_log_tenant_actor",
        "audit_log",
        ["tenant_id", "actor_id", "changed_at"],
        unique=False,
        postgresql_where=sa.text("actor_id IS NOT NULL"),
    )
    op.create_index(
        "ix_audit_log_tenant_row",
        "audit_log",
        ["tenant_id", "table_name", "row_key", "changed_at"],
        unique=False,
    )
    op.execute(sa.text(audit.CREATE_APPEND_ONLY_TRIGGER))
    protect_tenant_table("audit_log", key=("changed_at", "id"), protection=AUDIT_LOG_PROTECTION)
    # The default partition, this month and three ahead (RLS copied from the parent).
    op.execute(sa.text(f"SELECT * FROM {audit.PARTITIONS_FUNCTION}('public.audit_log'::regclass)"))
    for table, key, exclude in AUDITED:
        create_audit_trigger(table, key=key, audit_exclude=exclude)
    op.execute(sa.text(dashboards.scheduling_functions(dashboards.CRON_JOBS)))
    op.execute(sa.text(SCHEDULE_AUDIT_PARTITIONS))


def downgrade() -> None:
    op.execute(sa.text(UNSCHEDULE_AUDIT_PARTITIONS))
    op.execute(sa.text(dashboards.scheduling_functions(dashboards.DASHBOARD_CRON_JOBS)))
    for table, key, exclude in reversed(AUDITED):
        drop_audit_trigger(table, key=key, audit_exclude=exclude)
    unprotect_tenant_table("audit_log", key=("changed_at", "id"), protection=AUDIT_LOG_PROTECTION)
    op.execute(sa.text(audit.DROP_APPEND_ONLY_TRIGGER))
    op.drop_index("ix_audit_log_tenant_row", table_name="audit_log")
    op.drop_index(
        "ix_audit_log_tenant_actor",
        table_name="audit_log",
        postgresql_where=sa.text("actor_id IS NOT NULL"),
    )
    # Dropping the parent drops every partition with it.
    op.drop_table("audit_log")
    op.execute(sa.text(audit.DROP_ENSURE_MONTHLY_PARTITIONS))
    op.execute(sa.text(audit.DROP_AUDIT_FUNCTIONS))
