"""find_many: names checked against the model, values bound, keyset pagination exact."""

from __future__ import annotations

import base64
import json
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, text

from platform_db.models import Lead, LeadStatus
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


def _all_pages(
    db: TenantSession, tenant: uuid.UUID, order_by: list[str], limit: int
) -> list[uuid.UUID]:
    seen: list[uuid.UUID] = []
    cursor = None
    while True:
        page = find_many(
            db, Lead, filters={"tenant_id": tenant}, order_by=order_by, limit=limit, after=cursor
        )
        assert len(page.items) <= limit
        seen.extend(lead.id for lead in page.items)
        if page.next_cursor is None:
            return seen
        assert len(page.items) == limit
        assert len(seen) < 1000, "pagination does not end"
        cursor = page.next_cursor


def _expected_order(rows: list[Lead], order_by: list[str]) -> list[uuid.UUID]:
    # PostgreSQL's defaults, which find_many keeps: NULLs sort after every value
    # ascending and before every value descending. The primary key breaks ties in the
    # direction of the last field.
    ordered = sorted(rows, key=lambda lead: lead.id, reverse=order_by[-1].startswith("-"))
    for spec in reversed(order_by):
        name = spec.lstrip("-")

        def key(lead: Lead, name: str = name) -> tuple[bool, str]:
            value = getattr(lead, name)
            return (value is None, value or "")

        ordered.sort(key=key, reverse=spec.startswith("-"))
    return [lead.id for lead in ordered]


def _add_leads(db: TenantSession, companies: list[tuple[str | None, str | None]]) -> uuid.UUID:
    tenant = new_tenant(db.connection())
    db.add_all(
        Lead(tenant_id=tenant, email=f"lead{i}@example.org", company=company, last_name=last)
        for i, (company, last) in enumerate(companies)
    )
    db.flush()
    return tenant


def test_first_page_of_a_nullable_sort_has_a_cursor(db: TenantSession) -> None:
    # Issue 19: 56 leads sorted by a nullable column gave three rows and no cursor.
    companies: list[tuple[str | None, str | None]] = [
        (None if i % 4 == 0 else f"c{i % 9}", None) for i in range(56)
    ]
    tenant = _add_leads(db, companies)
    page = find_many(db, Lead, filters={"tenant_id": tenant}, order_by=["-company"], limit=3)
    assert len(page.items) == 3
    assert page.next_cursor is not None
    rest = find_many(
        db,
        Lead,
        filters={"tenant_id": tenant},
        order_by=["-company"],
        limit=1000,
        after=page.next_cursor,
    )
    assert len(rest.items) == 53
    assert rest.next_cursor is None


@pytest.mark.parametrize("order_by", [["company"], ["-company"]])
@pytest.mark.parametrize("limit", [1, 2, 3, 4, 5])
def test_keyset_pages_cross_the_null_boundary(
    db: TenantSession, order_by: list[str], limit: int
) -> None:
    # 3 named, 4 NULL, 2 named: with these limits a page ends on the last value before
    # the NULLs, on a NULL, and on the last NULL, in both directions.
    companies: list[tuple[str | None, str | None]] = [
        ("a", None),
        ("b", None),
        ("b", None),
        (None, None),
        (None, None),
        (None, None),
        (None, None),
        ("c", None),
        ("d", None),
    ]
    tenant = _add_leads(db, companies)
    rows = list(db.scalars(select(Lead).where(Lead.tenant_id == tenant)))
    assert _all_pages(db, tenant, order_by, limit) == _expected_order(rows, order_by)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    companies=st.lists(
        st.tuples(
            st.none() | st.sampled_from(["a", "b", "c"]),
            st.none() | st.sampled_from(["x", "y"]),
        ),
        max_size=14,
    ),
    order_by=st.sampled_from(
        [
            ["company"],
            ["-company"],
            ["company", "-last_name"],
            ["-company", "last_name"],
            ["-last_name", "-company"],
            ["company", "score"],
        ]
    ),
    limit=st.integers(1, 4),
)
def test_pages_concatenated_are_the_ordered_list(
    db: TenantSession,
    companies: list[tuple[str | None, str | None]],
    order_by: list[str],
    limit: int,
) -> None:
    tenant = _add_leads(db, companies)
    rows = list(db.scalars(select(Lead).where(Lead.tenant_id == tenant)))
    assert _all_pages(db, tenant, order_by, limit) == _expected_order(rows, order_by)


