"""The benchmark's workload: eight query classes, drawn over many tenants, run through the
package's own `Database` pools and tenant sessions.

Each request is what a web request of the platform does: open a tenant session (the
`after_begin` hook sets the tenant), run one query class, end the transaction. The same
statement builders produce the SQL of the pgbench scripts (platform_db.bench.pgbench), so
"the package" and "the database alone" run the same queries with the same parameters.
"""

from __future__ import annotations

import bisect
import datetime as dt
import ipaddress
import itertools
import random
import time
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import psycopg
from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession

from platform_db.bench.textgen import COMMON, INDUSTRIES
from platform_db.models import (
    FormSubmission,
    Lead,
    LeadStatus,
    PlatformTenantSummary,
    TenantDashboard,
    User,
)
from platform_db.models import Page as PageModel
from platform_db.models.lead import OPEN_STATUSES
from platform_db.session.database import Database
from platform_db.session.query import (
    _columns,
    _encode_cursor,
    _sort_keys,
    build_find_many,
    find_many_async,
)
from platform_db.session.search import (
    search_pages_async,
    search_pages_direct_query,
    search_pages_query,
)

CLASSES: tuple[str, ...] = (
    "user_by_email",
    "page_by_slug",
    "page_search",
    "lead_list",
    "lead_update",
    "submission_insert",
    "dashboard_read",
    "submissions_range",
)
WRITE_CLASSES = frozenset({"lead_update", "submission_insert"})
# The classes that run on the analytics pool (the replica when one is configured):
# dashboards always; with `bench --replica` the date-range report too.
ANALYTICS_CLASSES: tuple[str, ...] = ("dashboard_read",)
REPLICA_CLASSES: tuple[str, ...] = ("dashboard_read", "submissions_range")

# Reads dominate, as on a CMS: page views, logins, back-office lists and dashboards.
DEFAULT_MIX: dict[str, int] = {
    "user_by_email": 15,
    "page_by_slug": 25,
    "page_search": 8,
    "lead_list": 12,
    "lead_update": 7,
    "submission_insert": 10,
    "dashboard_read": 10,
    "submissions_range": 13,
}

LEAD_LIST_ORDER = ("-created_at",)
PAGE_SIZE = 50
RANGE_DAYS = 30
RANGE_LIMIT = 50
SEARCH_LIMIT = 20
SAMPLES_PER_TENANT = 8
LEADS_PER_TENANT = 40


@dataclass(frozen=True, slots=True)
class LeadRef:
    id: uuid.UUID
    status: str
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class TenantSample:
    """What the workload knows of one tenant: a few of its real keys to look up."""

    id: uuid.UUID
    rows: int
    industry: str
    created_at: dt.datetime
    emails: tuple[str, ...]
    slugs: tuple[str, ...]
    forms: tuple[uuid.UUID, ...]
    leads: tuple[LeadRef, ...]


@dataclass(frozen=True, slots=True)
class Catalog:
    """The tenants requests are drawn over: half uniformly, half in proportion to size."""

    tenants: tuple[TenantSample, ...]
    now: dt.datetime
    cum_weights: tuple[float, ...] = field(default=())

    @classmethod
    def of(cls, tenants: Sequence[TenantSample], now: dt.datetime) -> Catalog:
        total_rows = sum(max(t.rows, 1) for t in tenants) or 1
        n = len(tenants)
        weights = [0.5 / n + 0.5 * max(t.rows, 1) / total_rows for t in tenants]
        return cls(tuple(tenants), now, tuple(itertools.accumulate(weights)))

    def pick(self, rng: random.Random) -> TenantSample:
        i = bisect.bisect(self.cum_weights, rng.random() * self.cum_weights[-1])
        return self.tenants[min(i, len(self.tenants) - 1)]


