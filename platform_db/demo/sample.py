"""Sample tenants with rows in every tenant-owned table (for the demo and the tests)."""

from __future__ import annotations

import datetime as dt
import random
import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from platform_db.models import (
    Form,
    FormSubmission,
    Lead,
    LeadStatus,
    Page,
    PageStatus,
    Tenant,
    TenantPlan,
    User,
    UserRole,
)
from platform_db.session.tenancy import TenantSession


@dataclass(frozen=True, slots=True)
class SampleTenant:
    name: str
    subdomain: str
    industry_module: str
    plan: TenantPlan
    topic: str


SAMPLE_TENANTS = (
    SampleTenant("Acme Realty", "acme-realty", "real_estate", TenantPlan.PROFESSIONAL, "homes"),
    SampleTenant("Bright Dental", "bright-dental", "healthcare", TenantPlan.STARTER, "teeth"),
    SampleTenant("Cobalt Legal", "cobalt-legal", "legal", TenantPlan.ENTERPRISE, "contracts"),
)

_PAGES = (
    ("about", "About us", "We are a small team that cares about {topic} and about our clients."),
    ("services", "Our services", "From first call to final signature: {topic}, done properly."),
    ("pricing", "Pricing", "Clear prices for {topic}. No hidden fees, ever."),
    ("blog/getting-started", "Getting started with {topic}", "A practical guide to {topic}."),
)
_FIRST = ("Ada", "Grace", "Linus", "Barbara", "Ken", "Margaret", "Dennis", "Frances")
_LAST = ("Lovelace", "Hopper", "Torvalds", "Liskov", "Thompson", "Hamilton", "Ritchie", "Allen")


def _months_ago(now: dt.datetime, months: int) -> dt.datetime:
    year, month = divmod(now.year * 12 + now.month - 1 - months, 12)
    return now.replace(year=year, month=month + 1, day=min(now.day, 28))


def ensure_tenant(session: Session, spec: SampleTenant) -> tuple[Tenant, bool]:
    """The tenant with spec's subdomain, created if missing; True when it was created."""
    tenant = session.scalars(select(Tenant).where(Tenant.subdomain == spec.subdomain)).first()
    if tenant is not None:
        return tenant, False
    tenant = Tenant(
        name=spec.name,
        subdomain=spec.subdomain,
        industry_module=spec.industry_module,
        plan=spec.plan,
        settings={"locale": "en", "theme": "light"},
    )
    session.add(tenant)
    session.flush()
    return tenant, True


def fill_tenant(session: TenantSession, spec: SampleTenant, *, seed: int = 0) -> None:
    """Rows in every tenant-owned table for the session's tenant.

    The session must be bound to the tenant and run on a platform_app login, so that RLS
    checks every row (a tenant session on a superuser is refused: RLS would check
    nothing); the caller commits.
    """
    rng = random.Random(f"{spec.subdomain}:{seed}")  # noqa: S311 - sample data, not secrets
    now = dt.datetime.now(dt.UTC)
    domain = f"{spec.subdomain}.example.com"
    users = [
        User(
            email=f"{first.lower()}.{last.lower()}@{domain}",
            first_name=first,
            last_name=last,
            role=role,
            last_login_at=now - dt.timedelta(hours=rng.randint(1, 400)),
        )
        for (first, last), role in zip(
            zip(_FIRST[:4], _LAST[:4], strict=True),
            (UserRole.OWNER, UserRole.ADMIN, UserRole.EDITOR, UserRole.VIEWER),
            strict=True,
        )
    ]
    session.add_all(users)
    session.flush()
    for i, (slug, title, body) in enumerate(_PAGES):
        published = i < 3
        session.add(
            Page(
                slug=slug,
                title=title.format(topic=spec.topic),
                content=body.format(topic=spec.topic),
                status=PageStatus.PUBLISHED if published else PageStatus.DRAFT,
                published_at=now - dt.timedelta(days=30 - i) if published else None,
                author_id=users[i % len(users)].id,
            )
        )
    contact = Form(
        name="Contact us",
        slug="contact",
        fields=[
            {"name": "email", "type": "email", "required": True},
            {"name": "name", "type": "text", "required": True},
            {"name": "message", "type": "textarea", "required": False},
        ],
    )
    newsletter = Form(
        name="Newsletter",
        slug="newsletter",
        fields=[{"name": "email", "type": "email", "required": True}],
    )
    session.add_all([contact, newsletter])
    session.flush()
    statuses = list(LeadStatus)
    for i in range(8):
        first, last = _FIRST[(i + 2) % 8], _LAST[(i + 5) % 8]
        email = f"{first.lower()}{i}@customer{i}.example.org"
        form = contact if i % 2 == 0 else newsletter
        # Submissions spread over the last months, one far enough back to land in the
        # default partition (no monthly partition exists that early).
        created = _months_ago(now, i) if i < 7 else _months_ago(now, 30)
        submission = FormSubmission(
            id=uuid.uuid4(),
            form_id=form.id,
            created_at=created,
            data={"email": email, "name": f"{first} {last}", "message": "Please call me back."},
            user_agent="Mozilla/5.0 (sample)",
        )
        session.add(submission)
        session.flush()
        lead = Lead(
            email=email,
            first_name=first,
            last_name=last,
            source="website" if i % 3 else "referral",
            score=rng.randint(0, 100),
            form_id=form.id,
            source_submission_id=submission.id,
            source_submission_created_at=created,
        )
        target = statuses[i % len(statuses)]
        if target is not LeadStatus.NEW:
            lead.status = LeadStatus.NEW
            lead.advance_to(target, at=created + dt.timedelta(days=2))
            if target is LeadStatus.LOST:
                lead.lost_reason = "chose a competitor"
        session.add(lead)
        session.flush()
        submission.lead_id = lead.id
    session.flush()
