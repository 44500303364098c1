"""The platform-level tenants table."""

from __future__ import annotations

import enum

from sqlalchemy import CheckConstraint, Index, String, text
from sqlalchemy.orm import Mapped, mapped_column

from platform_db.models.base import Base, TimestampMixin, jsonb_object, text_enum, uuid_pk


class TenantPlan(enum.StrEnum):
    FREE = "free"
    STARTER = "starter"
    PROFESSIONAL = "professional"
    ENTERPRISE = "enterprise"


class TenantStatus(enum.StrEnum):
    TRIAL = "trial"
    ACTIVE = "active"
    SUSPENDED = "suspended"
    CANCELLED = "cancelled"


class Tenant(TimestampMixin, Base):
    """One customer of the platform.

    Not tenant-owned and not under RLS: the application reads it (to resolve a request's
    subdomain or custom domain to a tenant) before any tenant is set. `platform_app` may
    only read it. `subdomain` is unique; `custom_domain` is unique where present. Both are
    stored lower-case (DNS names are case-insensitive), which CHECK constraints hold.
    """

    __tablename__ = "tenants"

    id: Mapped[uuid_pk]
    name: Mapped[str] = mapped_column(String(200))
    subdomain: Mapped[str] = mapped_column(String(63))
    custom_domain: Mapped[str | None] = mapped_column(String(253))
    industry_module: Mapped[str | None] = mapped_column(String(64))
    plan: Mapped[TenantPlan] = mapped_column(
        text_enum(TenantPlan, "plan"), server_default=TenantPlan.FREE.value
    )
    status: Mapped[TenantStatus] = mapped_column(
        text_enum(TenantStatus, "status"), server_default=TenantStatus.ACTIVE.value
    )
    settings: Mapped[jsonb_object]

    __table_args__ = (
        CheckConstraint(
            "subdomain ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'", name="subdomain_format"
        ),
        CheckConstraint(
            "custom_domain = lower(custom_domain) AND custom_domain ~ '^[a-z0-9.-]+\\.[a-z]{2,}$'",
            name="custom_domain_format",
        ),
        CheckConstraint("jsonb_typeof(settings) = 'object'", name="settings_is_object"),
        CheckConstraint("length(btrim(name)) > 0", name="name_not_blank"),
        Index("uq_tenants_subdomain", "subdomain", unique=True),
        Index(
            "uq_tenants_custom_domain",
            "custom_domain",
            unique=True,
            postgresql_where=text("custom_domain IS NOT NULL"),
        ),
        Index("ix_tenants_industry_module", "industry_module"),
    )

    def __repr__(self) -> str:
        return f"Tenant(id={self.id!s}, subdomain={self.subdomain!r})"


__all__ = ["Tenant", "TenantPlan", "TenantStatus"]