def load_catalog(conn: psycopg.Connection[Any], *, first_tenants: int | None = None) -> Catalog:
    """Sample every tenant's keys (as a superuser: RLS would hide them).

    `first_tenants=N` keeps only the tenants a seed of N tenants creates (seed index below
    N), so that runs on a 100-tenant and a 1,000-tenant seed draw over the same tenants.
    """
    if first_tenants is not None and first_tenants < 1:
        raise ValueError("first_tenants must be at least 1")
    leads: dict[uuid.UUID, list[LeadRef]] = {}
    for tenant_id, lead_id, status, created_at in conn.execute(
        """
        SELECT tenant_id, id, status, created_at FROM (
            SELECT tenant_id, id, status, created_at,
                   row_number() OVER (PARTITION BY tenant_id ORDER BY id) AS n
            FROM leads) l
        WHERE n <= %s
        """,
        (LEADS_PER_TENANT,),
    ):
        leads.setdefault(tenant_id, []).append(LeadRef(lead_id, status, created_at))
    rows = conn.execute(
        """
        WITH u AS (SELECT tenant_id, (array_agg(email ORDER BY id))[1:%(n)s] AS emails
                   FROM users GROUP BY tenant_id),
             p AS (SELECT tenant_id, (array_agg(slug ORDER BY id))[1:%(n)s] AS slugs
                   FROM pages GROUP BY tenant_id),
             f AS (SELECT tenant_id, array_agg(id ORDER BY id) AS forms
                   FROM forms WHERE is_active GROUP BY tenant_id)
        SELECT t.id, coalesce(t.industry_module, 'software'), t.created_at,
               coalesce((t.settings #>> '{seed,rows}')::bigint, 1),
               coalesce(u.emails, '{}'), coalesce(p.slugs, '{}'), coalesce(f.forms, '{}')
        FROM tenants t
        LEFT JOIN u ON u.tenant_id = t.id
        LEFT JOIN p ON p.tenant_id = t.id
        LEFT JOIN f ON f.tenant_id = t.id
        WHERE %(first)s::int IS NULL OR (t.settings #>> '{seed,index}')::int < %(first)s::int
        ORDER BY t.id
        """,
        {"n": SAMPLES_PER_TENANT, "first": first_tenants},
    ).fetchall()
    tenants = [
        TenantSample(
            id=tid,
            rows=int(n_rows),
            industry=industry if industry in INDUSTRIES else "software",
            created_at=created,
            emails=tuple(emails),
            slugs=tuple(slugs),
            forms=tuple(forms),
            leads=tuple(leads.get(tid, ())),
        )
        for tid, industry, created, n_rows, emails, slugs, forms in rows
        # A tenant the workload cannot address (no user, page, form or lead) is skipped.
        if emails and slugs and forms and leads.get(tid)
    ]
    if not tenants:
        if first_tenants is not None:
            raise ValueError(
                f"no seeded tenant has a seed index below {first_tenants}: "
                "was this database filled by `platform-db seed`?"
            )
        raise ValueError("no seeded tenants found: run `platform-db seed` first")
    now_row = conn.execute("SELECT now()").fetchone()
    return Catalog.of(tenants, now_row[0] if now_row else dt.datetime.now(dt.UTC))


# --- Requests -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    """One drawn request: a class, a tenant and the parameters it needs."""

    cls: str
    tenant: TenantSample
    text: str = ""
    status: str = ""
    lead: LeadRef | None = None
    form: uuid.UUID | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    after: str | None = None


_STATUSES = ("new", "contacted", "qualified", "converted", "lost")
_STATUS_WEIGHTS = (4, 2, 2, 1, 1)
_NEXT = {"new": "contacted", "contacted": "qualified", "qualified": "converted"}


def cursor_after(tenant: uuid.UUID, lead: LeadRef) -> str:
    """find_many's cursor for "the page after this lead" in the lead list's sort order."""
    keys = _sort_keys(Lead, _columns(Lead), LEAD_LIST_ORDER)
    row = SimpleNamespace(created_at=lead.created_at, tenant_id=tenant, id=lead.id)
    return _encode_cursor(keys, row)  # type: ignore[arg-type]  # duck-typed row


def search_term(industry: str, rng: random.Random) -> str:
    nouns = INDUSTRIES[industry]
    draw = rng.random()
    if draw < 0.65:
        return rng.choice(nouns)
    if draw < 0.9:
        a, b = rng.sample(list(nouns), 2)
        return f"{a} {b}"
    return rng.choice(COMMON[60:120])


