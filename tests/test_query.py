"""find_many: names checked against the model, values bound, keyset pagination exact."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import text

from platform_db.models import Lead, LeadStatus, Page
from platform_db.session.query import QueryError, find_many
from platform_db.session.tenancy import TenantSession
from tests.factories import new_tenant


@pytest.fixture
def tenant_with_leads(db: TenantSession) -> uuid.UUID:
    tenant = new_tenant(db.connection())
    other = new_tenant(db.connection())
    db.execute(
        text(
            "INSERT INTO leads (tenant_id, email, status, score, created_at) "
            "SELECT :t, 'lead' || g || '@example.org', "
            "(ARRAY['new','contacted','qualified','lost'])[1 + g % 4], g % 100, "
            "now() - (g % 7) * interval '1 hour' FROM generate_series(1, 237) g"
        ),
        {"t": tenant},
    )
    db.execute(
        text("INSERT INTO leads (tenant_id, email) VALUES (:t, 'other@example.org')"),
        {"t": other},
    )
    return tenant


def test_filters_and_operators(db: TenantSession, tenant_with_leads: uuid.UUID) -> None:
    page = find_many(
        db,
        Lead,
        filters={"tenant_id": tenant_with_leads, "status": "qualified", "score__gte": 50},
        limit=1000,
    )
    assert page.items
    assert all(lead.status is LeadStatus.QUALIFIED and lead.score >= 50 for lead in page.items)
    assert page.next_cursor is None
    both = find_many(
        db,
        Lead,
        filters={"tenant_id": str(tenant_with_leads), "status__in": ["new", "lost"]},
        limit=1000,
    )
    assert {lead.status for lead in both.items} == {LeadStatus.NEW, LeadStatus.LOST}
    contains = find_many(db, Lead, filters={"email__contains": "lead23@"})
    assert [lead.email for lead in contains.items] == ["lead23@example.org"]


def test_values_are_bound_never_spliced(db: TenantSession, tenant_with_leads: uuid.UUID) -> None:
    hostile = "x' OR '1'='1"
    assert find_many(db, Lead, filters={"email": hostile}).items == []
    # LIKE wildcards in a value are literal characters.
    assert find_many(db, Lead, filters={"email__contains": "%"}).items == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"filters": {"password": "x"}}, "unknown filter field 'password'"),
        ({"filters": {"email__regex": ".*"}}, "unknown filter operator 'regex'"),
        ({"filters": {"status": "won"}}, "not one of the allowed values"),
        ({"filters": {"score": "many"}}, "not a valid int"),
        ({"filters": {"tenant_id": "nope"}}, "not a valid UUID"),
        ({"filters": {"status__in": "new"}}, "expected a list"),
        ({"order_by": ["created_at; DROP TABLE leads"]}, "unknown sort field"),
        ({"order_by": ["search_vector"]}, "unknown sort field"),
        ({"limit": 0}, "limit must be between"),
        ({"limit": 5000}, "limit must be between"),
        ({"offset": 10**6}, "use the cursor"),
        ({"after": "not-a-cursor"}, "malformed cursor"),
    ],
)
def test_bad_input_is_a_clear_error(
    db: TenantSession, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(QueryError, match=message):
        find_many(db, Lead, **kwargs)  # type: ignore[arg-type]


def test_keyset_pagination_visits_every_row_once(
    db: TenantSession, tenant_with_leads: uuid.UUID
) -> None:
    expected = db.scalars(
        text("SELECT id FROM leads WHERE tenant_id = :t"), {"t": tenant_with_leads}
    ).all()
    seen: list[uuid.UUID] = []
    cursor = None
    pages = 0
    while True:
        page = find_many(
            db,
            Lead,
            filters={"tenant_id": tenant_with_leads},
            order_by=["-created_at", "score"],
            limit=25,
            after=cursor,
        )
        seen.extend(lead.id for lead in page.items)
        pages += 1
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert pages == 10
    assert len(seen) == len(set(seen)) == len(expected)
    assert set(seen) == set(expected)


def test_cursor_is_bound_to_its_sort(db: TenantSession, tenant_with_leads: uuid.UUID) -> None:
    page = find_many(
        db, Lead, filters={"tenant_id": tenant_with_leads}, order_by=["score"], limit=5
    )
    assert page.next_cursor
    with pytest.raises(QueryError, match="different sort order"):
        find_many(db, Lead, order_by=["-score"], after=page.next_cursor)


def test_cursor_refuses_nullable_sort(db: TenantSession) -> None:
    with pytest.raises(QueryError, match="nullable"):
        find_many(db, Page, order_by=["published_at"], after="e30")
