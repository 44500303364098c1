"""The tenant hook (platform_db.session.tenancy) against the real database, as the app login.

What the hook promises: ids are validated and canonicalised before any SQL, the tenant
(and user) are set at the start of every transaction and nowhere else, the tenant cannot
change inside a transaction, the session and the ambient context must agree, and new
tenant-owned objects get the session's tenant or are refused if they name another.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy import event as sa_event
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import Session

from platform_db.models import Form, FormSubmission, Lead, Page, User
from platform_db.session.asyncpg_connection import TenantConnection, quote_literal
from platform_db.session.engines import make_async_engine
from platform_db.session.settings import ASYNC_DRIVER, with_driver
from platform_db.session.tenancy import (
    InvalidTenantIdError,
    TenantChangeError,
    TenantError,
    TenantMismatchError,
    TenantSession,
    set_async_tenant,
    tenant_async_sessionmaker,
    tenant_context,
    tenant_sessionmaker,
)
from tests.isolation_helpers import SeededTenant

TENANT_SQL = text("SELECT current_setting('app.current_tenant_id', true)")
USER_SQL = text("SELECT current_setting('app.current_user_id', true)")
LEADS_SQL = text("SELECT tenant_id FROM leads")


@pytest.fixture
def statements(app_engine: Engine) -> Iterator[list[str]]:
    """Every SQL statement the app engine sends while the test runs."""
    seen: list[str] = []

    def record(*args: Any) -> None:
        seen.append(str(args[2]))

    sa_event.listen(app_engine, "before_cursor_execute", record)
    yield seen
    sa_event.remove(app_engine, "before_cursor_execute", record)


# ---------------------------------------------------------------------------------------
# Validation and canonical form
# ---------------------------------------------------------------------------------------

BAD_IDS: list[object] = [
    "not-a-uuid",
    123,
    "",
    "   ",
    b"\x00" * 16,
    "12345678-1234-1234-1234-1234567890",  # one digit short
    "' OR true --",
]


@pytest.mark.parametrize("bad", BAD_IDS, ids=repr)
def test_invalid_tenant_id_is_refused_before_any_sql(
    app_engine: Engine, app_async_engine: AsyncEngine, statements: list[str], bad: object
) -> None:
    valid = uuid.uuid4()
    with pytest.raises(InvalidTenantIdError):
        TenantSession(app_engine, tenant_id=bad)
    with pytest.raises(InvalidTenantIdError):
        tenant_sessionmaker(app_engine)(tenant_id=bad)
    with pytest.raises(InvalidTenantIdError):
        tenant_async_sessionmaker(app_async_engine)(tenant_id=bad)
    with pytest.raises(InvalidTenantIdError, match="user id"):
        TenantSession(app_engine, tenant_id=valid, user_id=bad)
    with pytest.raises(InvalidTenantIdError), tenant_context(bad):
        pass
    session = TenantSession(app_engine, tenant_id=valid)
    with pytest.raises(InvalidTenantIdError):
        session.set_tenant(bad)
    assert session.tenant_id == valid, "a refused set_tenant leaves the tenant as it was"
    assert not session.in_transaction()
    session.close()
    assert statements == []
    assert issubclass(InvalidTenantIdError, ValueError)


@pytest.mark.parametrize(
    "spelling",
    [
        lambda u: str(u).upper(),
        lambda u: "{" + str(u) + "}",
        lambda u: "  " + str(u).upper() + "\n",
        lambda u: u.hex,
        lambda u: u.urn,
        lambda u: u,
    ],
    ids=["upper", "braces", "padded", "hex", "urn", "uuid"],
)
def test_tenant_id_is_set_in_canonical_form(
    app_engine: Engine, a: SeededTenant, spelling: Any
) -> None:
    given = spelling(a.tenant_id)
    with TenantSession(app_engine, tenant_id=given) as session:
        assert session.scalar(TENANT_SQL) == str(a.tenant_id)
        assert session.scalar(text("SELECT platform.current_tenant_id()")) == a.tenant_id
        assert set(session.scalars(LEADS_SQL)) == {a.tenant_id}
    with tenant_context(given), TenantSession(app_engine) as session:
        assert session.scalar(TENANT_SQL) == str(a.tenant_id)


# ---------------------------------------------------------------------------------------
# The tenant is fixed for the length of a transaction
# ---------------------------------------------------------------------------------------


def test_set_tenant_inside_open_transaction_is_refused(
    app_engine: Engine, a: SeededTenant, b: SeededTenant
) -> None:
    with TenantSession(app_engine, tenant_id=a.tenant_id) as session:
        assert session.scalar(TENANT_SQL) == str(a.tenant_id)
        for other in (b.tenant_id, None):
            with pytest.raises(TenantChangeError):
                session.set_tenant(other)
        assert session.tenant_id == a.tenant_id
        assert session.scalar(TENANT_SQL) == str(a.tenant_id)
        session.commit()
        # Between transactions it is allowed, and the next transaction uses it.
        session.set_tenant(b.tenant_id)
        assert session.scalar(TENANT_SQL) == str(b.tenant_id)
        assert set(session.scalars(LEADS_SQL)) == {b.tenant_id}
        session.rollback()
        session.set_tenant(None)
        assert session.scalar(TENANT_SQL) == ""
        assert list(session.scalars(LEADS_SQL)) == []


def test_changing_tenant_context_mid_transaction_is_refused(
    app_engine: Engine, a: SeededTenant, b: SeededTenant
) -> None:
    with TenantSession(app_engine) as session:
        with tenant_context(a.tenant_id):
            assert session.scalar(TENANT_SQL) == str(a.tenant_id)
            with tenant_context(b.tenant_id), pytest.raises(TenantChangeError):
                session.execute(LEADS_SQL)
        # The context ended while the transaction is still open.
        with pytest.raises(TenantChangeError):
            session.execute(LEADS_SQL)
        session.rollback()
        assert session.scalar(TENANT_SQL) == ""

    # The same at flush time.
    with TenantSession(app_engine) as session:
        with tenant_context(a.tenant_id):
            session.execute(LEADS_SQL)
        with tenant_context(b.tenant_id):
            session.add(Lead(email="switch@x.example.com"))
            with pytest.raises(TenantChangeError):
                session.flush()
        session.rollback()


def test_session_tenant_conflicting_with_context_is_refused(
    app_engine: Engine, a: SeededTenant, b: SeededTenant
) -> None:
    with tenant_context(b.tenant_id):
        session = TenantSession(app_engine, tenant_id=a.tenant_id)
        with pytest.raises(TenantMismatchError):
            _ = session.tenant_id
        with pytest.raises(TenantMismatchError):
            session.execute(LEADS_SQL)
        session.close()
        # The same tenant twice is no conflict.
        with TenantSession(app_engine, tenant_id=str(b.tenant_id).upper()) as same:
            assert set(same.scalars(LEADS_SQL)) == {b.tenant_id}


def test_user_id_is_set_when_given_and_empty_otherwise(app_engine: Engine, a: SeededTenant) -> None:
    user = a.first("users")
    with TenantSession(app_engine, tenant_id=a.tenant_id, user_id=str(user).upper()) as s:
        assert s.scalar(USER_SQL) == str(user)
        assert s.scalar(text("SELECT platform.current_user_id()")) == user
    with TenantSession(app_engine, tenant_id=a.tenant_id) as s:
        assert s.scalar(USER_SQL) == ""
        assert s.scalar(text("SELECT platform.current_user_id()")) is None
    with tenant_context(a.tenant_id, user), TenantSession(app_engine) as s:
        assert s.scalar(USER_SQL) == str(user)
    with pytest.raises(TenantError, match="user_id needs a tenant_id"):
        TenantSession(app_engine, user_id=user)


def test_setting_is_gone_after_commit_on_the_same_connection(
    app_engine: Engine, a: SeededTenant
) -> None:
    with app_engine.connect() as conn:
        pid = conn.scalar(text("SELECT pg_backend_pid()"))
        conn.rollback()
        session = TenantSession(bind=conn, tenant_id=a.tenant_id, user_id=a.first("users"))
        assert session.scalar(TENANT_SQL) == str(a.tenant_id)
        assert set(session.scalars(LEADS_SQL)) == {a.tenant_id}
        session.commit()
        session.close()
        # A new transaction on the same server session, without the hook.
        assert conn.scalar(text("SELECT pg_backend_pid()")) == pid
        assert conn.scalar(TENANT_SQL) == ""
        assert conn.scalar(USER_SQL) == ""
        assert list(conn.scalars(LEADS_SQL)) == []


def test_hook_reapplies_the_tenant_in_every_transaction(
    app_engine: Engine, a: SeededTenant
) -> None:
    with TenantSession(app_engine, tenant_id=a.tenant_id) as session:
        for _ in range(3):
            assert session.scalar(TENANT_SQL) == str(a.tenant_id)
            session.commit()
        with session.begin():
            assert session.scalar(TENANT_SQL) == str(a.tenant_id)
            with session.begin_nested():
                assert session.scalar(TENANT_SQL) == str(a.tenant_id)


# ---------------------------------------------------------------------------------------
# New objects get the session's tenant, or are refused
# ---------------------------------------------------------------------------------------


def _new_objects(tenant: SeededTenant, tenant_id: uuid.UUID | None = None) -> list[Any]:
    kw: dict[str, Any] = {} if tenant_id is None else {"tenant_id": tenant_id}
    return [
        User(email="new-user@x.example.com", **kw),
        Page(slug="new-page", title="New", **kw),
        Form(name="New", slug="new-form", **kw),
        Lead(email="new-lead@x.example.com", **kw),
        FormSubmission(form_id=tenant.first("forms"), **kw),
    ]


def _assert_owned_by(session: Session, objs: list[Any], tenant_id: uuid.UUID) -> None:
    for obj in objs:
        assert obj.tenant_id == tenant_id
        table = type(obj).__tablename__
        stored = session.scalar(
            text(f"SELECT tenant_id FROM {table} WHERE id = :id"), {"id": obj.id}
        )
        assert stored == tenant_id, table


def test_new_objects_get_the_session_tenant(app_engine: Engine, a: SeededTenant) -> None:
    with TenantSession(app_engine, tenant_id=a.tenant_id) as session:
        objs = _new_objects(a)
        session.add_all(objs)
        session.flush()
        _assert_owned_by(session, objs, a.tenant_id)
        session.rollback()
    with tenant_context(a.tenant_id), TenantSession(app_engine) as session:
        objs = _new_objects(a)
        session.add_all(objs)
        session.flush()
        _assert_owned_by(session, objs, a.tenant_id)
        session.rollback()


def test_new_object_of_another_tenant_is_refused_before_sql(
    app_engine: Engine, a: SeededTenant, b: SeededTenant, statements: list[str]
) -> None:
    for obj in _new_objects(b, b.tenant_id):
        with TenantSession(app_engine, tenant_id=a.tenant_id) as session:
            session.add(obj)
            with pytest.raises(TenantMismatchError, match=str(b.tenant_id)):
                session.flush()
    assert not any(s.lstrip().upper().startswith("INSERT") for s in statements)
    # Naming the own tenant explicitly is fine.
    with TenantSession(app_engine, tenant_id=a.tenant_id) as session:
        objs = _new_objects(a, a.tenant_id)
        session.add_all(objs)
        session.flush()
        _assert_owned_by(session, objs, a.tenant_id)
        session.rollback()


def test_tenant_session_without_any_tenant_refuses_new_objects(app_engine: Engine) -> None:
    with TenantSession(app_engine) as session:
        session.add(Lead(email="orphan@x.example.com"))
        with pytest.raises(TenantError, match="without a tenant"):
            session.flush()


# ---------------------------------------------------------------------------------------
# Async sessions
# ---------------------------------------------------------------------------------------


async def test_async_session_gets_the_setting(
    app_async_engine: AsyncEngine, a: SeededTenant, b: SeededTenant
) -> None:
    factory = tenant_async_sessionmaker(app_async_engine)
    user = a.first("users")
    async with factory(tenant_id=str(a.tenant_id).upper(), user_id=user) as session:
        assert await session.scalar(TENANT_SQL) == str(a.tenant_id)
        assert await session.scalar(USER_SQL) == str(user)
        assert set(await session.scalars(LEADS_SQL)) == {a.tenant_id}
        assert len((await session.scalars(select(Lead))).all()) == a.count("leads")
        with pytest.raises(TenantChangeError):
            set_async_tenant(session, b.tenant_id)
        await session.commit()
        set_async_tenant(session, b.tenant_id)
        assert await session.scalar(TENANT_SQL) == str(b.tenant_id)
        assert await session.scalar(USER_SQL) == ""
        assert set(await session.scalars(LEADS_SQL)) == {b.tenant_id}
        await session.rollback()
        set_async_tenant(session, None)
        assert await session.scalar(TENANT_SQL) == ""
        assert list(await session.scalars(LEADS_SQL)) == []

    async with factory() as session:
        assert await session.scalar(TENANT_SQL) == ""
        session.add(Lead(tenant_id=a.tenant_id, email="async-orphan@x.example.com"))
        with pytest.raises(Exception, match="row-level security"):
            await session.flush()

    with pytest.raises(TypeError):
        set_async_tenant(AsyncSession(app_async_engine), a.tenant_id)


async def test_async_tenant_context_is_per_task(
    app_async_engine: AsyncEngine, a: SeededTenant, b: SeededTenant
) -> None:
    factory = tenant_async_sessionmaker(app_async_engine)

    async def work(i: int) -> tuple[int, set[uuid.UUID], str | None]:
        owner = (a, b, None)[i % 3]
        if owner is None:
            async with factory() as session:
                await asyncio.sleep(0)
                return i, set(await session.scalars(LEADS_SQL)), await session.scalar(TENANT_SQL)
        with tenant_context(owner.tenant_id):
            await asyncio.sleep(0)
            async with factory() as session:
                await asyncio.sleep(0)
                seen = set(await session.scalars(LEADS_SQL))
                await asyncio.sleep(0)
                return i, seen, await session.scalar(TENANT_SQL)

    results = await asyncio.gather(*(work(i) for i in range(30)))
    for i, seen, setting in results:
        owner = (a, b, None)[i % 3]
        if owner is None:
            assert (seen, setting) == (set(), "")
        else:
            assert (seen, setting) == ({owner.tenant_id}, str(owner.tenant_id))


# ---------------------------------------------------------------------------------------
# The setting travels with BEGIN (platform_db.session.asyncpg_connection), and never outlives its transaction
# ---------------------------------------------------------------------------------------


@pytest.fixture
async def one_connection_engine(app_login: URL) -> AsyncIterator[AsyncEngine]:
    """A pool of exactly one connection: every checkout gets the same server connection."""
    eng = make_async_engine(app_login, application_name="platform-db-tests-begin", pool_size=1)
    yield eng
    await eng.dispose()


async def _driver(session: AsyncSession) -> TenantConnection:
    conn = await session.connection()
    raw = await conn.get_raw_connection()
    driver = raw.driver_connection
    assert isinstance(driver, TenantConnection)
    return driver


async def test_async_setting_travels_in_the_begin_message(
    one_connection_engine: AsyncEngine, a: SeededTenant
) -> None:
    factory = tenant_async_sessionmaker(one_connection_engine)
    sent: list[str] = []
    async with factory(tenant_id=a.tenant_id) as session:
        driver = await _driver(session)
        assert driver.pending is not None  # nothing has been sent yet

        def log(record: Any) -> None:
            sent.append(record.query)

        driver.add_query_logger(log)
        try:
            assert set(await session.scalars(LEADS_SQL)) == {a.tenant_id}
            assert await session.scalar(TENANT_SQL) == str(a.tenant_id)
            await session.commit()
        finally:
            driver.remove_query_logger(log)
    # The simple-query messages (asyncpg logs those; the two prepared queries are not
    # logged): BEGIN carrying the setting, then COMMIT. No message of its own for it.
    assert len(sent) == 2, sent
    assert sent[0].startswith("BEGIN")
    assert "SELECT platform.set_tenant(" in sent[0]  # the sealed tenant (platform_db.session.seal)
    assert str(a.tenant_id) in sent[0]
    assert sent[1].startswith("COMMIT")


async def test_a_setting_no_begin_picked_up_is_dropped(
    one_connection_engine: AsyncEngine, a: SeededTenant
) -> None:
    factory = tenant_async_sessionmaker(one_connection_engine)
    # A transaction that runs no statement sends no BEGIN; its setting must not wait on
    # the connection for whoever uses it next.
    async with factory(tenant_id=a.tenant_id) as session:
        driver = await _driver(session)
        assert driver.pending is not None
        await session.commit()
        assert driver.pending is None
    # Outside any session: the pool drops it at check-in.
    async with one_connection_engine.connect() as conn:
        raw = await conn.get_raw_connection()
        assert raw.driver_connection is driver  # the same server connection
        driver.send_with_next_begin("SELECT set_config('app.current_tenant_id', 'x', true)")
    assert driver.pending is None
    # The next user of the connection, without a tenant, sees no tenant and no rows.
    async with one_connection_engine.connect() as conn:
        assert (await conn.execute(TENANT_SQL)).scalar() in ("", None)
        assert (await conn.execute(LEADS_SQL)).all() == []
    async with AsyncSession(one_connection_engine) as plain:
        assert list(await plain.scalars(LEADS_SQL)) == []


async def test_a_connection_already_in_a_transaction_gets_its_own_statement(
    one_connection_engine: AsyncEngine, a: SeededTenant
) -> None:
    async with one_connection_engine.connect() as conn:
        await conn.execute(text("SELECT 1"))  # BEGIN has been sent
        async with AsyncSession(
            bind=conn,
            sync_session_class=TenantSession,
            join_transaction_mode="create_savepoint",
            tenant_id=a.tenant_id,
        ) as session:
            assert await session.scalar(TENANT_SQL) == str(a.tenant_id)
            assert set(await session.scalars(LEADS_SQL)) == {a.tenant_id}
            driver = await _driver(session)
            assert driver.pending is None
            with pytest.raises(RuntimeError, match="already in a transaction"):
                driver.send_with_next_begin("SELECT 1")
        await conn.rollback()


async def test_async_engine_the_package_did_not_make(app_login: URL, a: SeededTenant) -> None:
    # A plain asyncpg connection (no TenantConnection) gets the setting as a statement of
    # its own. asyncpg's metaclass says isinstance(c, TenantConnection) for any connection.
    eng = create_async_engine(with_driver(app_login, ASYNC_DRIVER), pool_size=1)
    try:
        async with tenant_async_sessionmaker(eng)(tenant_id=a.tenant_id) as session:
            conn = await session.connection()
            raw = await conn.get_raw_connection()
            assert type(raw.driver_connection) is not TenantConnection
            assert await session.scalar(TENANT_SQL) == str(a.tenant_id)
            assert set(await session.scalars(LEADS_SQL)) == {a.tenant_id}
    finally:
        await eng.dispose()


def test_literals_are_quoted_and_nul_refused() -> None:
    with pytest.raises(ValueError, match="NUL"):
        quote_literal("a\x00b")
    assert quote_literal("it's") == "'it''s'"
