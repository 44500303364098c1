"""A tenant session on a login that row-level security does not filter is refused.

Superusers and BYPASSRLS roles see every tenant's rows whatever `app.current_tenant_id`
says: a seeding script that opened `db.session(tenant_id=beta)` on the superuser URL
saw and wrote every tenant's rows without a warning (issue 13, point 5). The hook now
refuses such a session at its first transaction, before the caller's statements run,
unless the caller opts in with `allow_rls_bypass=True`. Whether the login bypasses RLS
is asked once per connection, never once per transaction.
"""

from __future__ import annotations

import contextlib
import secrets
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from platform_db.ddl.entities import ident
from platform_db.ddl.security import APP_ROLE, OWNER_ROLE, scram_sha_256
from platform_db.session.database import Database
from platform_db.session.engines import make_async_engine, make_engine
from platform_db.session.rls_bypass import BYPASS_SQL
from platform_db.session.settings import ASYNC_DRIVER, SYNC_DRIVER, with_driver
from platform_db.session.tenancy import (
    RowLevelSecurityBypassError,
    TenantError,
    TenantSession,
    tenant_async_sessionmaker,
    tenant_context,
    tenant_sessionmaker,
)
from tests.isolation_helpers import SeededTenant

TENANT_SQL = text("SELECT current_setting('app.current_tenant_id', true)")
CALLER_SQL = "SELECT DISTINCT tenant_id FROM leads /* the caller's */"
LEAD_TENANTS = text(CALLER_SQL)


@contextlib.contextmanager
def sent_statements(engine: Engine) -> Iterator[list[str]]:
    """Every statement SQLAlchemy sends through `engine` inside the block."""
    seen: list[str] = []

    def record(*args: Any) -> None:
        seen.append(str(args[2]))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


@contextlib.contextmanager
def login(engine: Engine, url: URL, attributes: str) -> Iterator[URL]:
    """A throw-away LOGIN role (`attributes`: the rest of CREATE ROLE), dropped afterwards."""
    name = ident(f"pdb_test_bypass_{secrets.token_hex(4)}")
    password = secrets.token_urlsafe(16)
    with engine.begin() as conn:
        # Generated name and password; exec_driver_sql as text() would parse the verifier.
        conn.exec_driver_sql(
            f"CREATE ROLE {name} LOGIN PASSWORD '{scram_sha_256(password)}' {attributes}"
        )
    try:
        yield url.set(username=name, password=password)
    finally:
        with engine.begin() as conn:
            conn.execute(text(f"DROP ROLE IF EXISTS {name}"))


def _refusal(error: pytest.ExceptionInfo[RowLevelSecurityBypassError], login: str) -> str:
    message = str(error.value)
    assert "\n" not in message
    assert f"login '{login}'" in message
    assert "platform_app" in message
    assert "allow_rls_bypass=True" in message
    return message


# ---------------------------------------------------------------------------------------
# Refused: superuser, BYPASSRLS; not refused: platform_app, the owner (FORCE RLS)
# ---------------------------------------------------------------------------------------


def test_tenant_session_on_the_superuser_is_refused(
    engine: Engine, database_url: URL, a: SeededTenant, b: SeededTenant
) -> None:
    with (
        sent_statements(engine) as sent,
        TenantSession(engine, tenant_id=b.tenant_id) as session,
    ):
        # Without the check the query runs and returns the leads of both a and b.
        with pytest.raises(RowLevelSecurityBypassError) as error:
            session.scalars(LEAD_TENANTS)
        message = _refusal(error, str(database_url.username))
        assert "(SUPERUSER" in message
        assert str(b.tenant_id) in message
        assert isinstance(error.value, TenantError)
        # Nor does a second try in the same transaction run unfiltered.
        with pytest.raises(RowLevelSecurityBypassError):
            session.scalars(LEAD_TENANTS)
        session.rollback()
    assert not any(CALLER_SQL in s for s in sent), sent
    # The engine's connections were asked when they opened, not in the transaction.
    assert not any(BYPASS_SQL in s for s in sent), sent


