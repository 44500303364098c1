"""Settings from the environment and the three named pools, against the real server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError

from platform_db.session.database import Database
from platform_db.session.pools import PoolExhaustedError
from platform_db.session.settings import ConfigurationError, Settings


def env_for(url: URL, **extra: str) -> dict[str, str]:
    return {"DATABASE_URL": url.render_as_string(hide_password=False), **extra}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "DATABASE_URL is not set"),
        ({"DATABASE_URL": "mysql://u:pw@h/db"}, "must be a postgresql:// URL"),
        ({"DATABASE_URL": "postgresql://u:hunter2@/db"}, "names no host"),
        ({"DATABASE_URL": "postgresql://u:hunter2@h"}, "names no database"),
        (
            {
                "DATABASE_URL": "postgresql://h/db",
                "POSTGRES_POOL_MIN": "9",
                "POSTGRES_POOL_MAX": "3",
            },
            "POSTGRES_POOL_MAX (3) is below POSTGRES_POOL_MIN (9)",
        ),
        (
            {"DATABASE_URL": "postgresql://h/db", "POSTGRES_STATEMENT_TIMEOUT": "30s"},
            "POSTGRES_STATEMENT_TIMEOUT must be a whole number, got '30s'",
        ),
        (
            {"DATABASE_URL": "postgresql://h/db", "POSTGRES_ANALYTICS_POOL_MAX": "0"},
            "POSTGRES_ANALYTICS_POOL_MAX must be between 1 and 1000",
        ),
        (
            {"DATABASE_URL": "postgresql://h/db", "POSTGRES_ANALYTICS_WORK_MEM": "lots"},
            "POSTGRES_ANALYTICS_WORK_MEM must look like 64MB",
        ),
        (
            {"DATABASE_URL": "postgresql://h/db", "POSTGRES_REPLICA_URL": "postgresql://r:pw2@/db"},
            "POSTGRES_REPLICA_URL names no host",
        ),
    ],
)
def test_bad_settings_are_clear_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env(env)
    assert message in str(info.value)
    for secret in ("hunter2", "pw2"):
        assert secret not in str(info.value)


def test_all_problems_are_reported_at_once() -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env({"POSTGRES_POOL_MIN": "x", "POSTGRES_BACKGROUND_LOCK_TIMEOUT": "-1"})
    lines = str(info.value).splitlines()
    assert len(lines) == 4  # the header and three problems


def test_defaults_and_replica() -> None:
    settings = Settings.from_env(
        {
            "DATABASE_URL": "postgresql://app:pw@primary/platform",
            "POSTGRES_REPLICA_URL": "postgresql://app:pw@replica/platform",
        }
    )
    assert (settings.main.min_size, settings.main.max_size) == (5, 20)
    assert settings.main.statement_timeout_ms == 30_000
    assert (settings.analytics.min_size, settings.analytics.max_size) == (2, 10)
    assert settings.analytics.read_only
    assert settings.analytics.url.host == "replica"
    assert (settings.background.min_size, settings.background.max_size) == (1, 5)
    assert settings.background.url.host == "primary"
    assert "pw" not in repr(settings)


def test_replica_settings() -> None:
    base = {"DATABASE_URL": "postgresql://app:pw@primary/platform"}
    defaults = Settings.from_env(base).replica
    assert (defaults.fallback, defaults.max_lag_ms) == (True, None)
    assert (defaults.check_interval_ms, defaults.read_your_writes_ms) == (1000, 2000)
    chosen = Settings.from_env(
        {
            **base,
            "POSTGRES_REPLICA_FALLBACK": "off",
            "POSTGRES_REPLICA_MAX_LAG_MS": "5000",
            "POSTGRES_REPLICA_CHECK_INTERVAL_MS": "250",
            "POSTGRES_REPLICA_READ_YOUR_WRITES_MS": "0",
        }
    ).replica
    assert (chosen.fallback, chosen.max_lag_ms) == (False, 5000)
    assert (chosen.check_interval_ms, chosen.read_your_writes_ms) == (250, 0)
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env(
            {
                **base,
                "POSTGRES_REPLICA_FALLBACK": "sometimes",
                "POSTGRES_REPLICA_MAX_LAG_MS": "-1",
                "POSTGRES_REPLICA_CHECK_INTERVAL_MS": "5",
            }
        )
    problems = str(info.value)
    assert "POSTGRES_REPLICA_FALLBACK must be on or off, got 'sometimes'" in problems
    assert "POSTGRES_REPLICA_MAX_LAG_MS must be between 0 and" in problems
    assert "POSTGRES_REPLICA_CHECK_INTERVAL_MS must be between 10 and" in problems


@pytest.fixture
def database(database_url: URL) -> Iterator[Database]:
    db = Database.from_env(
        env_for(
            database_url,
            POSTGRES_POOL_MIN="2",
            POSTGRES_POOL_MAX="2",
            POSTGRES_POOL_ACQUIRE_TIMEOUT="500",
            POSTGRES_POOL_PING_AFTER="100",
            POSTGRES_STATEMENT_TIMEOUT="400",
            POSTGRES_ANALYTICS_POOL_MIN="1",
            POSTGRES_ANALYTICS_POOL_MAX="2",
        )
    )
    yield db
    db.dispose()


@pytest.fixture
def app_database(app_login: URL) -> Iterator[Database]:
    """The pools on a login that is only a member of platform_app, as a service has them.

    Tenant sessions need one: on the superuser of `database` they are refused, as RLS
    would not filter them (tests/test_rls_bypass.py).
    """
    db = Database.from_env(env_for(app_login, POSTGRES_POOL_MIN="1", POSTGRES_POOL_MAX="2"))
    yield db
    db.dispose()


def test_each_pool_carries_its_settings(database: Database) -> None:
    with database.engine("main").connect() as conn:
        assert conn.scalar(text("SHOW application_name")) == "platform-db:main"
        assert conn.scalar(text("SHOW statement_timeout")) == "400ms"
        assert conn.scalar(text("SHOW lock_timeout")) == "10s"
        assert conn.scalar(text("SHOW idle_in_transaction_session_timeout")) == "1min"
    with database.engine("analytics").connect() as conn:
        assert conn.scalar(text("SHOW application_name")) == "platform-db:analytics"
        assert conn.scalar(text("SHOW work_mem")) == "64MB"
        assert conn.scalar(text("SHOW transaction_read_only")) == "on"
        with pytest.raises(DBAPIError, match="read-only transaction"):
            conn.execute(text("CREATE TEMP TABLE t (x int)"))
    with database.engine("background").connect() as conn:
        assert conn.scalar(text("SHOW statement_timeout")) == "10min"


def test_statement_timeout_is_enforced(database: Database) -> None:
    with (
        database.engine("main").connect() as conn,
        pytest.raises(DBAPIError, match="statement timeout"),
    ):
        conn.execute(text("SELECT pg_sleep(2)"))


def test_exhausted_pool_fails_fast_and_names_itself(database: Database) -> None:
    engine = database.engine("main")
    holders = [engine.connect() for _ in range(2)]
    try:
        start = time.perf_counter()
        with pytest.raises(PoolExhaustedError, match="pool 'main' is exhausted"):
            engine.connect()
        assert time.perf_counter() - start < 5
    finally:
        for conn in holders:
            conn.close()
    stats = {s.pool: s for s in database.acquire_stats()}
    assert stats["main"].timeouts == 1
    assert stats["main"].checkouts >= 2
    assert stats["main"].p95_ms is not None


def test_warm_up_opens_the_minimum(database: Database) -> None:
    database.warm_up("main", "analytics")
    main_pool = database.engine("main").pool
    assert main_pool.checkedin() == 2  # type: ignore[attr-defined]
    assert database.engine("analytics").pool.checkedin() == 1  # type: ignore[attr-defined]


def test_stale_connection_is_replaced(database: Database) -> None:
    engine = database.engine("main")
    with engine.connect() as conn:
        pid = conn.scalar(text("SELECT pg_backend_pid()"))
    with database.engine("background").connect() as other:
        other.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
    time.sleep(0.15)  # idle for longer than POSTGRES_POOL_PING_AFTER (100 ms)
    # The pooled connection is dead; the ping notices and hands out a fresh one.
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT 1")) == 1
        assert conn.scalar(text("SELECT pg_backend_pid()")) != pid


async def test_async_stale_connection_is_replaced(database: Database) -> None:
    engine = database.async_engine("main")
    async with engine.connect() as conn:
        pid = await conn.scalar(text("SELECT pg_backend_pid()"))
    with database.engine("background").connect() as other:
        other.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
    await asyncio.sleep(0.15)
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT pg_backend_pid()")) != pid
    await engine.dispose()


@pytest.mark.parametrize(("after_ms", "pings"), [("100", 0), ("0", 3)])
def test_connections_back_moments_ago_are_not_pinged(
    database_url: URL, after_ms: str, pings: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = Database.from_env(
        env_for(
            database_url,
            POSTGRES_POOL_MIN="1",
            POSTGRES_POOL_MAX="1",
            POSTGRES_POOL_PING_AFTER=after_ms,
        )
    )
    engine = db.engine("main")
    calls: list[object] = []
    real = engine.dialect.do_ping

    def counting_ping(dbapi_connection: Any) -> bool:
        calls.append(dbapi_connection)
        return real(dbapi_connection)

    monkeypatch.setattr(engine.dialect, "do_ping", counting_ping)
    try:
        with engine.connect() as conn:
            conn.scalar(text("SELECT 1"))
        for _ in range(3):  # back in the pool moments ago: no ping unless after_ms is 0
            with engine.connect() as conn:
                conn.scalar(text("SELECT 1"))
        assert len(calls) == pings
    finally:
        db.dispose()


def test_tenant_sessions_from_the_pools(app_database: Database) -> None:
    tenant = "0b0e8d4c-1d0c-4f6e-9d55-2d0f8f0c9a11"
    with app_database.session(tenant_id=tenant) as session, session.begin():
        assert session.scalar(text("SELECT current_setting('app.current_tenant_id')")) == tenant


async def test_async_tenant_sessions_from_the_pools(app_database: Database) -> None:
    tenant = "9a7d5e3c-1b2a-4c6d-8e9f-0a1b2c3d4e5f"
    async with app_database.async_session(tenant_id=tenant) as session, session.begin():
        setting = await session.scalar(text("SELECT current_setting('app.current_tenant_id')"))
        assert setting == tenant
    await app_database.dispose_async()


async def test_async_pool_exhaustion_and_settings(database: Database) -> None:
    engine = database.async_engine("main")
    async with engine.connect() as conn:
        assert await conn.scalar(text("SHOW application_name")) == "platform-db:main"
        assert await conn.scalar(text("SHOW statement_timeout")) == "400ms"
    holders = [await engine.connect() for _ in range(2)]
    try:
        with pytest.raises(PoolExhaustedError, match="pool 'main'"):
            await asyncio.wait_for(engine.connect(), timeout=10)
    finally:
        for conn in holders:
            await conn.close()
    await database.warm_up_async("background")
    await database.dispose_async()
