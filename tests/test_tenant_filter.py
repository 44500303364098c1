"""The tenant in the SQL: every ORM statement of a tenant session says `tenant_id = :tenant`
(platform_db.session.tenant_filter), so that Citus routes it to one shard. RLS still
enforces; these tests look at the statements sent and at what a session that RLS does
not filter (allow_rls_bypass) gets, where only the explicit filter restricts the rows."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, delete, event, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from platform_db.models import Form, FormSubmission, Lead, LeadStatus, Page, Tenant
from platform_db.session.query import find_many, find_many_async
from platform_db.session.search import search_pages
from platform_db.session.tenancy import TenantSession, tenant_async_sessionmaker, tenant_context
from platform_db.session.tenant_filter import SKIP_OPTION
from tests.isolation_helpers import SeededTenant


@pytest.fixture
def sent(engine: Engine) -> Iterator[list[tuple[str, Any]]]:
    statements: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, params: Any, *args: Any) -> None:
        statements.append((statement, params))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


def _filtered(statements: list[tuple[str, Any]], table: str, tenant: uuid.UUID) -> bool:
    """Whether a statement on `table` compares its tenant_id with a parameter = tenant."""
    for statement, params in statements:
        if f"{table}.tenant_id = %(" not in statement:
            continue
        name = statement.split(f"{table}.tenant_id = %(", 1)[1].split(")s", 1)[0]
        if params.get(name) == tenant:
            return True
    return False


def test_orm_statements_carry_the_tenant(
    engine: Engine, a: SeededTenant, sent: list[tuple[str, Any]]
) -> None:
    with TenantSession(engine, tenant_id=a.tenant_id, allow_rls_bypass=True) as session:
        find_many(session, Lead, filters={"status": LeadStatus.NEW}, limit=5)
        assert _filtered(sent, "leads", a.tenant_id)
        sent.clear()
        # A's pages hold "secret body": on Citus the pages are read back in a statement
        # of their own (platform_db.session.search), which must carry the tenant too.
        assert search_pages(session, "secret", published_only=False)
        assert _filtered(sent, "pages", a.tenant_id)
        sent.clear()
        session.execute(select(FormSubmission.id).join(Form, FormSubmission.form).limit(1))
        assert _filtered(sent, "form_submissions", a.tenant_id)
        assert _filtered(sent, "forms", a.tenant_id)
        sent.clear()
        session.execute(
            select(func.count()).select_from(Lead).where(Lead.form_id.in_(select(Form.id)))
        )
        assert _filtered(sent, "leads", a.tenant_id)
        assert _filtered(sent, "forms", a.tenant_id)
        sent.clear()
        session.execute(update(Lead).where(Lead.score > 1000).values(score=0))
        session.execute(delete(Page).where(Page.slug == "no-such-page"))
        assert _filtered(sent, "leads", a.tenant_id)
        assert _filtered(sent, "pages", a.tenant_id)
        session.rollback()


def test_the_filter_restricts_even_where_rls_does_not(
    engine: Engine, a: SeededTenant, b: SeededTenant
) -> None:
    # A superuser session RLS does not filter: only the explicit filter keeps B out.
    with TenantSession(engine, tenant_id=a.tenant_id, allow_rls_bypass=True) as session:
        tenants = set(session.scalars(select(Lead.tenant_id).distinct()))
        assert tenants == {a.tenant_id}
        assert len(find_many(session, Lead, limit=1000).items) == a.count("leads")
        # Hand-written SQL is sent as written, and this login sees everyone's rows.
        everyone = set(session.scalars(text("SELECT DISTINCT tenant_id FROM leads")))
        assert {a.tenant_id, b.tenant_id} <= everyone
        # The tenants table is not tenant-owned: no filter there.
        assert {a.tenant_id, b.tenant_id} <= set(session.scalars(select(Tenant.id)))
        session.rollback()


def test_ambient_tenant_and_opt_out(engine: Engine, a: SeededTenant, b: SeededTenant) -> None:
    with tenant_context(b.tenant_id), TenantSession(engine, allow_rls_bypass=True) as session:
        assert set(session.scalars(select(Lead.tenant_id).distinct())) == {b.tenant_id}
        unfiltered = session.scalars(
            select(Lead.tenant_id).distinct(), execution_options={SKIP_OPTION: False}
        )
        assert {a.tenant_id, b.tenant_id} <= set(unfiltered)
        session.rollback()


def test_a_session_without_tenant_gets_no_filter(
    engine: Engine, a: SeededTenant, b: SeededTenant, sent: list[tuple[str, Any]]
) -> None:
    with TenantSession(engine) as session:
        tenants = set(session.scalars(select(Lead.tenant_id).distinct()))
        session.rollback()
    assert {a.tenant_id, b.tenant_id} <= tenants
    assert not any("leads.tenant_id = %(" in s for s, _ in sent)


async def test_async_sessions_carry_the_tenant(
    app_async_engine: AsyncEngine, a: SeededTenant
) -> None:
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(app_async_engine.sync_engine, "before_cursor_execute", record)
    try:
        factory = tenant_async_sessionmaker(app_async_engine)
        async with factory(tenant_id=a.tenant_id) as session, session.begin():
            page = await find_many_async(session, Lead, limit=1000)
    finally:
        event.remove(app_async_engine.sync_engine, "before_cursor_execute", record)
    assert len(page.items) == a.count("leads")
    assert any("leads.tenant_id = $" in s for s in statements), statements