def test_ambient_tenant_on_the_superuser_is_refused(engine: Engine, a: SeededTenant) -> None:
    with (
        tenant_context(a.tenant_id),
        TenantSession(engine) as session,
        pytest.raises(RowLevelSecurityBypassError),
    ):
        session.scalars(LEAD_TENANTS)


def test_sessions_without_a_tenant_work_on_any_login(
    engine: Engine, a: SeededTenant, b: SeededTenant
) -> None:
    with TenantSession(engine) as session, session.begin():
        assert session.scalar(TENANT_SQL) == ""
        assert {a.tenant_id, b.tenant_id} <= set(session.scalars(LEAD_TENANTS))


def test_opting_in_runs_the_session_unfiltered(
    engine: Engine, a: SeededTenant, b: SeededTenant
) -> None:
    sessions: list[Callable[[], TenantSession]] = [
        lambda: TenantSession(engine, tenant_id=b.tenant_id, allow_rls_bypass=True),
        lambda: tenant_sessionmaker(engine, allow_rls_bypass=True)(tenant_id=b.tenant_id),
        lambda: tenant_sessionmaker(engine)(tenant_id=b.tenant_id, allow_rls_bypass=True),
    ]
    for make in sessions:
        with make() as session, session.begin():
            assert session.scalar(TENANT_SQL) == str(b.tenant_id)
            # What the opt-in means: the tenant is set, but nothing filters the rows.
            assert {a.tenant_id, b.tenant_id} <= set(session.scalars(LEAD_TENANTS))


def test_a_bypassrls_login_is_refused(engine: Engine, database_url: URL, a: SeededTenant) -> None:
    with login(engine, database_url, f"BYPASSRLS IN ROLE {APP_ROLE}") as url:
        eng = make_engine(url, pool_size=1)
        try:
            with TenantSession(eng, tenant_id=a.tenant_id) as session:
                with pytest.raises(RowLevelSecurityBypassError) as error:
                    session.scalars(LEAD_TENANTS)
                assert "(BYPASSRLS)" in _refusal(error, str(url.username))
        finally:
            eng.dispose()


def test_an_owner_login_is_filtered_and_not_refused(
    engine: Engine, database_url: URL, a: SeededTenant
) -> None:
    # Every table is FORCE ROW LEVEL SECURITY: owning it does not get around the policy.
    with login(engine, database_url, f"IN ROLE {OWNER_ROLE}") as url:
        eng = make_engine(url, pool_size=1)
        try:
            with TenantSession(eng, tenant_id=a.tenant_id) as session, session.begin():
                assert set(session.scalars(LEAD_TENANTS)) == {a.tenant_id}
        finally:
            eng.dispose()


def test_the_app_login_is_asked_once_per_connection_never_per_transaction(
    app_login: URL, a: SeededTenant, b: SeededTenant
) -> None:
    eng = make_engine(app_login, pool_size=1)
    try:
        with sent_statements(eng) as sent:
            for owner in (a, b, a):
                with TenantSession(eng, tenant_id=owner.tenant_id) as session:
                    assert set(session.scalars(LEAD_TENANTS)) == {owner.tenant_id}
        assert not any(BYPASS_SQL in s for s in sent), sent
    finally:
        eng.dispose()


# ---------------------------------------------------------------------------------------
# Engines the package did not make: asked on the first tenant transaction, then cached
# ---------------------------------------------------------------------------------------


def test_a_foreign_engine_is_asked_once_on_the_first_tenant_transaction(
    database_url: URL, app_login: URL, a: SeededTenant, b: SeededTenant
) -> None:
    superuser = create_engine(with_driver(database_url, SYNC_DRIVER), pool_size=1)
    app = create_engine(with_driver(app_login, SYNC_DRIVER), pool_size=1)
    try:
        with (
            TenantSession(superuser, tenant_id=a.tenant_id) as session,
            pytest.raises(RowLevelSecurityBypassError),
        ):
            session.scalars(LEAD_TENANTS)
        with sent_statements(app) as sent:
            for owner in (a, b, a):
                with TenantSession(app, tenant_id=owner.tenant_id) as session:
                    assert set(session.scalars(LEAD_TENANTS)) == {owner.tenant_id}
            with TenantSession(app) as session:  # no tenant: not asked at all
                assert list(session.scalars(LEAD_TENANTS)) == []
        assert sum(BYPASS_SQL in s for s in sent) == 1, sent
    finally:
        superuser.dispose()
        app.dispose()


