"""Nothing a request does outlives it: attacks through a pooled connection.

The attacker is a request of tenant A whose SQL was injected (the app login runs whatever
it is tricked into): it runs its payload and commits, and the connection goes back to
the pool. The victim is a later request of tenant B (or of no tenant) on the same server
session - each test asserts the same `pg_backend_pid()` - through the package's own
`Database` pools, sync and async, with one connection per pool. The victim must behave
as on a fresh connection: only B's rows, unforged, its writes allowed, its settings the
pool's. Payloads that the database can refuse are refused, with a clear error.

The same attacks through PgBouncer in transaction mode are in tests/test_pgbouncer.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError

from platform_db.maintenance.health import doctor
from platform_db.maintenance.isolation import isolation_alerts
from platform_db.models import Lead
from platform_db.session.database import Database
from platform_db.session.engines import make_engine
from platform_db.session.errors import is_retryable
from platform_db.session.tenancy import (
    AutocommitTenantSessionError,
    TenantChangeError,
    TenantSession,
    tenant_context,
)
from tests.isolation_helpers import (
    INSUFFICIENT_PRIVILEGE,
    SeededTenant,
    expect_db_error,
    sqlstate,
)

PID = text("SELECT pg_backend_pid()")
LEAD_TENANTS = text("SELECT tenant_id FROM leads")
LEAD_EMAILS = text("SELECT email FROM leads")


def _env(url: URL) -> dict[str, str]:
    return {
        "DATABASE_URL": url.render_as_string(hide_password=False),
        "POSTGRES_POOL_MIN": "1",
        "POSTGRES_POOL_MAX": "1",
    }


@pytest.fixture
def database(app_login: URL) -> Iterator[Database]:
    """The package's pools on the app login, one connection each (attacker = victim's)."""
    db = Database.from_env(_env(app_login))
    try:
        yield db
    finally:
        db.dispose()


# --- the attacker and the victim -------------------------------------------------------


def _attack(db: Database, tenant: uuid.UUID, payload: list[str]) -> tuple[int, list[str]]:
    """Run each statement of `payload` as tenant A, committing what succeeds.

    Returns the backend pid and, per statement, "ok" or the SQLSTATE it was refused with.
    """
    outcomes: list[str] = []
    with db.session(tenant_id=tenant) as session:
        pid = int(session.scalar(PID) or 0)
        for statement in payload:
            session.execute(text("SAVEPOINT attack"))
            try:
                session.execute(text(statement))
            except DBAPIError as exc:
                outcomes.append(sqlstate(exc) or "error")
                session.execute(text("ROLLBACK TO SAVEPOINT attack"))
            else:
                outcomes.append("ok")
                session.execute(text("RELEASE SAVEPOINT attack"))
        session.commit()
    return pid, outcomes


async def _attack_async(
    db: Database, tenant: uuid.UUID, payload: list[str]
) -> tuple[int, list[str]]:
    outcomes: list[str] = []
    async with db.async_session(tenant_id=tenant) as session:
        pid = int(await session.scalar(PID) or 0)
        for statement in payload:
            await session.execute(text("SAVEPOINT attack"))
            try:
                await session.execute(text(statement))
            except DBAPIError as exc:
                outcomes.append(sqlstate(exc) or "error")
                await session.execute(text("ROLLBACK TO SAVEPOINT attack"))
            else:
                outcomes.append("ok")
                await session.execute(text("RELEASE SAVEPOINT attack"))
        await session.commit()
    return pid, outcomes


def _victim_sees_only_own(session: TenantSession, victim: SeededTenant) -> None:
    assert set(session.scalars(LEAD_TENANTS)) == {victim.tenant_id}
    assert sorted(session.scalars(LEAD_EMAILS)) == sorted(victim.lead_emails)
    assert session.scalar(text("SELECT platform.current_tenant_id()")) == victim.tenant_id


def _victim_round(db: Database, victim: SeededTenant, attacker_pid: int, runs: int = 8) -> None:
    """B's requests on the attacker's server session: own rows only, writes allowed."""
    for _ in range(runs):  # past psycopg's prepare threshold (5)
        with db.session(tenant_id=victim.tenant_id) as session:
            assert session.scalar(PID) == attacker_pid
            _victim_sees_only_own(session, victim)
    with db.session(tenant_id=victim.tenant_id) as session:
        lead = Lead(email=f"victim-{uuid.uuid4().hex[:8]}@example.com")
        session.add(lead)
        session.flush()
        assert session.scalar(text("SHOW transaction_read_only")) == "off"
        session.rollback()
    with db.session() as nobody:
        assert nobody.scalar(PID) == attacker_pid
        assert list(nobody.scalars(LEAD_TENANTS)) == []


async def _victim_round_async(
    db: Database, victim: SeededTenant, attacker_pid: int, runs: int = 8
) -> None:
    for _ in range(runs):
        async with db.async_session(tenant_id=victim.tenant_id) as session:
            assert await session.scalar(PID) == attacker_pid
            assert set(await session.scalars(LEAD_TENANTS)) == {victim.tenant_id}
            assert sorted(await session.scalars(LEAD_EMAILS)) == sorted(victim.lead_emails)
    async with db.async_session(tenant_id=victim.tenant_id) as session:
        session.add(Lead(email=f"victim-{uuid.uuid4().hex[:8]}@example.com"))
        await session.flush()
        assert await session.scalar(text("SHOW transaction_read_only")) == "off"
        await session.rollback()
    async with db.async_session() as nobody:
        assert await nobody.scalar(PID) == attacker_pid
        assert list(await nobody.scalars(LEAD_TENANTS)) == []


# --- 1. temporary objects --------------------------------------------------------------

TEMP_PAYLOAD = [
    "CREATE TEMP VIEW users AS SELECT u.* FROM public.users u",
    "CREATE TEMP VIEW leads AS SELECT l.* FROM public.leads l",
    "CREATE TEMP TABLE loot (v jsonb)",
    "CREATE FUNCTION pg_temp.spy(t text, r jsonb) RETURNS boolean LANGUAGE sql AS 'SELECT true'",
    "CREATE DOMAIN pg_temp.uuid AS text",
]


def test_temporary_objects_are_refused_sync(database: Database, a: SeededTenant) -> None:
    _pid, outcomes = _attack(database, a.tenant_id, TEMP_PAYLOAD)
    assert outcomes == [INSUFFICIENT_PRIVILEGE] * len(TEMP_PAYLOAD)


async def test_temporary_objects_are_refused_async(
    database: Database, a: SeededTenant, b: SeededTenant
) -> None:
    pid, outcomes = await _attack_async(database, a.tenant_id, TEMP_PAYLOAD)
    assert outcomes == [INSUFFICIENT_PRIVILEGE] * len(TEMP_PAYLOAD)
    await _victim_round_async(database, b, pid)


def test_temporary_tables_refused_with_a_clear_message(app_engine: Engine) -> None:
    with (
        TenantSession(app_engine) as session,
        expect_db_error(INSUFFICIENT_PRIVILEGE, "permission denied to create temporary"),
    ):
        session.execute(text("CREATE TEMP TABLE t (x int)"))


# --- 2./3. session settings ------------------------------------------------------------


def _settings_payload(a: SeededTenant) -> list[str]:
    # Values the attacker's own remaining statements survive on a loaded machine, and that
    # differ from the pool's: any of them on the victim's side is a carry-over.
    return [
        "SET SESSION statement_timeout = '250ms'",
        "SET SESSION lock_timeout = 1",
        "SET SESSION idle_in_transaction_session_timeout = '2s'",
        "SET SESSION default_transaction_read_only = on",
        "SET SESSION default_transaction_isolation = 'serializable'",
        "SET SESSION search_path = pg_catalog",
        "SET SESSION work_mem = '64kB'",
        "SET SESSION enable_indexscan = off",
        "SET SESSION TIME ZONE 'Pacific/Kiritimati'",
        f"SET SESSION app.current_tenant_id = '{a.tenant_id}'",
        f"SET SESSION app.current_user_id = '{uuid.uuid4()}'",
    ]


def _pool_settings(session: TenantSession) -> dict[str, Any]:
    return {
        name: session.scalar(text(f"SHOW {name}"))
        for name in (
            "statement_timeout",
            "lock_timeout",
            "idle_in_transaction_session_timeout",
            "default_transaction_read_only",
            "transaction_isolation",
            "search_path",
            "enable_indexscan",
            "TimeZone",
        )
    }


def test_session_settings_do_not_reach_the_next_request_sync(
    database: Database, a: SeededTenant, b: SeededTenant
) -> None:
    with database.session(tenant_id=b.tenant_id) as fresh:
        before = _pool_settings(fresh)
    pid, outcomes = _attack(database, a.tenant_id, _settings_payload(a))
    assert outcomes == ["ok"] * len(outcomes)  # a role may SET its own session
    _victim_round(database, b, pid)
    with database.session(tenant_id=b.tenant_id) as session:
        assert session.scalar(PID) == pid
        assert _pool_settings(session) == before
        assert before["statement_timeout"] == "30s"
        assert before["transaction_isolation"] == "read committed"


async def test_session_settings_do_not_reach_the_next_request_async(
    database: Database, a: SeededTenant, b: SeededTenant
) -> None:
    pid, outcomes = await _attack_async(database, a.tenant_id, _settings_payload(a))
    assert outcomes == ["ok"] * len(outcomes)
    await _victim_round_async(database, b, pid)
    async with database.async_session(tenant_id=b.tenant_id) as session:
        assert await session.scalar(text("SHOW statement_timeout")) == "30s"
        assert await session.scalar(text("SHOW transaction_isolation")) == "read committed"
        assert await session.scalar(text("SHOW search_path")) == '"$user", public'


@pytest.fixture
def role_defaults_reset(engine: Engine, app_login: URL) -> Iterator[None]:
    yield
    with engine.begin() as conn:
        conn.execute(text(f'ALTER ROLE "{app_login.username}" RESET ALL'))


@pytest.mark.usefixtures("role_defaults_reset")
async def test_role_defaults_the_login_sets_itself_do_not_weaken_new_connections(
    app_login: URL, a: SeededTenant, b: SeededTenant
) -> None:
    db = Database.from_env(_env(app_login))
    try:
        _pid, outcomes = _attack(
            db,
            a.tenant_id,
            [
                f'ALTER ROLE "{app_login.username}" SET default_transaction_read_only = on',
                f'ALTER ROLE "{app_login.username}" SET statement_timeout = 1',
                f'ALTER ROLE "{app_login.username}" SET lock_timeout = 1',
            ],
        )
        assert outcomes == ["ok"] * 3  # PostgreSQL lets any role set its own defaults
    finally:
        db.dispose()
    fresh = Database.from_env(_env(app_login))  # new connections: the role defaults apply
    try:
        with fresh.session(tenant_id=b.tenant_id) as session:
            _victim_sees_only_own(session, b)
            assert session.scalar(text("SHOW statement_timeout")) == "30s"
            session.add(Lead(email=f"victim-{uuid.uuid4().hex[:8]}@example.com"))
            session.flush()
            session.rollback()
        async with fresh.async_session(tenant_id=b.tenant_id) as s:
            assert await s.scalar(text("SHOW statement_timeout")) == "30s"
            assert await s.scalar(text("SHOW transaction_read_only")) == "off"
    finally:
        fresh.dispose()


# --- prepared statements ---------------------------------------------------------------


def _hijack_payload(a: SeededTenant) -> list[str]:
    # Redefine every name the drivers used to give their statements, with statements
    # that answer with A's tenant or capture their parameters; and try to read the names.
    names = [f"_pg3_{i}" for i in range(12)] + [f"__asyncpg_stmt_{i}__" for i in range(1, 24)]
    payload = ["SELECT name, statement FROM pg_prepared_statements"]
    payload += [f"PREPARE {n} AS SELECT '{a.tenant_id}'::uuid AS tenant_id" for n in names]
    return payload


def test_prepared_statements_cannot_be_hijacked_sync(
    database: Database, a: SeededTenant, b: SeededTenant
) -> None:
    _victim_round(database, b, _attack(database, b.tenant_id, [])[0])  # warm: statements exist
    pid, outcomes = _attack(database, a.tenant_id, _hijack_payload(a))
    assert outcomes[0] == INSUFFICIENT_PRIVILEGE  # the names cannot be listed
    assert set(outcomes[1:]) == {"ok"}  # no name a driver uses is taken
    _victim_round(database, b, pid)


async def test_prepared_statements_cannot_be_hijacked_async(
    database: Database, a: SeededTenant, b: SeededTenant
) -> None:
    pid, _ = await _attack_async(database, b.tenant_id, [])
    await _victim_round_async(database, b, pid)  # SQLAlchemy's cache holds statements now
    pid, outcomes = await _attack_async(database, a.tenant_id, _hijack_payload(a))
    assert outcomes[0] == INSUFFICIENT_PRIVILEGE
    assert set(outcomes[1:]) == {"ok"}
    await _victim_round_async(database, b, pid)


async def test_deallocating_every_statement_costs_one_retryable_failure_at_most(
    database: Database, a: SeededTenant, b: SeededTenant
) -> None:
    pid, _ = await _attack_async(database, b.tenant_id, [])
    await _victim_round_async(database, b, pid, runs=2)
    _, outcomes = await _attack_async(database, a.tenant_id, ["DEALLOCATE ALL"])
    assert outcomes == ["ok"]  # no privilege guards DEALLOCATE
    # The victim's cached statements are gone: its next request fails, retryably, and
    # the connection is replaced; never does it run anything but its own statements.
    failures: list[DBAPIError] = []
    for _ in range(3):
        try:
            async with database.async_session(tenant_id=b.tenant_id) as session:
                assert set(await session.scalars(LEAD_TENANTS)) == {b.tenant_id}
        except DBAPIError as exc:
            failures.append(exc)
    assert len(failures) <= 1
    assert all(is_retryable(f) and f.connection_invalidated for f in failures), failures
    async with database.async_session(tenant_id=b.tenant_id) as session:
        assert await session.scalar(PID) != pid or not failures


def test_nothing_is_prepared_under_a_name_a_request_could_know(
    database_url: URL, a: SeededTenant
) -> None:
    # The superuser may list its own session's statements: run the package's engines on
    # it (tenant sessions allowed to bypass RLS) and look at what they left prepared.
    sync_db = Database.from_env(_env(database_url), allow_rls_bypass=True)
    try:
        for _ in range(8):
            with sync_db.session(tenant_id=a.tenant_id) as session:
                session.scalars(LEAD_TENANTS).all()
        with sync_db.session(tenant_id=a.tenant_id) as session:
            # psycopg never prepares; the hook is a simple-query message.
            assert session.scalars(text("SELECT name FROM pg_prepared_statements")).all() == []

        async def async_names() -> list[str]:
            for _ in range(8):
                async with sync_db.async_session(tenant_id=a.tenant_id) as session:
                    await session.scalars(LEAD_TENANTS)
            async with sync_db.async_session(tenant_id=a.tenant_id) as session:
                rows = await session.execute(
                    text("SELECT name, statement FROM pg_prepared_statements")
                )
                found = rows.all()
            assert all("current_tenant_id" not in statement for _, statement in found)
            return [name for name, _ in found]

        names = asyncio.run(async_names())
        assert names
        assert all(n.startswith("__pdb_") and len(n) == len("__pdb___") + 32 for n in names)
    finally:
        sync_db.dispose()


# --- 4./5. AUTOCOMMIT and Session.connection() -----------------------------------------


def test_autocommit_is_refused_on_a_tenant_session(
    database: Database, a: SeededTenant, b: SeededTenant
) -> None:
    _attack(database, a.tenant_id, [f"SET SESSION app.current_tenant_id = '{a.tenant_id}'"])
    with database.session(tenant_id=b.tenant_id) as session:
        with pytest.raises(AutocommitTenantSessionError, match="AUTOCOMMIT"):
            session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        with pytest.raises(AutocommitTenantSessionError):
            session.execute(LEAD_TENANTS)  # the refused transaction stays refused
        session.rollback()
        assert set(session.scalars(LEAD_TENANTS)) == {b.tenant_id}


async def test_autocommit_is_refused_on_an_async_tenant_session(
    database: Database, b: SeededTenant
) -> None:
    async with database.async_session(tenant_id=b.tenant_id) as session:
        with pytest.raises(AutocommitTenantSessionError):
            await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})


def test_an_autocommit_connection_of_the_pool_starts_from_a_reset_session(
    database: Database, a: SeededTenant
) -> None:
    # Not a tenant session, so allowed; whatever the last request set is gone.
    pid, _ = _attack(
        database, a.tenant_id, [f"SET SESSION app.current_tenant_id = '{a.tenant_id}'"]
    )
    engine = database.engine()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        assert conn.scalar(PID) == pid
        assert conn.execute(LEAD_TENANTS).all() == []


def test_session_connection_is_under_the_tenant_checks(
    database: Database, a: SeededTenant, b: SeededTenant
) -> None:
    with database.session() as session:
        with tenant_context(a.tenant_id):
            assert set(session.scalars(LEAD_TENANTS)) == {a.tenant_id}
        with tenant_context(b.tenant_id):
            with pytest.raises(TenantChangeError):
                session.connection()
            with pytest.raises(TenantChangeError):
                session.execute(LEAD_TENANTS)
        session.rollback()
        with tenant_context(b.tenant_id):
            assert set(session.connection().execute(LEAD_TENANTS).scalars()) == {b.tenant_id}


async def test_async_session_connection_is_under_the_tenant_checks(
    database: Database, a: SeededTenant, b: SeededTenant
) -> None:
    async with database.async_session() as session:
        with tenant_context(a.tenant_id):
            assert set(await session.scalars(LEAD_TENANTS)) == {a.tenant_id}
        with tenant_context(b.tenant_id), pytest.raises(TenantChangeError):
            await session.connection()


# --- 6. channels between sessions ------------------------------------------------------

CHANNEL_PAYLOAD = [
    "SELECT lo_from_bytea(0, 'secret'::bytea)",
    "SELECT lo_create(0)",
    "SELECT lo_get(1)",
    "SELECT pg_notify('tenant_events', 'hello')",
    "SELECT pg_advisory_lock(1)",
    "SELECT pg_try_advisory_xact_lock(1)",
    "SELECT pg_advisory_xact_lock(hashtext('platform.refresh_performance_views'))",
    "SELECT pg_advisory_unlock_all()",
    "SELECT pg_cancel_backend(pg_backend_pid())",
    "SELECT pg_terminate_backend(pg_backend_pid())",
    "SELECT query FROM pg_stat_activity",
    "SELECT pg_stat_get_backend_activity(1)",
    "SELECT * FROM pg_stat_get_activity(NULL)",
    "SELECT set_config('app.current_tenant_id', '00000000-0000-0000-0000-000000000000', true)",
]


def test_channels_between_sessions_are_refused(database: Database, a: SeededTenant) -> None:
    _pid, outcomes = _attack(database, a.tenant_id, CHANNEL_PAYLOAD)
    refused = dict(zip(CHANNEL_PAYLOAD, outcomes, strict=True))
    assert refused == dict.fromkeys(CHANNEL_PAYLOAD, INSUFFICIENT_PRIVILEGE)


def test_refusals_name_the_function(app_engine: Engine) -> None:
    with (
        TenantSession(app_engine) as session,
        expect_db_error(INSUFFICIENT_PRIVILEGE, "permission denied for function lo_get"),
    ):
        session.execute(text("SELECT lo_get(1)"))


def test_the_owners_functions_still_work(engine: Engine) -> None:
    """Maintenance runs as the owner/admin: the revoked functions stay theirs."""
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL ROLE platform_admin"))
        assert conn.scalar(text("SELECT pg_try_advisory_xact_lock(42)")) is True
        assert conn.scalar(text("SELECT count(*) >= 1 FROM pg_stat_activity")) is True
        conn.execute(text("SELECT set_config('lock_timeout', '1s', true)"))


# --- 8. denial of service --------------------------------------------------------------


@contextlib.contextmanager
def _holding(engine: Engine, sql: str) -> Iterator[Connection]:
    with engine.connect() as conn:
        conn.execute(text(sql))
        try:
            yield conn
        finally:
            conn.rollback()


def test_a_maintenance_function_reports_a_held_lock_instead_of_hanging(engine: Engine) -> None:
    with (
        _holding(
            engine, "SELECT pg_advisory_xact_lock(hashtext('platform.refresh_performance_views'))"
        ),
        engine.connect() as conn,
        expect_db_error("55P03", "another session has held its lock"),
    ):
        conn.execute(text("SELECT * FROM platform.refresh_performance_views()"))


def test_a_table_lock_held_by_one_request_bounds_the_others_wait(
    app_login: URL, engine: Engine, b: SeededTenant
) -> None:
    # LOCK TABLE needs only UPDATE (PostgreSQL ties them): it cannot be revoked without
    # revoking writes. The pool's lock_timeout bounds the victims' wait instead, and the
    # failure is retryable.
    victim = make_engine(app_login, pool_size=1, lock_timeout_ms=300)
    try:
        with (
            _holding(engine, "LOCK TABLE leads IN ACCESS EXCLUSIVE MODE"),
            TenantSession(victim, tenant_id=b.tenant_id) as session,
        ):
            with pytest.raises(DBAPIError) as caught:
                session.execute(LEAD_TENANTS).all()
            assert sqlstate(caught.value) == "55P03"
            assert is_retryable(caught.value)
    finally:
        victim.dispose()


# --- the guard's own cost: none of this needs a round trip -----------------------------


async def test_the_prologue_travels_with_begin(database: Database, b: SeededTenant) -> None:
    sent: list[str] = []

    def log(record: Any) -> None:
        sent.append(record.query)

    async with database.async_session(tenant_id=b.tenant_id) as session:
        raw = await (await session.connection()).get_raw_connection()
        driver: Any = raw.driver_connection
        driver.add_query_logger(log)
        await session.commit()
    try:
        async with database.async_session(tenant_id=b.tenant_id) as second:
            assert set(await second.scalars(LEAD_TENANTS)) == {b.tenant_id}
            await second.commit()
    finally:
        driver.remove_query_logger(log)
    begins = [q for q in sent if q.startswith("BEGIN")]
    assert begins, sent
    assert (
        "SET TRANSACTION READ WRITE, NOT DEFERRABLE; RESET ALL; RESET ROLE; CLOSE ALL; "
        "SELECT platform.set_tenant(" in begins[-1]
    )


# --- what doctor says ------------------------------------------------------------------


def test_doctor_reports_what_stays_open_and_role_defaults_of_app_logins(
    engine: Engine, app_login: URL
) -> None:
    with engine.connect() as conn:
        assert [a for a in isolation_alerts(conn)] == []
    with engine.begin() as conn:
        conn.execute(text("GRANT EXECUTE ON FUNCTION pg_catalog.lo_get(oid) TO PUBLIC"))
        conn.execute(text(f"ALTER ROLE \"{app_login.username}\" SET work_mem = '64kB'"))
    try:
        with engine.connect() as conn:
            alerts = {(a["metric"], a["subject"]): a for a in isolation_alerts(conn)}
            assert set(alerts) == {
                ("open_to_public", "large_objects"),
                ("app_login_role_settings", app_login.username),
            }
            assert "lo_get(oid)" in alerts["open_to_public", "large_objects"]["detail"]
            report = doctor(conn)
            assert ("open_to_public", "large_objects") in {
                (a["metric"], a["subject"]) for a in report.alerts
            }
    finally:
        with engine.begin() as conn:
            conn.execute(text("REVOKE EXECUTE ON FUNCTION pg_catalog.lo_get(oid) FROM PUBLIC"))
            conn.execute(text(f'ALTER ROLE "{app_login.username}" RESET ALL'))


@pytest.mark.parametrize("stream", [False, True], ids=["buffered", "server_side_cursor"])
def test_a_plain_connection_of_the_pool_starts_from_a_reset_session(
    database: Database, a: SeededTenant, stream: bool
) -> None:
    # Not a TenantSession: no tenant hook, but the engine's prologue still runs first.
    pid, _ = _attack(
        database, a.tenant_id, [f"SET SESSION app.current_tenant_id = '{a.tenant_id}'"]
    )
    with database.engine().connect() as conn:
        assert conn.scalar(PID) == pid
        result = conn.execute(LEAD_TENANTS, execution_options={"stream_results": stream})
        assert result.all() == []
        assert conn.scalar(text("SHOW transaction_read_only")) == "off"


async def test_a_plain_async_connection_of_the_pool_starts_from_a_reset_session(
    database: Database, a: SeededTenant
) -> None:
    pid, _ = await _attack_async(
        database, a.tenant_id, [f"SET SESSION app.current_tenant_id = '{a.tenant_id}'"]
    )
    async with database.async_engine().connect() as conn:
        assert await conn.scalar(PID) == pid
        assert (await conn.execute(LEAD_TENANTS)).all() == []
