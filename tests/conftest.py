"""Test fixtures: a real PostgreSQL, a fresh database per run, schema built by migrations.

The server comes from TEST_DATABASE_URL if set (any database on it; the fixtures create
their own), else from testcontainers when a Docker engine answers, else from the
embedded `pgserver` wheel. Each run creates `pdb_test_<random>` and drops it at the end.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from platform_db.session.engines import make_async_engine, make_engine
from platform_db.session.tenancy import TenantSession
from platform_db.testing import scratch
from platform_db.testing.plugin import ensure_test_tenant_key, two_tenants
from platform_db.testing.scratch import temporary_app_login
from tests.isolation_helpers import SeededTenant, seed_rows

# Every engine of the package made in this run seals its tenants with this key, and every
# database the fixtures migrate stores it (platform_db.testing.scratch).
ensure_test_tenant_key()


def _docker_available() -> bool:
    try:
        import docker  # type: ignore[import-untyped]  # noqa: PLC0415

        docker.from_env(timeout=3).ping()
    except Exception:
        return False
    return True


@pytest.fixture(scope="session")
def server_url() -> Iterator[URL]:
    """A superuser URL of the server the tests run against."""
    raw = os.environ.get("TEST_DATABASE_URL", "").strip()
    if raw:
        yield make_url(raw)
        return
    if _docker_available():
        from testcontainers.postgres import PostgresContainer  # noqa: PLC0415

        with PostgresContainer("postgres:15", driver="psycopg") as container:
            yield make_url(container.get_connection_url())
        return
    from platform_db.demo.embedded import start_embedded  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="pdb-pg-") as tmp:
        url, server = start_embedded(Path(tmp), keep_running=False)
        try:
            yield url
        finally:
            server.cleanup()


def temporary_database(server_url: URL, *, migrate: bool) -> contextlib.AbstractContextManager[URL]:
    """A database of its own (`pdb_test_<random>`), optionally migrated; dropped afterwards."""
    return scratch.temporary_database(server_url, migrate=migrate, prefix="pdb_test")


@pytest.fixture(scope="session")
def database_url(server_url: URL) -> Iterator[URL]:
    """The run's database, migrated to head (superuser URL).

    PLATFORM_DB_TEST_PREPARED_URL names a database prepared by the caller instead (on the
    server of TEST_DATABASE_URL): tests/test_citus.py runs the isolation suite and the
    plugin on a freshly migrated and distributed database that way.
    """
    prepared = os.environ.get("PLATFORM_DB_TEST_PREPARED_URL", "").strip()
    if prepared:
        yield make_url(prepared)
        return
    with temporary_database(server_url, migrate=True) as url:
        yield url


@pytest.fixture(scope="session")
def engine(database_url: URL) -> Iterator[Engine]:
    eng = make_engine(database_url, application_name="platform-db-tests")
    yield eng
    eng.dispose()


@pytest.fixture
def connection(engine: Engine) -> Iterator[Connection]:
    """A connection inside a transaction that is rolled back after the test."""
    with engine.connect() as conn:
        trans = conn.begin()
        try:
            yield conn
        finally:
            trans.rollback()


@pytest.fixture
def db(connection: Connection) -> Iterator[TenantSession]:
    """A TenantSession (no tenant yet) joined to the rolled-back test transaction.

    It connects as the superuser, which RLS does not filter: use it for schema,
    constraint and index tests. Isolation tests use `app_login`.
    """
    session = TenantSession(bind=connection, join_transaction_mode="create_savepoint")
    try:
        yield session
    finally:
        session.close()


@pytest.fixture(scope="session")
def app_login(engine: Engine, database_url: URL) -> Iterator[URL]:
    """URL of a LOGIN role that is only a member of platform_app, as a deployer makes it."""
    with temporary_app_login(engine, database_url, prefix="pdb_test_app") as url:
        yield url


@pytest.fixture(scope="session")
def app_engine(app_login: URL) -> Iterator[Engine]:
    eng = make_engine(app_login, application_name="platform-db-tests-app", pool_size=2)
    yield eng
    eng.dispose()


@pytest.fixture(scope="session")
async def app_async_engine(app_login: URL) -> AsyncIterator[AsyncEngine]:
    eng = make_async_engine(app_login, application_name="platform-db-tests-app-async")
    yield eng
    await eng.dispose()


@pytest.fixture(scope="module")
def tenants(engine: Engine) -> Iterator[tuple[SeededTenant, SeededTenant]]:
    """Tenants A and B, committed, with rows in every tenant table; a pair per module.

    Made by the plugin's `two_tenants` (as `platform_db_tenants` is), filled by
    `seed_rows`, which also records the ids of what it wrote.
    """
    seeded: dict[uuid.UUID, SeededTenant] = {}

    def fill(conn: Connection, tenant_id: uuid.UUID) -> None:
        seeded[tenant_id] = seed_rows(conn, tenant_id)

    with two_tenants(engine, [fill]) as pair:
        yield seeded[pair.a], seeded[pair.b]


@pytest.fixture
def a(tenants: tuple[SeededTenant, SeededTenant]) -> SeededTenant:
    return tenants[0]


@pytest.fixture
def b(tenants: tuple[SeededTenant, SeededTenant]) -> SeededTenant:
    return tenants[1]


# The isolation plugin (platform_db.testing, enabled in pyproject's addopts) runs on this
# run's database and login.
@pytest.fixture(scope="session")
def platform_db_url(database_url: URL) -> URL:
    return database_url


@pytest.fixture(scope="session")
def platform_db_app_login(app_login: URL) -> URL:
    return app_login
