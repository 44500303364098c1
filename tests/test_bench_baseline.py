"""The benchmark's baseline comparison: the four variants run the same requests, C sends
exactly what the package sends, and the report carries the ratios.

No timing is asserted: the numbers are the benchmark's business (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
import re
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

from platform_db.bench.baseline import OVERALL, RATIOS, BaselineConfig, Logins
from platform_db.bench.report import render_html, render_text
from platform_db.bench.runner import BenchConfig, ensure_plain_login, run_bench
from platform_db.bench.seed import SeedConfig, conninfo, run_seed
from platform_db.bench.variants import (
    DEFAULT_VARIANTS,
    PackageMessages,
    RawRunner,
    capture_package_messages,
    make_runner,
    plain_statement,
    plain_values,
)
from platform_db.bench.workload import (
    CLASSES,
    Catalog,
    draw_request,
    load_catalog,
    select_statement,
)
from platform_db.models import Lead
from platform_db.session.database import Database
from platform_db.session.settings import SYNC_DRIVER, Settings, with_driver
from platform_db.session.tenancy import TenantSession
from tests.conftest import temporary_database

WRITES = ("lead_update", "submission_insert")


@pytest.fixture(scope="module")
def bench_db(server_url: URL) -> Iterator[URL]:
    with temporary_database(server_url, migrate=True) as url:
        today = dt.datetime.now(dt.UTC).date()
        run_seed(url, SeedConfig(tenants=8, rows_per_tenant=500, months=3, seed=7, as_of=today))
        yield url


@pytest.fixture(scope="module")
def catalog(bench_db: URL) -> Catalog:
    with psycopg.connect(conninfo(bench_db)) as conn:
        return load_catalog(conn)


@pytest.fixture(scope="module")
def logins(bench_db: URL, app_login: URL) -> Logins:
    with psycopg.connect(conninfo(bench_db), autocommit=True) as admin:
        plain = ensure_plain_login(admin, bench_db)
    return Logins(app_url=app_login.set(database=bench_db.database), plain_url=plain)


@pytest.fixture(scope="module")
def super_engine(bench_db: URL) -> Iterator[Engine]:
    engine = create_engine(with_driver(bench_db, SYNC_DRIVER), poolclass=NullPool)
    yield engine
    engine.dispose()


def test_the_plain_login_bypasses_rls_and_the_app_login_does_not(
    super_engine: Engine, logins: Logins
) -> None:
    with super_engine.connect() as conn:
        rows: dict[str, bool] = dict(
            conn.execute(
                text("SELECT rolname, rolbypassrls FROM pg_roles WHERE rolname IN (:a, :b)"),
                {"a": logins.app_url.username, "b": logins.plain_url.username},
            ).all()
        )
    assert rows == {logins.app_url.username: False, logins.plain_url.username: True}


# --- C sends what the package sends ---------------------------------------------------------


class _Recorder:
    """An asyncpg connection that notes every message it sends (C's side)."""

    def __init__(self, conn: Any, log: list[tuple[str, str, list[Any]]]) -> None:
        self._conn, self._log = conn, log

    async def execute(self, sql: str, *args: Any) -> Any:
        self._log.append(("stmt" if args else "simple", sql, list(args)))
        return await self._conn.execute(sql, *args)

    async def fetch(self, sql: str, *args: Any) -> Any:
        self._log.append(("stmt", sql, list(args)))
        return await self._conn.fetch(sql, *args)

    def get_server_pid(self) -> int:
        return int(self._conn.get_server_pid())

    async def close(self) -> None:
        await self._conn.close()


@pytest.fixture
async def package_and_c(
    logins: Logins,
) -> AsyncIterator[tuple[Database, list[Any], RawRunner, list[Any], PackageMessages]]:
    app = logins.app_url
    messages = await capture_package_messages(app, {})
    db = Database.from_env({"DATABASE_URL": app.render_as_string(hide_password=False)})
    a_log: list[tuple[str, str, list[Any]]] = []
    for pool in ("main", "analytics"):
        engine = db.async_engine(pool).sync_engine

        def statement(_c: Any, _cur: Any, sql: str, params: Any, *_: Any) -> None:
            a_log.append(("stmt", sql, list(params)))

        def connected(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.driver_connection.add_query_logger(
                lambda r: a_log.append(("simple", r.query, list(r.args)))
            )

        event.listen(engine, "before_cursor_execute", statement)
        event.listen(engine.pool, "connect", connected)
    settings = Settings.from_env({"DATABASE_URL": app.render_as_string(hide_password=False)})
    c = RawRunner("C", app, settings, messages)
    await c.setup()
    c_log: list[tuple[str, str, list[Any]]] = []
    for raw_pool in c.pools.values():
        wrapped = []
        while not raw_pool.idle.empty():
            wrapped.append(_Recorder(raw_pool.idle.get_nowait(), c_log))
        raw_pool.all = list(wrapped)
        for w in wrapped:
            raw_pool.idle.put_nowait(w)
    yield db, a_log, c, c_log, messages
    await c.close()
    await db.dispose_async()


def _normal(log: list[tuple[str, str, list[Any]]], cls: str) -> list[Any]:
    """Simple messages in order, then statements in order; what a write makes up on the
    spot (the submission's id, the time of a funnel move) masked."""
    out: list[Any] = []
    for kind in ("simple", "stmt"):
        for k, sql, sent in log:
            if k != kind:
                continue
            args = list(sent)
            if cls in WRITES:
                args = ["<now>" if isinstance(a, dt.datetime) else a for a in args]
                if sql.startswith("INSERT"):
                    args[1] = "<new id>"
            # Each side seals for its own connection (platform_db.session.seal).
            masked = _SEAL.sub(r"\1<seal>\3", sql)
            out.append((k, " ".join(masked.split()), args))
    return out


_SEAL = re.compile(r"(platform\.set_tenant\('[^']*', '[^']*', ')([^']*)('\))")


@pytest.mark.parametrize("cls", CLASSES)
async def test_c_sends_exactly_what_the_package_sends(
    cls: str,
    catalog: Catalog,
    super_engine: Engine,
    package_and_c: tuple[Database, list[Any], RawRunner, list[Any], PackageMessages],
) -> None:
    db, a_log, c, c_log, messages = package_and_c
    a = make_runner("A", app_url=c.url, plain_url=c.url, env={}, messages=None)
    a.db = db  # type: ignore[attr-defined]  # the recorded Database
    for i in range(4):
        req = draw_request(cls, catalog, random.Random(f"{cls}:{i}"))  # noqa: S311
        if cls == "lead_list" and i % 2:
            for j in range(40):  # a later page too: the cursor's statement
                if req.after is not None:
                    break
                req = draw_request(cls, catalog, random.Random(f"{cls}:{i}:{j}"))  # noqa: S311
        before = _lead_state(super_engine, req.tenant.id, req.lead.id) if req.lead else None
        a_log.clear()
        await a.run(req, random.Random(i))  # noqa: S311
        await asyncio.sleep(0.05)  # the query logger reports on a later loop turn
        if before is not None and cls == "lead_update":
            _restore_lead(super_engine, req.tenant.id, req.lead.id, before)  # type: ignore[union-attr]
        c_log.clear()
        await c.run(req, random.Random(i))  # noqa: S311
        sent_by_a, sent_by_c = _normal(a_log, cls), _normal(c_log, cls)
        assert sent_by_c == sent_by_a
        assert len(sent_by_a) == (4 if cls == "lead_update" else 3), sent_by_a
        begin = messages.begin_for(
            "analytics" if cls == "dashboard_read" else "main", req.tenant.id
        )
        assert sent_by_a[0][1] == " ".join(_SEAL.sub(r"\1<seal>\3", begin).split())
        assert sent_by_a[1][1] == (messages.write_end if cls in WRITES else messages.read_end)


def _lead_state(engine: Engine, tenant: uuid.UUID, lead: uuid.UUID) -> dict[str, Any]:
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT status, score, status_changed_at, converted_at, lost_reason "
                "FROM leads WHERE tenant_id = :t AND id = :i"
            ),
            {"t": tenant, "i": lead},
        ).one()
    return dict(row._mapping)


