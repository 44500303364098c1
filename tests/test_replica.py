"""The analytics pool on a real streaming replica of the test server.

A module fixture makes a hot standby of the test server (`pg_basebackup -R`, another
loopback port, `hot_standby = on`; platform_db.testing.standby) and removes it at the
end. Without server binaries or a replication line in pg_hba.conf the module is skipped,
unless PLATFORM_DB_REQUIRE_REPLICA=1 (CI), which makes that a failure.

The service's view is `Database` with POSTGRES_REPLICA_URL pointing at the standby, as a
login that is only a member of platform_app: analytics sessions read on the standby,
their writes are refused with an error naming the pool, RLS filters there as on the
primary, a tenant's own writes are read back from the primary, and a lagging replica is
left for the primary (logged once).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, select, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from platform_db.ddl.tenant_table import tenant_tables
from platform_db.models import (
    FormSubmission,
    Lead,
    TenantDashboard,
    TenantLeadFunnel,
    TenantSubmissionActivity,
    metadata,
)
from platform_db.session.database import Database
from platform_db.session.errors import is_retryable, retry_read
from platform_db.session.replica import (
    LAG_SQL,
    AnalyticsSession,
    ReadOnlyPoolError,
    ReplicaConflictError,
)
from platform_db.session.tenancy import tenant_context
from platform_db.testing.standby import Standby
from tests.isolation_helpers import (
    INSUFFICIENT_PRIVILEGE,
    SeededTenant,
    expect_db_error,
    sqlstate,
)
from tests.replica_helpers import on_replica_url, replica_database, standby_or_skip

pytestmark = pytest.mark.replica

WHERE = text("SELECT pg_is_in_recovery(), current_setting('port')::int")
LAG_SQL_TEXT = f"SELECT lag_ms FROM ({LAG_SQL}) lag"
PRIMARY_PORT_SQL = text("SELECT current_setting('port')::int")


@pytest.fixture(scope="module")
def standby(database_url: URL) -> Iterator[Standby]:
    with standby_or_skip(database_url) as made:
        yield made


@pytest.fixture(scope="module")
def replica_url(standby: Standby, app_login: URL) -> URL:
    return on_replica_url(standby, app_login)


@pytest.fixture(scope="module")
def primary_port(engine: Engine) -> int:
    with engine.connect() as conn:
        port = conn.scalar(PRIMARY_PORT_SQL)
    assert isinstance(port, int)
    return port


@pytest.fixture
def db(app_login: URL, replica_url: URL, standby: Standby) -> Iterator[Database]:
    """The service's Database: analytics on the standby, read-your-writes for 1.5 s."""
    standby.wait_for_replay()
    database = replica_database(app_login, replica_url, POSTGRES_REPLICA_READ_YOUR_WRITES_MS=1500)
    yield database
    database.dispose()


@pytest.fixture
def lagging_db(app_login: URL, replica_url: URL, standby: Standby) -> Iterator[Database]:
    """Analytics on the standby while it is at most 1 s behind, checked every 50 ms."""
    standby.wait_for_replay()
    database = replica_database(
        app_login,
        replica_url,
        POSTGRES_REPLICA_MAX_LAG_MS=1000,
        POSTGRES_REPLICA_CHECK_INTERVAL_MS=50,
        POSTGRES_REPLICA_READ_YOUR_WRITES_MS=0,
    )
    yield database
    database.dispose()


@pytest.fixture
def replay_paused(standby: Standby) -> Iterator[Standby]:
    """The standby receives WAL but applies none of it until the test ends: it lags."""
    standby.pause_replay()
    try:
        yield standby
    finally:
        standby.resume_replay()
        standby.wait_for_replay()


def _new_lead(engine: Engine, tenant: uuid.UUID, label: str) -> str:
    email = f"{label}-{uuid.uuid4().hex[:10]}@replica.example.com"
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO leads (tenant_id, email, source) VALUES (:t, :e, 'replica-test')"),
            {"t": tenant, "e": email},
        )
    return email


def _lead_seen(session: object, email: str) -> bool:
    from sqlalchemy.orm import Session  # noqa: PLC0415

    assert isinstance(session, Session)
    return session.scalar(select(Lead.id).where(Lead.email == email)) is not None


# --- the standby itself --------------------------------------------------------------------