def draw_request(cls: str, catalog: Catalog, rng: random.Random) -> Request:
    t = catalog.pick(rng)
    if cls == "user_by_email":
        return Request(cls, t, text=rng.choice(t.emails))
    if cls == "page_by_slug":
        return Request(cls, t, text=rng.choice(t.slugs))
    if cls == "page_search":
        return Request(cls, t, text=search_term(t.industry, rng))
    if cls == "lead_list":
        status = rng.choices(_STATUSES, _STATUS_WEIGHTS)[0]
        # Half the requests are a later page: keyset pagination after a real lead.
        candidates = [lead for lead in t.leads if lead.status == status]
        if candidates and rng.random() < 0.5:
            anchor = rng.choice(candidates)
            return Request(cls, t, status=status, lead=anchor, after=cursor_after(t.id, anchor))
        return Request(cls, t, status=status)
    if cls == "lead_update":
        return Request(cls, t, lead=rng.choice(t.leads))
    if cls == "submission_insert":
        return Request(cls, t, form=rng.choice(t.forms), text=rng.choice(t.emails))
    if cls == "dashboard_read":
        return Request(cls, t)
    if cls == "submissions_range":
        # A 30-day window somewhere in the last year of the tenant's history.
        start = max(t.created_at, catalog.now - dt.timedelta(days=365))
        span = max(0.0, (catalog.now - start).total_seconds() - RANGE_DAYS * 86_400)
        since = start + dt.timedelta(seconds=rng.random() * span)
        return Request(cls, t, since=since, until=since + dt.timedelta(days=RANGE_DAYS))
    raise ValueError(f"unknown query class {cls!r}")


# --- Statements shared with the pgbench scripts --------------------------------------


def select_statement(req: Request, *, explicit_tenant: bool) -> Select[Any]:
    """The SELECT a read class runs; `explicit_tenant` adds `tenant_id = ...` (no RLS)."""
    tid = req.tenant.id
    stmt: Select[Any]
    if req.cls == "user_by_email":
        stmt = select(User).where(User.email == req.text)
        return stmt.where(User.tenant_id == tid) if explicit_tenant else stmt
    if req.cls == "page_by_slug":
        stmt = select(PageModel).where(PageModel.slug == req.text)
        return stmt.where(PageModel.tenant_id == tid) if explicit_tenant else stmt
    if req.cls == "page_search":
        if explicit_tenant:
            # No tenant setting, so not the search function (which finds nothing without
            # one): the same search as one statement over pages, filtered explicitly.
            stmt = search_pages_direct_query(req.text, limit=SEARCH_LIMIT)
            return stmt.where(PageModel.tenant_id == tid)
        return search_pages_query(req.text, limit=SEARCH_LIMIT)
    if req.cls == "lead_list":
        filters: dict[str, Any] = {"status": req.status}
        if explicit_tenant:
            filters["tenant_id"] = tid
        stmt, _ = build_find_many(
            Lead, filters=filters, order_by=LEAD_LIST_ORDER, limit=PAGE_SIZE, after=req.after
        )
        return stmt
    if req.cls == "lead_update":
        assert req.lead is not None
        # What Session.get(Lead, (tenant_id, id)) emits: the key includes the tenant.
        return select(Lead).where(Lead.tenant_id == tid, Lead.id == req.lead.id)
    if req.cls == "dashboard_read":
        if explicit_tenant:
            # Without a tenant setting the tenant view is empty: read its source directly.
            return select(PlatformTenantSummary).where(PlatformTenantSummary.tenant_id == tid)
        return select(TenantDashboard).where(TenantDashboard.tenant_id == tid)
    if req.cls == "submissions_range":
        stmt = (
            select(FormSubmission)
            .where(FormSubmission.created_at >= req.since, FormSubmission.created_at < req.until)
            .order_by(FormSubmission.created_at.desc())
            .limit(RANGE_LIMIT)
        )
        return stmt.where(FormSubmission.tenant_id == tid) if explicit_tenant else stmt
    raise ValueError(f"{req.cls} is not a read class")


UPDATE_LEAD_SQL = """UPDATE leads SET status = CASE status WHEN 'new' THEN 'contacted'
    WHEN 'contacted' THEN 'qualified' ELSE status END,
    score = (score + 1) %% 101, status_changed_at = now(), updated_at = now()
WHERE leads.tenant_id = %(tenant)s AND leads.id = %(lead)s"""

INSERT_SUBMISSION_SQL = """INSERT INTO form_submissions (tenant_id, id, form_id, lead_id, data,
    ip_address, user_agent, referrer)
VALUES (%(tenant)s, gen_random_uuid(), %(form)s, NULL, %(data)s::jsonb, %(ip)s::inet,
    %(agent)s, %(referrer)s) RETURNING form_submissions.created_at"""


def submission_values(req: Request) -> dict[str, Any]:
    """The values of a submission insert (deterministic for a request)."""
    n = uuid.uuid5(uuid.NAMESPACE_OID, f"{req.tenant.id}:{req.text}").int
    return {
        "data": {"email": req.text, "name": "Bench Visitor", "message": "Please call me back."},
        "ip": f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n % 254 + 1}",
        "agent": "Mozilla/5.0 (X11; Linux x86_64) platform-db-bench",
        "referrer": "https://www.google.com/",
    }