def _restore_lead(
    engine: Engine, tenant: uuid.UUID, lead: uuid.UUID, state: dict[str, Any]
) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE leads SET status = :status, score = :score, "
                "status_changed_at = :status_changed_at, converted_at = :converted_at, "
                "lost_reason = :lost_reason WHERE tenant_id = :t AND id = :i"
            ),
            {**state, "t": tenant, "i": lead},
        )


# --- B and D answer the same questions ------------------------------------------------------


@pytest.mark.parametrize("cls", [c for c in CLASSES if c not in WRITES])
def test_the_plain_statements_return_the_packages_rows(
    cls: str, catalog: Catalog, super_engine: Engine, logins: Logins
) -> None:
    app = create_engine(with_driver(logins.app_url, SYNC_DRIVER), poolclass=NullPool)
    try:
        for i in range(6):
            req = draw_request(cls, catalog, random.Random(f"plain:{cls}:{i}"))  # noqa: S311
            with TenantSession(app, tenant_id=req.tenant.id) as s, s.begin():
                package = s.execute(select_statement(req, explicit_tenant=False)).all()
            with TenantSession(super_engine) as s, s.begin():
                plain = s.execute(plain_statement(cls, plain_values(req))).all()
            assert _keys(plain) == _keys(package)
            if cls in ("user_by_email", "page_by_slug", "dashboard_read"):
                assert len(plain) == 1
    finally:
        app.dispose()