def test_the_standby_is_a_hot_standby_streaming_from_the_test_server(
    standby: Standby, engine: Engine, database_url: URL
) -> None:
    assert standby.scalar("SELECT pg_is_in_recovery()") is True
    assert standby.scalar("SHOW hot_standby") == "on"
    assert standby.scalar("SELECT status FROM pg_stat_wal_receiver") == "streaming"
    assert standby.port != database_url.port

    def state() -> object:
        with engine.connect() as conn:
            return conn.scalar(
                text(
                    "SELECT r.state FROM pg_stat_replication r "
                    "JOIN pg_replication_slots s ON s.active_pid = r.pid WHERE s.slot_name = :s"
                ),
                {"s": standby.slot},
            )

    # The primary's WAL sender is in "catchup" until the standby has caught up.
    _wait_for(lambda: state() == "streaming", 30)
    # The run's database, migrated on the primary, is there.
    assert standby.scalar("SELECT count(*) FROM tenants", database=str(database_url.database)) >= 0


# --- routing --------------------------------------------------------------------------------


def test_analytics_sessions_read_on_the_replica_and_the_rest_on_the_primary(
    db: Database, a: SeededTenant, standby: Standby, primary_port: int
) -> None:
    with db.session(tenant_id=a.tenant_id, pool="analytics") as s, s.begin():
        assert isinstance(s, AnalyticsSession)
        assert tuple(s.execute(WHERE).one()) == (True, standby.port)
        # The tenant hook ran there: the setting, and RLS through it.
        assert s.scalar(text("SELECT current_setting('app.current_tenant_id')")) == str(a.tenant_id)
        assert s.scalar(select(Lead.tenant_id).limit(1)) == a.tenant_id
    for pool in ("main", "background"):
        with db.session(tenant_id=a.tenant_id, pool=pool) as s, s.begin():
            assert tuple(s.execute(WHERE).one()) == (False, primary_port)
    with db.session(tenant_id=a.tenant_id, pool="analytics", on_primary=True) as s, s.begin():
        assert tuple(s.execute(WHERE).one()) == (False, primary_port)
    status = db.replica_status()
    assert status is not None
    assert (status.route, status.checking, status.reason) == ("replica", True, None)


async def test_async_analytics_sessions_read_on_the_replica(
    db: Database, a: SeededTenant, standby: Standby, primary_port: int
) -> None:
    try:
        async with db.async_session(tenant_id=a.tenant_id, pool="analytics") as s:
            assert tuple((await s.execute(WHERE)).one()) == (True, standby.port)
            leads = (await s.scalars(select(Lead))).all()
            assert {lead.tenant_id for lead in leads} == {a.tenant_id}
            assert len(leads) >= a.count("leads")
        async with db.async_session(tenant_id=a.tenant_id) as s:
            assert tuple((await s.execute(WHERE)).one()) == (False, primary_port)
    finally:
        await db.dispose_async()


# --- writes through the analytics pool -----------------------------------------------------


def test_a_write_through_the_analytics_pool_fails_naming_the_pool(
    db: Database, a: SeededTenant, standby: Standby, engine: Engine, primary_port: int
) -> None:
    email = f"never-{uuid.uuid4().hex[:8]}@replica.example.com"
    with db.session(tenant_id=a.tenant_id, pool="analytics") as s:
        s.add(Lead(email=email))
        with pytest.raises(ReadOnlyPoolError) as info:
            s.commit()
    message = str(info.value)
    assert "the analytics pool is read-only" in message
    assert f"127.0.0.1:{standby.port}" in message
    assert "read-only transaction" in message
    assert 'db.session(pool="main")' in message
    assert (info.value.pool, info.value.server) == ("analytics", f"127.0.0.1:{standby.port}")
    assert not is_retryable(info.value)  # the same write fails the same way again

    # Raw SQL, and the analytics pool on the primary (on_primary): refused the same way.
    for on_primary, server in ((False, standby.port), (True, primary_port)):
        with db.session(tenant_id=a.tenant_id, pool="analytics", on_primary=on_primary) as s:
            with pytest.raises(ReadOnlyPoolError, match=f"analytics pool is read-only .*:{server}"):
                s.execute(
                    text("INSERT INTO leads (tenant_id, email) VALUES (:t, :e)"),
                    {"t": a.tenant_id, "e": email},
                )
            s.rollback()
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM leads WHERE email = :e"), {"e": email}) == 0


async def test_an_async_write_through_the_analytics_pool_fails_naming_the_pool(
    db: Database, a: SeededTenant, standby: Standby
) -> None:
    try:
        async with db.async_session(tenant_id=a.tenant_id, pool="analytics") as s:
            s.add(Lead(email=f"never-{uuid.uuid4().hex[:8]}@replica.example.com"))
            with pytest.raises(
                ReadOnlyPoolError, match=f"analytics pool is read-only .*{standby.port}"
            ):
                await s.commit()
    finally:
        await db.dispose_async()


