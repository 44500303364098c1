"""The audit trail: what is recorded, who can read it, and that nobody can write it directly.

Writes go through the app login (a member of platform_app only) with the real tenant
hook, and the trail is read back as the superuser, so each check compares what the
trigger wrote with what really happened.
"""

from __future__ import annotations

import datetime as dt
import secrets
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

from platform_db.maintenance import maintain
from platform_db.models import AuditLog, AuditLogReadOnlyError, Lead
from platform_db.session.tenancy import TenantSession
from tests.factories import new_form, new_tenant
from tests.isolation_helpers import INSUFFICIENT_PRIVILEGE, expect_db_error, tenant_connection


@pytest.fixture
def two_tenants(engine: Engine) -> Iterator[tuple[uuid.UUID, uuid.UUID]]:
    with engine.begin() as conn:
        a, b = new_tenant(conn), new_tenant(conn)
    yield a, b
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM tenants WHERE id IN (:a, :b)"), {"a": a, "b": b})


def _trail(engine: Engine, table: str, row_id: uuid.UUID) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT * FROM audit_log WHERE table_name = :t AND row_key ->> 'id' = :id "
                "ORDER BY id"
            ),
            {"t": table, "id": str(row_id)},
        )
        return [dict(r._mapping) for r in rows]


def _email() -> str:
    return f"a{secrets.token_hex(4)}@audit.example.com"


def _user(engine: Engine, tenant: uuid.UUID) -> uuid.UUID:
    """A user of `tenant`, written by the superuser."""
    user = uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO users (tenant_id, id, email) VALUES (:t, :id, :e)"),
            {"t": tenant, "id": user, "e": _email()},
        )
    return user


def test_insert_update_delete_record_changed_columns_actor_and_transaction(
    engine: Engine, app_engine: Engine, two_tenants: tuple[uuid.UUID, uuid.UUID]
) -> None:
    tenant, _ = two_tenants
    actor = _user(engine, tenant)
    lead_id = uuid.uuid4()
    email = _email()
    txids = []
    for sql, params in (
        (
            "INSERT INTO leads (tenant_id, id, email, company) VALUES (:t, :id, :e, 'Acme')",
            {"t": tenant, "id": lead_id, "e": email},
        ),
        ("UPDATE leads SET company = 'Globex', score = 7 WHERE id = :id", {"id": lead_id}),
        ("DELETE FROM leads WHERE id = :id", {"id": lead_id}),
    ):
        with TenantSession(app_engine, tenant_id=tenant, user_id=actor) as s, s.begin():
            s.execute(text(sql), params)
            txids.append(s.scalar(text("SELECT pg_current_xact_id()::text::bigint")))
            now = s.scalar(text("SELECT now()"))
    trail = _trail(engine, "leads", lead_id)
    assert [r["action"] for r in trail] == ["INSERT", "UPDATE", "DELETE"]
    assert [r["transaction_id"] for r in trail] == txids
    login = app_engine.url.username
    for r in trail:
        assert r["tenant_id"] == tenant
        assert r["row_key"] == {"id": str(lead_id)}
        assert r["actor_id"] == actor
        assert r["claimed_actor_id"] is None
        assert r["db_user"] == login
    assert trail[-1]["changed_at"] == now
    inserted = trail[0]
    assert inserted["old_values"] is None
    assert inserted["new_values"]["email"] == email
    assert inserted["new_values"]["company"] == "Acme"
    # The key and the tenant are recorded once, in their own columns.
    assert "id" not in inserted["new_values"]
    assert "tenant_id" not in inserted["new_values"]
    # An update records exactly the columns that changed, old and new.
    assert trail[1]["old_values"] == {"company": "Acme", "score": 0}
    assert trail[1]["new_values"] == {"company": "Globex", "score": 7}
    assert trail[2]["new_values"] is None
    assert trail[2]["old_values"]["company"] == "Globex"


def test_an_update_that_changes_nothing_records_nothing(
    engine: Engine, app_engine: Engine, two_tenants: tuple[uuid.UUID, uuid.UUID]
) -> None:
    tenant, _ = two_tenants
    lead_id = uuid.uuid4()
    with tenant_connection(app_engine, tenant, commit=True) as conn:
        conn.execute(
            text("INSERT INTO leads (tenant_id, id, email) VALUES (:t, :id, :e)"),
            {"t": tenant, "id": lead_id, "e": _email()},
        )
        conn.execute(text("UPDATE leads SET company = company WHERE id = :id"), {"id": lead_id})
    assert [r["action"] for r in _trail(engine, "leads", lead_id)] == ["INSERT"]


