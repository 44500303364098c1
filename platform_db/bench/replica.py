"""`platform-db bench --replica`: the dashboard and range classes on a streaming replica,
next to the same workload with the primary alone.

Two runs of the package's workload, one after the other, with the same clients, mix and
request seed (`platform_db.bench.runner.run_workload`):

1. primary only: no POSTGRES_REPLICA_URL; `dashboard_read` and `submissions_range` run
   on the analytics pool, which then connects to the primary;
2. replica: the workers get POSTGRES_REPLICA_URL (the bench's platform_app login on the
   replica), so those two classes read from it. The read-your-writes window is off
   (POSTGRES_REPLICA_READ_YOUR_WRITES_MS=0): the bench's requests have no acting user,
   so with it every tenant written to in the last 2 s would read from the primary and the
   run would measure the primary again. A lag limit applies if
   POSTGRES_REPLICA_MAX_LAG_MS is set in the environment. Every other class, writes
   included, runs on the primary in both.

During both runs a thread samples replication lag twice a second from both ends: on the
replica, the package's rule (0 when all received WAL is replayed, else the age of the last
replayed transaction); on the primary, `pg_stat_replication.replay_lag` and the bytes of
WAL not yet replayed. The report gives per-class latency and throughput of both runs,
the lag, and how many analytics transactions went to the replica and how many to the
primary.
"""

from __future__ import annotations

import datetime as dt
import io
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import psycopg
from sqlalchemy.engine import URL

from platform_db.bench import stats
from platform_db.bench.report import percentile, summarize
from platform_db.bench.runner import (
    BenchConfig,
    BenchError,
    WorkerResult,
    _admin,
    ensure_app_login,
    require_loopback,
    run_workload,
)
from platform_db.bench.seed import conninfo
from platform_db.bench.workload import CLASSES, REPLICA_CLASSES, load_catalog
from platform_db.session.replica import LAG_SQL, server_of
from platform_db.textfmt import write_table

Progress = Callable[[str], None]
SAMPLE_EVERY_S = 0.5
REPLICA_RUN_ENV = {"POSTGRES_REPLICA_READ_YOUR_WRITES_MS": "0"}

_PRIMARY_LAG_SQL = """
SELECT max(extract(epoch FROM replay_lag) * 1000) AS replay_lag_ms,
       max(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn))::bigint AS bytes_behind
FROM pg_stat_replication
"""


class LagSampler:
    """Replication lag from both ends, every SAMPLE_EVERY_S seconds, in a thread."""

    def __init__(self, primary: URL, replica: URL) -> None:
        self.primary, self.replica = primary, replica
        self.samples: list[dict[str, float | None]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-lag", daemon=True)

    def __enter__(self) -> LagSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        try:
            with (
                psycopg.connect(conninfo(self.primary), autocommit=True) as primary,
                psycopg.connect(conninfo(self.replica), autocommit=True) as replica,
            ):
                while not self._stop.is_set():
                    row = replica.execute(f"SELECT lag_ms FROM ({LAG_SQL}) lag").fetchone()
                    prow = primary.execute(_PRIMARY_LAG_SQL).fetchone()
                    self.samples.append(
                        {
                            "replica_lag_ms": _num(row[0] if row else None),
                            "primary_replay_lag_ms": _num(prow[0] if prow else None),
                            "bytes_behind": _num(prow[1] if prow else None),
                        }
                    )
                    self._stop.wait(SAMPLE_EVERY_S)
        except psycopg.Error as exc:
            self.errors.append(str(exc).strip().splitlines()[0])

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"samples": len(self.samples), "errors": self.errors}
        for key in ("replica_lag_ms", "primary_replay_lag_ms", "bytes_behind"):
            values = sorted(v for s in self.samples if (v := s[key]) is not None)
            digits = 0 if key == "bytes_behind" else 1
            out[key] = {
                "p50": _round(percentile(values, 50), digits),
                "p95": _round(percentile(values, 95), digits),
                "max": _round(values[-1], digits) if values else None,
            }
        return out


def _num(value: Any) -> float | None:
    return None if value is None else float(value)


def _round(value: float | None, digits: int = 1) -> float | int | None:
    if value is None:
        return None
    return round(value, digits) if digits else round(value)


def _phase(result: WorkerResult, window_s: float) -> dict[str, Any]:
    classes = {c: summarize(result.latencies[c], window_s) for c in CLASSES if result.latencies[c]}
    everything = [v for c in CLASSES for v in result.latencies.get(c, [])]
    return {
        "classes": classes,
        "overall": summarize(everything, window_s),
        "errors": dict(result.errors),
        "error_samples": result.error_samples,
        "analytics_routes": dict(result.routes),
        "acquire": {
            pool: summarize(times, window_s) for pool, times in sorted(result.acquire.items())
        },
    }