def test_cursor_of_a_nullable_sort_refuses_null_for_a_required_field(db: TenantSession) -> None:
    tenant = _add_leads(db, [(None, None), (None, None)])
    page = find_many(db, Lead, filters={"tenant_id": tenant}, order_by=["company"], limit=1)
    assert page.next_cursor
    forged = page.next_cursor
    payload = json.loads(base64.urlsafe_b64decode(forged + "=" * (-len(forged) % 4)))
    payload["v"][-1] = None  # the id
    bad = base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()
    with pytest.raises(QueryError, match="malformed cursor"):
        find_many(db, Lead, order_by=["company"], after=bad)


def test_jsonb_containment(db: TenantSession) -> None:
    tenant = new_tenant(db.connection())
    db.add_all(
        [
            Lead(tenant_id=tenant, email="pro@example.org", attributes={"plan": "pro", "n": 1}),
            Lead(tenant_id=tenant, email="free@example.org", attributes={"plan": "free"}),
        ]
    )
    db.flush()
    page = find_many(
        db, Lead, filters={"tenant_id": tenant, "attributes__contains": {"plan": "pro"}}
    )
    assert [lead.email for lead in page.items] == ["pro@example.org"]


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        (
            {"attributes__contains": "x"},
            r"attributes__contains: expected an object .*JSONB containment",
        ),
        (
            {"attributes__lt": {"a": 1}},
            r"attributes supports only \['eq', 'ne', 'is_null', 'contains'\]",
        ),
        ({"attributes__startswith": "x"}, r"attributes supports only"),
        ({"score__contains": "1"}, r"score supports only .*'gte'"),
        ({"created_at__startswith": "2024"}, r"created_at supports only"),
    ],
)
def test_operators_the_column_cannot_take_are_a_query_error(
    db: TenantSession, filters: dict[str, object], message: str
) -> None:
    with pytest.raises(QueryError, match=message):
        find_many(db, Lead, filters=filters)


def test_one_prepared_statement_per_shape_and_values_never_stick(
    db: TenantSession, tenant_with_leads: uuid.UUID
) -> None:
    # find_many builds a statement once per shape and binds each call's values into it:
    # calls of the same shape with other values, and of shapes that differ only in what
    # a value makes of the SQL (NULL, an empty list, a direction), must not mix.
    def ids(**kwargs: object) -> list[uuid.UUID]:
        filters = {"tenant_id": tenant_with_leads, **kwargs.pop("filters", {})}  # type: ignore[dict-item]
        page = find_many(db, Lead, filters=filters, limit=1000, **kwargs)  # type: ignore[arg-type]
        return [lead.id for lead in page.items]

    everyone = ids()
    assert len(everyone) == 237
    by_status = {s: ids(filters={"status": s}) for s in ("new", "lost", "contacted")}
    assert all(by_status.values())
    assert not set(by_status["new"]) & set(by_status["lost"])
    assert ids(filters={"status__in": []}) == []
    assert sorted(ids(filters={"status__in": ["new"]})) == sorted(by_status["new"])
    assert set(ids(filters={"status__not_in": []})) == set(everyone)
    assert ids(filters={"company": None}) != []
    assert ids(filters={"company": "nobody"}) == []
    assert set(ids(filters={"company__is_null": True})) == set(everyone)
    assert ids(filters={"company__is_null": False}) == []
    up = ids(order_by=["score", "email"])
    down = ids(order_by=["-score", "email"])
    assert up != down
    assert set(up) == set(down)
    assert ids(filters={"score__gte": 99}) != ids(filters={"score__gte": 1})
    assert ids(offset=10, order_by=["email"]) == ids(order_by=["email"])[10:]
