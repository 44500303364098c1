"""The API as a client meets it: tenants, leads, notes, search, dashboard, forms."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from tests.conftest import BASE_DOMAIN, ApiTenant


def _lead(client: TestClient, tenant: ApiTenant, **fields: Any) -> dict[str, Any]:
    fields.setdefault("email", f"{uuid.uuid4().hex[:10]}@example.com")
    response = client.post("/leads", json=fields, headers=tenant.headers)
    assert response.status_code == 201, response.text
    lead: dict[str, Any] = response.json()
    return lead


# --- tenants -----------------------------------------------------------------------------


def test_an_unknown_or_suspended_tenant_is_not_found(
    client: TestClient, make_tenant: Callable[..., ApiTenant]
) -> None:
    assert client.get("/leads", headers={"X-Tenant": "no-such-tenant"}).status_code == 404
    suspended = make_tenant(status="suspended")
    assert client.get("/leads", headers=suspended.headers).status_code == 404
    assert client.get("/leads").status_code == 400  # no header, no tenant subdomain


def test_the_tenant_comes_from_the_subdomain_without_a_header(
    client: TestClient, tenant: ApiTenant
) -> None:
    lead = _lead(client, tenant)
    response = client.get("/leads", headers={"Host": f"{tenant.subdomain}.{BASE_DOMAIN}"})
    assert response.status_code == 200
    assert [item["id"] for item in response.json()["items"]] == [lead["id"]]
    # The header wins over the host.
    other = client.get(
        "/leads", headers={"Host": f"{tenant.subdomain}.{BASE_DOMAIN}", "X-Tenant": "nobody"}
    )
    assert other.status_code == 404


# --- leads -------------------------------------------------------------------------------


def test_leads_are_created_and_listed_with_filters(
    client: TestClient, tenant: ApiTenant, other_tenant: ApiTenant
) -> None:
    ada = _lead(client, tenant, email=" Ada@Example.COM ", source="referral", score=80)
    _lead(client, tenant, email="bob@example.com", source="referral", score=20)
    _lead(client, tenant, email="cy@example.org", score=90)
    _lead(client, other_tenant, email="ada@example.net", source="referral", score=99)
    assert ada["email"] == "ada@example.com"  # the model normalises it
    assert ada["status"] == "new"

    def emails(**params: Any) -> list[str]:
        response = client.get("/leads", params=params, headers=tenant.headers)
        assert response.status_code == 200, response.text
        return sorted(item["email"] for item in response.json()["items"])

    assert emails() == ["ada@example.com", "bob@example.com", "cy@example.org"]
    assert emails(source="referral") == ["ada@example.com", "bob@example.com"]
    assert emails(source="referral", min_score=50) == ["ada@example.com"]
    assert emails(email="example.org") == ["cy@example.org"]
    assert emails(status="converted") == []

    bad = client.post("/leads", json={"email": "not an address"}, headers=tenant.headers)
    assert bad.status_code == 422
    assert (
        client.get("/leads", params={"status": "nope"}, headers=tenant.headers).status_code == 422
    )


def test_leads_come_in_keyset_pages(client: TestClient, tenant: ApiTenant) -> None:
    created = [_lead(client, tenant)["id"] for _ in range(7)]
    seen: list[str] = []
    sizes: list[int] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor is not None:
            params["cursor"] = cursor
        page = client.get("/leads", params=params, headers=tenant.headers).json()
        seen += [item["id"] for item in page["items"]]
        sizes.append(len(page["items"]))
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sizes == [3, 3, 1]
    assert seen == created[::-1]  # newest first, each lead once

    broken = client.get("/leads", params={"cursor": "garbage"}, headers=tenant.headers)
    assert broken.status_code == 400


# --- notes -------------------------------------------------------------------------------


def test_notes_belong_to_the_tenants_own_leads(
    client: TestClient, tenant: ApiTenant, other_tenant: ApiTenant
) -> None:
    lead = _lead(client, tenant)
    url = f"/leads/{lead['id']}/notes"
    for body in ("Called, no answer", "Called back: wants a demo"):
        response = client.post(url, json={"body": body}, headers=tenant.headers)
        assert response.status_code == 201, response.text
        assert response.json()["lead_id"] == lead["id"]
    notes = client.get(url, headers=tenant.headers).json()
    assert [note["body"] for note in notes] == ["Called, no answer", "Called back: wants a demo"]

    # The other tenant neither reads nor writes notes on this lead: to it, it does not exist.
    assert client.get(url, headers=other_tenant.headers).status_code == 404
    crossing = client.post(url, json={"body": "mine now"}, headers=other_tenant.headers)
    assert crossing.status_code == 404
    unknown = client.post(
        f"/leads/{uuid.uuid4()}/notes", json={"body": "x"}, headers=tenant.headers
    )
    assert unknown.status_code == 404
    assert len(client.get(url, headers=tenant.headers).json()) == 2


# --- pages, dashboard, forms ---------------------------------------------------------------


def _page(admin: Engine, tenant: ApiTenant, slug: str, title: str, published: bool) -> None:
    with admin.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO pages (tenant_id, slug, title, content, status, published_at) "
                "VALUES (:t, :s, :ti, 'Our pricing for teams of every size.', :st, "
                "CASE WHEN :p THEN now() END)"
            ),
            {
                "t": tenant.id,
                "s": slug,
                "ti": title,
                "st": "published" if published else "draft",
                "p": published,
            },
        )


def test_page_search_finds_the_tenants_published_pages(
    client: TestClient,
    tenant: ApiTenant,
    other_tenant: ApiTenant,
    platform_db_admin_engine: Engine,
) -> None:
    _page(platform_db_admin_engine, tenant, "pricing", "Pricing", published=True)
    _page(platform_db_admin_engine, tenant, "pricing-draft", "Pricing draft", published=False)
    _page(platform_db_admin_engine, tenant, "about", "About us", published=True)
    _page(platform_db_admin_engine, other_tenant, "pricing", "Their pricing", published=True)

    response = client.get("/pages/search", params={"q": "pricing"}, headers=tenant.headers)
    assert response.status_code == 200
    hits = response.json()
    # Title matches rank first; the draft and the other tenant's page are not found.
    assert [hit["slug"] for hit in hits] == ["pricing", "about"]
    assert hits[0]["rank"] > hits[1]["rank"]
    nothing = client.get("/pages/search", params={"q": "kangaroo"}, headers=tenant.headers)
    assert nothing.json() == []


def _contact_form(admin: Engine, tenant: ApiTenant) -> None:
    with admin.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO forms (tenant_id, name, slug, fields) VALUES (:t, 'Contact', "
                '\'contact\', \'[{"name": "email", "type": "email", "required": true}]\')'
            ),
            {"t": tenant.id},
        )


def test_a_form_submission_is_stored_and_becomes_a_lead(
    client: TestClient, tenant: ApiTenant, other_tenant: ApiTenant, platform_db_admin_engine: Engine
) -> None:
    _contact_form(platform_db_admin_engine, tenant)
    data = {"email": "Visitor@Example.com", "message": "Please call me"}
    response = client.post(
        "/forms/contact/submissions", json={"data": data}, headers=tenant.headers
    )
    assert response.status_code == 201, response.text
    submission = response.json()
    assert submission["lead_id"] is not None

    leads = client.get("/leads", params={"source": "form:contact"}, headers=tenant.headers).json()
    assert [lead["id"] for lead in leads["items"]] == [submission["lead_id"]]
    with platform_db_admin_engine.connect() as conn:
        stored = conn.execute(
            text("SELECT tenant_id, data, lead_id FROM form_submissions WHERE id = :i"),
            {"i": submission["id"]},
        ).one()
    assert (stored.tenant_id, stored.data, str(stored.lead_id)) == (
        tenant.id,
        data,
        submission["lead_id"],
    )

    missing = client.post(
        "/forms/contact/submissions", json={"data": {"message": "hi"}}, headers=tenant.headers
    )
    assert missing.status_code == 422
    # The form is the tenant's own: another tenant has no form `contact`.
    elsewhere = client.post(
        "/forms/contact/submissions", json={"data": data}, headers=other_tenant.headers
    )
    assert elsewhere.status_code == 404


def test_the_dashboard_shows_the_tenants_numbers_after_a_refresh(
    client: TestClient, tenant: ApiTenant, platform_db_admin_engine: Engine
) -> None:
    _contact_form(platform_db_admin_engine, tenant)
    for _ in range(3):
        _lead(client, tenant)
    submitted = client.post(
        "/forms/contact/submissions",
        json={"data": {"email": "x@example.com"}},
        headers=tenant.headers,
    )
    assert submitted.status_code == 201
    # Not computed yet: the views are refreshed periodically (pg_cron or `platform-db
    # maintain`); until then a new tenant reads a row of zeros, dated with the last refresh.
    before = client.get("/dashboard", headers=tenant.headers)
    assert before.status_code == 200, before.text
    assert before.json()["leads_total"] == 0

    with platform_db_admin_engine.begin() as conn:
        conn.execute(text("SELECT * FROM platform.refresh_performance_views()"))
    response = client.get("/dashboard", headers=tenant.headers)
    assert response.status_code == 200, response.text
    numbers = response.json()
    assert numbers["subdomain"] == tenant.subdomain
    assert numbers["leads_total"] == 4  # three from the API, one from the submission
    assert numbers["leads_new"] == 4
    assert numbers["forms_active"] == 1
    assert numbers["submissions_total"] == 1
