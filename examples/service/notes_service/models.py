"""The service's own tables, on platform_db's Base so that they can reference the package's.

Importing this module adds them to `platform_db.models.metadata`: migrations/env.py and
tests/conftest.py import it for that reason.
"""

from __future__ import annotations

import uuid

from platform_db.models import Base, TenantMixin, TimestampMixin
from platform_db.models.base import uuid_pk
from sqlalchemy import ForeignKeyConstraint, Index, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column


class Note(TenantMixin, TimestampMixin, Base):
    """A tenant's note on one of its leads. Tenant-owned: RLS, grants and audit trigger.

    Primary key `(tenant_id, id)`. The lead is referenced by the composite key
    `(tenant_id, lead_id) -> leads(tenant_id, id)`: PostgreSQL checks foreign keys without
    RLS, so only the composite key stops a note from pointing at another tenant's lead.
    Notes go with their lead (ON DELETE CASCADE) and with their tenant.
    """

    __tablename__ = "notes"

    id: Mapped[uuid_pk]
    lead_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    body: Mapped[str] = mapped_column(Text)

    __table_args__ = (
        ForeignKeyConstraint(
            ["tenant_id", "lead_id"], ["leads.tenant_id", "leads.id"], ondelete="CASCADE"
        ),
        # A lead's notes in time order; also what the cascade from leads needs.
        Index("ix_notes_tenant_lead", "tenant_id", "lead_id", "created_at"),
    )

    def __repr__(self) -> str:
        return f"Note(id={self.id!s}, lead_id={self.lead_id!s})"


__all__ = ["Note"]