def run_replica_bench(
    url: URL, replica: URL, config: BenchConfig, *, progress: Progress | None = None
) -> dict[str, Any]:
    """Both runs; the report (a JSON-ready dict). `replica` names the standby (any login:
    the harness uses its host, port and database with the bench's app login)."""
    say = progress or (lambda _m: None)
    require_loopback(url)
    require_loopback(replica)
    started = dt.datetime.now(dt.UTC)
    with _admin(url) as admin:
        row = admin.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
        if not (row and row[0]):
            raise BenchError("bench needs DATABASE_URL to name a superuser")
        if config.app_url is not None:
            app_url = config.app_url
        else:
            app_url, _ = ensure_app_login(admin, url)
        replica_app = app_url.set(
            host=replica.host, port=replica.port, database=replica.database or url.database
        )
        replica_app = replica_app.set(query=dict(replica.query))
        _require_standby(replica_app)
        say("sampling the tenants' keys ...")
        with psycopg.connect(conninfo(url)) as c:
            catalog = load_catalog(c, first_tenants=config.first_tenants)
        server = stats.server_settings(admin)
        phases: dict[str, Any] = {}
        for name, replica_url in (("primary_only", None), ("replica", replica_app)):
            say(f"run '{name}': {', '.join(REPLICA_CLASSES)} on the analytics pool ...")
            with LagSampler(url, replica_app) as lag:
                merged, _, load = run_workload(
                    app_url,
                    catalog,
                    config,
                    admin,
                    say,
                    replica_url=replica_url,
                    replica_env=REPLICA_RUN_ENV,
                    analytics_classes=REPLICA_CLASSES,
                )
            phases[name] = _phase(merged, float(config.duration_s))
            phases[name]["replication_lag"] = lag.summary()
            phases[name]["load_average"] = load["end"]
            say(f"  {merged.requests:,} requests measured, {sum(merged.errors.values())} errors")
            time.sleep(2.0)  # the standby catches up between the runs
    return {
        "kind": "replica",
        "label": config.label,
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "database": str(url.database),
        "replica": server_of(replica),
        "machine": stats.machine(),
        "server": server,
        "config": {
            "clients": config.clients,
            "processes": config.processes,
            "duration_s": config.duration_s,
            "warmup_s": config.warmup_s,
            "seed": config.seed,
            "mix": dict(config.mix),
            "on_the_analytics_pool": list(REPLICA_CLASSES),
            "replica_run_env": dict(REPLICA_RUN_ENV),
        },
        "tenants_sampled": len(catalog.tenants),
        "runs": phases,
    }


def _require_standby(replica_app: URL, *, wait_s: float = 30.0) -> None:
    """The replica answers the bench login and is in recovery. The login (or its new
    password) was written on the primary a moment ago: wait until the replica has it."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with psycopg.connect(conninfo(replica_app), connect_timeout=5) as conn:
                row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            break
        except psycopg.Error as exc:
            if time.monotonic() > deadline:
                raise BenchError(
                    f"cannot connect to the replica {server_of(replica_app)} as the bench "
                    f"login: {str(exc).strip().splitlines()[0]}"
                ) from None
            time.sleep(0.2)
    if not (row and row[0]):
        raise BenchError(
            f"{server_of(replica_app)} is not a standby (pg_is_in_recovery() is false): "
            "POSTGRES_REPLICA_URL must name a streaming replica of DATABASE_URL's server"
        )


def render_replica_text(report: Mapping[str, Any]) -> str:
    out = io.StringIO()
    cfg = report["config"]
    runs = report["runs"]
    out.write(
        f"platform-db bench --replica: {report['database']} (replica {report['replica']}), "
        f"{cfg['clients']} clients, {cfg['duration_s']} s measured per run"
        + (f" [{report['label']}]" if report.get("label") else "")
        + "\n"
        f"on the analytics pool: {', '.join(cfg['on_the_analytics_pool'])} "
        "(the primary in the first run, the replica in the second); every other class on "
        "the primary in both\n\n"
    )

    def cell(run: Mapping[str, Any], cls: str) -> list[Any]:
        c = run["classes"].get(cls) if cls != "overall" else run["overall"]
        if not c:
            return ["-", "-", "-", "-"]
        return [c["p50_ms"], c["p95_ms"], c["p99_ms"], c["throughput_per_s"]]

    rows = []
    order = [
        *cfg["on_the_analytics_pool"],
        *[c for c in CLASSES if c not in cfg["on_the_analytics_pool"]],
    ]
    for cls in [*order, "overall"]:
        a, b = runs["primary_only"], runs["replica"]
        if cls != "overall" and cls not in a["classes"] and cls not in b["classes"]:
            continue
        rows.append([cls, *cell(a, cls), *cell(b, cls)])
    write_table(
        out,
        [
            "class",
            "primary p50",
            "p95",
            "p99",
            "req/s",
            "replica p50",
            "p95",
            "p99",
            "req/s",
        ],
        rows,
    )
    out.write("\nReplication lag during each run (sampled every 0.5 s)\n")
    lag_rows = []
    for name, run in runs.items():
        lag = run["replication_lag"]
        lag_rows.append(
            [
                name,
                lag["replica_lag_ms"]["p50"],
                lag["replica_lag_ms"]["p95"],
                lag["replica_lag_ms"]["max"],
                lag["primary_replay_lag_ms"]["max"],
                lag["bytes_behind"]["max"],
            ]
        )
    write_table(
        out,
        [
            "run",
            "replica-end p50 ms",
            "p95 ms",
            "max ms",
            "primary-end replay_lag max ms",
            "max bytes behind",
        ],
        lag_rows,
    )
    loads = ", ".join(
        f"{name} {' / '.join(f'{x:.1f}' for x in run['load_average'])}"
        for name, run in runs.items()
        if run.get("load_average")
    )
    if loads:
        out.write(f"\nLoad average (1/5/15 min) at the end of each run: {loads}\n")
    routes = runs["replica"]["analytics_routes"]
    if routes:
        out.write(
            f"\nAnalytics transactions in the replica run: {routes.get('replica', 0):,} on the "
            f"replica, {routes.get('primary', 0):,} on the primary (read-your-writes window, "
            "lag limit)\n"
        )
    for name, run in runs.items():
        if run["errors"]:
            out.write(f"errors in {name}: {run['errors']}\n")
    return out.getvalue()


__all__ = ["LagSampler", "render_replica_text", "run_replica_bench"]