def _keys(rows: Sequence[Any]) -> list[tuple[Any, ...]]:
    return [(r[0].tenant_id, getattr(r[0], "id", None), *r[1:]) for r in rows]


async def test_every_variant_runs_every_class(catalog: Catalog, logins: Logins) -> None:
    messages = await capture_package_messages(logins.app_url, {})
    counts: dict[str, dict[str, int]] = {}
    for variant in DEFAULT_VARIANTS:
        runner = make_runner(
            variant,
            app_url=logins.app_url,
            plain_url=logins.plain_url,
            env={},
            messages=messages if variant == "C" else None,
        )
        await runner.setup()
        try:
            counts[variant] = {}
            for cls in CLASSES:
                if cls in WRITES:
                    continue
                req = draw_request(cls, catalog, random.Random(f"every:{cls}"))  # noqa: S311
                counts[variant][cls] = await runner.run(req, random.Random(1))  # noqa: S311
            for cls in WRITES:
                req = draw_request(cls, catalog, random.Random(f"every:{cls}:{variant}"))  # noqa: S311
                assert await runner.run(req, random.Random(1)) == 1  # noqa: S311
        finally:
            await runner.close()
    # The same requests find the same number of rows, whoever asks.
    assert counts["B"] == counts["A"]
    assert counts["C"] == counts["A"]
    assert counts["D"] == counts["A"]
    assert any(counts["A"].values())


def test_c_refuses_to_run_without_the_packages_messages(logins: Logins) -> None:
    settings = Settings.from_env({"DATABASE_URL": "postgresql://x@127.0.0.1/x"})
    with pytest.raises(ValueError, match="capture"):
        RawRunner("C", logins.app_url, settings, None)


# --- The report -----------------------------------------------------------------------------


