"""Leads and their conversion funnel."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from typing import TYPE_CHECKING

from sqlalchemy import (
    CheckConstraint,
    ForeignKeyConstraint,
    Index,
    SmallInteger,
    String,
    Text,
    Uuid,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship, validates

from platform_db.models.base import (
    EMAIL_CHECK_SQL,
    Base,
    TenantMixin,
    TimestampMixin,
    jsonb_object,
    normalize_email,
    text_enum,
    uuid_pk,
)

if TYPE_CHECKING:
    from platform_db.models.form import Form


class LeadStatus(enum.StrEnum):
    """Funnel stages: new -> contacted -> qualified -> converted, or lost from any open stage."""

    NEW = "new"
    CONTACTED = "contacted"
    QUALIFIED = "qualified"
    CONVERTED = "converted"
    LOST = "lost"


FUNNEL_ORDER: tuple[LeadStatus, ...] = (
    LeadStatus.NEW,
    LeadStatus.CONTACTED,
    LeadStatus.QUALIFIED,
    LeadStatus.CONVERTED,
)
OPEN_STATUSES = frozenset({LeadStatus.NEW, LeadStatus.CONTACTED, LeadStatus.QUALIFIED})


class InvalidTransitionError(ValueError):
    """A lead cannot move from its status to the requested one."""


class Lead(TenantMixin, TimestampMixin, Base):
    """A prospective customer of a tenant. Tenant-owned (RLS).

    Primary key `(tenant_id, id)`. Email is stored lower-case and indexed per tenant (not
    unique: the same person may arrive twice, from two campaigns). `status` moves along
    the funnel with `advance_to()`; `status_changed_at` and `converted_at` record when,
    and a converted lead always has `converted_at`. It may point at the form and the
    submission that produced it (composite keys: never another tenant's).
    """

    __tablename__ = "leads"

    id: Mapped[uuid_pk]
    email: Mapped[str] = mapped_column(String(320))
    first_name: Mapped[str | None] = mapped_column(String(100))
    last_name: Mapped[str | None] = mapped_column(String(100))
    phone: Mapped[str | None] = mapped_column(String(50))
    company: Mapped[str | None] = mapped_column(String(200))
    source: Mapped[str] = mapped_column(String(64), server_default="website")
    status: Mapped[LeadStatus] = mapped_column(
        text_enum(LeadStatus, "status"), server_default=LeadStatus.NEW.value
    )
    score: Mapped[int] = mapped_column(SmallInteger, server_default=text("0"))
    status_changed_at: Mapped[dt.datetime] = mapped_column(server_default=func.now())
    converted_at: Mapped[dt.datetime | None]
    lost_reason: Mapped[str | None] = mapped_column(Text)
    form_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    source_submission_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    source_submission_created_at: Mapped[dt.datetime | None]
    attributes: Mapped[jsonb_object]

    form: Mapped[Form | None] = relationship(
        primaryjoin="and_(Lead.tenant_id == Form.tenant_id, foreign(Lead.form_id) == Form.id)",
        lazy="raise",
    )

    __table_args__ = (
        # Both references are optional: deleting the form or the submission clears them
        # (platform_db.ddl.references; Citus refuses ON DELETE SET NULL on these keys).
        ForeignKeyConstraint(["tenant_id", "form_id"], ["forms.tenant_id", "forms.id"]),
        # form_submissions also references leads, so this side is added after both
        # tables exist.
        ForeignKeyConstraint(
            ["tenant_id", "source_submission_id", "source_submission_created_at"],
            [
                "form_submissions.tenant_id",
                "form_submissions.id",
                "form_submissions.created_at",
            ],
            name="fk_leads_source_submission",
            use_alter=True,
        ),
        CheckConstraint(EMAIL_CHECK_SQL, name="email_format"),
        CheckConstraint("score BETWEEN 0 AND 100", name="score_range"),
        CheckConstraint(
            "status <> 'converted' OR converted_at IS NOT NULL", name="converted_has_time"
        ),
        CheckConstraint(
            "(source_submission_id IS NULL) = (source_submission_created_at IS NULL)",
            name="source_submission_complete",
        ),
        CheckConstraint("jsonb_typeof(attributes) = 'object'", name="attributes_is_object"),
        Index("ix_leads_tenant_status", "tenant_id", "status", "created_at"),
        Index("ix_leads_tenant_email", "tenant_id", "email"),
        # The funnel over time: per tenant, by creation period, counted by stage and
        # conversion time, read index-only.
        Index(
            "ix_leads_tenant_funnel",
            "tenant_id",
            "created_at",
            postgresql_include=["status", "converted_at", "source"],
        ),
        Index(
            "ix_leads_tenant_form",
            "tenant_id",
            "form_id",
            postgresql_where=text("form_id IS NOT NULL"),
        ),
        Index(
            "ix_leads_tenant_source_submission",
            "tenant_id",
            "source_submission_id",
            "source_submission_created_at",
            postgresql_where=text("source_submission_id IS NOT NULL"),
        ),
    )

    @validates("email")
    def _normalize_email(self, _key: str, value: str) -> str:
        return normalize_email(value)

    def advance_to(self, status: LeadStatus, *, at: dt.datetime | None = None) -> None:
        """Move the lead along the funnel, refusing moves that skip back or out of a closed stage.

        Forward moves may skip stages (a lead can be qualified on first contact); `lost`
        is reachable from any open stage; `converted` and `lost` are final.
        """
        current = LeadStatus(self.status) if self.status is not None else LeadStatus.NEW
        target = LeadStatus(status)
        if current not in OPEN_STATUSES:
            raise InvalidTransitionError(
                f"lead is {current.value}; it cannot move to {target.value}"
            )
        if target is not LeadStatus.LOST and FUNNEL_ORDER.index(target) <= FUNNEL_ORDER.index(
            current
        ):
            raise InvalidTransitionError(
                f"lead cannot move back from {current.value} to {target.value}"
            )
        when = at or dt.datetime.now(dt.UTC)
        self.status = target
        self.status_changed_at = when
        if target is LeadStatus.CONVERTED:
            self.converted_at = when

    def __repr__(self) -> str:
        return f"Lead(id={self.id!s}, status={self.status!s})"


__all__ = ["FUNNEL_ORDER", "OPEN_STATUSES", "InvalidTransitionError", "Lead", "LeadStatus"]
