"""Read-only mappings of the dashboard views (revision d4e6b8a0c306).

`TenantDashboard`, `TenantLeadFunnel` and `TenantSubmissionActivity` map the tenant views
in `public`: through a tenant session they hold exactly that tenant's rows.
`PlatformTenantSummary` maps the materialized view itself, for platform_admin only.
Every row carries `refreshed_at`: the numbers are as fresh as the last
`platform.refresh_performance_views()`. A tenant with no rows in a view yet (created
after the last refresh) reads one row of zeros there, with that `refreshed_at`.

They live in a MetaData of their own, so autogenerate never mistakes them for tables,
and any attempt to write through them is refused before SQL runs.
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

from sqlalchemy import MetaData, event
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column


class ViewBase(DeclarativeBase):
    metadata = MetaData()


class ReadOnlyViewError(TypeError):
    """Rows of a view cannot be added, changed or deleted."""


class _Summary:
    tenant_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    subdomain: Mapped[str]
    # The seed's names; users_total, pages_total, leads_total hold the same numbers.
    total_users: Mapped[int]
    total_pages: Mapped[int]
    total_leads: Mapped[int]
    users_total: Mapped[int]
    users_active: Mapped[int]
    pages_total: Mapped[int]
    pages_published: Mapped[int]
    forms_total: Mapped[int]
    forms_active: Mapped[int]
    leads_total: Mapped[int]
    leads_new: Mapped[int]
    leads_contacted: Mapped[int]
    leads_qualified: Mapped[int]
    leads_converted: Mapped[int]
    leads_lost: Mapped[int]
    conversion_rate: Mapped[Decimal]
    submissions_total: Mapped[int]
    submissions_30d: Mapped[int]
    last_activity_at: Mapped[dt.datetime | None]
    refreshed_at: Mapped[dt.datetime]


class TenantDashboard(_Summary, ViewBase):
    """The current tenant's dashboard row (view `public.tenant_dashboard`)."""

    __tablename__ = "tenant_dashboard"


class PlatformTenantSummary(_Summary, ViewBase):
    """Every tenant's row (materialized view `platform.tenant_performance_summary`).

    Readable by platform_admin only.
    """

    __tablename__ = "tenant_performance_summary"
    __table_args__ = {"schema": "platform"}  # noqa: RUF012 - SQLAlchemy's declarative API


class TenantLeadFunnel(ViewBase):
    """Leads created per month and where they stand now (view `public.tenant_lead_funnel`)."""

    __tablename__ = "tenant_lead_funnel"

    tenant_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    month: Mapped[dt.date] = mapped_column(primary_key=True)
    leads_created: Mapped[int]
    still_new: Mapped[int]
    contacted: Mapped[int]
    qualified: Mapped[int]
    converted: Mapped[int]
    lost: Mapped[int]
    conversion_rate: Mapped[Decimal]
    refreshed_at: Mapped[dt.datetime]


class TenantSubmissionActivity(ViewBase):
    """Submissions per form and UTC day, last 400 days (view `public.tenant_submission_activity`)."""

    __tablename__ = "tenant_submission_activity"

    tenant_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    # NULL only in the zero row of a tenant with no submissions in the view yet.
    form_id: Mapped[uuid.UUID | None] = mapped_column(primary_key=True)
    day: Mapped[dt.date] = mapped_column(primary_key=True)
    submissions: Mapped[int]
    with_lead: Mapped[int]
    refreshed_at: Mapped[dt.datetime]


@event.listens_for(Session, "before_flush")
def _refuse_view_writes(session: Session, flush_context: Any, instances: Any) -> None:
    for obj in (*session.new, *session.dirty, *session.deleted):
        if isinstance(obj, ViewBase):
            raise ReadOnlyViewError(f"{type(obj).__name__} maps a view and is read-only")


__all__ = [
    "PlatformTenantSummary",
    "ReadOnlyViewError",
    "TenantDashboard",
    "TenantLeadFunnel",
    "TenantSubmissionActivity",
    "ViewBase",
]
