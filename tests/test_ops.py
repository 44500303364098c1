"""Monitoring, alerts, partition maintenance and the doctor/maintain commands.

Each alert is made true in a database of its own and must then appear; with the
condition false it must stay quiet. Statistics are flushed explicitly
(pg_stat_force_next_flush, PostgreSQL 15+) so the tests do not wait for the collector.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from platform_db.maintenance import doctor, maintain
from platform_db.maintenance.routine import ADVISORY_LOCK_CLASS
from platform_db.migration import runner as migrations
from tests.conftest import temporary_database
from tests.factories import new_form, new_tenant


@pytest.fixture(scope="module")
def ops_url(server_url: URL, database_url: URL) -> Iterator[URL]:
    """A migrated database of this module's own, so statistics start from zero."""
    del database_url  # keeps the cluster roles in use while this database comes and goes
    with temporary_database(server_url, migrate=True) as url:
        yield url


@pytest.fixture(scope="module")
def ops_engine(ops_url: URL) -> Iterator[Engine]:
    engine = create_engine(ops_url, poolclass=NullPool)
    yield engine
    engine.dispose()


def flush_stats(conn: Connection) -> None:
    conn.execute(text("SELECT pg_stat_force_next_flush()"))


def alerts(engine: Engine, **thresholds: Any) -> list[dict[str, Any]]:
    args = ", ".join(f"{k} => :{k}" for k in thresholds)
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_stat_clear_snapshot()"))
        rows = conn.execute(
            text(f"SELECT * FROM platform.check_performance_alerts({args})"), thresholds
        )
        return [dict(r._mapping) for r in rows]


