"""CMS pages with full-text search."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    CheckConstraint,
    Computed,
    ForeignKeyConstraint,
    Index,
    String,
    Text,
    Uuid,
    text,
)
from sqlalchemy.dialects.postgresql import TSVECTOR
from sqlalchemy.orm import Mapped, mapped_column, relationship

from platform_db.ddl.search import TenantSearch
from platform_db.models.base import (
    Base,
    TenantMixin,
    TimestampMixin,
    jsonb_object,
    text_enum,
    uuid_pk,
)

if TYPE_CHECKING:
    from platform_db.models.user import User


class PageStatus(enum.StrEnum):
    DRAFT = "draft"
    PUBLISHED = "published"
    ARCHIVED = "archived"


# Title weighs more than body. The configuration is a constant so the expression is
# immutable, as a stored generated column requires.
SEARCH_VECTOR_SQL = (
    "setweight(to_tsvector('english'::regconfig, coalesce(title, '')), 'A') || "
    "setweight(to_tsvector('english'::regconfig, coalesce(content, '')), 'B')"
)
SEARCH_CONFIG = "english"


class Page(TenantMixin, TimestampMixin, Base):
    """A CMS page. Tenant-owned (RLS).

    Primary key `(tenant_id, id)`; the slug is unique per tenant. `search_vector` is a
    stored generated column over title (weight A) and content (weight B) with a GIN index.
    Search through `platform.search_pages(...)` (the helper
    `platform_db.session.search.search_pages`): under RLS a plain `search_vector @@ ...`
    never uses that index (platform_db.ddl.search says why). A published page has a
    publication time.
    """

    __tablename__ = "pages"
    __tenant_search__ = TenantSearch(
        function="platform.search_pages",
        vector="search_vector",
        subset=("published_only", "status = 'published'"),
    )

    id: Mapped[uuid_pk]
    slug: Mapped[str] = mapped_column(String(200))
    title: Mapped[str] = mapped_column(String(300))
    content: Mapped[str] = mapped_column(Text, server_default="")
    excerpt: Mapped[str | None] = mapped_column(String(1000))
    status: Mapped[PageStatus] = mapped_column(
        text_enum(PageStatus, "status"), server_default=PageStatus.DRAFT.value
    )
    published_at: Mapped[dt.datetime | None]
    author_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    meta: Mapped[jsonb_object]
    search_vector: Mapped[Any] = mapped_column(
        TSVECTOR, Computed(SEARCH_VECTOR_SQL, persisted=True), deferred=True
    )

    author: Mapped[User | None] = relationship(
        primaryjoin="and_(Page.tenant_id == User.tenant_id, foreign(Page.author_id) == User.id)",
        lazy="raise",
    )

    __table_args__ = (
        # Optional: deleting the user clears author_id (platform_db.ddl.references).
        ForeignKeyConstraint(["tenant_id", "author_id"], ["users.tenant_id", "users.id"]),
        CheckConstraint("slug ~ '^[a-z0-9]+([-/][a-z0-9]+)*$'", name="slug_format"),
        CheckConstraint(
            "status <> 'published' OR published_at IS NOT NULL", name="published_has_time"
        ),
        CheckConstraint("jsonb_typeof(meta) = 'object'", name="meta_is_object"),
        Index("uq_pages_tenant_slug", "tenant_id", "slug", unique=True),
        Index("ix_pages_search", "search_vector", postgresql_using="gin"),
        Index(
            "ix_pages_tenant_published",
            "tenant_id",
            "published_at",
            postgresql_where=text("status = 'published'"),
        ),
        Index(
            "ix_pages_tenant_author",
            "tenant_id",
            "author_id",
            postgresql_where=text("author_id IS NOT NULL"),
        ),
    )

    def __repr__(self) -> str:
        return f"Page(id={self.id!s}, slug={self.slug!r})"


__all__ = ["SEARCH_CONFIG", "Page", "PageStatus"]