def test_orm_write_through_the_session_records_the_sessions_user(
    engine: Engine, app_engine: Engine, two_tenants: tuple[uuid.UUID, uuid.UUID]
) -> None:
    tenant, _ = two_tenants
    user = _user(engine, tenant)
    with TenantSession(app_engine, tenant_id=tenant, user_id=user) as session:
        lead = Lead(email=_email())
        session.add(lead)
        session.commit()
    trail = _trail(engine, "leads", lead.id)
    assert [(r["action"], r["actor_id"]) for r in trail] == [("INSERT", user)]


@pytest.mark.parametrize("claim", ["user_of_other_tenant", "no_such_user"])
def test_an_actor_that_is_no_user_of_the_tenant_is_recorded_as_unverified(
    engine: Engine, app_engine: Engine, two_tenants: tuple[uuid.UUID, uuid.UUID], claim: str
) -> None:
    # A request of tenant A names a user of tenant B (or nobody) as the actor, either
    # through the session or by SQL: the trail must not say that user did it.
    a, b = two_tenants
    claimed = _user(engine, b) if claim == "user_of_other_tenant" else uuid.uuid4()
    with TenantSession(app_engine, tenant_id=a, user_id=claimed) as session:
        lead = Lead(email=_email())
        session.add(lead)
        session.commit()
    honest = _user(engine, a)
    with TenantSession(app_engine, tenant_id=a, user_id=honest) as session, session.begin():
        # By SQL the claim breaks the seal (it covers the user too): the transaction then
        # sees no tenant at all, so the update finds nothing and nothing is recorded.
        session.execute(text(f"SET LOCAL app.current_user_id = '{claimed}'"))
        updated = session.execute(
            text("UPDATE leads SET company = 'Forged' WHERE id = :id"), {"id": lead.id}
        )
        assert updated.rowcount == 0  # type: ignore[attr-defined]
    trail = _trail(engine, "leads", lead.id)
    assert [(r["action"], r["actor_id"], r["claimed_actor_id"]) for r in trail] == [
        ("INSERT", None, claimed),
    ]


def test_partitioned_table_is_recorded_under_its_own_name_with_its_full_key(
    engine: Engine, app_engine: Engine, two_tenants: tuple[uuid.UUID, uuid.UUID]
) -> None:
    tenant, _ = two_tenants
    with engine.begin() as conn:
        form = new_form(conn, tenant)
    sid = uuid.uuid4()
    at = dt.datetime(2001, 2, 3, 4, 5, 6, tzinfo=dt.UTC)  # lands in the default partition
    with tenant_connection(app_engine, tenant, commit=True) as conn:
        conn.execute(
            text(
                "INSERT INTO form_submissions (tenant_id, id, created_at, form_id) "
                "VALUES (:t, :id, :at, :f)"
            ),
            {"t": tenant, "id": sid, "at": at, "f": form},
        )
    (row,) = _trail(engine, "form_submissions", sid)
    assert row["row_key"] == {"id": str(sid), "created_at": "2001-02-03T04:05:06+00:00"}
    assert row["new_values"]["form_id"] == str(form)


def test_generated_columns_are_not_recorded(
    engine: Engine, app_engine: Engine, two_tenants: tuple[uuid.UUID, uuid.UUID]
) -> None:
    tenant, _ = two_tenants
    page = uuid.uuid4()
    with tenant_connection(app_engine, tenant, commit=True) as conn:
        conn.execute(
            text("INSERT INTO pages (tenant_id, id, slug, title) VALUES (:t, :id, 'p', 'Old')"),
            {"t": tenant, "id": page},
        )
        conn.execute(text("UPDATE pages SET title = 'New' WHERE id = :id"), {"id": page})
    inserted, updated = _trail(engine, "pages", page)
    assert "search_vector" not in inserted["new_values"]
    # search_vector changed with the title, and still only the title is recorded.
    assert updated["new_values"] == {"title": "New"}


def test_tenants_read_only_their_own_audit_rows(
    engine: Engine, app_engine: Engine, two_tenants: tuple[uuid.UUID, uuid.UUID]
) -> None:
    a, b = two_tenants
    for tenant in (a, b):
        with tenant_connection(app_engine, tenant, commit=True) as conn:
            conn.execute(
                text("INSERT INTO leads (tenant_id, email) VALUES (:t, :e)"),
                {"t": tenant, "e": _email()},
            )
    with engine.connect() as conn:
        total = conn.scalar(
            text("SELECT count(*) FROM audit_log WHERE tenant_id IN (:a, :b)"), {"a": a, "b": b}
        )
        own = conn.scalar(text("SELECT count(*) FROM audit_log WHERE tenant_id = :a"), {"a": a})
    assert own, "positive control: tenant A has audit rows"
    assert total is not None
    assert total > own, "positive control: tenant B has audit rows too"
    with tenant_connection(app_engine, a) as conn:
        seen = conn.execute(text("SELECT DISTINCT tenant_id FROM audit_log")).scalars().all()
        assert seen == [a]
        assert conn.scalar(text("SELECT count(*) FROM audit_log")) == own
        assert (
            conn.scalar(text("SELECT count(*) FROM audit_log WHERE tenant_id = :b"), {"b": b}) == 0
        )
    with tenant_connection(app_engine, None) as conn:
        assert conn.scalar(text("SELECT count(*) FROM audit_log")) == 0