# --- Running a request through the package ---------------------------------------------


@dataclass(slots=True)
class Outcome:
    rows: int
    setup_s: float


async def _setup(session: AsyncSession) -> float:
    """Check out a connection and begin (the hook sets the tenant); returns the seconds."""
    start = time.perf_counter()
    await session.connection()
    return time.perf_counter() - start


async def run_request(
    db: Database,
    req: Request,
    rng: random.Random,
    *,
    analytics: Collection[str] = ANALYTICS_CLASSES,
    time_setup: bool = True,
) -> Outcome:
    """Run one request through the package: a tenant session, one transaction, on the
    analytics pool for the classes in `analytics`, else on the main pool.

    `time_setup` first checks out the connection and begins on its own, to report how
    long that takes (the main workload's "session setup"); the baseline comparison runs
    requests as a service writes them, without that extra step.
    """
    tid = req.tenant.id
    pool = "analytics" if req.cls in analytics else "main"
    async with db.async_session(tenant_id=tid, pool=pool) as s:
        setup = await _setup(s) if time_setup else 0.0
        if req.cls == "page_search":
            found = await search_pages_async(s, req.text, limit=SEARCH_LIMIT)
            return Outcome(len(found), setup)
        if req.cls == "lead_list":
            page = await find_many_async(
                s,
                Lead,
                filters={"status": req.status},
                order_by=LEAD_LIST_ORDER,
                limit=PAGE_SIZE,
                after=req.after,
            )
            return Outcome(len(page.items), setup)
        if req.cls == "dashboard_read":
            row = await s.get(TenantDashboard, tid)
            return Outcome(0 if row is None else 1, setup)
        if req.cls == "lead_update":
            assert req.lead is not None
            lead = await s.get(Lead, (tid, req.lead.id))
            if lead is None:
                return Outcome(0, setup)
            status = LeadStatus(lead.status)
            if status in OPEN_STATUSES:
                target = _NEXT[status.value]
                if target == "converted" and rng.random() < 0.6:
                    target = "lost"
                lead.advance_to(LeadStatus(target))
                if target == "lost":
                    lead.lost_reason = "benchmark"
            else:
                lead.score = (lead.score + 1) % 101
            await s.commit()
            return Outcome(1, setup)
        if req.cls == "submission_insert":
            values = submission_values(req)
            s.add(
                FormSubmission(
                    form_id=req.form,
                    data=values["data"],
                    ip_address=ipaddress.ip_address(values["ip"]),
                    user_agent=values["agent"],
                    referrer=values["referrer"],
                )
            )
            await s.commit()
            return Outcome(1, setup)
        result = await s.scalars(select_statement(req, explicit_tenant=False))
        return Outcome(len(result.all()), setup)


def check_tenant_scoped(rows: Sequence[Any], tenant: uuid.UUID) -> bool:
    """True when every row (model instance) belongs to `tenant`."""
    return all(getattr(r, "tenant_id", tenant) == tenant for r in rows)


def mix_from_text(spec: str | None) -> dict[str, int]:
    """`class=weight,...` over the default mix; unknown classes are refused."""
    mix = dict(DEFAULT_MIX)
    if not spec:
        return mix
    for part in spec.split(","):
        name, _, weight = part.partition("=")
        name = name.strip()
        if name not in CLASSES:
            raise ValueError(f"unknown query class {name!r}; classes: {', '.join(CLASSES)}")
        try:
            mix[name] = int(weight)
        except ValueError:
            raise ValueError(f"weight of {name} must be a whole number, got {weight!r}") from None
        if mix[name] < 0:
            raise ValueError(f"weight of {name} must be >= 0")
    if not any(mix.values()):
        raise ValueError("every weight is 0")
    return mix


def pick_class(mix: Mapping[str, int], rng: random.Random) -> str:
    names = [c for c in CLASSES if mix.get(c, 0) > 0]
    return rng.choices(names, [mix[c] for c in names])[0]


__all__ = [
    "ANALYTICS_CLASSES",
    "CLASSES",
    "DEFAULT_MIX",
    "INSERT_SUBMISSION_SQL",
    "REPLICA_CLASSES",
    "UPDATE_LEAD_SQL",
    "Catalog",
    "LeadRef",
    "Outcome",
    "Request",
    "TenantSample",
    "check_tenant_scoped",
    "cursor_after",
    "draw_request",
    "load_catalog",
    "mix_from_text",
    "pick_class",
    "run_request",
    "select_statement",
    "submission_values",
]