def test_without_a_replica_the_analytics_pool_still_names_itself(
    app_login: URL, a: SeededTenant, primary_port: int
) -> None:
    database = Database.from_env(
        {"DATABASE_URL": app_login.render_as_string(hide_password=False), "POSTGRES_POOL_MIN": "1"}
    )
    refused = f"analytics pool is read-only .*:{primary_port}"
    try:
        with (
            database.session(tenant_id=a.tenant_id, pool="analytics") as s,
            pytest.raises(ReadOnlyPoolError, match=refused),
        ):
            s.execute(text("UPDATE leads SET score = score"))
    finally:
        database.dispose()


# --- isolation on the replica --------------------------------------------------------------


@pytest.mark.parametrize("table", [spec.name for spec in tenant_tables(metadata)])
def test_tenant_isolation_holds_on_the_replica(
    table: str,
    db: Database,
    tenants: tuple[SeededTenant, SeededTenant],
    engine: Engine,
    standby: Standby,
) -> None:
    """What the isolation suite shows on the primary, on the standby: each tenant sees
    exactly its own rows, none without a tenant, and writes aimed at the other tenant
    change nothing."""
    spec = next(s for s in tenant_tables(metadata) if s.name == table)
    t = spec.qualified
    with engine.connect() as conn:
        counts = {
            x.tenant_id: conn.scalar(
                text(f"SELECT count(*) FROM {t} WHERE tenant_id = :t"), {"t": x.tenant_id}
            )
            for x in tenants
        }
    assert all(counts.values()), counts
    for me, other in (tenants, tenants[::-1]):
        with db.session(tenant_id=me.tenant_id, pool="analytics") as s, s.begin():
            assert s.execute(WHERE).one()[0] is True  # on the standby
            seen = s.execute(text(f"SELECT tenant_id, count(*) FROM {t} GROUP BY 1")).all()
            assert [tuple(r) for r in seen] == [(me.tenant_id, counts[me.tenant_id])]
            assert (
                s.scalar(
                    text(f"SELECT count(*) FROM {t} WHERE tenant_id = :o"), {"o": other.tenant_id}
                )
                == 0
            )
        for sql in (
            f"UPDATE {t} SET tenant_id = tenant_id WHERE tenant_id = :o",
            f"DELETE FROM {t} WHERE tenant_id = :o",
        ):
            with db.session(tenant_id=me.tenant_id, pool="analytics") as s:
                with pytest.raises(ReadOnlyPoolError):
                    s.execute(text(sql), {"o": other.tenant_id})
                s.rollback()
    with db.session(pool="analytics") as s, s.begin():
        assert s.execute(WHERE).one()[0] is True
        assert s.scalar(text(f"SELECT count(*) FROM {t}")) == 0
    with engine.connect() as conn:
        after = {
            x.tenant_id: conn.scalar(
                text(f"SELECT count(*) FROM {t} WHERE tenant_id = :t"), {"t": x.tenant_id}
            )
            for x in tenants
        }
    assert after == counts


def test_the_replica_keeps_the_materialized_views_closed_and_sql_cannot_widen_the_tenant(
    db: Database, a: SeededTenant, b: SeededTenant
) -> None:
    with db.session(tenant_id=a.tenant_id, pool="analytics") as s:
        with expect_db_error(INSUFFICIENT_PRIVILEGE, "permission denied"):
            s.execute(text("SELECT * FROM platform.tenant_performance_summary"))
        s.rollback()

    def after_setting_b(on_primary: bool) -> set[object]:
        """SQL that sets tenant B inside A's transaction (level (c), docs/SECURITY.md)."""
        with (
            db.session(tenant_id=a.tenant_id, pool="analytics", on_primary=on_primary) as s,
            s.begin(),
        ):
            assert s.execute(WHERE).one()[0] is not on_primary
            s.execute(text(f"SET LOCAL app.current_tenant_id = '{b.tenant_id}'"))
            return set(s.scalars(text("SELECT DISTINCT tenant_id FROM users")))

    # Whatever the primary lets such SQL see, the replica lets it see no more; never both
    # tenants, never all rows.
    on_replica = after_setting_b(on_primary=False)
    assert on_replica == after_setting_b(on_primary=True)
    assert on_replica <= {b.tenant_id}
    with db.session(tenant_id=a.tenant_id, pool="analytics") as s:
        with expect_db_error(INSUFFICIENT_PRIVILEGE, "permission denied for function set_config"):
            s.execute(
                text("SELECT set_config('app.current_tenant_id', :b, true)"),
                {"b": str(b.tenant_id)},
            )
        s.rollback()


# --- dashboards and reports -----------------------------------------------------------------