@pytest.mark.parametrize(
    ("name", "sql"),
    [
        (
            "insert",
            "INSERT INTO audit_log (tenant_id, table_name, row_key, action, db_user, "
            "transaction_id) VALUES (:t, 'leads', '{}', 'DELETE', 'x', 1)",
        ),
        ("update", "UPDATE audit_log SET action = 'INSERT' WHERE tenant_id = :t"),
        ("delete", "DELETE FROM audit_log WHERE tenant_id = :t"),
        ("truncate", "TRUNCATE audit_log"),
        ("call-trigger-function", "SELECT platform.audit_row_change()"),
        ("read-partition", "SELECT count(*) FROM audit_log_default WHERE tenant_id = :t"),
    ],
)
def test_platform_app_cannot_write_the_trail(
    app_engine: Engine, two_tenants: tuple[uuid.UUID, uuid.UUID], name: str, sql: str
) -> None:
    tenant, _ = two_tenants
    with (
        tenant_connection(app_engine, tenant) as conn,
        expect_db_error(INSUFFICIENT_PRIVILEGE, "permission denied"),
    ):
        conn.execute(text(sql), {"t": tenant})


def test_orm_refuses_to_write_audit_rows(
    app_engine: Engine, two_tenants: tuple[uuid.UUID, uuid.UUID]
) -> None:
    with TenantSession(app_engine, tenant_id=two_tenants[0]) as session:
        session.add(
            AuditLog(table_name="leads", row_key={}, action="DELETE", db_user="x", transaction_id=1)
        )
        with pytest.raises(AuditLogReadOnlyError):
            session.flush()


def test_audit_log_is_append_only_even_for_a_superuser(connection: Connection) -> None:
    tenant = new_tenant(connection)
    connection.execute(
        text("INSERT INTO leads (tenant_id, email) VALUES (:t, :e)"), {"t": tenant, "e": _email()}
    )
    assert (
        connection.scalar(
            text("SELECT count(*) FROM audit_log WHERE tenant_id = :t"), {"t": tenant}
        )
        == 1
    )
    for sql in (
        "UPDATE audit_log SET action = 'INSERT' WHERE tenant_id = :t",
        "DELETE FROM audit_log WHERE tenant_id = :t",
    ):
        with expect_db_error(INSUFFICIENT_PRIVILEGE, "append-only"), connection.begin_nested():
            connection.execute(text(sql), {"t": tenant})


def test_platform_wide_writes_without_a_tenant_are_recorded(
    engine: Engine, two_tenants: tuple[uuid.UUID, uuid.UUID]
) -> None:
    """Forced RLS on audit_log must not refuse the trail of an import or an admin fix."""
    tenant, _ = two_tenants
    lead_id = uuid.uuid4()
    with engine.begin() as conn:  # superuser, no tenant set
        conn.execute(
            text("INSERT INTO leads (tenant_id, id, email) VALUES (:t, :id, :e)"),
            {"t": tenant, "id": lead_id, "e": _email()},
        )
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL ROLE platform_admin"))  # BYPASSRLS, no tenant
        conn.execute(text("UPDATE leads SET score = 9 WHERE id = :id"), {"id": lead_id})
    trail = _trail(engine, "leads", lead_id)
    assert [(r["action"], r["actor_id"], r["tenant_id"]) for r in trail] == [
        ("INSERT", None, tenant),
        ("UPDATE", None, tenant),
    ]
    assert trail[0]["db_user"] == engine.url.username


def test_writes_with_row_security_off_are_recorded(
    engine: Engine, two_tenants: tuple[uuid.UUID, uuid.UUID]
) -> None:
    """A BYPASSRLS importer sets row_security = off to get errors instead of filtering;
    the trigger's insert into audit_log must not be caught by that."""
    tenant, _ = two_tenants
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL ROLE platform_admin"))
        conn.execute(text("SET LOCAL row_security = off"))
        lead_id = conn.scalar(
            text("INSERT INTO leads (tenant_id, email) VALUES (:t, :e) RETURNING id"),
            {"t": tenant, "e": _email()},
        )
    assert lead_id is not None
    assert [r["action"] for r in _trail(engine, "leads", lead_id)] == ["INSERT"]


