"""Add the performance indexes: covering, partial, full-text and funnel indexes.

Revision ID: 9d4f2a6c8b03
Revises: 7c3e9b1f4a02
Create Date: 2026-11-26 12:16:00 UTC

The seed's phase 2. Each index names the query it serves; tests/test_indexes.py runs
EXPLAIN on those queries. The tables are new and empty when this revision first runs, so
plain CREATE INDEX is used; an index added later to a live table goes CONCURRENTLY.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "9d4f2a6c8b03"
down_revision: str | Sequence[str] | None = "7c3e9b1f4a02"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_users_tenant_role", "users", ["tenant_id", "role"], unique=False)
    op.create_index("ix_users_tenant_active", "users", ["tenant_id", "is_active"], unique=False)
    op.create_index(
        "ix_users_tenant_role_active",
        "users",
        ["tenant_id", "role", "is_active"],
        unique=False,
        postgresql_where=sa.text("is_active"),
    )
    op.create_index(
        "ix_pages_search", "pages", ["search_vector"], unique=False, postgresql_using="gin"
    )
    op.create_index(
        "ix_pages_tenant_published",
        "pages",
        ["tenant_id", "published_at"],
        unique=False,
        postgresql_where=sa.text("status = 'published'"),
    )
    op.create_index(
        "ix_leads_tenant_status", "leads", ["tenant_id", "status", "created_at"], unique=False
    )
    op.create_index("ix_leads_tenant_email", "leads", ["tenant_id", "email"], unique=False)
    op.create_index(
        "ix_leads_tenant_funnel",
        "leads",
        ["tenant_id", "created_at"],
        unique=False,
        postgresql_include=["status", "converted_at", "source"],
    )
    op.create_index(
        "ix_form_submissions_tenant_form_created",
        "form_submissions",
        ["tenant_id", "form_id", "created_at"],
        unique=False,
    )
    op.create_index(
        "ix_form_submissions_tenant_created",
        "form_submissions",
        ["tenant_id", "created_at"],
        unique=False,
    )
    op.create_index("ix_tenants_industry_module", "tenants", ["industry_module"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_tenants_industry_module", table_name="tenants")
    op.drop_index("ix_form_submissions_tenant_created", table_name="form_submissions")
    op.drop_index("ix_form_submissions_tenant_form_created", table_name="form_submissions")
    op.drop_index(
        "ix_leads_tenant_funnel",
        table_name="leads",
        postgresql_include=["status", "converted_at", "source"],
    )
    op.drop_index("ix_leads_tenant_email", table_name="leads")
    op.drop_index("ix_leads_tenant_status", table_name="leads")
    op.drop_index(
        "ix_pages_tenant_published",
        table_name="pages",
        postgresql_where=sa.text("status = 'published'"),
    )
    op.drop_index("ix_pages_search", table_name="pages", postgresql_using="gin")
    op.drop_index(
        "ix_users_tenant_role_active", table_name="users", postgresql_where=sa.text("is_active")
    )
    op.drop_index("ix_users_tenant_active", table_name="users")
    op.drop_index("ix_users_tenant_role", table_name="users")