def test_baseline_report_has_the_ratios_per_round_and_per_class(bench_db: URL) -> None:
    config = BenchConfig(
        clients=2,
        processes=1,
        seed=3,
        pgbench=False,
        baseline_only=True,
        label="baseline smoke",
        baseline_config=BaselineConfig(rounds=2, duration_s=1, class_duration_s=0.5, warmup_s=0),
    )
    report = run_bench(bench_db, config)
    json.dumps(report, default=str)
    b = report["baseline"]
    assert report["workload"] is None
    assert set(b["ratios"]) == set(RATIOS)
    for name in ("client_cpu_a_over_b", "throughput_a_over_b", "server_cpu_a_over_c"):
        assert isinstance(b["ratios"][name], float), (name, b["ratios"])
        assert len(b["spread"][name]["values"]) == 2
        assert b["spread"][name]["min"] <= b["ratios"][name] <= b["spread"][name]["max"]
    assert len(b["per_round"]) == 2
    assert set(b["classes"]) == set(CLASSES)
    assert [r["order"] for r in b["rounds"]] == [["A", "B", "C", "D"], ["B", "C", "D", "A"]]
    for r in b["rounds"]:
        for phases in r["phases"].values():
            assert set(phases) == set(DEFAULT_VARIANTS)
            for phase in phases.values():
                assert phase["requests"] > 0
                assert not phase["errors"], phase.get("error_samples")
        assert r["phases"][OVERALL]["A"]["server_backends"] > 0
    assert [t["ratio"] for t in b["targets"]] == [
        "client_cpu_a_over_b",
        "throughput_a_over_b",
        "server_cpu_a_over_c",
    ]
    assert b["package_messages"]["begin"]["main"].startswith("BEGIN")
    # The search's plan inside its function, as the platform_app login.
    search = report["plans"]["page_search"]
    assert search["function_plans"], search
    assert "FROM public.pages AS t" in search["function_plans"][0]
    out = render_text(report)
    assert "Baseline: the same drawn requests four ways, 2 interleaved rounds" in out
    assert "client_cpu_a_over_b" in out
    page = render_html(report)
    assert page.count("<svg") == 3
    assert "A/C server CPU per workload" in page


def test_u_measures_the_package_unsealed_and_sealing_is_enforced_again_after(
    bench_db: URL, super_engine: Engine
) -> None:
    """U (--baseline-variants A,U): the package without a tenant key, while the database
    does not enforce seals; its writes get through (under enforcement an unsealed write is
    refused by WITH CHECK), and enforcement is back on after the run."""
    config = BenchConfig(
        clients=2,
        processes=1,
        seed=5,
        pgbench=False,
        baseline_only=True,
        baseline_config=BaselineConfig(
            rounds=2,
            duration_s=1,
            class_duration_s=0.5,
            warmup_s=0,
            classes=False,
            variants=("A", "U"),
        ),
    )
    report = run_bench(bench_db, config)
    b = report["baseline"]
    for name in ("client_cpu_a_over_u", "throughput_a_over_u", "server_cpu_a_over_u"):
        assert isinstance(b["ratios"][name], float), (name, b["ratios"])
    assert b["ratios"]["client_cpu_a_over_b"] is None
    for r in b["rounds"]:
        for phase in r["phases"][OVERALL].values():
            assert phase["requests"] > 0
            assert not phase["errors"], phase.get("error_samples")
    with super_engine.connect() as conn:
        assert conn.scalar(text("SELECT enforced FROM platform.tenant_seal_settings")) is True
    assert "server CPU A/U" in render_text(report)


def test_bench_help_says_the_baseline_runs_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    from platform_db.cli import main  # noqa: PLC0415

    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--baseline run the baseline comparison" in out
    assert "it runs by default" in out
    assert "--no-baseline" in out
    assert "--baseline-only" in out
    assert main(["bench", "--baseline", "--no-baseline"]) == 2


def test_lead_model_is_what_the_writes_assume() -> None:
    # advance() writes the columns Lead.advance_to changes, in the table's order.
    columns = [c.name for c in Lead.__table__.columns]
    assert columns.index("status") < columns.index("status_changed_at")
    assert columns.index("status_changed_at") < columns.index("converted_at")
    assert columns.index("converted_at") < columns.index("lost_reason")


def test_the_variants_to_run_are_checked() -> None:
    assert BaselineConfig(variants=("A", "B")).variants == ("A", "B")
    assert BaselineConfig(variants=("A", "U")).variants == ("A", "U")
    for bad in (("B", "C"), ("A",), ("A", "E"), ("A", "A")):
        with pytest.raises(ValueError, match="baseline variants"):
            BaselineConfig(variants=bad)
