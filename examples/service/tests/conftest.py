"""Fixtures of notes-service's tests: the plugin's database, and the app running on it.

The plugin (`-p platform_db.testing`, settings in pyproject.toml) creates a database of its
own, migrates it with this service's alembic.ini (platform-db's schema, then the service's
revisions, as a deploy does), and a login that is only a member of `platform_app`. The app
runs as that login, as it does in production.

The API commits through its own pool, so a test cannot run inside a transaction that is
rolled back; each test gets tenants of its own instead, deleted at its end with
everything they own (ON DELETE CASCADE from `tenants`).
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient
from platform_db.testing import RowFactory, default_row_factories
from sqlalchemy import Connection, Engine, text
from sqlalchemy.engine import URL

import notes_service.models  # noqa: F401 - puts `notes` into Base.metadata for the plugin
from notes_service.app import create_app

BASE_DOMAIN = "notes.test"


def insert_note(conn: Connection, tenant_id: uuid.UUID) -> None:
    """One note of the tenant, on a lead of its own (the composite key needs the lead)."""
    lead_id = conn.scalar(
        text("INSERT INTO leads (tenant_id, email) VALUES (:t, :e) RETURNING id"),
        {"t": tenant_id, "e": f"note-{secrets.token_hex(4)}@example.com"},
    )
    conn.execute(
        text("INSERT INTO notes (tenant_id, lead_id, body) VALUES (:t, :l, 'Called back')"),
        {"t": tenant_id, "l": lead_id},
    )


@pytest.fixture(scope="session")
def platform_db_row_factories() -> dict[str, RowFactory]:
    return {**default_row_factories(), "notes": insert_note}


@pytest.fixture(scope="session")
def app_env(platform_db_app_login: URL) -> dict[str, str]:
    """The app's environment: the plugin's platform_app login, small pools."""
    return {
        "DATABASE_URL": platform_db_app_login.render_as_string(hide_password=False),
        "POSTGRES_POOL_MIN": "1",
        "POSTGRES_POOL_MAX": "4",
        "POSTGRES_ANALYTICS_POOL_MIN": "1",
        "POSTGRES_ANALYTICS_POOL_MAX": "2",
        "NOTES_BASE_DOMAIN": BASE_DOMAIN,
    }


@pytest.fixture(scope="session")
def client(app_env: dict[str, str]) -> Iterator[TestClient]:
    with TestClient(create_app(app_env)) as test_client:  # runs the lifespan
        yield test_client


@dataclass(frozen=True, slots=True)
class ApiTenant:
    id: uuid.UUID
    subdomain: str

    @property
    def headers(self) -> dict[str, str]:
        return {"X-Tenant": self.subdomain}


@pytest.fixture
def make_tenant(platform_db_admin_engine: Engine) -> Iterator[Callable[..., ApiTenant]]:
    """`make_tenant(status="active")`: a committed tenant, deleted when the test ends."""
    made: list[uuid.UUID] = []

    def make(status: str = "active") -> ApiTenant:
        tenant = ApiTenant(uuid.uuid4(), f"t-{secrets.token_hex(6)}")
        with platform_db_admin_engine.begin() as conn:
            conn.execute(
                text("INSERT INTO tenants (id, name, subdomain, status) VALUES (:i, :n, :s, :st)"),
                {
                    "i": tenant.id,
                    "n": f"Tenant {tenant.subdomain}",
                    "s": tenant.subdomain,
                    "st": status,
                },
            )
        made.append(tenant.id)
        return tenant

    yield make
    if made:
        with platform_db_admin_engine.begin() as conn:
            conn.execute(text("DELETE FROM tenants WHERE id = ANY(:ids)"), {"ids": made})


@pytest.fixture
def tenant(make_tenant: Callable[..., ApiTenant]) -> ApiTenant:
    return make_tenant()


@pytest.fixture
def other_tenant(make_tenant: Callable[..., ApiTenant]) -> ApiTenant:
    return make_tenant()
