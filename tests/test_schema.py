"""Constraints, keys, partition routing and full-text search, on the migrated schema."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from sqlalchemy import Connection, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from platform_db.models import Lead, LeadStatus, Page, PageStatus, User, UserRole
from platform_db.models.lead import InvalidTransitionError
from platform_db.session.search import search_pages, search_pages_direct_query
from platform_db.session.tenancy import TenantSession
from tests.factories import new_form, new_tenant

UTC = dt.UTC


def _violates(conn: Connection, sql: str, params: dict[str, object], constraint: str) -> None:
    with pytest.raises(IntegrityError) as info, conn.begin_nested():
        conn.execute(text(sql), params)
    assert constraint in str(info.value)


def test_email_is_unique_per_tenant_case_insensitively(connection: Connection) -> None:
    a, b = new_tenant(connection), new_tenant(connection)
    insert = "INSERT INTO users (tenant_id, email) VALUES (:t, :e)"
    connection.execute(text(insert), {"t": a, "e": "ada@example.com"})
    # The same address in another tenant is a different user.
    connection.execute(text(insert), {"t": b, "e": "ada@example.com"})
    _violates(connection, insert, {"t": a, "e": "ada@example.com"}, "uq_users_tenant_email")
    # Stored lower-case only, so a differently-cased duplicate cannot slip in raw...
    _violates(connection, insert, {"t": a, "e": "Ada@Example.com"}, "ck_users_email_format")


def test_orm_normalises_email_so_case_variants_collide(db: TenantSession) -> None:
    tenant = new_tenant(db.connection())
    db.add(User(tenant_id=tenant, email="  Grace@Example.COM "))
    db.flush()
    assert db.scalar(select(User.email).where(User.tenant_id == tenant)) == "grace@example.com"
    db.add(User(tenant_id=tenant, email="GRACE@example.com"))
    with pytest.raises(IntegrityError, match="uq_users_tenant_email"):
        db.flush()


def test_invalid_email_is_refused_in_python() -> None:
    with pytest.raises(ValueError, match="not a valid email"):
        User(email="not-an-email")


def test_slug_unique_per_tenant(connection: Connection) -> None:
    a, b = new_tenant(connection), new_tenant(connection)
    insert = "INSERT INTO pages (tenant_id, slug, title) VALUES (:t, 'about', 'About')"
    connection.execute(text(insert), {"t": a})
    connection.execute(text(insert), {"t": b})
    _violates(connection, insert, {"t": a}, "uq_pages_tenant_slug")


def test_subdomain_and_custom_domain_unique(connection: Connection) -> None:
    new_tenant(connection, subdomain="shop-one", custom_domain="shop.example.com")
    # Any number of tenants without a custom domain.
    new_tenant(connection)
    new_tenant(connection)
    _violates(
        connection,
        "INSERT INTO tenants (name, subdomain) VALUES ('x', 'shop-one')",
        {},
        "uq_tenants_subdomain",
    )
    _violates(
        connection,
        "INSERT INTO tenants (name, subdomain, custom_domain) VALUES ('x', 'other', 'shop.example.com')",
        {},
        "uq_tenants_custom_domain",
    )
    _violates(
        connection,
        "INSERT INTO tenants (name, subdomain) VALUES ('x', 'Bad_Subdomain')",
        {},
        "ck_tenants_subdomain_format",
    )


def test_cross_tenant_references_are_rejected_by_composite_keys(connection: Connection) -> None:
    a, b = new_tenant(connection), new_tenant(connection)
    form_b = new_form(connection, b)
    # A lead of tenant A pointing at tenant B's form: the composite key has no match.
    _violates(
        connection,
        "INSERT INTO leads (tenant_id, email, form_id) VALUES (:a, 'x@example.com', :f)",
        {"a": a, "f": form_b},
        "fk_leads_tenant_id_form_id_forms",
    )
    _violates(
        connection,
        "INSERT INTO form_submissions (tenant_id, form_id) VALUES (:a, :f)",
        {"a": a, "f": form_b},
        "fk_form_submissions_tenant_id_form_id_forms",
    )
    user_b = connection.scalar(
        text("INSERT INTO users (tenant_id, email) VALUES (:b, 'u@example.com') RETURNING id"),
        {"b": b},
    )
    _violates(
        connection,
        "INSERT INTO pages (tenant_id, slug, title, author_id) VALUES (:a, 'p', 'P', :u)",
        {"a": a, "u": user_b},
        "fk_pages_tenant_id_author_id_users",
    )


def test_deleting_a_lead_keeps_its_submission(connection: Connection) -> None:
    tenant = new_tenant(connection)
    form = new_form(connection, tenant)
    lead = connection.scalar(
        text("INSERT INTO leads (tenant_id, email) VALUES (:t, 'l@example.com') RETURNING id"),
        {"t": tenant},
    )
    connection.execute(
        text("INSERT INTO form_submissions (tenant_id, form_id, lead_id) VALUES (:t, :f, :l)"),
        {"t": tenant, "f": form, "l": lead},
    )
    connection.execute(text("DELETE FROM leads WHERE id = :l"), {"l": lead})
    row = connection.execute(
        text("SELECT tenant_id, lead_id FROM form_submissions WHERE form_id = :f"), {"f": form}
    ).one()
    # SET NULL (lead_id) clears only the lead, never the tenant.
    assert row == (tenant, None)


def _partition_of(conn: Connection, submission_id: uuid.UUID) -> str:
    name = conn.scalar(
        text("SELECT tableoid::regclass::text FROM form_submissions WHERE id = :i"),
        {"i": submission_id},
    )
    assert isinstance(name, str)
    return name


def test_partitions_exist_from_this_month_to_three_ahead(connection: Connection) -> None:
    names = set(
        connection.scalars(
            text(
                "SELECT inhrelid::regclass::text FROM pg_inherits WHERE inhparent = 'form_submissions'::regclass"
            )
        )
    )
    now = dt.datetime.now(UTC)
    expected = {"form_submissions_default"}
    for i in range(4):
        year, month = divmod(now.year * 12 + now.month - 1 + i, 12)
        expected.add(f"form_submissions_{year:04d}_{month + 1:02d}")
    assert expected <= names


@pytest.mark.parametrize(
    ("offset_days", "expected"),
    [
        (0, "month"),
        (65, "month"),
        (-3650, "default"),
        (36500, "default"),
    ],
)
def test_every_row_lands_in_its_month_or_the_default(
    connection: Connection, offset_days: int, expected: str
) -> None:
    tenant = new_tenant(connection)
    form = new_form(connection, tenant)
    created = dt.datetime.now(UTC) + dt.timedelta(days=offset_days)
    sid = connection.scalar(
        text(
            "INSERT INTO form_submissions (tenant_id, form_id, created_at) VALUES (:t, :f, :c) RETURNING id"
        ),
        {"t": tenant, "f": form, "c": created},
    )
    assert isinstance(sid, uuid.UUID)
    want = (
        f"form_submissions_{created:%Y_%m}" if expected == "month" else "form_submissions_default"
    )
    assert _partition_of(connection, sid) == want


def test_maintenance_moves_rows_out_of_default_and_keeps_references(connection: Connection) -> None:
    tenant = new_tenant(connection)
    form = new_form(connection, tenant)
    month = dt.datetime(2041, 7, 1, tzinfo=UTC)
    created = month + dt.timedelta(days=9, hours=5)
    sid = connection.scalar(
        text(
            "INSERT INTO form_submissions (tenant_id, form_id, created_at) VALUES (:t, :f, :c) RETURNING id"
        ),
        {"t": tenant, "f": form, "c": created},
    )
    lead = connection.scalar(
        text(
            "INSERT INTO leads (tenant_id, email, source_submission_id, source_submission_created_at) "
            "VALUES (:t, 'm@example.com', :s, :c) RETURNING id"
        ),
        {"t": tenant, "s": sid, "c": created},
    )
    assert _partition_of(connection, sid) == "form_submissions_default"

    result = connection.execute(
        text(
            "SELECT partition_name, action, rows_moved FROM "
            "platform.ensure_form_submission_partitions(months_ahead => 0, start_month => :m)"
        ),
        {"m": month.date()},
    ).all()
    assert result == [("form_submissions_2041_07", "created", 1)]
    assert _partition_of(connection, sid) == "form_submissions_2041_07"
    # The lead still points at its submission: moving rows fires no FK action.
    link = connection.execute(
        text("SELECT source_submission_id FROM leads WHERE id = :l"), {"l": lead}
    ).scalar_one()
    assert link == sid
    # The new partition is protected like the others, and owned by the owner role.
    flags = connection.execute(
        text(
            "SELECT relrowsecurity, relforcerowsecurity, pg_get_userbyid(relowner), "
            "(SELECT count(*) FROM pg_policy WHERE polrelid = c.oid) "
            "FROM pg_class c WHERE relname = 'form_submissions_2041_07'"
        )
    ).one()
    assert tuple(flags) == (True, True, "platform_owner", 1)
    # Idempotent: nothing more to do.
    again = connection.execute(
        text(
            "SELECT * FROM platform.ensure_form_submission_partitions(months_ahead => 0, start_month => :m)"
        ),
        {"m": month.date()},
    ).all()
    assert again == []


def test_maintenance_refuses_nonsense(connection: Connection) -> None:
    with pytest.raises(DBAPIError, match="between 0 and 120"), connection.begin_nested():
        connection.execute(text("SELECT platform.ensure_form_submission_partitions(-1)"))


def test_full_text_search_ranks_title_matches_first(db: TenantSession) -> None:
    tenant = new_tenant(db.connection())
    other = new_tenant(db.connection())
    now = dt.datetime.now(UTC)
    for t, slug, title, content in [
        (tenant, "a", "Gardening basics", "Water the tomatoes in the morning."),
        (tenant, "b", "Tomatoes", "All about growing tomatoes and more tomatoes."),
        (tenant, "c", "Cooking", "Nothing about that vegetable here."),
        (other, "d", "Tomatoes of another tenant", "tomatoes"),
    ]:
        db.add(
            Page(
                tenant_id=t,
                slug=slug,
                title=title,
                content=content,
                status=PageStatus.PUBLISHED,
                published_at=now,
            )
        )
    db.flush()
    # The ranking, with an explicit tenant filter (RLS does not filter the superuser) ...
    direct = search_pages_direct_query("tomato", limit=10).where(Page.tenant_id == tenant)
    hits = [(p.slug, rank) for p, rank in db.execute(direct)]
    assert [slug for slug, _ in hits] == ["b", "a"]
    assert hits[0][1] > hits[1][1]
    # ... and through the search function, which finds the current tenant's pages only,
    # none without a tenant, whoever calls it (tests/test_search.py: as the app login).
    assert search_pages(db, "tomato", limit=10) == []
    db.execute(text("SELECT set_config('app.current_tenant_id', :t, true)"), {"t": str(tenant)})
    assert [(p.slug, rank) for p, rank in search_pages(db, "tomato", limit=10)] == hits
    assert search_pages(db, '"growing tomatoes" -gardening', limit=10)[0][0].slug == "b"


def test_lead_funnel_transitions() -> None:
    lead = Lead(email="f@example.com", status=LeadStatus.NEW)
    lead.advance_to(LeadStatus.QUALIFIED)
    assert lead.status is LeadStatus.QUALIFIED
    with pytest.raises(InvalidTransitionError):
        lead.advance_to(LeadStatus.CONTACTED)
    lead.advance_to(LeadStatus.CONVERTED)
    assert lead.converted_at is not None
    with pytest.raises(InvalidTransitionError):
        lead.advance_to(LeadStatus.LOST)


def test_converted_lead_needs_conversion_time(connection: Connection) -> None:
    tenant = new_tenant(connection)
    _violates(
        connection,
        "INSERT INTO leads (tenant_id, email, status) VALUES (:t, 'c@example.com', 'converted')",
        {"t": tenant},
        "ck_leads_converted_has_time",
    )


def test_roles_attributes(connection: Connection) -> None:
    rows = {
        r[0]: tuple(r[1:])
        for r in connection.execute(
            text(
                "SELECT rolname, rolcanlogin, rolbypassrls, rolsuper FROM pg_roles "
                "WHERE rolname LIKE 'platform\\_%'"
            )
        )
    }
    assert rows["platform_owner"] == (False, False, False)
    assert rows["platform_app"] == (False, False, False)
    assert rows["platform_admin"] == (False, True, False)


def test_user_role_enum_is_enforced(connection: Connection) -> None:
    tenant = new_tenant(connection)
    _violates(
        connection,
        "INSERT INTO users (tenant_id, email, role) VALUES (:t, 'r@example.com', 'superuser')",
        {"t": tenant},
        "ck_users_role",
    )
    assert UserRole("editor") is UserRole.EDITOR
