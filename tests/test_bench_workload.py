"""The benchmark's workload and report: correct, tenant-scoped results; the report's shape.

Every read class is run through a tenant session of the app login (RLS) and compared
with the same statement plus an explicit tenant filter run by the superuser: the same
rows, all of the tenant. Writes are checked by reading back. A short end-to-end run of
`run_bench` checks the report's shape; no timing is asserted anywhere.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, create_engine, select, text
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

from platform_db.bench import pgbench as pgb
from platform_db.bench.baseline import BaselineConfig
from platform_db.bench.report import render_html, render_text
from platform_db.bench.runner import BenchConfig, BenchError, require_loopback, run_bench
from platform_db.bench.seed import SeedConfig, conninfo, run_seed
from platform_db.bench.workload import (
    CLASSES,
    DEFAULT_MIX,
    Catalog,
    Request,
    draw_request,
    load_catalog,
    mix_from_text,
    run_request,
    select_statement,
)
from platform_db.models import FormSubmission, Lead
from platform_db.session.database import Database
from platform_db.session.settings import SYNC_DRIVER, with_driver
from platform_db.session.tenancy import TenantSession
from tests.conftest import temporary_database


def _rng(seed: object) -> random.Random:
    return random.Random(str(seed))  # noqa: S311 - benchmark parameters, not secrets


READS = tuple(c for c in CLASSES if c not in ("submission_insert",))


@pytest.fixture(scope="module")
def bench_db(server_url: URL) -> Iterator[URL]:
    with temporary_database(server_url, migrate=True) as url:
        today = dt.datetime.now(dt.UTC).date()
        run_seed(url, SeedConfig(tenants=10, rows_per_tenant=600, months=4, seed=3, as_of=today))
        yield url


@pytest.fixture(scope="module")
def catalog(bench_db: URL) -> Catalog:
    with psycopg.connect(conninfo(bench_db)) as conn:
        return load_catalog(conn)


@pytest.fixture(scope="module")
def super_engine(bench_db: URL) -> Iterator[Engine]:
    engine = create_engine(with_driver(bench_db, SYNC_DRIVER), poolclass=NullPool)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def app_engine_bench(bench_db: URL, app_login: URL) -> Iterator[Engine]:
    engine = create_engine(
        with_driver(app_login.set(database=bench_db.database), SYNC_DRIVER), poolclass=NullPool
    )
    yield engine
    engine.dispose()


def _largest(catalog: Catalog) -> Catalog:
    return Catalog.of([max(catalog.tenants, key=lambda t: t.rows)], catalog.now)


def _draw(cls: str, catalog: Catalog, rng: random.Random, **want: Any) -> Request:
    for _ in range(200):
        req = draw_request(cls, catalog, rng)
        if all((getattr(req, k) is not None) == v for k, v in want.items()):
            return req
    raise AssertionError(f"could not draw {cls} with {want}")


def _ids(rows: list[Any]) -> list[tuple[Any, ...]]:
    return [(r.tenant_id, getattr(r, "id", None)) for r in rows]


@pytest.mark.parametrize("cls", READS)
def test_read_classes_are_tenant_scoped_and_match_the_explicit_filter(
    cls: str, catalog: Catalog, super_engine: Engine, app_engine_bench: Engine
) -> None:
    rng = _rng(cls)
    one = _largest(catalog)
    tenant = one.tenants[0].id
    for _ in range(5):
        req = draw_request(cls, one, rng)
        with TenantSession(app_engine_bench, tenant_id=tenant) as s, s.begin():
            rls_rows = list(s.scalars(select_statement(req, explicit_tenant=False)))
        with TenantSession(super_engine) as s, s.begin():
            explicit = list(s.scalars(select_statement(req, explicit_tenant=True)))
        assert all(r.tenant_id == tenant for r in rls_rows)
        assert _ids(rls_rows) == _ids(explicit)
        if cls in ("user_by_email", "page_by_slug", "dashboard_read", "lead_update"):
            assert len(rls_rows) == 1


def test_reads_return_what_they_promise(
    catalog: Catalog, app_engine_bench: Engine, super_engine: Engine
) -> None:
    rng = _rng(5)
    one = _largest(catalog)
    tenant = one.tenants[0].id

    def run(req: Request) -> list[Any]:
        with TenantSession(app_engine_bench, tenant_id=tenant) as s, s.begin():
            return list(s.scalars(select_statement(req, explicit_tenant=False)))

    user = run(draw_request("user_by_email", one, rng))[0]
    assert user.email in one.tenants[0].emails
    req = draw_request("page_search", one, rng)
    pages = run(req)
    with super_engine.connect() as conn:
        for page in pages:
            matched = conn.exec_driver_sql(
                "SELECT search_vector @@ websearch_to_tsquery('english', %s) FROM pages "
                "WHERE tenant_id = %s AND id = %s",
                (req.text, page.tenant_id, page.id),
            ).scalar()
            assert matched
    first = run(_draw("lead_list", one, rng, after=False))
    assert len({lead.status for lead in first}) <= 1
    assert [lead.created_at for lead in first] == sorted(
        (lead.created_at for lead in first), reverse=True
    )
    later = _draw("lead_list", one, rng, after=True)
    assert later.after is not None
    page2 = run(later)
    anchor = later.lead
    assert anchor is not None
    assert all(lead.status == later.status for lead in page2)
    # Keyset: the page starts strictly after the anchor lead, in (created_at, id) DESC order.
    assert all((lead.created_at, lead.id) < (anchor.created_at, anchor.id) for lead in page2)
    req_range = draw_request("submissions_range", one, _rng(99))
    subs = run(req_range)
    assert req_range.since is not None
    assert req_range.until is not None
    assert all(req_range.since <= s.created_at < req_range.until for s in subs)
    assert [s.created_at for s in subs] == sorted((s.created_at for s in subs), reverse=True)


def test_writes_through_the_package(
    bench_db: URL, app_login: URL, catalog: Catalog, super_engine: Engine
) -> None:
    app = app_login.set(database=bench_db.database)
    rng = _rng(11)
    one = _largest(catalog)
    tenant = one.tenants[0]
    upd = draw_request("lead_update", one, rng)
    ins = draw_request("submission_insert", one, rng)
    assert upd.lead is not None

    def count_submissions() -> int:
        with TenantSession(super_engine) as s:
            return len(
                s.scalars(
                    select(FormSubmission.id).where(
                        FormSubmission.tenant_id == tenant.id, FormSubmission.form_id == ins.form
                    )
                ).all()
            )

    with TenantSession(super_engine) as s:
        lead_before = s.get(Lead, (tenant.id, upd.lead.id))
        assert lead_before is not None
    before = count_submissions()

    async def go() -> None:
        db = Database.from_env({"DATABASE_URL": app.render_as_string(hide_password=False)})
        try:
            assert (await run_request(db, upd, rng)).rows == 1
            assert (await run_request(db, ins, rng)).rows == 1
            # Reads through the package too (counts only; rows are checked above).
            for cls in READS:
                await run_request(db, draw_request(cls, one, rng), rng)
        finally:
            await db.dispose_async()

    asyncio.run(go())
    with TenantSession(super_engine) as s:
        lead_after = s.get(Lead, (tenant.id, upd.lead.id))
        assert lead_after is not None
    assert (lead_after.status, lead_after.score, lead_after.updated_at) != (
        lead_before.status,
        lead_before.score,
        lead_before.updated_at,
    )
    assert count_submissions() == before + 1


def test_pgbench_scripts_hold_the_workload_sql(catalog: Catalog, super_engine: Engine) -> None:
    scripts = pgb.build_scripts(super_engine, catalog, DEFAULT_MIX, seed=1, per_class=2)
    assert set(scripts) == set(pgb.VARIANTS)
    assert {s.cls for s in scripts["sql"]} == set(CLASSES)
    for s in scripts["sql_tx_rls"]:
        assert s.body.startswith("BEGIN;\nSET LOCAL app.current_tenant_id = '")
        assert s.body.endswith("COMMIT;\n")
    # With a tenant key (the test run has one), sealed for any backend at a given time.
    sealed = pgb.build_scripts(
        super_engine, catalog, DEFAULT_MIX, seed=1, per_class=2, sealed_at=time.time()
    )
    for s in sealed["sql_tx_rls"]:
        assert s.body.startswith("BEGIN;\nSELECT platform.set_tenant('")
        assert ".0." in s.body.split("\n")[1]
    plain = {s.cls: s.body for s in scripts["sql"]}
    assert "tenant_id = '" in plain["user_by_email"]
    assert "websearch_to_tsquery" in plain["page_search"]


def test_mix_and_loopback_are_checked() -> None:
    assert mix_from_text("page_search=0")["page_search"] == 0
    with pytest.raises(ValueError, match="unknown query class"):
        mix_from_text("nope=1")
    require_loopback(URL.create("postgresql", host="127.0.0.1", database="x"))
    with pytest.raises(BenchError, match="this machine only"):
        require_loopback(URL.create("postgresql", host="db.example.com", database="x"))
    with pytest.raises(BenchError, match="clients"):
        BenchConfig(clients=0)


def test_bench_end_to_end_report_shape(bench_db: URL) -> None:
    config = BenchConfig(
        clients=2,
        duration_s=1,
        warmup_s=0,
        pgbench_scale=1,
        label="smoke",
        seed=2,
        # The baseline runs by default; one short round of the mix here
        # (tests/test_bench_baseline.py covers it in full).
        baseline_config=BaselineConfig(
            rounds=1, duration_s=1, class_duration_s=1, warmup_s=0, classes=False
        ),
    )
    report = run_bench(bench_db, config)
    json.dumps(report, default=str)  # JSON-ready
    assert report["version"] == 1
    assert report["label"] == "smoke"
    w = report["workload"]
    assert w["overall"]["count"] > 0
    assert not w["errors"], w["error_samples"]
    for summary in [w["overall"], *w["classes"].values()]:
        assert set(summary) >= {"count", "throughput_per_s", "p50_ms", "p95_ms", "p99_ms"}
        assert summary["p50_ms"] <= summary["p95_ms"] <= summary["p99_ms"] <= summary["max_ms"]
    assert "main" in w["acquire"]
    assert w["server"]["index_scans"] > 0
    assert 0 < w["server"]["cache_hit_ratio"] <= 1
    assert set(report["baseline"]["ratios"]) >= {
        "client_cpu_a_over_b",
        "throughput_a_over_b",
        "server_cpu_a_over_c",
    }
    assert report["targets"][0]["target"] == "95% of queries under 100 ms"
    assert len(report["targets"]) == 8
    assert set(report["plans"]) <= set(CLASSES)
    assert any("Index" in line for p in report["plans"].values() for line in p["plan"])
    if pgb.find_pgbench():
        runs = report["pgbench"]["runs"]
        assert set(runs) == {"select_only", *pgb.VARIANTS}
        for run in runs.values():
            assert run["error"] is None, run["error"]
            assert run["overall"]["count"] > 0
        assert (
            report["comparison"]["overall"]["cost_ms_p50"]["rls_over_explicit_filter"] is not None
        )
    else:
        assert report["pgbench"]["available"] is False
    text = render_text(report)
    assert "Targets of the seed" in text
    page = render_html(report)
    assert page.count("<svg") >= 1
    assert "<script" not in page
    with psycopg.connect(conninfo(bench_db.set(database="postgres"))) as conn:
        gone = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (f"{bench_db.database}_pgbench",)
        ).fetchone()
        assert gone is None  # pgbench's own database is dropped after the run


def test_open_loop_run_keeps_its_rate_and_passes_it_to_pgbench(bench_db: URL) -> None:
    config = BenchConfig(
        clients=4,
        duration_s=2,
        warmup_s=0,
        pgbench_scale=1,
        rate=40.0,
        explain=False,
        baseline=False,
        label="open loop",
        seed=5,
    )
    report = run_bench(bench_db, config)
    assert report["config"]["rate"] == 40.0
    w = report["workload"]
    assert w["overall"]["count"] > 0
    assert not w["errors"], w["error_samples"]
    assert "open loop at 40 requests/s" in render_text(report)
    if pgb.find_pgbench():
        for run in report["pgbench"]["runs"].values():
            assert run["error"] is None, run["error"]
            assert "-R" in run["command"]
            assert run["overall"]["count"] > 0


async def test_open_loop_schedule_starts_each_request_when_due() -> None:
    from platform_db.bench.runner import _Schedule  # noqa: PLC0415

    schedule = _Schedule(500.0, _rng("schedule"))
    expected = _rng("schedule")
    due = schedule.due
    assert due > 0
    expected.expovariate(500.0)  # the first due time drew one value
    for _ in range(20):
        start = await schedule.next_start()
        assert start == due  # latency counts from when it was due, not when it ran
        assert time.perf_counter() >= start
        due += expected.expovariate(500.0)
    closed = _Schedule(None, _rng("closed"))
    before = time.perf_counter()
    assert before <= await closed.next_start() <= time.perf_counter()


def test_pgbench_log_latency_includes_the_schedule_lag(tmp_path: Path) -> None:
    # client, transaction, latency us, script, epoch s, epoch us[, schedule lag us]
    (tmp_path / "log.1").write_text(
        "0 1 1000 0 1700000000 100000 500\n"
        "0 2 2000 1 1700000000 200000 0\n"
        "0 3 3000 0 1700000000 300000\n"
        "0 4 failed 0 1700000000 400000\n"
    )
    run = pgb.PgbenchRun(name="t", command=[], clients=1)
    pgb._read_logs(tmp_path, ["a", "b"], 0, 10, run)
    assert run.latencies == {"a": [1.5, 3.0], "b": [2.0]}
    assert run.failed == 1


def test_catalog_covers_every_tenant(catalog: Catalog) -> None:
    assert len(catalog.tenants) == 10
    rng = _rng(1)
    picked = {catalog.pick(rng).id for _ in range(2000)}
    assert len(picked) == 10
    assert all(isinstance(t.id, uuid.UUID) and t.emails and t.leads for t in catalog.tenants)


def test_first_tenants_keeps_the_tenants_of_a_smaller_seed(bench_db: URL, catalog: Catalog) -> None:
    # The scaling run draws over the same tenants on a small and a large seed: the first
    # N tenants of any seed are exactly the tenants of an N-tenant seed.
    from platform_db.bench.seed import plan_tenant  # noqa: PLC0415

    config = SeedConfig(tenants=10, rows_per_tenant=600, months=4, seed=3)
    want = {uuid.UUID(plan_tenant(i, config).id) for i in range(4)}
    with psycopg.connect(conninfo(bench_db)) as conn:
        four = load_catalog(conn, first_tenants=4)
        assert {t.id for t in four.tenants} == want
        assert want < {t.id for t in catalog.tenants}
        with pytest.raises(ValueError, match="at least 1"):
            load_catalog(conn, first_tenants=0)


def test_a_later_lead_page_starts_at_the_cursor_in_the_index(
    catalog: Catalog, super_engine: Engine, app_engine_bench: Engine
) -> None:
    # Keyset pagination only pays off when the cursor bounds the index scan; a filter
    # that throws away the earlier pages makes page n cost n pages.
    one = _largest(catalog)
    req = _draw("lead_list", one, _rng("explain"), after=True)
    with TenantSession(app_engine_bench, tenant_id=one.tenants[0].id) as s, s.begin():
        s.execute(text("SET LOCAL enable_seqscan = off"))
        stmt = select_statement(req, explicit_tenant=False)
        compiled = stmt.compile(dialect=s.get_bind().dialect)
        plan = (
            s.connection()
            .exec_driver_sql("EXPLAIN (FORMAT JSON) " + str(compiled), compiled.params)
            .scalar_one()
        )
    conds = json.dumps(plan)
    assert "ix_leads_tenant_status" in conds
    assert re.search(r'"Index Cond": "[^"]*created_at <=', conds), conds


def test_compare_prints_two_saved_reports_side_by_side(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from platform_db.cli import main  # noqa: PLC0415

    scaling = Path(__file__).parent.parent / "docs" / "bench" / "scaling"
    small = scaling / "100-tenants-2c-round-1.json"
    large = scaling / "1000-tenants-first100-2c-round-1.json"
    assert main(["bench", "--compare", str(small), str(large)]) == 0
    out = capsys.readouterr().out
    assert "data ratio B/A: 10.1x" in out
    assert "1,000 tenants, requests over 100" in out
    # Bad input: a clear message and the usage exit status, no traceback.
    assert main(["bench", "--compare", str(tmp_path / "missing.json"), str(large)]) == 2
    assert "cannot read report" in capsys.readouterr().err
    (tmp_path / "other.json").write_text("{}")
    assert main(["bench", "--compare", str(tmp_path / "other.json"), str(large)]) == 2
    assert "not a report of platform-db bench" in capsys.readouterr().err
