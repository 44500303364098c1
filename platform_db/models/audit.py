"""The audit trail: one row per change of a row of a tenant-owned table."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from typing import Any, ClassVar

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Identity,
    Index,
    PrimaryKeyConstraint,
    Text,
    Uuid,
    event,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, Session, mapped_column

from platform_db.ddl.audit import AUDIT_APPEND_POLICY
from platform_db.ddl.tenant_table import TenantProtection
from platform_db.models.base import Base, TenantMixin


class AuditAction(enum.StrEnum):
    INSERT = "INSERT"
    UPDATE = "UPDATE"
    DELETE = "DELETE"


class AuditLogReadOnlyError(TypeError):
    """Audit rows are written by the database's trigger only."""


class AuditLog(TenantMixin, Base):
    """One change of one row of a tenant table. Tenant-owned (RLS), append-only.

    Written only by the trigger `platform.audit_row_change()` on every tenant table;
    `platform_app` may read its own tenant's rows and nothing else (platform_db.ddl.audit
    explains the privileges). `row_key` holds the changed row's key without `tenant_id`;
    `old_values`/`new_values` hold only what changed (all recorded columns on insert and
    delete). `actor_id` is `app.current_user_id` of the transaction when it names a user of
    the row's tenant (the database checks); a setting that names no such user is not
    trusted: `actor_id` is then NULL and `claimed_actor_id` holds what was claimed. Both
    are NULL when no user was set. `db_user` is the database login, `transaction_id` the
    PostgreSQL transaction id.

    RANGE-partitioned by `changed_at`, one partition a month (`audit_log_YYYY_MM`) plus
    `audit_log_default`, created ahead by `platform.ensure_monthly_partitions()`.
    `tenant_id` has no foreign key: a tenant's history outlives the tenant.
    """

    __tablename__ = "audit_log"
    __tenant_protection__: ClassVar[TenantProtection] = TenantProtection(
        audit=False,
        reason="the audit trail does not audit itself",
        app_privileges=("SELECT",),
        admin_privileges=("SELECT",),
        extra_policies=(AUDIT_APPEND_POLICY,),
    )

    # Declared here, without the mixin's foreign key to tenants.
    tenant_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    changed_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True))
    table_name: Mapped[str] = mapped_column(Text)
    row_key: Mapped[dict[str, Any]] = mapped_column(JSONB)
    action: Mapped[str] = mapped_column(Text)
    old_values: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    new_values: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    actor_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    claimed_actor_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    db_user: Mapped[str] = mapped_column(Text)
    transaction_id: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        PrimaryKeyConstraint("tenant_id", "changed_at", "id"),
        CheckConstraint("action IN ('INSERT', 'UPDATE', 'DELETE')", name="action"),
        # The history of one row.
        Index("ix_audit_log_tenant_row", "tenant_id", "table_name", "row_key", "changed_at"),
        # What one user did.
        Index(
            "ix_audit_log_tenant_actor",
            "tenant_id",
            "actor_id",
            "changed_at",
            postgresql_where=text("actor_id IS NOT NULL"),
        ),
        {"postgresql_partition_by": "RANGE (changed_at)"},
    )

    def __repr__(self) -> str:
        return f"AuditLog({self.action} {self.table_name} {self.row_key}, id={self.id})"


@event.listens_for(Session, "before_flush")
def _refuse_audit_writes(session: Session, flush_context: Any, instances: Any) -> None:
    for obj in (*session.new, *session.dirty, *session.deleted):
        if isinstance(obj, AuditLog):
            raise AuditLogReadOnlyError("audit_log rows are written by the database only")


__all__ = ["AuditAction", "AuditLog", "AuditLogReadOnlyError"]