def metrics(found: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    return [a for a in found if a["metric"] == metric]


def pg_stat_statements_usable(engine: Engine) -> bool:
    with engine.connect() as conn:
        preloaded = "pg_stat_statements" in (
            conn.scalar(text("SHOW shared_preload_libraries")) or ""
        )
    return preloaded


def test_unused_index_alert(ops_engine: Engine) -> None:
    with ops_engine.begin() as conn:
        tenant = new_tenant(conn)
        conn.execute(
            text(
                "INSERT INTO leads (tenant_id, email) "
                "SELECT :t, 'u' || g || '@example.org' FROM generate_series(1, 50) g"
            ),
            {"t": tenant},
        )
    for _ in range(5):
        with ops_engine.begin() as conn:
            conn.execute(text("SELECT count(*) FROM leads"))
            flush_stats(conn)
    # Quiet while the table is not busy enough to judge ...
    assert not [
        a
        for a in metrics(alerts(ops_engine), "unused_index")
        if a["subject"] == "ix_leads_tenant_email"
    ]
    # ... and while nothing has been observed for a week: a database minutes old.
    assert metrics(alerts(ops_engine, min_table_scans=0), "unused_index") == []
    with ops_engine.begin() as conn:
        # A retired (detached) partition: its indexes are never anybody's to scan.
        conn.execute(
            text(
                "CREATE TABLE form_submissions_1999_01 PARTITION OF form_submissions "
                "FOR VALUES FROM ('1999-01-01') TO ('1999-02-01')"
            )
        )
        conn.execute(text("ALTER TABLE form_submissions DETACH PARTITION form_submissions_1999_01"))
        flush_stats(conn)
        # The hourly snapshot of scan counts, as if taken 8 days ago (detached ones too).
        conn.execute(
            text(
                "INSERT INTO platform.performance_metrics (captured_at, metric, value, details) "
                "SELECT now() - interval '8 days', 'index_scans', count(*), "
                "jsonb_object_agg(parent_index, scans) FROM (SELECT parent_index, "
                "sum(idx_scan) AS scans FROM platform.index_usage_stats GROUP BY 1) i"
            )
        )
        detached = set(
            conn.scalars(
                text(
                    "SELECT index_name FROM platform.index_usage_stats "
                    "WHERE detached_partition AND table_name = 'form_submissions_1999_01'"
                )
            )
        )
    try:
        assert detached
        everything = metrics(alerts(ops_engine, min_table_scans=0), "unused_index")
        assert everything
        assert not detached & {a["subject"] for a in everything}
        # ... and reported once it is busy and a week was observed.
        found = metrics(alerts(ops_engine, min_table_scans=5), "unused_index")
    finally:
        with ops_engine.begin() as conn:
            conn.execute(text("DROP TABLE form_submissions_1999_01"))
            conn.execute(
                text("DELETE FROM platform.performance_metrics WHERE metric = 'index_scans'")
            )
    assert "ix_leads_tenant_email" in {a["subject"] for a in found}
    assert all(a["severity"] == "warning" for a in found)
    # Unique indexes enforce constraints: never reported as unused.
    assert "uq_users_tenant_email" not in {a["subject"] for a in found}


def test_bloat_alert(ops_engine: Engine) -> None:
    with ops_engine.begin() as conn:
        tenant = new_tenant(conn)
        conn.execute(
            text(
                "INSERT INTO pages (tenant_id, slug, title) "
                "SELECT :t, 'p' || g, 'Page' FROM generate_series(1, 3000) g"
            ),
            {"t": tenant},
        )
        flush_stats(conn)
    assert not [
        a for a in metrics(alerts(ops_engine), "table_bloat") if a["subject"] == "public.pages"
    ]
    with ops_engine.begin() as conn:
        conn.execute(text("DELETE FROM pages WHERE tenant_id = :t AND slug <> 'p1'"), {"t": tenant})
        flush_stats(conn)
    found = [
        a for a in metrics(alerts(ops_engine), "table_bloat") if a["subject"] == "public.pages"
    ]
    assert len(found) == 1
    assert float(found[0]["value"]) > 0.9
    assert found[0]["severity"] == "critical"
    with ops_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM pages"))
        flush_stats(conn)
    assert not [
        a for a in metrics(alerts(ops_engine), "table_bloat") if a["subject"] == "public.pages"
    ]


def test_cache_and_connection_alerts_follow_their_thresholds(ops_engine: Engine) -> None:
    with ops_engine.begin() as conn:
        tenant = new_tenant(conn)
        conn.execute(
            text(
                "INSERT INTO users (tenant_id, email) "
                "SELECT :t, 'c' || g || '@example.org' FROM generate_series(1, 20000) g"
            ),
            {"t": tenant},
        )
        conn.execute(text("SELECT count(*) FROM users"))
        flush_stats(conn)
    assert metrics(alerts(ops_engine), "cache_hit_ratio") == []
    impossible = metrics(alerts(ops_engine, cache_hit_threshold=1.01), "cache_hit_ratio")
    assert {a["subject"] for a in impossible} >= {"tables"}
    assert metrics(alerts(ops_engine), "connections") == []
    crowded = metrics(alerts(ops_engine, connection_ratio_threshold=0.0001), "connections")
    assert len(crowded) == 1


def test_blocked_queries_alert(ops_engine: Engine) -> None:
    with ops_engine.begin() as conn:
        tenant = new_tenant(conn)
    holder = ops_engine.connect()
    holder.begin()
    holder.execute(text("UPDATE tenants SET name = 'held' WHERE id = :t"), {"t": tenant})
    errors: list[BaseException] = []

    def wait_for_lock() -> None:
        try:
            with ops_engine.begin() as conn:
                conn.execute(text("SET LOCAL lock_timeout = '20s'"))
                conn.execute(
                    text("UPDATE tenants SET name = 'waiter' WHERE id = :t"), {"t": tenant}
                )
        except BaseException as exc:
            errors.append(exc)

    waiter = threading.Thread(target=wait_for_lock)
    waiter.start()
    try:
        deadline = dt.datetime.now() + dt.timedelta(seconds=10)
        found: list[dict[str, Any]] = []
        while dt.datetime.now() < deadline and not found:
            found = metrics(alerts(ops_engine, blocked_seconds=0), "blocked_queries")
        assert found, "a session waiting on a row lock was not reported"
        with ops_engine.connect() as conn:
            pairs = conn.execute(
                text("SELECT blocked_pid, blocking_pid FROM platform.blocking_locks")
            ).all()
            holder_pid = holder.scalar(text("SELECT pg_backend_pid()"))
        assert holder_pid in {p[1] for p in pairs}
    finally:
        holder.rollback()
        holder.close()
        waiter.join(30)
    assert not errors
    assert metrics(alerts(ops_engine, blocked_seconds=0), "blocked_queries") == []


def test_partition_alerts(ops_engine: Engine) -> None:
    assert metrics(alerts(ops_engine), "partitions_ahead") == []
    assert len(metrics(alerts(ops_engine, min_partitions_ahead=4), "partitions_ahead")) == 1
    with ops_engine.begin() as conn:
        tenant = new_tenant(conn)
        form = new_form(conn, tenant)
        conn.execute(
            text(
                "INSERT INTO form_submissions (tenant_id, form_id, created_at) "
                "VALUES (:t, :f, '2001-02-03T04:05:06Z')"
            ),
            {"t": tenant, "f": form},
        )
    found = metrics(alerts(ops_engine), "default_partition_rows")
    assert [a["value"] for a in found] == [1]
    with ops_engine.begin() as conn:
        conn.execute(
            text("SELECT * FROM platform.ensure_form_submission_partitions(0, DATE '2001-02-01')")
        )
    assert metrics(alerts(ops_engine), "default_partition_rows") == []


def test_partition_alert_sees_a_gap_behind_far_future_partitions(ops_engine: Engine) -> None:
    """Partitions for 2200 and 9999 (implausible imported dates) do not count as ahead."""
    with ops_engine.connect() as conn, conn.begin() as tx:
        conn.execute(text("SELECT * FROM platform.ensure_form_submission_partitions(3)"))
        for name, lo, hi in (
            ("form_submissions_2200_06", "2200-06-01", "2200-07-01"),
            ("form_submissions_9999_12", "9999-12-01", "9999-12-31"),
        ):
            conn.execute(
                text(
                    f"CREATE TABLE {name} PARTITION OF form_submissions "
                    f"FOR VALUES FROM ('{lo}') TO ('{hi}')"
                )
            )
        next_month = conn.scalar(
            text(
                "SELECT 'form_submissions_' || to_char(date_trunc('month', now() AT TIME ZONE "
                "'UTC') + interval '1 month', 'YYYY_MM')"
            )
        )
        conn.execute(text(f"ALTER TABLE form_submissions DETACH PARTITION {next_month}"))
        rows = (
            conn.execute(
                text(
                    "SELECT * FROM platform.check_performance_alerts() WHERE metric = 'partitions_ahead'"
                )
            )
            .mappings()
            .all()
        )
        tx.rollback()
    assert [(r["value"], r["severity"]) for r in rows] == [(0, "critical")]
    assert "has no partition" in rows[0]["detail"]


def test_pg_stat_statements_missing_is_reported_not_fatal(ops_engine: Engine) -> None:
    with ops_engine.connect() as conn:
        installed = conn.scalar(
            text("SELECT count(*) FROM pg_extension WHERE extname = 'pg_stat_statements'")
        )
        if installed:
            pytest.skip("pg_stat_statements is installed in this database")
        assert conn.execute(text("SELECT * FROM platform.slow_queries")).all() == []
        report = doctor(conn)
    info = metrics(report.alerts, "pg_stat_statements")
    assert len(info) == 1
    assert info[0]["severity"] == "info"
    assert "shared_preload_libraries" in info[0]["detail"]
    assert report.extensions["pg_stat_statements_usable"] is False


def test_slow_query_alert(server_url: URL, database_url: URL) -> None:
    del database_url
    with temporary_database(server_url, migrate=True) as url:
        engine = create_engine(url, poolclass=NullPool)
        if not pg_stat_statements_usable(engine):
            if os.environ.get("PLATFORM_DB_REQUIRE_PG_STAT_STATEMENTS") == "1":
                pytest.fail("pg_stat_statements is not in shared_preload_libraries")
            pytest.skip("pg_stat_statements is not preloaded on this server")
        with engine.begin() as conn:
            conn.execute(text("CREATE EXTENSION IF NOT EXISTS pg_stat_statements"))
            conn.execute(text("SELECT pg_stat_statements_reset()"))
        with engine.begin() as conn:
            conn.execute(text("SELECT 1"))
        assert metrics(alerts(engine), "slow_query") == []
        assert metrics(alerts(engine), "pg_stat_statements") == []
        for _ in range(2):
            with engine.begin() as conn:
                conn.execute(text("SELECT pg_sleep(0.15) /* platform-db slow test */"))
        found = metrics(alerts(engine), "slow_query")
        assert any("platform-db slow test" in a["detail"] for a in found)
        with engine.connect() as conn:
            slow = conn.execute(text("SELECT query, calls FROM platform.slow_queries")).all()
        assert any("pg_sleep" in q for q, _ in slow)
        engine.dispose()


def test_snapshot_and_cleanup_of_metrics(ops_engine: Engine) -> None:
    with ops_engine.begin() as conn:
        written = conn.scalar(text("SELECT platform.snapshot_performance_metrics()"))
        assert written is not None
        assert written >= 5
        conn.execute(
            text(
                "INSERT INTO platform.performance_metrics (captured_at, metric, value) "
                "VALUES (now() - interval '40 days', 'old', 1), (now() - interval '2 days', 'recent', 1)"
            )
        )
        deleted = conn.scalar(text("SELECT platform.cleanup_old_performance_metrics('30 days')"))
        assert deleted == 1
        kept = conn.scalar(
            text("SELECT count(*) FROM platform.performance_metrics WHERE metric = 'recent'")
        )
        assert kept == 1
    with pytest.raises(DBAPIError, match="at least 1 hour"), ops_engine.begin() as conn:
        conn.execute(text("SELECT platform.cleanup_old_performance_metrics('1 minute')"))


def _partitions(conn: Connection) -> set[str]:
    return set(
        conn.scalars(
            text(
                "SELECT inhrelid::regclass::text FROM pg_inherits WHERE inhparent = 'form_submissions'::regclass"
            )
        )
    )


def _month(months_back: int) -> dt.date:
    today = dt.datetime.now(dt.UTC).date()
    year, month = divmod(today.year * 12 + today.month - 1 - months_back, 12)
    return dt.date(year, month + 1, 1)


def test_retire_detaches_old_partitions_and_keeps_leads(ops_engine: Engine) -> None:
    first, second = _month(80), _month(79)
    first_name = f"form_submissions_{first:%Y_%m}"
    second_name = f"form_submissions_{second:%Y_%m}"
    with ops_engine.begin() as conn:
        conn.execute(
            text("SELECT * FROM platform.ensure_form_submission_partitions(1, :m)"), {"m": first}
        )
        tenant = new_tenant(conn)
        form = new_form(conn, tenant)
        created = dt.datetime.combine(first, dt.time(12), tzinfo=dt.UTC) + dt.timedelta(days=9)
        sid = conn.scalar(
            text(
                "INSERT INTO form_submissions (tenant_id, form_id, created_at) "
                "VALUES (:t, :f, :c) RETURNING id"
            ),
            {"t": tenant, "f": form, "c": created},
        )
        lead = conn.scalar(
            text(
                "INSERT INTO leads (tenant_id, email, source_submission_id, "
                "source_submission_created_at) VALUES (:t, 'kept@example.com', :s, :c) RETURNING id"
            ),
            {"t": tenant, "s": sid, "c": created},
        )
        assert {first_name, second_name} <= _partitions(conn)
    # 79 months ago lies inside the second month: only the first has ended before it.
    with ops_engine.begin() as conn:
        retired = conn.execute(
            text("SELECT * FROM platform.retire_form_submission_partitions(interval '79 months')")
        ).all()
    mine = {first_name, second_name}
    assert [tuple(r) for r in retired if r[0] in mine] == [(first_name, "detached", 1)]
    with ops_engine.begin() as conn:
        assert first_name not in _partitions(conn)
        assert second_name in _partitions(conn)
        # Detached, not lost: the table keeps its rows, and RLS.
        assert conn.scalar(text(f"SELECT count(*) FROM {first_name}")) == 1
        forced = conn.scalar(
            text("SELECT relforcerowsecurity FROM pg_class WHERE relname = :n"), {"n": first_name}
        )
        assert forced is True
        lead_row = conn.execute(
            text("SELECT email, source_submission_id FROM leads WHERE id = :l"), {"l": lead}
        ).one()
        assert tuple(lead_row) == ("kept@example.com", None)
        migrations.check(conn)  # a retired partition is not proposed for dropping
    with ops_engine.begin() as conn:
        dropped = conn.execute(
            text(
                "SELECT * FROM platform.retire_form_submission_partitions(interval '78 months', true)"
            )
        ).all()
        assert [tuple(d[:2]) for d in dropped if d[0] in mine] == [(second_name, "dropped")]
        assert conn.scalar(text("SELECT to_regclass(:n)"), {"n": second_name}) is None
        conn.execute(text(f"DROP TABLE {first_name}"))
    with pytest.raises(DBAPIError, match="at least 1 month"), ops_engine.begin() as conn:
        conn.execute(
            text("SELECT * FROM platform.retire_form_submission_partitions(interval '3 days')")
        )


def test_maintain_recreates_partitions_ahead_with_rls(ops_engine: Engine) -> None:
    now = dt.datetime.now(dt.UTC)
    year, month = divmod(now.year * 12 + now.month - 1 + 3, 12)
    last = f"form_submissions_{year:04d}_{month + 1:02d}"
    with ops_engine.begin() as conn:
        conn.execute(text(f"ALTER TABLE form_submissions DETACH PARTITION {last}"))
        conn.execute(text(f"DROP TABLE {last}"))
    messages: list[str] = []
    steps = maintain(ops_engine, progress=messages.append)
    by_name = {s.name: s for s in steps}
    created = by_name["create partitions ahead"].result
    assert isinstance(created, list)
    assert [r["partition_name"] for r in created] == [last]
    assert by_name["retire old partitions"].skipped
    assert any("done" in m for m in messages)
    with ops_engine.connect() as conn:
        flags = conn.execute(
            text(
                "SELECT relrowsecurity, relforcerowsecurity, "
                "(SELECT count(*) FROM pg_policy WHERE polrelid = c.oid), pg_get_userbyid(relowner) "
                "FROM pg_class c WHERE relname = :n"
            ),
            {"n": last},
        ).one()
        app_privileges = conn.scalar(
            text("SELECT has_table_privilege('platform_app', CAST(:n AS regclass), 'SELECT')"),
            {"n": last},
        )
    assert tuple(flags) == (True, True, 1, "platform_owner")
    assert app_privileges is False


def _drop_last_partition_ahead(engine: Engine) -> str:
    now = dt.datetime.now(dt.UTC)
    year, month = divmod(now.year * 12 + now.month - 1 + 3, 12)
    last = f"form_submissions_{year:04d}_{month + 1:02d}"
    with engine.begin() as conn:
        conn.execute(text("SELECT * FROM platform.ensure_form_submission_partitions(3)"))
        conn.execute(text(f"ALTER TABLE form_submissions DETACH PARTITION {last}"))
        conn.execute(text(f"DROP TABLE {last}"))
    return last


@pytest.fixture
def bounded_engine(ops_url: URL) -> Iterator[Engine]:
    """ops_engine with a 15 s lock_timeout: a maintain that ignores its own cannot hang here."""
    engine = create_engine(
        ops_url, poolclass=NullPool, connect_args={"options": "-c lock_timeout=15000"}
    )
    yield engine
    engine.dispose()


@contextlib.contextmanager
def _reader_holding_form_submissions(engine: Engine) -> Iterator[None]:
    """A long report: a transaction that has read form_submissions and stays open."""
    with engine.connect() as holder:
        holder.execute(text("SELECT count(*) FROM form_submissions"))
        yield
        holder.rollback()


def test_maintain_gives_up_on_a_locked_step_and_runs_the_others(
    ops_engine: Engine, bounded_engine: Engine
) -> None:
    last = _drop_last_partition_ahead(ops_engine)
    with _reader_holding_form_submissions(ops_engine):
        start = time.perf_counter()
        steps = maintain(bounded_engine, lock_timeout="300ms")
        elapsed = time.perf_counter() - start
    by_name = {s.name: s for s in steps}
    partitions = by_name["create partitions ahead"]
    assert partitions.failed, partitions
    assert partitions.timed_out, partitions
    assert "lock_timeout 300ms" in (partitions.error or "")
    # It did not queue for make_engine's 10 s, and the steps after it all ran.
    assert elapsed < 5, elapsed
    later = [s for s in steps if s.name != "create partitions ahead"]
    assert [s.name for s in later if s.failed] == []
    assert by_name["refresh materialized views"].result is not None
    assert by_name["snapshot performance metrics"].result is not None
    # The next run, with the reader gone, retries it.
    again = {s.name: s for s in maintain(ops_engine, lock_timeout="300ms")}
    created = again["create partitions ahead"].result
    assert isinstance(created, list)
    assert [r["partition_name"] for r in created] == [last]


def test_maintain_lock_timeout_defaults_to_the_migration_variable(
    ops_engine: Engine, bounded_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    _drop_last_partition_ahead(ops_engine)
    monkeypatch.setenv("PLATFORM_DB_MIGRATION_LOCK_TIMEOUT", "200ms")
    with _reader_holding_form_submissions(ops_engine):
        steps = maintain(bounded_engine)
    failed = [s for s in steps if s.failed]
    assert [s.name for s in failed] == ["create partitions ahead"]
    assert "lock_timeout 200ms" in (failed[0].error or "")
    assert not any(s.failed for s in maintain(ops_engine))


def test_an_overlapping_maintain_skips_the_step_the_other_run_holds(ops_engine: Engine) -> None:
    with ops_engine.connect() as other:
        taken = other.scalar(
            text("SELECT pg_try_advisory_xact_lock(CAST(:c AS integer), hashtext(:n))"),
            {"c": ADVISORY_LOCK_CLASS, "n": "refresh materialized views"},
        )
        assert taken
        steps = {s.name: s for s in maintain(ops_engine, lock_timeout="300ms")}
        other.rollback()
    refresh = steps["refresh materialized views"]
    assert not refresh.failed
    assert refresh.skipped == "another maintain run is running this step"
    assert not any(s.failed for s in steps.values())


def test_cli_maintain_reports_each_failed_step_and_exits_non_zero(
    ops_url: URL, ops_engine: Engine
) -> None:
    _drop_last_partition_ahead(ops_engine)
    with _reader_holding_form_submissions(ops_engine):
        start = time.perf_counter()
        result = _cli(
            "maintain", "--quiet", url=ops_url, env={"PLATFORM_DB_MIGRATION_LOCK_TIMEOUT": "300ms"}
        )
        elapsed = time.perf_counter() - start
    assert result.returncode == 1, result.stderr
    assert elapsed < 8, elapsed
    failures = [line for line in result.stderr.splitlines() if "step failed" in line]
    assert len(failures) == 1, result.stderr
    assert failures[0].startswith("platform-db: maintain: step failed: create partitions ahead: ")
    assert "Traceback" not in result.stderr
    assert "refresh materialized views" in result.stdout
    assert "FAILED" in result.stdout
    # Nothing holds the table now: the next run does the step and exits 0.
    assert _cli("maintain", "--quiet", url=ops_url).returncode == 0


def test_cli_maintain_refuses_a_bad_lock_timeout_in_one_line(ops_url: URL) -> None:
    result = _cli("maintain", url=ops_url, env={"PLATFORM_DB_MIGRATION_LOCK_TIMEOUT": "forever"})
    assert result.returncode == 2
    assert "PLATFORM_DB_MIGRATION_LOCK_TIMEOUT" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def _cli(
    *args: str, url: URL | str | None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    extra = env or {}
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"} | extra
    if url is not None:
        env["DATABASE_URL"] = (
            url if isinstance(url, str) else url.render_as_string(hide_password=False)
        )
    return subprocess.run(
        [sys.executable, "-m", "platform_db.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_doctor_json(ops_url: URL) -> None:
    result = _cli("doctor", "--json", url=ops_url)
    assert result.returncode in (0, 1), result.stderr
    report = json.loads(result.stdout)
    assert {
        "alerts",
        "slow_queries",
        "index_usage",
        "bloat",
        "cache_hit",
        "partitions",
        "settings",
    } <= set(report)
    assert report["partitions"]["months_ahead"] >= 3
    assert report["partitions"]["rls_forced_everywhere"] is True
    assert report["healthy"] == (result.returncode == 0)
    assert {s["name"] for s in report["settings"]} >= {"shared_buffers", "shared_preload_libraries"}
    human = _cli("doctor", url=ops_url)
    assert "Server settings" in human.stdout


def test_cli_maintain_and_current(ops_url: URL) -> None:
    result = _cli("maintain", "--json", url=ops_url)
    assert result.returncode == 0, result.stderr
    steps = {s["step"]: s for s in json.loads(result.stdout)}
    assert "create partitions ahead" in steps
    assert "create partitions ahead" in result.stderr  # progress
    current = _cli("current", "--json", url=ops_url)
    assert current.returncode == 0, current.stderr
    assert json.loads(current.stdout)["up_to_date"] is True


def test_cli_errors_are_clear_and_hide_passwords() -> None:
    result = _cli("doctor", url="postgresql://admin:s3cret-pw@/platform")
    assert result.returncode == 2
    assert "names no host" in result.stderr
    assert "s3cret-pw" not in result.stderr + result.stdout
    unreachable = _cli("doctor", url="postgresql://admin:s3cret-pw@127.0.0.1:1/platform")
    assert unreachable.returncode == 1
    assert "database error" in unreachable.stderr
    assert "s3cret-pw" not in unreachable.stderr + unreachable.stdout
    missing = _cli("doctor", url=None)
    assert missing.returncode == 2
    assert "DATABASE_URL is not set" in missing.stderr


def test_doctor_report_is_json_serialisable(ops_engine: Engine) -> None:
    with ops_engine.connect() as conn:
        report = doctor(conn)
    json.dumps(report.as_dict(), default=str)
    assert isinstance(report.partitions["default_rows"], int)


def test_seq_scan_heavy_table_alert(ops_engine: Engine) -> None:
    with ops_engine.begin() as conn:
        tenant = new_tenant(conn)
        conn.execute(
            text(
                "INSERT INTO leads (tenant_id, email) "
                "SELECT :t, 's' || g || '@example.org' FROM generate_series(1, 12000) g"
            ),
            {"t": tenant},
        )
        conn.execute(text("ANALYZE leads"))
        flush_stats(conn)
    quiet = [
        a
        for a in metrics(alerts(ops_engine, seq_rows_threshold=50_000), "seq_scan_heavy")
        if a["subject"] == "public.leads"
    ]
    assert quiet == []
    for _ in range(6):
        with ops_engine.begin() as conn:
            # phone has no index: every such query reads the whole table.
            conn.execute(text("SELECT count(*) FROM leads WHERE phone = '555'"))
            flush_stats(conn)
    found = [
        a
        for a in metrics(alerts(ops_engine, seq_rows_threshold=50_000), "seq_scan_heavy")
        if a["subject"] == "public.leads"
    ]
    assert len(found) == 1
    assert "sequential scans" in found[0]["detail"]


def test_doctor_on_an_unmigrated_database_names_the_command(
    server_url: URL, database_url: URL
) -> None:
    del database_url
    with temporary_database(server_url, migrate=False) as url:
        result = _cli("doctor", url=url)
    assert result.returncode == 1
    assert "has not been migrated" in result.stderr
    assert "platform-db upgrade" in result.stderr
    assert "does not exist" not in result.stderr + result.stdout


def test_doctor_as_the_app_login_names_the_login_to_use(ops_url: URL, app_login: URL) -> None:
    result = _cli("doctor", url=app_login.set(database=ops_url.database))
    assert result.returncode == 1
    assert "migration login" in result.stderr
    assert "permission denied" not in result.stderr


def test_a_warning_setting_is_not_healthy(ops_engine: Engine) -> None:
    with ops_engine.connect() as conn:
        conn.execute(text("SET track_counts = off"))
        report = doctor(conn)
    found = [a for a in report.alerts if a["metric"] == "setting"]
    assert "track_counts" in {a["subject"] for a in found}
    assert not report.healthy
    assert "attention needed" in report.headline
    assert "track_counts" in report.headline


def test_doctor_checks_the_services_environment(ops_url: URL) -> None:
    from platform_db.maintenance import check_environment  # noqa: PLC0415

    primary = ops_url.render_as_string(hide_password=False)
    bad = check_environment(
        {
            "DATABASE_URL": primary,
            "POSTGRES_POOL_MAX": "0",
            "POSTGRES_STATEMENT_TIMEOUT": "soon",
            "POSTGRES_REPLICA_URL": "postgresql://postgres@127.0.0.1:1/nothing",
        },
        connect_timeout_s=2,
    )
    subjects = {a["subject"] for a in bad}
    assert {"POSTGRES_POOL_MAX", "POSTGRES_STATEMENT_TIMEOUT", "POSTGRES_REPLICA_URL"} <= subjects
    assert all(a["severity"] == "critical" for a in bad)
    # A "replica" that is the primary: reachable, but reads would land on the primary.
    primary_as_replica = check_environment(
        {"DATABASE_URL": primary, "POSTGRES_REPLICA_URL": primary}
    )
    assert [a["severity"] for a in primary_as_replica] == ["warning"]
    assert check_environment({"DATABASE_URL": primary}) == []
    env = {**os.environ, "DATABASE_URL": primary, "POSTGRES_POOL_MIN": "-1"}
    result = subprocess.run(
        [sys.executable, "-m", "platform_db.cli", "doctor"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    assert "POSTGRES_POOL_MIN" in result.stdout.splitlines()[0]
