"""Create the initial schema: every table, its keys, and form_submissions' partitions.

Revision ID: 7c3e9b1f4a02
Revises: 5a0c1e7d2b01
Create Date: 2026-11-26 12:15:01.252960+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from platform_db.ddl import partitions

revision: str = "7c3e9b1f4a02"
down_revision: str | Sequence[str] | None = "5a0c1e7d2b01"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("subdomain", sa.String(length=63), nullable=False),
        sa.Column("custom_domain", sa.String(length=253), nullable=True),
        sa.Column("industry_module", sa.String(length=64), nullable=True),
        sa.Column(
            "plan",
            sa.String(length=32),
            server_default="free",
            nullable=False,
        ),
        sa.Column(
            "status",
            sa.String(length=32),
            server_default="active",
            nullable=False,
        ),
        sa.Column(
            "settings",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "custom_domain = lower(custom_domain) AND custom_domain ~ '^[a-z0-9.-]+\\.[a-z]{2,}$'",
            name=op.f("ck_tenants_custom_domain_format"),
        ),
        sa.CheckConstraint(
            "jsonb_typeof(settings) = 'object'", name=op.f("ck_tenants_settings_is_object")
        ),
        sa.CheckConstraint(
            "subdomain ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'",
            name=op.f("ck_tenants_subdomain_format"),
        ),
        sa.CheckConstraint("length(btrim(name)) > 0", name=op.f("ck_tenants_name_not_blank")),
        sa.CheckConstraint(
            "plan IN ('free', 'starter', 'professional', 'enterprise')",
            name=op.f("ck_tenants_plan"),
        ),
        sa.CheckConstraint(
            "status IN ('trial', 'active', 'suspended', 'cancelled')",
            name=op.f("ck_tenants_status"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenants")),
    )
    op.create_index(
        "uq_tenants_custom_domain",
        "tenants",
        ["custom_domain"],
        unique=True,
        postgresql_where=sa.text("custom_domain IS NOT NULL"),
    )
    op.create_index("uq_tenants_subdomain", "tenants", ["subdomain"], unique=True)
    op.create_table(
        "forms",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("slug", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column(
            "fields",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'[]'::jsonb"),
            nullable=False,
        ),
        sa.Column(
            "settings",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("is_active", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("jsonb_typeof(fields) = 'array'", name=op.f("ck_forms_fields_is_array")),
        sa.CheckConstraint(
            "jsonb_typeof(settings) = 'object'", name=op.f("ck_forms_settings_is_object")
        ),
        sa.CheckConstraint("slug ~ '^[a-z0-9]+(-[a-z0-9]+)*$'", name=op.f("ck_forms_slug_format")),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_forms_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_forms")),
    )
    op.create_index("uq_forms_tenant_slug", "forms", ["tenant_id", "slug"], unique=True)
    op.create_table(
        "users",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("first_name", sa.String(length=100), nullable=True),
        sa.Column("last_name", sa.String(length=100), nullable=True),
        sa.Column(
            "role",
            sa.String(length=32),
            server_default="viewer",
            nullable=False,
        ),
        sa.Column("is_active", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("last_login_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "email = lower(email) AND email ~ '^[^@[:space:]]+@[^@[:space:]]+\\.[^@[:space:]]+$'",
            name=op.f("ck_users_email_format"),
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_users_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.CheckConstraint(
            "role IN ('owner', 'admin', 'editor', 'viewer')",
            name=op.f("ck_users_role"),
        ),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_users")),
    )
    op.create_index(
        "uq_users_tenant_email",
        "users",
        ["tenant_id", "email"],
        unique=True,
        postgresql_include=["first_name", "last_name", "role", "is_active"],
    )
    op.create_table(
        "leads",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("first_name", sa.String(length=100), nullable=True),
        sa.Column("last_name", sa.String(length=100), nullable=True),
        sa.Column("phone", sa.String(length=50), nullable=True),
        sa.Column("company", sa.String(length=200), nullable=True),
        sa.Column("source", sa.String(length=64), server_default="website", nullable=False),
        sa.Column(
            "status",
            sa.String(length=32),
            server_default="new",
            nullable=False,
        ),
        sa.Column("score", sa.SmallInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "status_changed_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("converted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lost_reason", sa.Text(), nullable=True),
        sa.Column("form_id", sa.Uuid(), nullable=True),
        sa.Column("source_submission_id", sa.Uuid(), nullable=True),
        sa.Column("source_submission_created_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "attributes",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "email = lower(email) AND email ~ '^[^@[:space:]]+@[^@[:space:]]+\\.[^@[:space:]]+$'",
            name=op.f("ck_leads_email_format"),
        ),
        sa.CheckConstraint(
            "jsonb_typeof(attributes) = 'object'", name=op.f("ck_leads_attributes_is_object")
        ),
        sa.CheckConstraint(
            "status <> 'converted' OR converted_at IS NOT NULL",
            name=op.f("ck_leads_converted_has_time"),
        ),
        sa.CheckConstraint(
            "(source_submission_id IS NULL) = (source_submission_created_at IS NULL)",
            name=op.f("ck_leads_source_submission_complete"),
        ),
        sa.CheckConstraint("score BETWEEN 0 AND 100", name=op.f("ck_leads_score_range")),
        sa.ForeignKeyConstraint(
            ["tenant_id", "form_id"],
            ["forms.tenant_id", "forms.id"],
            name=op.f("fk_leads_tenant_id_form_id_forms"),
            ondelete="SET NULL (form_id)",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_leads_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.CheckConstraint(
            "status IN ('new', 'contacted', 'qualified', 'converted', 'lost')",
            name=op.f("ck_leads_status"),
        ),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_leads")),
    )
    op.create_index(
        "ix_leads_tenant_form",
        "leads",
        ["tenant_id", "form_id"],
        unique=False,
        postgresql_where=sa.text("form_id IS NOT NULL"),
    )
    op.create_index(
        "ix_leads_tenant_source_submission",
        "leads",
        ["tenant_id", "source_submission_id", "source_submission_created_at"],
        unique=False,
        postgresql_where=sa.text("source_submission_id IS NOT NULL"),
    )
    op.create_table(
        "pages",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("slug", sa.String(length=200), nullable=False),
        sa.Column("title", sa.String(length=300), nullable=False),
        sa.Column("content", sa.Text(), server_default="", nullable=False),
        sa.Column("excerpt", sa.String(length=1000), nullable=True),
        sa.Column(
            "status",
            sa.String(length=32),
            server_default="draft",
            nullable=False,
        ),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("author_id", sa.Uuid(), nullable=True),
        sa.Column(
            "meta",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column(
            "search_vector",
            postgresql.TSVECTOR(),
            sa.Computed(
                "setweight(to_tsvector('english'::regconfig, coalesce(title, '')), 'A') || setweight(to_tsvector('english'::regconfig, coalesce(content, '')), 'B')",
                persisted=True,
            ),
            nullable=False,
        ),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("jsonb_typeof(meta) = 'object'", name=op.f("ck_pages_meta_is_object")),
        sa.CheckConstraint(
            "slug ~ '^[a-z0-9]+([-/][a-z0-9]+)*$'", name=op.f("ck_pages_slug_format")
        ),
        sa.CheckConstraint(
            "status <> 'published' OR published_at IS NOT NULL",
            name=op.f("ck_pages_published_has_time"),
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id", "author_id"],
            ["users.tenant_id", "users.id"],
            name=op.f("fk_pages_tenant_id_author_id_users"),
            ondelete="SET NULL (author_id)",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_pages_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.CheckConstraint(
            "status IN ('draft', 'published', 'archived')",
            name=op.f("ck_pages_status"),
        ),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_pages")),
    )
    op.create_index(
        "ix_pages_tenant_author",
        "pages",
        ["tenant_id", "author_id"],
        unique=False,
        postgresql_where=sa.text("author_id IS NOT NULL"),
    )
    op.create_index("uq_pages_tenant_slug", "pages", ["tenant_id", "slug"], unique=True)
    op.create_table(
        "form_submissions",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("form_id", sa.Uuid(), nullable=False),
        sa.Column("lead_id", sa.Uuid(), nullable=True),
        sa.Column(
            "data",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("ip_address", postgresql.INET(), nullable=True),
        sa.Column("user_agent", sa.String(length=1000), nullable=True),
        sa.Column("referrer", sa.String(length=2000), nullable=True),
        sa.CheckConstraint(
            "jsonb_typeof(data) = 'object'", name=op.f("ck_form_submissions_data_is_object")
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id", "form_id"],
            ["forms.tenant_id", "forms.id"],
            name=op.f("fk_form_submissions_tenant_id_form_id_forms"),
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id", "lead_id"],
            ["leads.tenant_id", "leads.id"],
            name=op.f("fk_form_submissions_tenant_id_lead_id_leads"),
            ondelete="SET NULL (lead_id)",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_form_submissions_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "id", "created_at", name=op.f("pk_form_submissions")),
        postgresql_partition_by="RANGE (created_at)",
    )
    op.create_index(
        "ix_form_submissions_tenant_lead",
        "form_submissions",
        ["tenant_id", "lead_id"],
        unique=False,
        postgresql_where=sa.text("lead_id IS NOT NULL"),
    )

    # leads and form_submissions reference each other: this side comes last.
    op.create_foreign_key(
        "fk_leads_source_submission",
        "leads",
        "form_submissions",
        ["tenant_id", "source_submission_id", "source_submission_created_at"],
        ["tenant_id", "id", "created_at"],
        ondelete="SET NULL (source_submission_id, source_submission_created_at)",
    )
    # The default partition and this month plus three ahead.
    op.execute(sa.text(partitions.CREATE_ENSURE_PARTITIONS))
    op.execute(sa.text("SELECT * FROM platform.ensure_form_submission_partitions()"))


def downgrade() -> None:
    op.execute(sa.text(partitions.DROP_ENSURE_PARTITIONS))
    op.drop_constraint("fk_leads_source_submission", "leads", type_="foreignkey")
    # Dropping the parent drops every partition with it.
    op.drop_index(
        "ix_form_submissions_tenant_lead",
        table_name="form_submissions",
        postgresql_where=sa.text("lead_id IS NOT NULL"),
    )
    op.drop_table("form_submissions")
    op.drop_index("uq_pages_tenant_slug", table_name="pages")
    op.drop_index(
        "ix_pages_tenant_author",
        table_name="pages",
        postgresql_where=sa.text("author_id IS NOT NULL"),
    )
    op.drop_table("pages")
    op.drop_index(
        "ix_leads_tenant_source_submission",
        table_name="leads",
        postgresql_where=sa.text("source_submission_id IS NOT NULL"),
    )
    op.drop_index(
        "ix_leads_tenant_form", table_name="leads", postgresql_where=sa.text("form_id IS NOT NULL")
    )
    op.drop_table("leads")
    op.drop_index(
        "uq_users_tenant_email",
        table_name="users",
        postgresql_include=["first_name", "last_name", "role", "is_active"],
    )
    op.drop_table("users")
    op.drop_index("uq_forms_tenant_slug", table_name="forms")
    op.drop_table("forms")
    op.drop_index("uq_tenants_subdomain", table_name="tenants")
    op.drop_index(
        "uq_tenants_custom_domain",
        table_name="tenants",
        postgresql_where=sa.text("custom_domain IS NOT NULL"),
    )
    op.drop_table("tenants")
