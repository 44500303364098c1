"""Faults: the replica stopped mid-run and restarted, the primary restarted.

These tests restart servers, so they run on a pair of their own rather than on the shared
test server: a private primary (initdb, same binaries as the test server's version, on a
port of PLATFORM_DB_STANDBY_PORTS) migrated to head, and a streaming standby of it, both
removed at the end. Skipped where they cannot be made, failed instead under
PLATFORM_DB_REQUIRE_REPLICA=1 (CI).

While a writer commits leads through the main pool and two readers read through the
analytics pool (POSTGRES_REPLICA_MAX_LAG_MS set, each read wrapped in `retry_read` as
docs/OPERATIONS.md advises), one server is crashed (`pg_ctl stop -m immediate`) and
started again. What must hold: every read is answered (from the primary while the
replica is down, from the replica while the primary is), the service recovers without
being restarted, and every write whose commit returned is on the primary and, once it
has caught up, on the replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from platform_db.models import Lead
from platform_db.session.database import Database
from platform_db.session.errors import is_retryable, retry_read
from platform_db.testing import scratch
from platform_db.testing.standby import (
    LocalCluster,
    Standby,
    StandbyUnavailable,
    private_primary,
    streaming_standby,
)
from tests.replica_helpers import binaries_or_skip, on_replica_url, replica_database, unavailable

pytestmark = pytest.mark.replica

READ = text("SELECT current_setting('port')::int, count(*) FROM leads")


@dataclass(frozen=True)
class Pair:
    primary: LocalCluster
    standby: Standby
    database: URL  # superuser, on the primary
    app: URL  # the platform_app login, on the primary
    tenant: uuid.UUID

    def count_on(self, url: URL, emails: list[str]) -> int:
        engine = create_engine(url, poolclass=NullPool)
        try:
            with engine.connect() as conn:
                return int(
                    conn.scalar(
                        text("SELECT count(*) FROM leads WHERE email = ANY(:e)"), {"e": emails}
                    )
                    or 0
                )
        finally:
            engine.dispose()


@pytest.fixture(scope="module")
def pair(server_url: URL) -> Iterator[Pair]:
    binaries = binaries_or_skip(server_url)
    with contextlib.ExitStack() as stack:
        try:
            primary = stack.enter_context(private_primary(binaries))
        except StandbyUnavailable as exc:
            unavailable(str(exc))
        database = stack.enter_context(
            scratch.temporary_database(primary.url(), migrate=True, prefix="pdb_fault")
        )
        admin = create_engine(database, poolclass=NullPool)
        stack.callback(admin.dispose)
        app = stack.enter_context(scratch.temporary_app_login(admin, database, prefix="pdb_fault"))
        tenant = uuid.uuid4()
        with admin.begin() as conn:
            conn.execute(
                text("INSERT INTO tenants (id, name, subdomain) VALUES (:i, 'Faults', :s)"),
                {"i": tenant, "s": f"faults-{tenant.hex[:12]}"},
            )
        try:
            standby = stack.enter_context(streaming_standby(database))
        except StandbyUnavailable as exc:
            unavailable(str(exc))
        yield Pair(primary, standby, database, app, tenant)
        # A test that failed half-way leaves both running for the teardown.
        for cluster in (primary, standby):
            if not cluster.running():
                cluster.start()


@dataclass
class Run:
    """What the service saw: writes acknowledged or not, where each read was answered."""

    acknowledged: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)  # the commit raised: maybe, maybe not
    reads: list[tuple[float, int]] = field(default_factory=list)  # (monotonic, server port)
    unanswered: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)  # errors no retry could cure
    retried_reads: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def ports_between(self, start: float, end: float) -> set[int]:
        return {port for at, port in self.reads if start <= at <= end}


@contextlib.contextmanager
def service_running(db: Database, tenant: uuid.UUID) -> Iterator[Run]:
    """One writer (main pool) and two readers (analytics pool) until the block ends."""
    run = Run()
    lock = threading.Lock()

    def writer() -> None:
        n = 0
        while not run.stop.is_set():
            n += 1
            email = f"fault-{n}-{uuid.uuid4().hex[:6]}@faults.example.com"
            try:
                with db.session(tenant_id=tenant) as s, s.begin():
                    s.add(Lead(email=email, source="faults"))
            except SQLAlchemyError as exc:
                if not is_retryable(exc):  # a server going away, nothing else
                    run.unexpected.append(f"{type(exc).__name__}: {exc}"[:300])
                run.unknown.append(email)
                time.sleep(0.05)
                continue
            run.acknowledged.append(email)
            time.sleep(0.01)

    def read_once() -> int:
        try:
            with db.session(tenant_id=tenant, pool="analytics") as s, s.begin():
                port, _ = s.execute(READ).one()
                return int(port)
        except SQLAlchemyError:
            with lock:
                run.retried_reads += 1
            raise

    def reader() -> None:
        while not run.stop.is_set():
            try:
                port = retry_read(read_once, attempts=5, backoff_s=0.05)
            except SQLAlchemyError as exc:
                run.unanswered.append(f"{type(exc).__name__}: {exc}"[:300])
                continue
            with lock:
                run.reads.append((time.monotonic(), port))
            time.sleep(0.01)

    threads = [threading.Thread(target=f, daemon=True) for f in (writer, reader, reader)]
    for thread in threads:
        thread.start()
    try:
        yield run
    finally:
        run.stop.set()
        for thread in threads:
            thread.join(timeout=30)


def _database(pair: Pair, **env: str | int) -> Database:
    pair.standby.wait_for_replay()
    database = replica_database(
        pair.app,
        on_replica_url(pair.standby, pair.app),
        POSTGRES_REPLICA_READ_YOUR_WRITES_MS=0,  # every analytics read goes where health says
        **env,
    )
    database.warm_up("main", "analytics")
    status = database.replica_status()
    assert status is not None
    assert status.route == "replica", status
    return database


@pytest.fixture(
    params=[
        pytest.param({}, id="defaults"),
        pytest.param(
            {"POSTGRES_REPLICA_MAX_LAG_MS": 2000, "POSTGRES_REPLICA_CHECK_INTERVAL_MS": 100},
            id="lag-limit",
        ),
    ]
)
def db(pair: Pair, request: pytest.FixtureRequest) -> Iterator[Database]:
    database = _database(pair, **request.param)
    yield database
    database.dispose()


def _wait_for(condition: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def _no_write_lost(pair: Pair, run: Run) -> None:
    assert run.acknowledged
    assert pair.count_on(pair.database, run.acknowledged) == len(run.acknowledged)
    pair.standby.wait_until_streaming()
    pair.standby.wait_for_replay(timeout_s=60)
    on_standby = pair.standby.url(str(pair.database.database))
    assert pair.count_on(on_standby, run.acknowledged) == len(run.acknowledged)


def test_the_replica_stopped_mid_run_and_restarted(
    pair: Pair, db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="platform_db.session.replica")
    primary_port, replica_port = pair.primary.port, pair.standby.port
    with service_running(db, pair.tenant) as run:
        time.sleep(1.5)
        down = time.monotonic()
        pair.standby.stop("immediate")
        time.sleep(2.5)
        pair.standby.start()
        up = time.monotonic()
        _wait_for(lambda: db.replica_status().route == "replica", 20)  # type: ignore[union-attr]
        back = time.monotonic()
        time.sleep(1.5)
        end = time.monotonic()
    assert run.unanswered == [], run.unanswered[:3]
    assert run.unexpected == []
    assert run.unknown == []  # the primary was never touched
    assert run.ports_between(0, down) == {replica_port}
    # While the replica was down every read was answered by the primary.
    assert run.ports_between(down + 0.5, up) == {primary_port}
    # And once it was back, by the replica again, without restarting the service.
    assert run.ports_between(back + 0.3, end) == {replica_port}
    _no_write_lost(pair, run)
    messages = [r for r in caplog.records if r.name == "platform_db.session.replica"]
    assert [r.levelno for r in messages] == [logging.WARNING, logging.INFO], [
        r.getMessage() for r in messages
    ]
    assert f"127.0.0.1:{replica_port}" in messages[0].getMessage()


def test_a_transaction_that_cannot_reach_the_replica_runs_on_the_primary(
    pair: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    """Between two checks (a minute apart here) the replica goes away: the next analytics
    transaction finds it cannot connect and reads from the primary, without an error."""
    caplog.set_level(logging.INFO, logger="platform_db.session.replica")
    db = _database(pair, POSTGRES_REPLICA_CHECK_INTERVAL_MS=60_000)
    try:
        pair.standby.stop("immediate")
        time.sleep(0.6)  # idle longer than POSTGRES_POOL_PING_AFTER: the checkout pings
        for _ in range(3):
            with db.session(tenant_id=pair.tenant, pool="analytics") as s, s.begin():
                port, _ = s.execute(READ).one()
                assert port == pair.primary.port
        status = db.replica_status()
        assert status is not None
        assert status.route == "primary"
        pair.standby.start()
        assert db.router is not None
        assert db.router.check_now().route == "replica"
        with db.session(tenant_id=pair.tenant, pool="analytics") as s, s.begin():
            assert s.execute(READ).one()[0] == pair.standby.port
    finally:
        db.dispose()
        if not pair.standby.running():
            pair.standby.start()
    messages = [r for r in caplog.records if r.name == "platform_db.session.replica"]
    assert [r.levelno for r in messages] == [logging.WARNING, logging.INFO], [
        r.getMessage() for r in messages
    ]


async def test_an_async_transaction_that_cannot_reach_the_replica_runs_on_the_primary(
    pair: Pair,
) -> None:
    db = _database(pair, POSTGRES_REPLICA_CHECK_INTERVAL_MS=60_000)
    try:
        async with db.async_session(tenant_id=pair.tenant, pool="analytics") as s:
            assert (await s.execute(READ)).one()[0] == pair.standby.port
        pair.standby.stop("immediate")
        await asyncio.sleep(0.6)  # the pooled asyncpg connection is pinged, and fails
        async with db.async_session(tenant_id=pair.tenant, pool="analytics") as s:
            assert (await s.execute(READ)).one()[0] == pair.primary.port
        assert db.router is not None
        assert db.router.status().route == "primary"
    finally:
        await db.dispose_async()
        if not pair.standby.running():
            pair.standby.start()


def test_without_fallback_analytics_fail_while_the_replica_is_down_and_recover_after(
    pair: Pair,
) -> None:
    db = _database(pair, POSTGRES_REPLICA_FALLBACK="off")
    try:
        pair.standby.stop("immediate")
        time.sleep(0.6)
        with (
            db.session(tenant_id=pair.tenant, pool="analytics") as s,
            pytest.raises(OperationalError) as info,
        ):
            s.execute(READ)
        assert is_retryable(info.value)
        assert f"port {pair.standby.port}" in str(info.value)
        pair.standby.start()
        # The same Database, no restart: the pool replaces its dead connections.
        with db.session(tenant_id=pair.tenant, pool="analytics") as s, s.begin():
            assert s.execute(READ).one()[0] == pair.standby.port
    finally:
        db.dispose()
        if not pair.standby.running():
            pair.standby.start()


def test_the_primary_restarted(pair: Pair, db: Database) -> None:
    primary_port, replica_port = pair.primary.port, pair.standby.port
    with service_running(db, pair.tenant) as run:
        time.sleep(1.5)
        before = len(run.acknowledged)
        down = time.monotonic()
        pair.primary.stop("immediate")  # a crash: only what was committed may survive
        time.sleep(2.0)
        pair.primary.start()
        up = time.monotonic()
        _wait_for(lambda: len(run.acknowledged) > before + 20, 30)
        end = time.monotonic()
    assert run.unanswered == [], run.unanswered[:3]
    assert run.unexpected == [], run.unexpected[:3]
    # Analytics kept answering from the replica while the primary was down.
    assert run.ports_between(down, up) == {replica_port}
    assert run.ports_between(0, end) == {replica_port}
    # Writes failed while it was down (retryable, nothing else) and resumed without a
    # restart of the service; every acknowledged one survived the crash.
    assert run.unknown
    assert any(at > up for at, _ in run.reads)
    _no_write_lost(pair, run)
    assert primary_port != replica_port
