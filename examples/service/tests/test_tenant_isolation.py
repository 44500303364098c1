"""The service's table is as closed to the other tenant as the package's are."""

from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient
from platform_db.session.database import Database
from platform_db.session.tenancy import TenantMismatchError, TenantSession
from platform_db.testing import IsolationChecker, TwoTenants
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from notes_service.models import Note


def test_tenant_tables_are_closed(tenant_isolation: IsolationChecker) -> None:
    reports = tenant_isolation.assert_closed()
    # The service's table was checked, not only the package's, and in full.
    assert "notes" in reports
    assert reports["notes"].checked == [
        "reads: own rows only",
        "no tenant: no rows",
        "update of B's rows: 0 rows",
        "delete of B's rows: 0 rows",
        "insert for B: refused",
        "no TRUNCATE, REFERENCES or TRIGGER",
        "leftover session state: none reaches the next request",
    ]


def _a_noted_lead_of(admin: Engine, tenant: uuid.UUID) -> uuid.UUID:
    """A lead of the tenant that has a note (the superuser is not subject to RLS)."""
    with admin.connect() as conn:
        lead: uuid.UUID = conn.execute(
            text("SELECT lead_id FROM notes WHERE tenant_id = :t LIMIT 1"), {"t": tenant}
        ).scalar_one()
    return lead


def _sqlstate(exc: DBAPIError) -> str | None:
    state = getattr(exc.orig, "sqlstate", None)
    return state if isinstance(state, str) else None


def test_a_note_cannot_point_at_another_tenants_lead(
    platform_db_admin_engine: Engine,
    platform_db_app_engine: Engine,
    platform_db_tenants: TwoTenants,
) -> None:
    a, b = platform_db_tenants.a, platform_db_tenants.b
    lead_of_b = _a_noted_lead_of(platform_db_admin_engine, b)

    # As tenant A, a note of A on B's lead: the composite key (tenant_id, lead_id) finds no
    # lead (A, that id). Foreign-key checks run without RLS, so only the key stops it.
    with TenantSession(platform_db_app_engine, tenant_id=a) as session:
        session.add(Note(lead_id=lead_of_b, body="crossing over"))
        with pytest.raises(IntegrityError) as fk:
            session.flush()
    assert _sqlstate(fk.value) == "23503"  # foreign_key_violation
    assert "fk_notes_tenant_id_lead_id_leads" in str(fk.value)

    # A note in B's name: the ORM refuses before SQL runs, and the database refuses the
    # same row written by hand (RLS's WITH CHECK).
    with TenantSession(platform_db_app_engine, tenant_id=a) as session:
        session.add(Note(tenant_id=b, lead_id=lead_of_b, body="as B"))
        with pytest.raises(TenantMismatchError):
            session.flush()
    with (
        TenantSession(platform_db_app_engine, tenant_id=a) as session,
        pytest.raises(DBAPIError) as refused,
    ):
        session.execute(
            text("INSERT INTO notes (tenant_id, lead_id, body) VALUES (:b, :l, 'as B')"),
            {"b": b, "l": lead_of_b},
        )
    assert _sqlstate(refused.value) == "42501"  # insufficient_privilege: the policy

    # And B's notes stay B's: A sees none of them, even by B's lead id.
    with TenantSession(platform_db_app_engine, tenant_id=a) as session:
        seen = session.scalar(
            text("SELECT count(*) FROM notes WHERE lead_id = :l"), {"l": lead_of_b}
        )
    assert seen == 0


def test_the_app_serves_as_a_platform_app_login(client: TestClient) -> None:
    """What the tests prove holds for the login the app uses: no superuser, no BYPASSRLS,
    no ownership, a member of platform_app."""
    db: Database = client.app.state.db  # type: ignore[attr-defined]
    with db.engine().connect() as conn:
        row = conn.execute(
            text(
                "SELECT rolsuper, rolbypassrls, "
                "pg_has_role(current_user, 'platform_app', 'MEMBER') AS app, "
                "pg_has_role(current_user, 'platform_owner', 'MEMBER') AS owner "
                "FROM pg_roles WHERE rolname = current_user"
            )
        ).one()
    assert tuple(row) == (False, False, True, False)
