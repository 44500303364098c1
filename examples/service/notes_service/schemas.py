"""What the API reads and writes (pydantic), apart from the tables."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

from platform_db.models import LeadStatus
from pydantic import BaseModel, ConfigDict, Field


class _FromRow(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class LeadIn(BaseModel):
    email: str = Field(max_length=320)
    first_name: str | None = Field(default=None, max_length=100)
    last_name: str | None = Field(default=None, max_length=100)
    company: str | None = Field(default=None, max_length=200)
    source: str = Field(default="api", min_length=1, max_length=64)
    score: int = Field(default=0, ge=0, le=100)


class LeadOut(_FromRow):
    id: uuid.UUID
    email: str
    first_name: str | None
    last_name: str | None
    company: str | None
    source: str
    status: LeadStatus
    score: int
    form_id: uuid.UUID | None
    created_at: dt.datetime


class LeadQuery(BaseModel):
    """The query string of GET /leads: filters, page size and the cursor."""

    model_config = ConfigDict(extra="forbid")

    status: LeadStatus | None = None
    source: str | None = None
    email: str | None = Field(default=None, description="part of the email address")
    min_score: int | None = Field(default=None, ge=0, le=100)
    limit: int = Field(default=20, ge=1, le=100)
    cursor: str | None = Field(default=None, description="next_cursor of the previous page")


class LeadPage(BaseModel):
    items: list[LeadOut]
    # Pass it back as `cursor` for the next page; null on the last page.
    next_cursor: str | None


class NoteIn(BaseModel):
    body: str = Field(min_length=1, max_length=10_000)


class NoteOut(_FromRow):
    id: uuid.UUID
    lead_id: uuid.UUID
    body: str
    created_at: dt.datetime


class PageHit(BaseModel):
    id: uuid.UUID
    slug: str
    title: str
    excerpt: str | None
    rank: float


class Dashboard(_FromRow):
    subdomain: str
    pages_published: int
    forms_active: int
    leads_total: int
    leads_new: int
    leads_converted: int
    conversion_rate: Decimal
    submissions_total: int
    submissions_30d: int
    last_activity_at: dt.datetime | None
    # The numbers are as fresh as the last refresh of platform-db's dashboard views.
    refreshed_at: dt.datetime


class SubmissionIn(BaseModel):
    data: dict[str, Any]


class SubmissionOut(BaseModel):
    id: uuid.UUID
    created_at: dt.datetime
    # The lead the submission produced, when its data carried an email address.
    lead_id: uuid.UUID | None