def test_dashboards_and_range_reports_read_from_the_replica(
    db: Database, a: SeededTenant, b: SeededTenant, engine: Engine, standby: Standby
) -> None:
    with engine.begin() as conn:
        conn.execute(text("SELECT platform.refresh_performance_views()"))
    standby.wait_for_replay()
    with engine.connect() as conn:
        leads_of_a = conn.scalar(
            text("SELECT count(*) FROM leads WHERE tenant_id = :t"), {"t": a.tenant_id}
        )
    with db.session(tenant_id=a.tenant_id, pool="analytics") as s, s.begin():
        assert s.execute(WHERE).one()[0] is True
        dashboard = s.scalars(select(TenantDashboard)).one()
        assert dashboard.tenant_id == a.tenant_id
        assert dashboard.leads_total == leads_of_a
        funnel = s.scalars(select(TenantLeadFunnel)).all()
        assert funnel
        assert {row.tenant_id for row in funnel} == {a.tenant_id}
        assert sum(row.leads_created for row in funnel) == leads_of_a
        activity = s.scalars(select(TenantSubmissionActivity)).all()
        assert {row.tenant_id for row in activity} == {a.tenant_id}
        # The benchmark's range class: a tenant's submissions over a window, newest first.
        since, until = min(a.times["form_submissions"]), max(a.times["form_submissions"])
        found = s.scalars(
            select(FormSubmission)
            .where(FormSubmission.created_at >= since, FormSubmission.created_at <= until)
            .order_by(FormSubmission.created_at.desc())
        ).all()
        assert {x.id for x in found} == set(a.ids["form_submissions"])


# --- read your writes -----------------------------------------------------------------------


def test_a_tenants_own_writes_are_read_back_from_the_primary_for_a_window(
    db: Database, a: SeededTenant, b: SeededTenant, replay_paused: Standby, primary_port: int
) -> None:
    standby = replay_paused
    # A write committed through the service's main pool ...
    with db.session(tenant_id=a.tenant_id) as s, s.begin():
        email = f"ryw-{uuid.uuid4().hex[:10]}@replica.example.com"
        s.add(Lead(email=email, source="replica-test"))
    # ... sends A's analytics to the primary, where it is; B's stay on the replica.
    with db.session(tenant_id=a.tenant_id, pool="analytics") as s, s.begin():
        assert tuple(s.execute(WHERE).one()) == (False, primary_port)
        assert _lead_seen(s, email)
    with db.session(tenant_id=b.tenant_id, pool="analytics") as s, s.begin():
        assert tuple(s.execute(WHERE).one()) == (True, standby.port)
    # After the window (1.5 s here, POSTGRES_REPLICA_READ_YOUR_WRITES_MS) A reads the
    # replica again, which has not replayed the write (replay is paused).
    time.sleep(1.6)
    with db.session(tenant_id=a.tenant_id, pool="analytics") as s, s.begin():
        assert tuple(s.execute(WHERE).one()) == (True, standby.port)
        assert not _lead_seen(s, email)
    # On request, the primary whatever the window.
    with db.session(tenant_id=a.tenant_id, pool="analytics", on_primary=True) as s, s.begin():
        assert _lead_seen(s, email)
    # A write the hooks cannot see (another process), announced by hand.
    db.note_write(b.tenant_id)
    with db.session(tenant_id=b.tenant_id, pool="analytics") as s, s.begin():
        assert s.execute(WHERE).one()[0] is False


def test_the_window_belongs_to_the_user_who_wrote_not_to_the_whole_tenant(
    db: Database, a: SeededTenant, standby: Standby, primary_port: int
) -> None:
    writer, colleague = a.ids["users"][0], a.ids["users"][1]
    with db.session(tenant_id=a.tenant_id, user_id=writer) as s, s.begin():
        s.add(Lead(email=f"by-user-{uuid.uuid4().hex[:8]}@replica.example.com"))
    with (
        tenant_context(a.tenant_id, user_id=writer),
        db.session(pool="analytics") as s,
        s.begin(),
    ):
        assert tuple(s.execute(WHERE).one()) == (False, primary_port)
    with db.session(tenant_id=a.tenant_id, user_id=colleague, pool="analytics") as s, s.begin():
        assert tuple(s.execute(WHERE).one()) == (True, standby.port)
    with db.session(tenant_id=a.tenant_id, pool="analytics") as s, s.begin():  # no user
        assert tuple(s.execute(WHERE).one()) == (True, standby.port)


