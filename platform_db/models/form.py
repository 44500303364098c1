"""Forms of the form builder and their monthly-partitioned submissions."""

from __future__ import annotations

import datetime as dt
import ipaddress
import uuid
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    CheckConstraint,
    DateTime,
    ForeignKeyConstraint,
    Index,
    String,
    Text,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import INET, JSONB
from sqlalchemy.orm import Mapped, mapped_column, relationship

from platform_db.models.base import Base, TenantMixin, TimestampMixin, jsonb_object, uuid_pk

if TYPE_CHECKING:
    from platform_db.models.lead import Lead


class Form(TenantMixin, TimestampMixin, Base):
    """A form of the form builder. Tenant-owned (RLS).

    Primary key `(tenant_id, id)`; the slug is unique per tenant. `fields` is the list of
    field definitions (a JSON array). A form that has submissions is not deleted (the
    submissions reference it); it is deactivated with `is_active = false`.
    """

    __tablename__ = "forms"

    id: Mapped[uuid_pk]
    name: Mapped[str] = mapped_column(String(200))
    slug: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text)
    fields: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, server_default=text("'[]'::jsonb"))
    settings: Mapped[jsonb_object]
    is_active: Mapped[bool] = mapped_column(server_default=text("true"))

    __table_args__ = (
        CheckConstraint("slug ~ '^[a-z0-9]+(-[a-z0-9]+)*$'", name="slug_format"),
        CheckConstraint("jsonb_typeof(fields) = 'array'", name="fields_is_array"),
        CheckConstraint("jsonb_typeof(settings) = 'object'", name="settings_is_object"),
        Index("uq_forms_tenant_slug", "tenant_id", "slug", unique=True),
    )

    def __repr__(self) -> str:
        return f"Form(id={self.id!s}, slug={self.slug!r})"


class FormSubmission(TenantMixin, Base):
    """One submission of a form. Tenant-owned (RLS), append-mostly.

    RANGE-partitioned by `created_at`: one partition a month named
    `form_submissions_YYYY_MM` plus `form_submissions_default`, so no insert is ever
    refused for want of a partition (`platform.ensure_form_submission_partitions()`
    creates months ahead and moves rows out of the default partition). A partitioned
    table's keys must contain the partition key, hence the primary key
    `(tenant_id, id, created_at)`.
    """

    __tablename__ = "form_submissions"

    id: Mapped[uuid_pk]
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), primary_key=True, server_default=func.now()
    )
    form_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    lead_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    data: Mapped[jsonb_object]
    ip_address: Mapped[ipaddress.IPv4Address | ipaddress.IPv6Address | None] = mapped_column(INET)
    user_agent: Mapped[str | None] = mapped_column(String(1000))
    referrer: Mapped[str | None] = mapped_column(String(2000))

    form: Mapped[Form] = relationship(
        primaryjoin="and_(FormSubmission.tenant_id == Form.tenant_id, "
        "foreign(FormSubmission.form_id) == Form.id)",
        lazy="raise",
    )
    lead: Mapped[Lead | None] = relationship(
        primaryjoin="and_(FormSubmission.tenant_id == Lead.tenant_id, "
        "foreign(FormSubmission.lead_id) == Lead.id)",
        lazy="raise",
    )

    __table_args__ = (
        ForeignKeyConstraint(["tenant_id", "form_id"], ["forms.tenant_id", "forms.id"]),
        # Optional: deleting the lead clears lead_id (platform_db.ddl.references).
        ForeignKeyConstraint(["tenant_id", "lead_id"], ["leads.tenant_id", "leads.id"]),
        CheckConstraint("jsonb_typeof(data) = 'object'", name="data_is_object"),
        Index("ix_form_submissions_tenant_form_created", "tenant_id", "form_id", "created_at"),
        Index("ix_form_submissions_tenant_created", "tenant_id", "created_at"),
        Index(
            "ix_form_submissions_tenant_lead",
            "tenant_id",
            "lead_id",
            postgresql_where=text("lead_id IS NOT NULL"),
        ),
        {"postgresql_partition_by": "RANGE (created_at)"},
    )

    def __repr__(self) -> str:
        return f"FormSubmission(id={self.id!s}, created_at={self.created_at!s})"


__all__ = ["Form", "FormSubmission"]
