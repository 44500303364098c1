"""Users of a tenant (the people who log in to a tenant's back office)."""

from __future__ import annotations

import datetime as dt
import enum

from sqlalchemy import CheckConstraint, Index, String, text
from sqlalchemy.orm import Mapped, mapped_column, validates

from platform_db.models.base import (
    EMAIL_CHECK_SQL,
    Base,
    TenantMixin,
    TimestampMixin,
    normalize_email,
    text_enum,
    uuid_pk,
)


class UserRole(enum.StrEnum):
    OWNER = "owner"
    ADMIN = "admin"
    EDITOR = "editor"
    VIEWER = "viewer"


class User(TenantMixin, TimestampMixin, Base):
    """A tenant's user. Tenant-owned: visible only to sessions of its tenant (RLS).

    Primary key `(tenant_id, id)`. The email is unique per tenant, case-insensitively:
    it is stored lower-case (held by a CHECK constraint and normalised on assignment), and
    the unique index `uq_users_tenant_email` covers the columns a login or a user list
    needs, so those lookups are index-only.
    """

    __tablename__ = "users"

    id: Mapped[uuid_pk]
    email: Mapped[str] = mapped_column(String(320))
    first_name: Mapped[str | None] = mapped_column(String(100))
    last_name: Mapped[str | None] = mapped_column(String(100))
    role: Mapped[UserRole] = mapped_column(
        text_enum(UserRole, "role"), server_default=UserRole.VIEWER.value
    )
    is_active: Mapped[bool] = mapped_column(server_default=text("true"))
    last_login_at: Mapped[dt.datetime | None]

    __table_args__ = (
        CheckConstraint(EMAIL_CHECK_SQL, name="email_format"),
        Index(
            "uq_users_tenant_email",
            "tenant_id",
            "email",
            unique=True,
            postgresql_include=["first_name", "last_name", "role", "is_active"],
        ),
        Index("ix_users_tenant_role", "tenant_id", "role"),
        Index("ix_users_tenant_active", "tenant_id", "is_active"),
        Index(
            "ix_users_tenant_role_active",
            "tenant_id",
            "role",
            "is_active",
            postgresql_where=text("is_active"),
        ),
    )

    @validates("email")
    def _normalize_email(self, _key: str, value: str) -> str:
        return normalize_email(value)

    def __repr__(self) -> str:
        return f"User(id={self.id!s}, email={self.email!r})"


__all__ = ["User", "UserRole"]
