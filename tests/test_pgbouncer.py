"""The engines through a real PgBouncer in transaction pooling mode.

A module fixture starts `pgbouncer` (Debian package `pgbouncer`) on a free local port in
front of the test server, with few server connections (default_pool_size = 4) shared by
many client connections, so consecutive transactions of different tenants run on the
same server session. Without the binary the module is skipped, unless
PLATFORM_DB_REQUIRE_PGBOUNCER=1 (CI), which turns the skip into a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import uuid
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL

from platform_db.bench.bouncer import find_pgbouncer, pgbouncer
from platform_db.models import Lead
from platform_db.session.engines import make_async_engine, make_engine
from platform_db.session.tenancy import (
    TenantSession,
    tenant_async_sessionmaker,
    tenant_context,
)
from tests.isolation_helpers import (
    INSUFFICIENT_PRIVILEGE,
    SeededTenant,
    expect_db_error,
    sealed_tenant_sql,
    unbound_seals,
)

pytestmark = pytest.mark.pgbouncer

SERVER_POOL_SIZE = 4
TENANT_SQL = text("SELECT current_setting('app.current_tenant_id', true)")


@dataclass(frozen=True)
class Bouncer:
    url: URL  # the app login through PgBouncer, pool of SERVER_POOL_SIZE server connections
    single_url: URL  # the same through a pool of exactly one server connection
    log: Path


def _server_address(url: URL) -> tuple[str, int]:
    """Host (or unix-socket directory) and port of the server behind `url`."""
    query_host = url.query.get("host")
    if isinstance(query_host, tuple):
        query_host = query_host[0] if query_host else None
    host = query_host or url.host or "127.0.0.1"
    return host, url.port or 5432


@pytest.fixture(scope="module")
def bouncer(
    app_login: URL, database_url: URL, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Bouncer]:
    binary = find_pgbouncer()
    if binary is None:
        reason = "pgbouncer binary not found (install the Debian package `pgbouncer`)"
        if os.environ.get("PLATFORM_DB_REQUIRE_PGBOUNCER") == "1":
            pytest.fail(f"{reason}; PLATFORM_DB_REQUIRE_PGBOUNCER=1 requires it")
        pytest.skip(reason)

    host, server_port = _server_address(database_url)
    dbname = str(database_url.database)
    log = tmp_path_factory.mktemp("pgbouncer") / "pgbouncer.log"
    with contextlib.ExitStack() as stack:
        try:
            started = stack.enter_context(
                pgbouncer(
                    binary,
                    server_host=host,
                    server_port=server_port,
                    dbname=dbname,
                    user=str(app_login.username),
                    password=str(app_login.password),
                    server_pool=SERVER_POOL_SIZE,
                    max_clients=190,
                    aliases={f"{dbname}_one": "pool_size=1"},
                    log=log,
                )
            )
        except RuntimeError as exc:
            pytest.fail(str(exc))
        through = app_login.set(host=started.host, port=started.port, query={})
        # Behind PgBouncer a seal cannot name the server process: the database must take
        # unbound seals (platform-db tenant-key unbound) while the module runs.
        stack.enter_context(unbound_seals(database_url))
        yield Bouncer(url=through, single_url=through.set(database=f"{dbname}_one"), log=log)


def _conninfo(url: URL) -> str:
    return psycopg.conninfo.make_conninfo(
        host=url.host,
        port=url.port,
        dbname=url.database,
        user=url.username,
        password=url.password,
    )


# ---------------------------------------------------------------------------------------


def test_nothing_a_client_leaves_reaches_the_next_client(
    bouncer: Bouncer, tenants: tuple[SeededTenant, SeededTenant]
) -> None:
    """Two clients, one server connection: PgBouncer resets it after every transaction.

    `server_reset_query = DISCARD ALL` with `server_reset_query_always = 1` (the test
    setup and docs/OPERATIONS.md): a session-level setting, a prepared statement or a
    LISTEN of one client is gone before the next client's transaction.
    """
    a, _ = tenants
    info = _conninfo(bouncer.single_url)
    with (
        psycopg.connect(info, prepare_threshold=None) as x,
        psycopg.connect(info, prepare_threshold=None, autocommit=True) as y,
    ):

        def y_view() -> tuple[int, str | None, int]:
            row = y.execute(
                "SELECT pg_backend_pid(), current_setting('app.current_tenant_id', true), "
                "(SELECT count(*) FROM leads)"
            ).fetchone()
            assert row is not None
            return int(row[0]), row[1] or "", int(row[2])

        with x.transaction():
            x_pid = x.execute("SELECT pg_backend_pid()").fetchone()
            x.execute(f"SET SESSION app.current_tenant_id = '{a.tenant_id}'")
            x.execute("SET SESSION statement_timeout = 1")
            x.execute(f"PREPARE leads_of_a AS SELECT '{a.tenant_id}'::uuid")
            x.execute("LISTEN tenant_events")
        assert x_pid is not None
        # The same server session (the pid), and nothing of X's left on it.
        assert y_view() == (x_pid[0], "", 0)
        row = y.execute("SHOW statement_timeout").fetchone()
        assert row is not None
        assert row[0] != "1ms"
        with pytest.raises(psycopg.errors.InvalidSqlStatementName):
            y.execute("EXECUTE leads_of_a")
        row = y.execute("SELECT count(*) FROM pg_listening_channels()").fetchone()
        assert row is not None
        assert row[0] == 0

        # What the hook does: transaction-local, gone when the transaction ends.
        with x.transaction():
            x.execute(sealed_tenant_sql(a.tenant_id))
            row = x.execute("SELECT count(*) FROM leads").fetchone()
            assert row is not None
            assert row[0] == a.count("leads")
        assert y_view() == (x_pid[0], "", 0)


def test_pooled_connection_attacks_through_pgbouncer(
    bouncer: Bouncer, tenants: tuple[SeededTenant, SeededTenant]
) -> None:
    """The package's engines behind PgBouncer: an attacker's leftovers never reach B."""
    a, b = tenants
    attacker = make_engine(bouncer.single_url, pgbouncer=True, pool_size=1)
    victim = make_engine(bouncer.single_url, pgbouncer=True, pool_size=1)
    try:
        with TenantSession(attacker, tenant_id=a.tenant_id) as session:
            pid = session.scalar(text("SELECT pg_backend_pid()"))
            for statement in (
                "CREATE TEMP VIEW leads AS SELECT * FROM public.leads",
                "SELECT lo_from_bytea(0, 'x'::bytea)",
                "SELECT pg_advisory_lock(1)",
                "SELECT query FROM pg_stat_activity",
            ):
                session.execute(text("SAVEPOINT s"))
                with expect_db_error(INSUFFICIENT_PRIVILEGE):
                    session.execute(text(statement))
                session.execute(text("ROLLBACK TO SAVEPOINT s"))
            for statement in (
                "SET SESSION default_transaction_read_only = on",
                "SET SESSION statement_timeout = 1",
                f"SET SESSION app.current_tenant_id = '{a.tenant_id}'",
                f"PREPARE _pg3_0 AS SELECT '{a.tenant_id}'::uuid",
            ):
                session.execute(text(statement))
            session.commit()
        for _ in range(3):
            with TenantSession(victim, tenant_id=b.tenant_id) as session:
                assert session.scalar(text("SELECT pg_backend_pid()")) == pid
                assert set(session.scalars(text("SELECT tenant_id FROM leads"))) == {b.tenant_id}
                assert session.scalar(text("SHOW transaction_read_only")) == "off"
                assert session.scalar(text("SHOW statement_timeout")) == "30s"
        with TenantSession(victim) as nobody:
            assert nobody.scalars(text("SELECT tenant_id FROM leads")).all() == []
    finally:
        attacker.dispose()
        victim.dispose()


def test_sync_engine_through_pgbouncer(
    bouncer: Bouncer, tenants: tuple[SeededTenant, SeededTenant]
) -> None:
    a, b = tenants
    eng = make_engine(bouncer.url, pgbouncer=True, pool_size=12, max_overflow=0)
    try:

        def work(i: int) -> tuple[SeededTenant | None, list[uuid.UUID], str | None, int, int]:
            owner = (a, b, None)[i % 3]
            with TenantSession(eng, tenant_id=owner.tenant_id if owner else None) as s:
                client = id(s.connection().connection.driver_connection)
                seen = list(s.scalars(text("SELECT tenant_id FROM users")))
                pid = s.scalar(text("SELECT pg_backend_pid()"))
                assert isinstance(pid, int)
                setting = s.scalar(TENANT_SQL)
                # Commit, not roll back: psycopg forgets its prepared statements on
                # ROLLBACK, which would hide statements prepared on another server.
                s.commit()
                return owner, seen, setting, pid, client

        with ThreadPoolExecutor(max_workers=12) as pool:
            results = list(pool.map(work, range(300)))
        servers_of_client: dict[int, set[int]] = defaultdict(set)
        for owner, seen, setting, pid, client in results:
            servers_of_client[client].add(pid)
            if owner is None:
                assert (seen, setting) == ([], "")
            else:
                assert seen == [owner.tenant_id] * owner.count("users")
                assert setting == str(owner.tenant_id)
        all_pids = set().union(*servers_of_client.values())
        assert len(all_pids) <= SERVER_POOL_SIZE < len(servers_of_client)
        # Clients moved between server sessions (what breaks prepared statements).
        assert any(len(pids) > 1 for pids in servers_of_client.values())
    finally:
        eng.dispose()


TASKS = 50
ITERATIONS = 6


async def test_async_engine_through_pgbouncer_many_tasks(
    bouncer: Bouncer, engine: Engine, tenants: tuple[SeededTenant, SeededTenant]
) -> None:
    a, b = tenants
    owners: dict[str, SeededTenant] = {"a": a, "b": b}
    eng = make_async_engine(
        bouncer.url,
        pgbouncer=True,
        application_name="pdb-pgbouncer-test",
        pool_size=20,
        max_overflow=20,
    )
    factory = tenant_async_sessionmaker(eng)
    run = secrets.token_hex(3)
    server_pids: dict[int, set[str]] = defaultdict(set)
    servers_of_client: dict[int, set[int]] = defaultdict(set)
    writes: list[tuple[str, str]] = []
    refused_writes = 0
    problems: list[str] = []

    async def transaction(label: str, use_context: bool, task: int, it: int) -> None:
        nonlocal refused_writes
        owner = owners.get(label)
        tenant_id = owner.tenant_id if owner else None
        ctx = (
            tenant_context(tenant_id)
            if use_context and tenant_id is not None
            else contextlib.nullcontext()
        )
        with ctx:
            kwargs: dict[str, Any] = {} if use_context else {"tenant_id": tenant_id}
            async with factory(**kwargs) as session:
                conn = await session.connection()
                raw = await conn.get_raw_connection()
                pid = await session.scalar(text("SELECT pg_backend_pid()"))
                assert isinstance(pid, int)
                servers_of_client[id(raw.driver_connection)].add(pid)
                server_pids[pid].add(label)
                await asyncio.sleep(0)
                setting = await session.scalar(TENANT_SQL)
                users = list(await session.scalars(text("SELECT tenant_id FROM users")))
                leads = list(await session.scalars(text("SELECT tenant_id FROM leads")))
                await asyncio.sleep(0)
                if owner is None:
                    if (setting, users, leads) != ("", [], []):
                        problems.append(f"no tenant saw {setting!r} {users} {leads}")
                    if it % 2 == 0:
                        with expect_db_error(INSUFFICIENT_PRIVILEGE, "row-level security"):
                            await session.execute(
                                text("INSERT INTO leads (tenant_id, email) VALUES (:t, :e)"),
                                {"t": a.tenant_id, "e": f"pgb-none-{run}@x.example.com"},
                            )
                        refused_writes += 1
                    await session.rollback()
                    return
                if setting != str(owner.tenant_id):
                    problems.append(f"{label} had setting {setting!r}")
                if users != [owner.tenant_id] * owner.count("users"):
                    problems.append(f"{label} saw users {users}")
                if set(leads) != {owner.tenant_id} or len(leads) < owner.count("leads"):
                    problems.append(f"{label} saw leads {leads}")
                if (task + it) % 2 == 0:
                    email = f"pgb-{run}-{label}-{task}-{it}@x.example.com"
                    session.add(Lead(email=email, source="pgbouncer"))
                    await session.commit()
                    writes.append((label, email))
                else:
                    await session.commit()

    async def task(n: int) -> None:
        for it in range(ITERATIONS):
            label = ("a", "b", "none")[(n + it) % 3]
            await transaction(label, use_context=(n % 2 == 1), task=n, it=it)

    try:
        results = await asyncio.gather(*(task(n) for n in range(TASKS)), return_exceptions=True)
    finally:
        await eng.dispose()
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    assert errors == [], errors[:5]
    assert problems == [], problems[:10]

    # PgBouncer really multiplexed: many client connections, few server sessions, and
    # server sessions that served more than one tenant (or none) in turn.
    assert len(servers_of_client) > SERVER_POOL_SIZE
    assert 1 <= len(server_pids) <= SERVER_POOL_SIZE
    assert any(len(labels) > 1 for labels in server_pids.values()), server_pids
    assert any(len(pids) > 1 for pids in servers_of_client.values())
    assert refused_writes > 0

    # Every write landed in the tenant of the session that made it, and only those.
    with engine.connect() as conn:
        stored = {
            r[0]: r[1]
            for r in conn.execute(
                text("SELECT email, tenant_id FROM leads WHERE email LIKE :p"),
                {"p": f"pgb-%{run}%"},
            )
        }
    assert len(writes) > 0
    assert stored == {email: owners[label].tenant_id for label, email in writes}


def test_role_defaults_a_request_sets_do_not_break_requests_through_pgbouncer(
    bouncer: Bouncer, engine: Engine, app_login: URL, tenants: tuple[SeededTenant, SeededTenant]
) -> None:
    """Behind PgBouncer there are no startup options, and DISCARD ALL returns every
    setting to the role's defaults, which the login may set itself: the prologue sets
    what the package relies on per transaction."""
    a, b = tenants
    attacker = make_engine(bouncer.single_url, pgbouncer=True, pool_size=1)
    victim = make_engine(bouncer.single_url, pgbouncer=True, pool_size=1)
    login = app_login.username
    try:
        with TenantSession(attacker, tenant_id=a.tenant_id) as session:
            for setting in (
                "search_path = ''",
                "row_security = off",
                "statement_timeout = 1",
                "default_transaction_read_only = on",
            ):
                session.execute(text(f'ALTER ROLE "{login}" SET {setting}'))
            session.commit()
        with TenantSession(victim, tenant_id=b.tenant_id) as session:
            assert set(session.scalars(text("SELECT tenant_id FROM leads"))) == {b.tenant_id}
            assert session.scalar(text("SHOW transaction_read_only")) == "off"
            assert session.scalar(text("SHOW statement_timeout")) == "30s"
    finally:
        attacker.dispose()
        victim.dispose()
        with engine.begin() as conn:
            conn.execute(text(f'ALTER ROLE "{login}" RESET ALL'))