def test_reads_and_rolled_back_writes_do_not_count_as_writes(
    db: Database, a: SeededTenant, standby: Standby
) -> None:
    with db.session(tenant_id=a.tenant_id) as s, s.begin():
        s.scalars(select(Lead)).all()
    with db.session(tenant_id=a.tenant_id) as s:
        s.add(Lead(email=f"rolled-back-{uuid.uuid4().hex[:8]}@replica.example.com"))
        s.flush()
        s.rollback()
    with db.session(tenant_id=a.tenant_id, pool="analytics") as s, s.begin():
        assert tuple(s.execute(WHERE).one()) == (True, standby.port)


def test_a_raw_sql_write_counts_and_routing_is_decided_per_transaction(
    db: Database, a: SeededTenant, standby: Standby, primary_port: int
) -> None:
    analytics = db.session(tenant_id=a.tenant_id, pool="analytics")
    try:
        with analytics.begin():
            assert analytics.execute(WHERE).one()[0] is True
        with db.session(tenant_id=a.tenant_id) as s, s.begin():
            s.execute(
                text("UPDATE leads SET score = score WHERE tenant_id = :t"), {"t": a.tenant_id}
            )
        # The same session, its next transaction: on the primary now.
        with analytics.begin():
            assert tuple(analytics.execute(WHERE).one()) == (False, primary_port)
    finally:
        analytics.close()


async def test_async_writes_send_the_tenants_analytics_to_the_primary(
    db: Database, a: SeededTenant, replay_paused: Standby, primary_port: int
) -> None:
    try:
        email = f"ryw-async-{uuid.uuid4().hex[:8]}@replica.example.com"
        async with db.async_session(tenant_id=a.tenant_id) as s:
            s.add(Lead(email=email, source="replica-test"))
            await s.commit()
        async with db.async_session(tenant_id=a.tenant_id, pool="analytics") as s:
            assert tuple((await s.execute(WHERE)).one()) == (False, primary_port)
            assert (await s.scalar(select(Lead.id).where(Lead.email == email))) is not None
    finally:
        await db.dispose_async()


# --- lag ----------------------------------------------------------------------------------