# ---------------------------------------------------------------------------------------
# asyncpg
# ---------------------------------------------------------------------------------------


@pytest.fixture
async def super_async_engine(database_url: URL) -> AsyncIterator[AsyncEngine]:
    eng = make_async_engine(database_url, application_name="pdb-test-bypass", pool_size=1)
    yield eng
    await eng.dispose()


async def test_async_tenant_session_on_the_superuser_is_refused(
    super_async_engine: AsyncEngine, database_url: URL, a: SeededTenant, b: SeededTenant
) -> None:
    factory = tenant_async_sessionmaker(super_async_engine)
    async with factory(tenant_id=a.tenant_id) as session:
        with pytest.raises(RowLevelSecurityBypassError) as error:
            await session.scalars(LEAD_TENANTS)
        _refusal(error, str(database_url.username))
        await session.rollback()
    async with factory() as session:  # no tenant
        assert {a.tenant_id, b.tenant_id} <= set(await session.scalars(LEAD_TENANTS))
    opted_in = tenant_async_sessionmaker(super_async_engine, allow_rls_bypass=True)
    async with opted_in(tenant_id=a.tenant_id) as session:
        assert await session.scalar(TENANT_SQL) == str(a.tenant_id)
        assert {a.tenant_id, b.tenant_id} <= set(await session.scalars(LEAD_TENANTS))


async def test_async_foreign_engine_is_checked_too(
    database_url: URL, app_login: URL, a: SeededTenant
) -> None:
    superuser = create_async_engine(with_driver(database_url, ASYNC_DRIVER), pool_size=1)
    app = create_async_engine(with_driver(app_login, ASYNC_DRIVER), pool_size=1)
    try:
        async with tenant_async_sessionmaker(superuser)(tenant_id=a.tenant_id) as session:
            with pytest.raises(RowLevelSecurityBypassError):
                await session.scalars(LEAD_TENANTS)
        with sent_statements(app.sync_engine) as sent:
            for _ in range(3):
                async with tenant_async_sessionmaker(app)(tenant_id=a.tenant_id) as session:
                    assert set(await session.scalars(LEAD_TENANTS)) == {a.tenant_id}
        assert sum(BYPASS_SQL in s for s in sent) == 1, sent
    finally:
        await superuser.dispose()
        await app.dispose()


# ---------------------------------------------------------------------------------------
# Database
# ---------------------------------------------------------------------------------------


async def test_database_refuses_unless_told(
    database_url: URL, a: SeededTenant, b: SeededTenant
) -> None:
    env = {"DATABASE_URL": database_url.render_as_string(hide_password=False)}
    tenant: uuid.UUID = a.tenant_id
    with Database.from_env(env) as db:
        with (
            db.session(tenant_id=tenant) as session,
            pytest.raises(RowLevelSecurityBypassError),
        ):
            session.scalars(LEAD_TENANTS)
        async with db.async_session(tenant_id=tenant) as asession:
            with pytest.raises(RowLevelSecurityBypassError):
                await asession.scalars(LEAD_TENANTS)
        with db.session() as session:  # platform-wide: fine
            assert {a.tenant_id, b.tenant_id} <= set(session.scalars(LEAD_TENANTS))
        await db.dispose_async()
    with Database.from_env(env, allow_rls_bypass=True) as db:
        with db.session(tenant_id=tenant) as session:
            assert {a.tenant_id, b.tenant_id} <= set(session.scalars(LEAD_TENANTS))
        async with db.async_session(tenant_id=tenant) as asession:
            assert await asession.scalar(TENANT_SQL) == str(tenant)
        await db.dispose_async()
