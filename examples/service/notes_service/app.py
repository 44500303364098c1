"""notes-service's HTTP API: FastAPI on platform-db's sessions, models and helpers.

Run it with `uvicorn notes_service.app:app`. Environment (read at start-up, in the
lifespan, never at import):

- `DATABASE_URL`: a login that is a member of `platform_app` only, never a superuser or
  a member of `platform_owner` (those bypass or own the tables that RLS protects);
- `POSTGRES_POOL_MIN`, `POSTGRES_POOL_MAX`, ... : platform-db's pool settings;
- `NOTES_BASE_DOMAIN` (optional, e.g. `notes.example.com`): a request for
  `acme.notes.example.com` is tenant `acme` when it sends no `X-Tenant` header.

Every request runs in a tenant session: platform-db sets the tenant at the start of each
transaction and PostgreSQL's row-level security does the filtering. Nothing here adds a
`WHERE tenant_id = ...`, and nothing could read another tenant's rows if it tried.
"""

from __future__ import annotations

import ipaddress
import os
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Query, Request, status
from platform_db.models import Form, FormSubmission, Lead, Tenant, TenantDashboard
from platform_db.models.tenant import TenantStatus
from platform_db.session.database import Database
from platform_db.session.query import QueryError, find_many_async
from platform_db.session.search import search_pages_async
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from notes_service.models import Note
from notes_service.schemas import (
    Dashboard,
    LeadIn,
    LeadOut,
    LeadPage,
    LeadQuery,
    NoteIn,
    NoteOut,
    PageHit,
    SubmissionIn,
    SubmissionOut,
)

# Tenants whose requests are served; a suspended or cancelled tenant is as good as unknown.
SERVED = (TenantStatus.TRIAL, TenantStatus.ACTIVE)
# Starlette renamed the constant of 422 (…_ENTITY -> …_CONTENT); the number stays.
UNPROCESSABLE = 422

router = APIRouter()


# --- per request: the database, the tenant, a tenant session ----------------------------


def get_db(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


DbDep = Annotated[Database, Depends(get_db)]


def _subdomain(request: Request, header: str | None) -> str:
    if header and header.strip():
        return header.strip().lower()
    base: str = request.app.state.base_domain
    host = request.headers.get("host", "").split(":", 1)[0].lower()
    if base and host.endswith("." + base):
        label = host[: -len(base) - 1]
        if label and "." not in label:
            return label
    raise HTTPException(
        status.HTTP_400_BAD_REQUEST, "no tenant: send X-Tenant or use <tenant>.<base domain>"
    )


async def current_tenant(
    request: Request, db: DbDep, x_tenant: Annotated[str | None, Header()] = None
) -> uuid.UUID:
    """The id of the request's tenant (X-Tenant header, else the Host's subdomain)."""
    subdomain = _subdomain(request, x_tenant)
    # `tenants` is not under RLS and platform_app may read it: this session has no tenant
    # yet and sees no tenant-owned rows, only the tenants table.
    async with db.async_session() as session:
        tenant_id = await session.scalar(
            select(Tenant.id).where(Tenant.subdomain == subdomain, Tenant.status.in_(SERVED))
        )
    if tenant_id is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"unknown tenant {subdomain!r}")
    return tenant_id


TenantDep = Annotated[uuid.UUID, Depends(current_tenant)]


async def tenant_session(db: DbDep, tenant_id: TenantDep) -> AsyncIterator[AsyncSession]:
    """A session of the request's tenant. Handlers commit what they write; anything not
    committed is rolled back when the session closes."""
    async with db.async_session(tenant_id=tenant_id) as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(tenant_session)]


# --- leads -----------------------------------------------------------------------------


@router.post("/leads", status_code=status.HTTP_201_CREATED)
async def create_lead(body: LeadIn, session: SessionDep) -> LeadOut:
    try:
        lead = Lead(**body.model_dump())  # tenant_id: filled from the session on flush
    except ValueError as exc:  # the model normalises and checks the email address
        raise HTTPException(UNPROCESSABLE, str(exc)) from None
    session.add(lead)
    await session.commit()
    return LeadOut.model_validate(lead)


@router.get("/leads")
async def list_leads(session: SessionDep, query: Annotated[LeadQuery, Query()]) -> LeadPage:
    """Newest first, in keyset pages: a page costs the same at any depth."""
    filters: dict[str, Any] = {}
    if query.status is not None:
        filters["status"] = query.status
    if query.source is not None:
        filters["source"] = query.source
    if query.email:
        filters["email__contains"] = query.email
    if query.min_score is not None:
        filters["score__gte"] = query.min_score
    try:
        page = await find_many_async(
            session,
            Lead,
            filters=filters,
            order_by=["-created_at"],
            limit=query.limit,
            after=query.cursor,
        )
    except QueryError as exc:  # a cursor that is malformed or made for another sort
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
    return LeadPage(
        items=[LeadOut.model_validate(lead) for lead in page.items], next_cursor=page.next_cursor
    )