def test_a_replica_that_cannot_be_reached_is_left_for_the_primary_by_default(
    app_login: URL, a: SeededTenant, primary_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    """No standby needed: a POSTGRES_REPLICA_URL nothing listens on."""
    caplog.set_level(logging.INFO, logger="platform_db.session.replica")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        nowhere = int(probe.getsockname()[1])
    database = replica_database(app_login, app_login.set(host="127.0.0.1", port=nowhere))
    try:
        for _ in range(3):
            with database.session(tenant_id=a.tenant_id, pool="analytics") as s, s.begin():
                assert tuple(s.execute(WHERE).one()) == (False, primary_port)
                assert s.scalar(select(Lead.tenant_id).limit(1)) == a.tenant_id
        status = database.replica_status()
        assert status is not None
        assert status.route == "primary"
        assert f"the replica 127.0.0.1:{nowhere} cannot be reached" in str(status.reason)
    finally:
        database.dispose()
    warnings = [r for r in caplog.records if r.name == "platform_db.session.replica"]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert warnings[0].levelno == logging.WARNING
    assert "reading from the primary instead of the replica" in warnings[0].getMessage()


def test_a_lagging_replica_is_left_for_the_primary_and_that_is_logged_once(
    lagging_db: Database,
    a: SeededTenant,
    engine: Engine,
    standby: Standby,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="platform_db.session.replica")
    db = lagging_db
    try:
        db.warm_up("analytics")
        status = db.replica_status()
        assert status is not None
        assert (status.route, status.checking) == ("replica", True)
        assert status.lag_ms is not None
        assert 0 <= status.lag_ms <= 1000

        def where() -> tuple[bool, int]:
            with db.session(tenant_id=a.tenant_id, pool="analytics") as s, s.begin():
                in_recovery, port = s.execute(WHERE).one()
                return bool(in_recovery), int(port)

        assert where() == (True, standby.port)
        standby.pause_replay()
        try:
            email = _new_lead(engine, a.tenant_id, "lag")
            _wait_for(lambda: db.replica_status().route == "primary", 10)  # type: ignore[union-attr]
            status = db.replica_status()
            assert status is not None
            assert status.lag_ms is not None
            assert status.lag_ms > 1000
            assert "ms behind (POSTGRES_REPLICA_MAX_LAG_MS=1000)" in str(status.reason)
            for _ in range(20):
                assert where()[0] is False  # the primary
            with db.session(tenant_id=a.tenant_id, pool="analytics") as s, s.begin():
                assert _lead_seen(s, email)
        finally:
            standby.resume_replay()
        _wait_for(lambda: db.replica_status().route == "replica", 10)  # type: ignore[union-attr]
        for _ in range(5):
            assert where() == (True, standby.port)
    finally:
        db.dispose()
    records = [r for r in caplog.records if r.name == "platform_db.session.replica"]
    to_primary = [r for r in records if "reading from the primary instead" in r.getMessage()]
    back = [r for r in records if "reading from the replica" in r.getMessage()]
    assert len(to_primary) == 1, [r.getMessage() for r in records]
    assert to_primary[0].levelno == logging.WARNING
    assert f"127.0.0.1:{standby.port}" in to_primary[0].getMessage()
    assert len(back) == 1, [r.getMessage() for r in records]
    assert back[0].levelno == logging.INFO


def _wait_for(condition: object, timeout_s: float) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


# --- doctor: lag from both ends --------------------------------------------------------------


DoctorRun = Callable[..., tuple[int, dict[str, Any]]]


def _cli(*args: str, database: URL, replica: URL | None = None) -> subprocess.CompletedProcess[str]:
    """`platform-db ARGS` in a process of its own, as cron or an operator runs it."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "POSTGRES_REPLICA_URL", "POSTGRES_REPLICA_MAX_LAG_MS")
    }
    env["DATABASE_URL"] = database.render_as_string(hide_password=False)
    if replica is not None:
        env["POSTGRES_REPLICA_URL"] = replica.render_as_string(hide_password=False)
    return subprocess.run(
        [sys.executable, "-m", "platform_db.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def run_doctor(database_url: URL, replica_url: URL) -> DoctorRun:
    """`platform-db doctor --json ARGS`, by default with DATABASE_URL on the primary and
    POSTGRES_REPLICA_URL on the standby."""

    def run(
        *args: str, database: URL = database_url, replica: URL | None = replica_url
    ) -> tuple[int, dict[str, Any]]:
        result = _cli("doctor", "--json", *args, database=database, replica=replica)
        assert result.returncode in (0, 1), result.stderr
        report = json.loads(result.stdout)
        assert isinstance(report, dict)
        return result.returncode, report

    return run


def _alerts(report: dict[str, Any], metric: str) -> list[dict[str, Any]]:
    alerts = report["alerts"]
    assert isinstance(alerts, list)
    return [a for a in alerts if a["metric"] == metric]


def test_doctor_reports_replication_lag_from_both_ends_and_alerts_over_the_threshold(
    run_doctor: DoctorRun,
    database_url: URL,
    standby: Standby,
    engine: Engine,
    a: SeededTenant,
) -> None:
    standby.wait_for_replay()
    # Generous here: the standby replays the whole test server, which others may be
    # writing to, and its lag reads as the age of its last replayed commit whenever WAL is
    # in flight.
    _, report = run_doctor("--max-replica-lag-ms", "10000")
    replication = report["replication"]
    assert isinstance(replication, dict)
    assert replication["role"] == "primary"
    mine = [s for s in replication["standbys"] if s["slot_name"] == standby.slot]
    assert len(mine) == 1, replication["standbys"]
    assert mine[0]["state"] == "streaming"
    replica = replication["replica"]
    assert replica["reachable"] is True
    assert replica["in_recovery"] is True
    assert replica["receiving"] is True
    assert 0 <= replica["lag_ms"] < 10000
    assert replica["hot_standby_feedback"] in ("on", "off")
    assert _alerts(report, "replication_lag") == []

    standby.pause_replay()
    try:
        _new_lead(engine, a.tenant_id, "doctor-lag")
        _wait_for(
            lambda: (standby.scalar(LAG_SQL_TEXT, database=str(database_url.database)) or 0) > 600,
            20,
        )
        code, report = run_doctor("--max-replica-lag-ms", "500")
        lagging = _alerts(report, "replication_lag")
        assert [a["subject"] for a in lagging if "replica" in str(a["subject"])] == [
            f"the replica 127.0.0.1:{standby.port}"
        ], lagging
        alert = next(x for x in lagging if "replica" in str(x["subject"]))
        assert alert["severity"] == "warning"
        assert isinstance(alert["value"], float)
        assert alert["value"] > 500
        assert alert["threshold"] == 500
        assert "replay is paused" in str(alert["detail"])
        assert code == 1
        assert "replication_lag" in str(report["headline"])
        # The primary's end sees the same standby behind: WAL not replayed yet.
        replication = report["replication"]
        assert isinstance(replication, dict)
        mine = [s for s in replication["standbys"] if s["slot_name"] == standby.slot]
        assert mine[0]["replay_bytes_behind"] > 0
        # A threshold above the lag: no alert.
        _, relaxed = run_doctor("--max-replica-lag-ms", "3600000")
        assert _alerts(relaxed, "replication_lag") == []
    finally:
        standby.resume_replay()
        standby.wait_for_replay()


def test_doctor_on_the_standby_itself_reports_it_as_a_standby(
    run_doctor: DoctorRun, database_url: URL, standby: Standby
) -> None:
    on_standby = standby.url(str(database_url.database))
    _, report = run_doctor(database=on_standby, replica=None)
    replication = report["replication"]
    assert isinstance(replication, dict)
    assert replication["role"] == "standby"
    assert replication["standby"]["in_recovery"] is True
    assert replication["standby"]["receiver_status"] == "streaming"  # a superuser sees it


# --- jobs only on the primary ----------------------------------------------------------------


def test_maintain_refuses_to_run_on_a_standby(database_url: URL, standby: Standby) -> None:
    from platform_db.maintenance import MaintenanceRefused, maintain  # noqa: PLC0415

    on_standby = standby.url(str(database_url.database))
    admin = create_engine(on_standby, poolclass=NullPool)
    try:
        with pytest.raises(
            MaintenanceRefused, match=r"is a standby \(pg_is_in_recovery\(\) is true\)"
        ):
            maintain(admin)
    finally:
        admin.dispose()
    result = _cli("maintain", database=on_standby)
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    assert result.stderr.startswith("platform-db: maintain: refused: "), result.stderr
    assert "run on the primary only" in result.stderr
    assert "point DATABASE_URL at the primary" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    as_json = _cli("maintain", "--json", database=on_standby)
    assert as_json.returncode == 1
    assert "is a standby" in json.loads(as_json.stdout)["refused"]


@pytest.mark.parametrize(
    "job",
    [
        "SELECT platform.refresh_performance_views()",
        "SELECT * FROM platform.ensure_form_submission_partitions(3)",
        "SELECT platform.snapshot_performance_metrics()",
        "SELECT platform.cleanup_old_performance_metrics(interval '30 days')",
    ],
)
def test_the_jobs_themselves_are_refused_by_a_standby(
    job: str, database_url: URL, standby: Standby
) -> None:
    """What pg_cron or a hand-typed call would run: the standby refuses each, changing
    nothing (read-only during recovery)."""
    admin = create_engine(standby.url(str(database_url.database)), poolclass=NullPool)
    try:
        with admin.connect() as conn, pytest.raises(DBAPIError) as info:
            conn.execute(text(job))
    finally:
        admin.dispose()
    assert sqlstate(info.value) == "25006", info.value
    assert "read-only transaction" in str(info.value.orig)


# --- recovery conflicts ----------------------------------------------------------------------


@pytest.fixture
def conflict_prone(standby: Standby, engine: Engine) -> Iterator[Standby]:
    """The standby cancels a conflicting query after 100 ms; restored afterwards."""
    standby.configure(
        hot_standby_feedback="off",
        max_standby_streaming_delay="100ms",
        wal_receiver_status_interval="1s",
    )
    _wait_for(lambda: _slot_xmin(engine, standby.slot) is None, 20)
    try:
        yield standby
    finally:
        standby.configure(
            hot_standby_feedback="off",
            max_standby_streaming_delay="30s",
            wal_receiver_status_interval="10s",
        )
        # Nothing of the standby's holds back VACUUM on the (shared) primary any more.
        _wait_for(lambda: _slot_xmin(engine, standby.slot) is None, 30)


def _slot_xmin(engine: Engine, slot: str) -> object:
    with engine.connect() as conn:
        return conn.scalar(
            text("SELECT xmin FROM pg_replication_slots WHERE slot_name = :s"), {"s": slot}
        )


LONG_READ = text("SELECT count(*) AS n, pg_sleep(:s) FROM leads WHERE source = 'conflict'")


def _rows_to_conflict_over(engine: Engine, standby: Standby, tenant: uuid.UUID) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO leads (tenant_id, email, source) "
                "SELECT :t, 'conflict-' || g || '-' || md5(random()::text) || '@x.example.com', "
                "'conflict' FROM generate_series(1, 200) g"
            ),
            {"t": tenant},
        )
    standby.wait_for_replay()


def _remove_them_while_the_replica_reads(engine: Engine, standby: Standby, database: str) -> None:
    """Once the standby's long read runs: delete its rows on the primary and VACUUM them."""
    _wait_for(
        lambda: (
            standby.scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                "AND pid <> pg_backend_pid() AND query LIKE '%pg_sleep%conflict%'",
                database=database,
            )
            == 1
        ),
        10,
    )
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM leads WHERE source = 'conflict'"))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM leads"))


