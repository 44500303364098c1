"""`platform-db bench`: the workload through the package, then pgbench, then the report.

Order of a run (all against the same server, one after the other, within minutes):

1. sample the seeded tenants' keys (as the superuser from DATABASE_URL);
2. the workload: `processes` processes with `clients` asyncio clients in all, each
   request a tenant session of the package's own `Database` pools, logged in as a
   platform_app login (RLS applies); `warmup` seconds, then `duration` measured seconds;
   pg_stat_* counters read at the start and end of the measured window;
3. EXPLAIN (ANALYZE, BUFFERS) of every class for the largest tenant (and, for the search,
   the plan inside the search function, as the platform_app login);
4. pgbench: built-in select-only on its own database, then the workload's SQL in three
   variants (see platform_db.bench.pgbench), each with the same clients and duration;
5. the baseline comparison (platform_db.bench.baseline): the same drawn requests through
   the package (A), plain SQLAlchemy with explicit tenant filters (B) and raw asyncpg (C:
   the package's SQL and round trips; D: explicit filter, no transaction), in
   interleaved rounds, with the ratios A/B and A/C of CPU per request and throughput.
   On by default (`--no-baseline` skips it, `--baseline-only` runs only it and EXPLAIN).

Loopback only: the harness refuses a server that is not on this machine, and every loop
is bounded by the run's deadline and a request cap.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gc
import os
import random
import secrets
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

from platform_db.bench import pgbench as pgb
from platform_db.bench import stats
from platform_db.bench.baseline import BaselineConfig, Logins, run_baseline
from platform_db.bench.report import build_report
from platform_db.bench.search import search_comparison
from platform_db.bench.seed import conninfo
from platform_db.bench.workload import (
    ANALYTICS_CLASSES,
    CLASSES,
    DEFAULT_MIX,
    Catalog,
    Request,
    draw_request,
    load_catalog,
    pick_class,
    run_request,
)
from platform_db.ddl.security import ADMIN_ROLE, APP_ROLE, scram_sha_256
from platform_db.session import seal
from platform_db.session.database import Database
from platform_db.session.seal import TenantKey
from platform_db.session.settings import SYNC_DRIVER, with_driver

Progress = Callable[[str], None]

BENCH_LOGIN = "platform_bench_app"
# The baseline's login that bypasses RLS (what a team without RLS would connect as).
PLAIN_LOGIN = "platform_bench_plain"
MAX_CLIENTS = 1000
MAX_DURATION_S = 3600
MAX_REQUESTS_PER_CLIENT = 5_000_000
LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


class BenchError(RuntimeError):
    """The benchmark cannot run as asked."""


@dataclass(frozen=True, slots=True)
class BenchConfig:
    clients: int = 16
    duration_s: int = 60
    warmup_s: int = 10
    processes: int = 1
    mix: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_MIX))
    seed: int = 1
    pgbench: bool = True
    pgbench_scale: int = 10
    keep_pgbench_database: bool = False
    explain: bool = True
    pgbouncer_clients: int = 0
    gc_freeze: bool = True
    app_url: URL | None = None
    label: str | None = None
    first_tenants: int | None = None
    rate: float | None = None
    baseline: bool = True
    baseline_only: bool = False
    baseline_config: BaselineConfig = field(default_factory=BaselineConfig)

    def __post_init__(self) -> None:
        if not 1 <= self.clients <= MAX_CLIENTS:
            raise BenchError(f"clients must be between 1 and {MAX_CLIENTS}")
        if not 1 <= self.duration_s <= MAX_DURATION_S:
            raise BenchError(f"duration must be between 1 and {MAX_DURATION_S} seconds")
        if not 0 <= self.warmup_s <= 600:
            raise BenchError("warm-up must be between 0 and 600 seconds")
        if not 1 <= self.processes <= max(1, self.clients):
            raise BenchError("processes must be between 1 and the number of clients")
        if not 0 <= self.pgbouncer_clients <= MAX_CLIENTS:
            raise BenchError(f"pgbouncer clients must be between 0 and {MAX_CLIENTS}")
        if self.first_tenants is not None and self.first_tenants < 1:
            raise BenchError("first tenants must be at least 1")
        if self.rate is not None and not 0 < self.rate <= 1_000_000:
            raise BenchError("rate must be above 0 and at most 1,000,000 requests per second")
        if self.baseline_only and not self.baseline:
            raise BenchError("--baseline-only and --no-baseline contradict each other")


def require_loopback(url: URL) -> None:
    """Refuse any server that is not on this machine (TCP loopback or a unix socket)."""
    query_host = url.query.get("host")
    host = query_host[0] if isinstance(query_host, tuple) else query_host
    host = host or url.host or ""
    if host.startswith("/") or host in LOOPBACK:
        return
    raise BenchError(
        f"the benchmark runs against a server on this machine only (127.0.0.1, ::1, "
        f"localhost or a unix socket), not {host!r}"
    )


def _conn_params(url: URL) -> dict[str, str]:
    query_host = url.query.get("host")
    host = query_host[0] if isinstance(query_host, tuple) else query_host
    return {
        "host": str(host or url.host or "127.0.0.1"),
        "port": str(url.port or 5432),
        "user": str(url.username or os.environ.get("USER", "postgres")),
        "dbname": str(url.database),
    }


def ensure_app_login(admin: psycopg.Connection[Any], url: URL) -> tuple[URL, str]:
    """A LOGIN role that is only a member of platform_app, with a fresh password.

    The password is sent as its SCRAM-SHA-256 verifier, so the server's log and
    pg_stat_statements never hold it.
    """
    password = secrets.token_urlsafe(24)
    verifier = scram_sha_256(password)
    exists = admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (BENCH_LOGIN,)).fetchone()
    ident = sql.Identifier(BENCH_LOGIN)
    if not exists:
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE {}").format(
                ident, sql.Literal(verifier), sql.Identifier(APP_ROLE)
            )
        )
    else:
        admin.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(ident, sql.Literal(verifier)))
    return url.set(username=BENCH_LOGIN, password=password), password


def ensure_plain_login(admin: psycopg.Connection[Any], url: URL) -> URL:
    """The baseline's login that RLS does not filter: BYPASSRLS, a member of platform_admin
    (which holds the row privileges), a fresh password sent as its SCRAM verifier."""
    password = secrets.token_urlsafe(24)
    verifier = scram_sha_256(password)
    ident = sql.Identifier(PLAIN_LOGIN)
    exists = admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (PLAIN_LOGIN,)).fetchone()
    if not exists:
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN BYPASSRLS PASSWORD {} IN ROLE {}").format(
                ident, sql.Literal(verifier), sql.Identifier(ADMIN_ROLE)
            )
        )
    else:
        admin.execute(
            sql.SQL("ALTER ROLE {} LOGIN BYPASSRLS PASSWORD {}").format(
                ident, sql.Literal(verifier)
            )
        )
    return url.set(username=PLAIN_LOGIN, password=password)


# --- The workload, in worker processes ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkerTask:
    index: int
    app_url: str
    catalog: Catalog
    mix: dict[str, int]
    clients: int
    seed: int
    t_start: float
    t_measure: float
    t_end: float
    gc_freeze: bool = True
    rate_per_client: float | None = None
    # `bench --replica`: the analytics pool's replica (the app login on it), and the
    # classes that run on the analytics pool.
    replica_url: str | None = None
    analytics_classes: tuple[str, ...] = ANALYTICS_CLASSES
    replica_env: tuple[tuple[str, str], ...] = ()  # POSTGRES_REPLICA_* for that run


@dataclass(slots=True)
class WorkerResult:
    latencies: dict[str, list[float]] = field(default_factory=dict)
    setup: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)
    acquire: dict[str, list[float]] = field(default_factory=dict)
    tenants: set[uuid.UUID] = field(default_factory=set)
    requests: int = 0
    client_cpu_s: float = 0.0
    fatal: str | None = None
    routes: dict[str, int] = field(default_factory=dict)  # analytics: replica / primary


class _Schedule:
    """When a client's next request starts, and the time its latency counts from.

    Closed loop (no rate): at once, timed from now. Open loop (--rate): requests are due
    at Poisson times whatever the server does, and latency counts from when a request
    was due, so the wait behind a slow request is not hidden (no coordinated omission).
    """

    def __init__(self, rate: float | None, rng: random.Random) -> None:
        self.rate = rate
        self.rng = rng
        self.due = time.perf_counter() + (rng.expovariate(rate) if rate else 0.0)

    async def next_start(self) -> float:
        if not self.rate:
            return time.perf_counter()
        wait = self.due - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        start = self.due
        self.due += self.rng.expovariate(self.rate)
        return start


def worker_main(task: WorkerTask) -> WorkerResult:
    """Entry point of a worker process (spawned: no state shared with the parent)."""
    try:
        return asyncio.run(_worker(task))
    except Exception:
        return WorkerResult(fatal=traceback.format_exc(limit=5))


def ensure_tenant_key(url: URL) -> TenantKey:
    """A tenant key the database knows, in PLATFORM_DB_TENANT_KEY of this process (the
    workers and the baseline's variants inherit it): the one set there, stored if the
    database does not have it yet, else a new one (`bench-<hex>`). The package's sessions
    are measured as a service runs them, sealed (platform_db.session.seal)."""
    key = seal.key_from_env_or_new(f"bench-{secrets.token_hex(3)}")
    engine = create_engine(with_driver(url, SYNC_DRIVER), poolclass=NullPool)
    try:
        seal.store_key(engine, key)
    finally:
        engine.dispose()
    return key


def _worker_env(task: WorkerTask) -> dict[str, str]:
    # The operator's POSTGRES_REPLICA_URL is not the measured login's: a replica is used
    # only when `bench --replica` hands one over.
    env = {k: v for k, v in os.environ.items() if k != "POSTGRES_REPLICA_URL"}
    env["DATABASE_URL"] = task.app_url
    if task.replica_url:
        env["POSTGRES_REPLICA_URL"] = task.replica_url
        env.update(task.replica_env)
    return env


async def _worker(task: WorkerTask) -> WorkerResult:
    db = Database.from_env(_worker_env(task))
    result = WorkerResult(latencies={c: [] for c in CLASSES}, setup={c: [] for c in CLASSES})
    try:
        await db.warm_up_async("main", "analytics")
        if task.gc_freeze:
            # What a service should do once it has started: move the start-up heap
            # (modules, mappers, here also the tenant catalog) out of the collector's
            # reach. Without it, each generation-2 collection walks all of it and stalls
            # the event loop with every request in flight (docs/PERFORMANCE.md).
            gc.collect()
            gc.freeze()
        await asyncio.sleep(max(0.0, task.t_start - time.time()))

        cpu_at_measure = [0.0]

        async def reset_when_measuring() -> None:
            await asyncio.sleep(max(0.0, task.t_measure - time.time()))
            db.reset_acquire_stats(keep=5_000_000)
            cpu_at_measure[0] = time.process_time()

        async def client(i: int) -> None:
            rng = random.Random(f"{task.seed}:{task.index}:{i}")  # noqa: S311
            schedule = _Schedule(task.rate_per_client, rng)
            for _ in range(MAX_REQUESTS_PER_CLIENT):
                start = await schedule.next_start()
                begun = time.time()
                if begun >= task.t_end:
                    return
                cls = pick_class(task.mix, rng)
                req = draw_request(cls, task.catalog, rng)
                try:
                    outcome = await run_request(db, req, rng, analytics=task.analytics_classes)
                except Exception as exc:
                    if begun >= task.t_measure:
                        key = f"{cls}: {type(exc).__name__}"
                        result.errors[key] = result.errors.get(key, 0) + 1
                        if len(result.error_samples) < 5:
                            result.error_samples.append(f"{key}: {str(exc)[:300]}")
                    await asyncio.sleep(0.01)  # never spin on a failing server
                    continue
                elapsed_ms = (time.perf_counter() - start) * 1000.0
                if begun >= task.t_measure:
                    result.latencies[cls].append(elapsed_ms)
                    result.setup[cls].append(outcome.setup_s * 1000.0)
                    result.tenants.add(req.tenant.id)
                    result.requests += 1

        await asyncio.gather(reset_when_measuring(), *(client(i) for i in range(task.clients)))
        result.client_cpu_s = time.process_time() - cpu_at_measure[0]
        result.acquire = db.acquire_times_ms()
        if db.router is not None:
            result.routes = dict(db.router.routes)
        # Keep the connections open until the parent has read the backends' CPU at
        # t_end: a backend that exits first takes its CPU time with it.
        await asyncio.sleep(max(0.0, task.t_end + 1.0 - time.time()))
    finally:
        await db.dispose_async()
    return result


def _merge(results: list[WorkerResult]) -> WorkerResult:
    out = WorkerResult(latencies={c: [] for c in CLASSES}, setup={c: [] for c in CLASSES})
    for r in results:
        if r.fatal:
            raise BenchError(f"a workload process failed:\n{r.fatal}")
        for c in CLASSES:
            out.latencies[c].extend(r.latencies.get(c, []))
            out.setup[c].extend(r.setup.get(c, []))
        for k, v in r.errors.items():
            out.errors[k] = out.errors.get(k, 0) + v
        out.error_samples.extend(r.error_samples)
        for pool, times in r.acquire.items():
            out.acquire.setdefault(pool, []).extend(times)
        out.tenants |= r.tenants
        out.requests += r.requests
        out.client_cpu_s += r.client_cpu_s
        for route, n in r.routes.items():
            out.routes[route] = out.routes.get(route, 0) + n
    return out


def run_workload(
    app_url: URL,
    catalog: Catalog,
    config: BenchConfig,
    admin: psycopg.Connection[Any],
    say: Progress,
    *,
    replica_url: URL | None = None,
    replica_env: Mapping[str, str] | None = None,
    analytics_classes: tuple[str, ...] = ANALYTICS_CLASSES,
) -> tuple[WorkerResult, stats.ServerDelta, dict[str, Any]]:
    """The package's workload; returns the merged samples and the server's counters.

    `replica_url` (the app login on a replica) becomes the workers' POSTGRES_REPLICA_URL,
    with `replica_env` (POSTGRES_REPLICA_*) beside it; `analytics_classes` run on the
    analytics pool."""
    per_process = [
        config.clients // config.processes + (1 if i < config.clients % config.processes else 0)
        for i in range(config.processes)
    ]
    t_start = time.time() + 4.0 + config.processes
    t_measure = t_start + config.warmup_s
    t_end = t_measure + config.duration_s
    tasks = [
        WorkerTask(
            index=i,
            app_url=app_url.render_as_string(hide_password=False),
            catalog=catalog,
            mix=dict(config.mix),
            clients=n,
            seed=config.seed,
            t_start=t_start,
            t_measure=t_measure,
            t_end=t_end,
            gc_freeze=config.gc_freeze,
            rate_per_client=config.rate / config.clients if config.rate else None,
            replica_url=replica_url.render_as_string(hide_password=False) if replica_url else None,
            analytics_classes=analytics_classes,
            replica_env=tuple(sorted((replica_env or {}).items())),
        )
        for i, n in enumerate(per_process)
    ]
    say(
        f"workload: {config.clients} clients in {config.processes} process(es)"
        + (f", open loop at {config.rate:,g} requests/s" if config.rate else "")
        + f", {config.warmup_s} s warm-up + {config.duration_s} s measured ..."
    )
    with ProcessPoolExecutor(max_workers=config.processes, mp_context=get_context("spawn")) as ex:
        futures = [ex.submit(worker_main, t) for t in tasks]
        time.sleep(max(0.0, t_measure - time.time()))
        before = stats.snapshot(admin)
        load_start = stats.load_average()
        probe = stats.CpuProbe(
            stats.backend_pids(admin, application_like="platform-db:%", user=app_url.username)
        )
        probe.start()
        time.sleep(max(0.0, t_end - time.time()))
        cpu = probe.stop()
        load_end = stats.load_average()
        results = [f.result(timeout=max(60.0, t_end - time.time() + 120.0)) for f in futures]
    time.sleep(1.5)  # closed backends have flushed their counters
    after = stats.snapshot(admin)
    merged = _merge(results)
    cpu["client_cpu_s"] = round(merged.client_cpu_s, 2)
    return merged, stats.delta(before, after), {"start": load_start, "end": load_end, "cpu": cpu}


# --- EXPLAIN ----------------------------------------------------------------------------


def explain_plans(
    super_engine: Engine,
    super_url: URL,
    app_url: URL,
    *,
    catalog: Catalog,
    mix: Mapping[str, int],
    seed: int,
) -> dict[str, dict[str, Any]]:
    """EXPLAIN (ANALYZE, BUFFERS) of each read class for the largest tenant, as the app login.

    Writes run in a transaction that is rolled back.
    """
    largest = max(catalog.tenants, key=lambda t: t.rows)
    one = Catalog.of([largest], catalog.now)
    rng = random.Random(f"{seed}:explain")  # noqa: S311
    last = pgb._capture(super_engine)
    out: dict[str, dict[str, Any]] = {}
    with psycopg.connect(conninfo(app_url)) as app:
        for cls in CLASSES:
            if not mix.get(cls):
                continue
            req: Request = draw_request(cls, one, rng)
            if cls == "lead_list":
                # The deeper page, which is where keyset pagination earns its keep.
                for _ in range(20):
                    if req.after is not None:
                        break
                    req = draw_request(cls, one, rng)
            if cls in ("submission_insert",):
                continue
            statement = pgb.render_select(super_engine, last, req, explicit_tenant=False)
            app.execute(seal.tenant_sql_for(app.info.backend_pid, str(largest.id)))
            plan = [
                r[0]
                for r in app.execute(
                    "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, SUMMARY ON) " + statement
                )
            ]
            app.rollback()
            out[cls] = {
                "tenant_rows": largest.rows,
                "statement": statement,
                "plan": plan,
                "params": {
                    "text": req.text,
                    "status": req.status,
                    "after": bool(req.after),
                },
            }
            if cls == "page_search" and app_url.username:
                inner = nested_plans(super_url, app_url.username, statement, largest.id)
                out[cls]["function_plans"] = inner
                if inner:
                    out[cls]["plan"] = [
                        *plan,
                        f"-- inside the search function, as {app_url.username} (auto_explain):",
                        *(line for p in inner for line in p.splitlines()),
                    ]
    return out


_AUTO_EXPLAIN = (
    "LOAD 'auto_explain'",
    "SET auto_explain.log_min_duration = 0",
    "SET auto_explain.log_nested_statements = on",
    "SET auto_explain.log_level = notice",
    "SET auto_explain.log_analyze = on",
    "SET auto_explain.log_buffers = on",
    "SET auto_explain.log_timing = off",
)


def nested_plans(super_url: URL, login: str, statement: str, tenant: uuid.UUID) -> list[str]:
    """The plans of the statements run *inside* `statement` (a function's own queries),
    as `login` runs them: auto_explain is loaded by the superuser, which then becomes
    the login for the rest of the session. Empty where auto_explain is not installed."""
    notices: list[str] = []
    with psycopg.connect(conninfo(super_url), autocommit=True) as conn:
        try:
            for setting in _AUTO_EXPLAIN:
                conn.execute(setting)
        except psycopg.Error:
            return []
        conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        conn.execute(sql.SQL("SET SESSION AUTHORIZATION {}").format(sql.Identifier(login)))
        with conn.transaction(force_rollback=True):
            conn.execute(seal.tenant_sql_for(conn.info.backend_pid, str(tenant)))
            conn.execute(statement).fetchall()
    plans = [n.split("plan:", 1)[-1].strip() for n in notices if "plan:" in n]
    # The statement itself is the EXPLAIN above; keep the nested ones.
    # (nor the tenant hook's set_tenant and the seal's lookup: platform_db.ddl.seal)
    return [
        p
        for p in plans
        if "Function Scan" not in p
        and "set_config(" not in p
        and "tenant_seal_" not in p
        and "platform.set_tenant(" not in p
    ]


# --- The whole run ------------------------------------------------------------------------


@contextlib.contextmanager
def _admin(url: URL) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(conninfo(url), autocommit=True) as conn:
        yield conn


def run_bench(url: URL, config: BenchConfig, *, progress: Progress | None = None) -> dict[str, Any]:
    """Run everything and return the report (a JSON-ready dict)."""
    say = progress or (lambda _m: None)
    require_loopback(url)
    started = dt.datetime.now(dt.UTC)
    with _admin(url) as admin:
        row = admin.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
        if not (row and row[0]):
            raise BenchError(
                "bench needs DATABASE_URL to name a superuser (it samples every tenant's "
                "keys, reads pg_stat_* and creates the platform_app login it measures with)"
            )
        has_tenants = admin.execute(
            "SELECT to_regclass('public.tenants') IS NOT NULL AND EXISTS (SELECT FROM tenants)"
        ).fetchone()
        if not (has_tenants and has_tenants[0]):
            raise BenchError("the database holds no tenants: run `platform-db seed` first")
        if config.app_url is not None:
            require_loopback(config.app_url)
            app_url, app_password = config.app_url, config.app_url.password
        else:
            app_url, app_password = ensure_app_login(admin, url)
        ensure_tenant_key(url)
        say("sampling the tenants' keys ...")
        with psycopg.connect(conninfo(url)) as c:
            catalog = load_catalog(c, first_tenants=config.first_tenants)
        data = _data_shape(admin)
        server = stats.server_settings(admin)
        load_before = stats.load_average()

        merged: WorkerResult | None = None
        server_delta: stats.ServerDelta | None = None
        load: dict[str, Any] = {}
        if not config.baseline_only:
            merged, server_delta, load = run_workload(app_url, catalog, config, admin, say)
            say(f"  {merged.requests:,} requests measured, {sum(merged.errors.values())} errors")

        super_engine = create_engine(with_driver(url, SYNC_DRIVER), poolclass=NullPool)
        plans: dict[str, dict[str, Any]] = {}
        search: dict[str, Any] | None = None
        pg: dict[str, Any] = {"available": False, "reason": "skipped (--baseline-only)"}
        try:
            if config.explain:
                say("EXPLAIN (ANALYZE, BUFFERS) of each class for the largest tenant ...")
                plans = explain_plans(
                    super_engine, url, app_url, catalog=catalog, mix=config.mix, seed=config.seed
                )
                if config.mix.get("page_search"):
                    say("full-text search on the largest tenant: the package against the plans ...")
                    search = search_comparison(super_engine, url, app_url)
            if not config.baseline_only:
                pg = _run_pgbench_phases(
                    url=url,
                    app_url=app_url,
                    app_password=app_password,
                    catalog=catalog,
                    config=config,
                    admin=admin,
                    super_engine=super_engine,
                    say=say,
                )
        finally:
            super_engine.dispose()
        baseline: dict[str, Any] | None = None
        if config.baseline:
            baseline = run_baseline(
                logins=Logins(app_url=app_url, plain_url=ensure_plain_login(admin, url)),
                catalog=catalog,
                mix=config.mix,
                clients=config.clients,
                processes=config.processes,
                seed=config.seed,
                gc_freeze=config.gc_freeze,
                config=config.baseline_config,
                admin=admin,
                say=say,
            )
        load_after = stats.load_average()

    return build_report(
        label=config.label,
        started=started,
        finished=dt.datetime.now(dt.UTC),
        config=config,
        database=str(url.database),
        machine=stats.machine(),
        server=server,
        data=data,
        workload=merged,
        workload_server=server_delta,
        workload_load=load,
        tenants_sampled=len(catalog.tenants),
        plans=plans,
        pgbench=pg,
        load={"before": load_before, "after": load_after},
        baseline=baseline,
        search=search,
    )


def _data_shape(admin: psycopg.Connection[Any]) -> dict[str, Any]:
    rows = {
        str(k): int(v)
        for k, v in admin.execute(
            """
            SELECT c.relname, coalesce(sum(s.n_live_tup), 0)
            FROM pg_class c
            LEFT JOIN pg_inherits i ON i.inhparent = c.oid
            LEFT JOIN pg_stat_user_tables s ON s.relid = coalesce(i.inhrelid, c.oid)
            WHERE c.relnamespace = 'public'::regnamespace
              AND c.relname IN ('tenants', 'users', 'pages', 'forms', 'leads', 'form_submissions')
            GROUP BY c.relname
            """
        )
    }
    size = admin.execute("SELECT pg_database_size(current_database())").fetchone()
    parts = admin.execute(
        "SELECT count(*) FROM pg_inherits WHERE inhparent = 'public.form_submissions'::regclass"
    ).fetchone()
    tenants = admin.execute("SELECT count(*) FROM tenants").fetchone()
    return {
        "tenants": int(tenants[0]) if tenants else 0,
        "rows_estimated": rows,
        "total_rows_estimated": sum(rows.values()),
        "database_bytes": int(size[0]) if size else 0,
        "partitions": int(parts[0]) if parts else 0,
    }


def _run_pgbench_phases(
    *,
    url: URL,
    app_url: URL,
    app_password: str | None,
    catalog: Catalog,
    config: BenchConfig,
    admin: psycopg.Connection[Any],
    super_engine: Engine,
    say: Progress,
) -> dict[str, Any]:
    if not config.pgbench:
        return {"available": False, "reason": "skipped (--no-pgbench)"}
    binary = pgb.find_pgbench()
    if binary is None:
        return {
            "available": False,
            "reason": "pgbench not found (Debian: apt-get install postgresql-contrib or "
            "postgresql-client); the comparison with the database alone is skipped",
        }
    out: dict[str, Any] = {"available": True, "version": pgb.pgbench_version(binary), "runs": {}}
    conn = _conn_params(url)
    app_conn = _conn_params(app_url)
    threads = min(config.clients, os.cpu_count() or 2)
    timeout = config.duration_s + config.warmup_s + 300.0
    runs: dict[str, Any] = out["runs"]

    # 1. pgbench's built-in select-only script on its own database.
    pgdb = f"{url.database}_pgbench"
    pgconn = {**conn, "dbname": pgdb}
    try:
        pgb.ensure_pgbench_database(
            binary,
            conn=conn,
            password=url.password,
            admin=admin,
            dbname=pgdb,
            scale=config.pgbench_scale,
            say=say,
        )
        say(f"pgbench select-only (-S), {config.clients} clients ...")
        runs["select_only"] = pgb.run_pgbench(
            binary,
            name="select_only",
            conn=pgconn,
            password=url.password,
            scripts=None,
            builtin="select-only",
            clients=config.clients,
            threads=threads,
            duration_s=config.duration_s,
            warmup_s=config.warmup_s,
            seed=config.seed,
            timeout_s=timeout,
            rate=config.rate,
        )
    finally:
        if not config.keep_pgbench_database:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(pgdb))
            )

    # 2. The workload's SQL, three ways.
    say("rendering the workload's SQL into pgbench scripts ...")
    scripts = pgb.build_scripts(super_engine, catalog, config.mix, seed=config.seed)
    out["scripts_per_variant"] = len(scripts["sql"])
    out["sample_scripts"] = {v: {s.cls: s.body for s in reversed(scripts[v])} for v in pgb.VARIANTS}
    servers: dict[str, Any] = {}
    if (
        seal.key_from_env() is not None
        and config.warmup_s + config.duration_s > pgb.MAX_SEALED_RUN_S
    ):
        raise BenchError(
            f"pgbench runs with sealed tenants last at most {pgb.MAX_SEALED_RUN_S} s "
            "(warm-up + duration): a seal verifies within a minute of its time"
        )

    def sealed_scripts() -> dict[str, list[pgb.Script]]:
        middle = time.time() + (config.warmup_s + config.duration_s) / 2
        return pgb.build_scripts(
            super_engine, catalog, config.mix, seed=config.seed, sealed_at=middle
        )

    with _unbound_seals(url):
        _pgbench_variants(
            binary,
            admin,
            runs,
            servers,
            sealed_scripts=sealed_scripts,
            config=config,
            conn=conn,
            app_conn=app_conn,
            app_password=app_password,
            url=url,
            threads=threads,
            timeout=timeout,
            say=say,
        )
    out["server"] = servers
    if config.pgbouncer_clients:
        with _unbound_seals(url):
            _run_through_pgbouncer(
                binary=binary,
                app_conn=app_conn,
                app_password=app_password,
                scripts=sealed_scripts()["sql_tx_rls"],
                config=config,
                admin=admin,
                out=out,
                say=say,
            )
    return out


@contextlib.contextmanager
def _unbound_seals(url: URL) -> Iterator[None]:
    """The database takes seals not bound to a backend inside the block (pgbench's)."""
    engine = create_engine(with_driver(url, SYNC_DRIVER), poolclass=NullPool)
    try:
        with engine.begin() as c:
            state = seal.read_state(c)
            if state is not None and not state.unbound_seals:
                seal.set_enforced(c, state.enforced, unbound_seals=True)
        try:
            yield
        finally:
            if state is not None and not state.unbound_seals:
                with engine.begin() as c:
                    seal.set_enforced(c, state.enforced, unbound_seals=False)
    finally:
        engine.dispose()


def _pgbench_variants(
    binary: str,
    admin: Any,
    runs: dict[str, Any],
    servers: dict[str, Any],
    *,
    sealed_scripts: Callable[[], dict[str, list[pgb.Script]]],
    config: BenchConfig,
    conn: Any,
    app_conn: Any,
    app_password: str | None,
    url: URL,
    threads: int,
    timeout: float,
    say: Progress,
) -> None:
    for variant in pgb.VARIANTS:
        as_app = variant == "sql_tx_rls"
        scripts = sealed_scripts()  # sealed for this run's time
        say(f"pgbench {variant} ({'platform_app login' if as_app else 'superuser'}) ...")
        before = stats.snapshot(admin)
        runs[variant] = pgb.run_pgbench(
            binary,
            probe=lambda: stats.CpuProbe(
                stats.backend_pids(admin, application_like="pgbench", user=None)
            ),
            name=variant,
            conn=app_conn if as_app else conn,
            password=app_password if as_app else url.password,
            scripts=scripts[variant],
            clients=config.clients,
            threads=threads,
            duration_s=config.duration_s,
            warmup_s=config.warmup_s,
            seed=config.seed,
            timeout_s=timeout,
            rate=config.rate,
        )
        time.sleep(1.5)
        servers[variant] = stats.delta(before, stats.snapshot(admin))


def _run_through_pgbouncer(
    *,
    binary: str,
    app_conn: Mapping[str, str],
    app_password: str | None,
    scripts: list[pgb.Script],
    config: BenchConfig,
    admin: psycopg.Connection[Any],
    out: dict[str, Any],
    say: Progress,
) -> None:
    """The RLS variant with many client connections, through PgBouncer (transaction mode)."""
    from platform_db.bench.bouncer import find_pgbouncer, pgbouncer  # noqa: PLC0415
    from platform_db.session.settings import Settings  # noqa: PLC0415

    found = find_pgbouncer()
    if found is None or not app_password:
        out["pgbouncer"] = {
            "available": False,
            "reason": "pgbouncer not found (Debian package pgbouncer)"
            if found is None
            else "the app login has no password (PgBouncer authenticates with scram-sha-256)",
        }
        return
    server_pool = Settings.from_env(
        {**os.environ, "DATABASE_URL": "postgresql://x@127.0.0.1/x"}
    ).main.max_size
    clients = config.pgbouncer_clients
    with pgbouncer(
        found,
        server_host=app_conn["host"],
        server_port=int(app_conn["port"]),
        dbname=app_conn["dbname"],
        user=app_conn["user"],
        password=app_password,
        server_pool=server_pool,
        max_clients=clients,
    ) as bouncer:
        say(
            f"pgbench sql_tx_rls through PgBouncer: {clients} client connections, "
            f"{server_pool} server connections ..."
        )
        before = stats.snapshot(admin)
        name = "sql_tx_rls_pgbouncer"
        out["runs"][name] = pgb.run_pgbench(
            binary,
            probe=lambda: stats.CpuProbe(
                stats.backend_pids(admin, application_like="pgbouncer%", user=None)
                + stats.backend_pids(admin, application_like="pgbench", user=None)
            ),
            name=name,
            conn={**app_conn, "host": bouncer.host, "port": str(bouncer.port)},
            password=app_password,
            scripts=scripts,
            clients=clients,
            threads=os.cpu_count() or 2,
            duration_s=config.duration_s,
            warmup_s=config.warmup_s,
            seed=config.seed,
            timeout_s=config.duration_s + config.warmup_s + 300.0,
            protocol="extended",
            rate=config.rate,
        )
        time.sleep(1.5)
        out["server"][name] = stats.delta(before, stats.snapshot(admin))
        out["pgbouncer"] = {
            "available": True,
            "version": bouncer.version,
            "client_connections": clients,
            "server_connections": server_pool,
        }