def test_deleting_a_tenant_is_recorded_and_its_trail_survives(engine: Engine) -> None:
    with engine.begin() as conn:
        tenant = new_tenant(conn)
        lead_id = conn.scalar(
            text("INSERT INTO leads (tenant_id, email) VALUES (:t, :e) RETURNING id"),
            {"t": tenant, "e": _email()},
        )
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM tenants WHERE id = :t"), {"t": tenant})
    assert lead_id is not None
    assert [r["action"] for r in _trail(engine, "leads", lead_id)] == ["INSERT", "DELETE"]


def test_a_row_moved_to_another_tenant_is_in_both_trails(
    engine: Engine, two_tenants: tuple[uuid.UUID, uuid.UUID]
) -> None:
    a, b = two_tenants
    with engine.begin() as conn:
        lead_id = conn.scalar(
            text("INSERT INTO leads (tenant_id, email) VALUES (:t, :e) RETURNING id"),
            {"t": a, "e": _email()},
        )
        conn.execute(
            text("UPDATE leads SET tenant_id = :b WHERE id = :id"), {"b": b, "id": lead_id}
        )
    assert lead_id is not None
    moved = [r for r in _trail(engine, "leads", lead_id) if r["action"] == "UPDATE"]
    assert sorted(str(r["tenant_id"]) for r in moved) == sorted([str(a), str(b)])
    assert all(r["new_values"] == {"tenant_id": str(b)} for r in moved)


def test_audit_log_is_not_audited(engine: Engine) -> None:
    with engine.connect() as conn:
        assert (
            conn.scalar(
                text(
                    "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'audit_log'::regclass "
                    "AND tgfoid = 'platform.audit_row_change()'::regprocedure"
                )
            )
            == 0
        )
        assert (
            conn.scalar(text("SELECT count(*) FROM audit_log WHERE table_name = 'audit_log'")) == 0
        )


def test_audit_partitions_exist_ahead_with_rls_and_no_direct_access(engine: Engine) -> None:
    now = dt.datetime.now(dt.UTC)
    months = []
    for i in range(4):
        year, month = divmod(now.year * 12 + now.month - 1 + i, 12)
        months.append(f"audit_log_{year:04d}_{month + 1:02d}")
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity, "
                "pg_get_userbyid(c.relowner), "
                "(SELECT array_agg(polname ORDER BY polname) FROM pg_policy WHERE polrelid = c.oid), "
                "has_table_privilege('platform_app', c.oid, 'SELECT') "
                "FROM pg_partition_tree('audit_log') t JOIN pg_class c ON c.oid = t.relid "
                "WHERE t.relid <> 'audit_log'::regclass"
            )
        ).all()
    found = {r[0]: tuple(r[1:]) for r in rows}
    assert {"audit_log_default", *months} <= set(found)
    for name, props in found.items():
        assert props == (
            True,
            True,
            "platform_owner",
            ["audit_append", "tenant_isolation"],
            False,
        ), name


def test_ensure_monthly_partitions_moves_rows_out_of_the_default_partition(
    connection: Connection,
) -> None:
    tenant = new_tenant(connection)
    connection.execute(
        text(
            "INSERT INTO audit_log (tenant_id, changed_at, table_name, row_key, action, db_user, "
            "transaction_id) VALUES (:t, '2190-05-03T00:00:00Z', 'leads', '{}', 'INSERT', 'x', 1)"
        ),
        {"t": tenant},
    )
    created = connection.execute(
        text(
            "SELECT * FROM platform.ensure_monthly_partitions('audit_log'::regclass, 0, "
            "'2190-05-01')"
        )
    ).all()
    assert [tuple(r) for r in created] == [("audit_log_2190_05", "created", 1)]
    where = connection.scalar(
        text("SELECT tableoid::regclass::text FROM audit_log WHERE tenant_id = :t"), {"t": tenant}
    )
    assert where == "audit_log_2190_05"
    flags = connection.execute(
        text(
            "SELECT relforcerowsecurity, pg_get_userbyid(relowner) FROM pg_class "
            "WHERE relname = 'audit_log_2190_05'"
        )
    ).one()
    assert tuple(flags) == (True, "platform_owner")
    # The moved rows are as append-only as ever.
    with expect_db_error(INSUFFICIENT_PRIVILEGE, "append-only"), connection.begin_nested():
        connection.execute(text("DELETE FROM audit_log_2190_05"))
    with (
        pytest.raises(DBAPIError, match="not RANGE-partitioned by one timestamptz"),
        connection.begin_nested(),
    ):
        connection.execute(text("SELECT * FROM platform.ensure_monthly_partitions('leads')"))


def test_maintain_creates_audit_partitions_ahead(engine: Engine) -> None:
    steps = {s.name: s for s in maintain(engine)}
    step = steps["create audit_log partitions ahead"]
    assert step.skipped is None
    assert isinstance(step.result, list)