def test_a_recovery_conflict_is_reported_clearly_and_retried_once(
    db: Database,
    a: SeededTenant,
    engine: Engine,
    conflict_prone: Standby,
    database_url: URL,
) -> None:
    standby = conflict_prone
    _rows_to_conflict_over(engine, standby, a.tenant_id)
    attempts: list[BaseException | int] = []

    def report() -> int:
        # The first attempt would read for a minute: the VACUUM's cleanup reaches the
        # standby long before (however busy its replay), which cancels it 100 ms later.
        # The retry is quick.
        pause = 60 if not attempts else 0
        try:
            with db.session(tenant_id=a.tenant_id, pool="analytics") as s, s.begin():
                n = int(s.execute(LONG_READ, {"s": pause}).one().n)
        except ReplicaConflictError as exc:
            attempts.append(exc)
            raise
        attempts.append(n)
        return n

    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(retry_read, report, attempts=2, backoff_s=0.01)
        _remove_them_while_the_replica_reads(engine, standby, str(database_url.database))
        result = future.result(timeout=120)
    assert result == 0, attempts  # the retry read after the delete had been replayed
    assert len(attempts) == 2, attempts
    first = attempts[0]
    assert isinstance(first, ReplicaConflictError)
    assert is_retryable(first)
    message = str(first)
    assert "cancelled by a recovery conflict" in message
    assert "conflict with recovery" in message
    assert f"127.0.0.1:{standby.port}" in message
    assert "hot_standby_feedback" in message
    assert "max_standby_streaming_delay" in message
    assert "docs/SCALING.md" in message