# --- notes: the service's own table ----------------------------------------------------


@router.post("/leads/{lead_id}/notes", status_code=status.HTTP_201_CREATED)
async def add_note(lead_id: uuid.UUID, body: NoteIn, session: SessionDep) -> NoteOut:
    note = Note(lead_id=lead_id, body=body.body)
    session.add(note)
    try:
        await session.commit()
    except IntegrityError:
        # The composite key (tenant_id, lead_id) -> leads: no such lead of this tenant,
        # whether the id is unknown or another tenant's. The database decides, not a
        # look-up that a later change could forget.
        await session.rollback()
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such lead") from None
    return NoteOut.model_validate(note)


@router.get("/leads/{lead_id}/notes")
async def list_notes(lead_id: uuid.UUID, session: SessionDep) -> list[NoteOut]:
    if await session.scalar(select(Lead.id).where(Lead.id == lead_id)) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such lead")
    page = await find_many_async(
        session, Note, filters={"lead_id": lead_id}, order_by=["created_at"], limit=200
    )
    return [NoteOut.model_validate(note) for note in page.items]


# --- pages, dashboard, forms -------------------------------------------------------------


@router.get("/pages/search")
async def search_pages(
    session: SessionDep,
    q: Annotated[str, Query(min_length=1, max_length=200)],
    limit: Annotated[int, Query(ge=1, le=50)] = 10,
) -> list[PageHit]:
    """Published pages matching a web-style query (`"exact phrase" -excluded or`)."""
    hits = await search_pages_async(session, q, limit=limit)
    return [
        PageHit(id=page.id, slug=page.slug, title=page.title, excerpt=page.excerpt, rank=rank)
        for page, rank in hits
    ]


@router.get("/dashboard")
async def dashboard(db: DbDep, tenant_id: TenantDep) -> Dashboard:
    """The tenant's numbers from platform-db's dashboard views, on the analytics pool
    (the read replica when POSTGRES_REPLICA_URL is set)."""
    async with db.async_session(tenant_id=tenant_id, pool="analytics") as session:
        row = await session.scalar(select(TenantDashboard))
    if row is None:  # the views were never created or refreshed on this database
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, "no dashboard yet: the numbers are refreshed periodically"
        )
    return Dashboard.model_validate(row)


def _client_ip(request: Request) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(request.client.host) if request.client else None
    except ValueError:
        return None


@router.post("/forms/{slug}/submissions", status_code=status.HTTP_201_CREATED)
async def submit_form(
    slug: str, body: SubmissionIn, request: Request, session: SessionDep
) -> SubmissionOut:
    """Store a submission; one that carries an `email` also becomes a lead."""
    form = await session.scalar(select(Form).where(Form.slug == slug, Form.is_active))
    if form is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no form {slug!r}")
    missing = [
        str(field.get("name"))
        for field in form.fields
        if field.get("required") and body.data.get(str(field.get("name"))) in (None, "")
    ]
    if missing:
        raise HTTPException(UNPROCESSABLE, f"missing fields: {', '.join(missing)}")
    lead = None
    email = body.data.get("email")
    if isinstance(email, str):
        try:
            lead = Lead(email=email, source=f"form:{slug}"[:64], form_id=form.id)
        except ValueError as exc:
            raise HTTPException(UNPROCESSABLE, str(exc)) from None
        session.add(lead)
        await session.flush()  # the lead's id, for the submission's composite key
    submission = FormSubmission(
        form_id=form.id,
        lead_id=lead.id if lead else None,
        data=body.data,
        ip_address=_client_ip(request),
        user_agent=(request.headers.get("user-agent") or "")[:1000] or None,
        referrer=(request.headers.get("referer") or "")[:2000] or None,
    )
    session.add(submission)
    await session.commit()
    return SubmissionOut(
        id=submission.id, created_at=submission.created_at, lead_id=submission.lead_id
    )


# --- the application ---------------------------------------------------------------------


def create_app(env: Mapping[str, str] | None = None) -> FastAPI:
    """The ASGI application; `env` replaces os.environ (tests pass the app login's URL)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        source = os.environ if env is None else env
        app.state.db = Database.from_env(source)  # validates the settings, connects nothing
        app.state.base_domain = source.get("NOTES_BASE_DOMAIN", "").strip().strip(".").lower()
        try:
            yield
        finally:
            await app.state.db.dispose_async()

    app = FastAPI(title="notes-service", lifespan=lifespan)
    app.include_router(router)
    return app


app = create_app()
