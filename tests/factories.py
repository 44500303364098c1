"""Small builders of committed or in-transaction rows for the tests."""

from __future__ import annotations

import secrets
import uuid

from sqlalchemy import Connection, text


def new_tenant(conn: Connection, *, name: str = "Tenant", **values: object) -> uuid.UUID:
    """Insert a tenant with a unique subdomain; return its id."""
    subdomain = str(values.pop("subdomain", f"t-{secrets.token_hex(5)}"))
    tenant_id = conn.scalar(
        text(
            "INSERT INTO tenants (name, subdomain, custom_domain, industry_module) "
            "VALUES (:name, :subdomain, :custom_domain, :industry_module) RETURNING id"
        ),
        {
            "name": name,
            "subdomain": subdomain,
            "custom_domain": values.get("custom_domain"),
            "industry_module": values.get("industry_module"),
        },
    )
    assert isinstance(tenant_id, uuid.UUID)
    return tenant_id


def new_form(conn: Connection, tenant_id: uuid.UUID, slug: str = "contact") -> uuid.UUID:
    form_id = conn.scalar(
        text("INSERT INTO forms (tenant_id, name, slug) VALUES (:t, :n, :s) RETURNING id"),
        {"t": tenant_id, "n": slug.title(), "s": slug},
    )
    assert isinstance(form_id, uuid.UUID)
    return form_id