def test_hot_standby_feedback_avoids_the_conflict_at_the_cost_of_dead_rows_on_the_primary(
    db: Database,
    a: SeededTenant,
    engine: Engine,
    conflict_prone: Standby,
    database_url: URL,
) -> None:
    standby = conflict_prone
    standby.configure(hot_standby_feedback="on")
    _wait_for(lambda: _slot_xmin(engine, standby.slot) is not None, 20)
    _rows_to_conflict_over(engine, standby, a.tenant_id)

    def long_report() -> int:
        with db.session(tenant_id=a.tenant_id, pool="analytics") as s, s.begin():
            return int(s.execute(LONG_READ, {"s": 3}).one().n)

    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(long_report)
        _remove_them_while_the_replica_reads(engine, standby, str(database_url.database))
        with engine.connect() as conn:
            kept = conn.scalar(
                text("SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = 'leads'::regclass")
            )
        assert future.result(timeout=60) == 200  # not cancelled: it saw its snapshot
    # The cost: VACUUM on the primary had to keep the deleted rows the standby still read.
    assert isinstance(kept, int)
    assert kept >= 200


# --- the benchmark option ---------------------------------------------------------------------


def test_bench_replica_runs_the_dashboard_and_range_classes_on_the_replica(
    server_url: URL, standby: Standby
) -> None:
    from platform_db.bench.replica import render_replica_text, run_replica_bench  # noqa: PLC0415
    from platform_db.bench.runner import BenchConfig  # noqa: PLC0415
    from platform_db.bench.seed import SeedConfig, run_seed  # noqa: PLC0415
    from tests.conftest import temporary_database  # noqa: PLC0415

    with temporary_database(server_url, migrate=True) as bench_db:
        today = datetime.now(UTC).date()
        run_seed(
            bench_db, SeedConfig(tenants=6, rows_per_tenant=300, months=3, seed=5, as_of=today)
        )
        standby.wait_for_replay()
        on_standby = standby.url(str(bench_db.database))
        commits = "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        before = standby.scalar(commits, database=str(bench_db.database))
        report = run_replica_bench(
            bench_db, on_standby, BenchConfig(clients=2, duration_s=2, warmup_s=0, seed=4)
        )
        after = standby.scalar(commits, database=str(bench_db.database))
    json.dumps(report, default=str)
    assert report["replica"] == f"127.0.0.1:{standby.port}"
    runs = report["runs"]
    assert set(runs) == {"primary_only", "replica"}
    for name, run in runs.items():
        assert not run["errors"], (name, run["error_samples"])
        for cls in ("dashboard_read", "submissions_range"):
            assert run["classes"][cls]["count"] > 0, (name, cls)
        assert run["replication_lag"]["samples"] > 0
        assert run["replication_lag"]["errors"] == []
    assert runs["primary_only"]["analytics_routes"] == {}  # no replica configured
    assert runs["replica"]["analytics_routes"]["replica"] > 0
    assert after > before  # the standby served transactions of the bench database
    text_report = render_replica_text(report)
    assert "replica p50" in text_report
    assert "Replication lag during each run" in text_report
