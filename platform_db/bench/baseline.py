"""The baseline comparison: the package against what a team would write instead.

The same drawn requests run four ways (platform_db.bench.variants): A the package, B plain
SQLAlchemy with explicit tenant filters, C raw asyncpg with the package's SQL and round
trips, D raw asyncpg with an explicit filter and no transaction. They run in interleaved
rounds in the same run, because this machine's speed drifts by tens of percent over
minutes: each round runs, for the mixed workload and then for each query class alone,
the four variants one after the other (in an order that rotates from round to round), each
for a short phase with the same clients. Every phase measures

- throughput (requests/s) and latency (p50/p95) of its requests;
- client CPU per request: the CPU time of the client processes over the measured window
  (time.process_time) over the requests they completed;
- server CPU per request: the CPU time of the variant's own backends (/proc, found by
  application_name and login, re-listed at the end of the window) over the requests.

Per round and per workload (the mix, "overall", and each class) the ratios A/B and A/C of
the three are taken; the report carries every round's values and their medians (the
figure quoted), with the spread. Per-class CPU needs phases of one class each, since CPU
time cannot be told apart per request when the classes run mixed.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import random
import statistics
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import Any

import psycopg
from sqlalchemy.engine import URL, make_url

from platform_db.bench import stats
from platform_db.bench.variants import (
    APPLICATION_NAMES,
    DEFAULT_VARIANTS,
    DESCRIPTIONS,
    VARIANTS,
    PackageMessages,
    capture_package_messages,
    make_runner,
)
from platform_db.bench.workload import CLASSES, Catalog, draw_request, pick_class

Progress = Callable[[str], None]

OVERALL = "overall"
# ratio name -> (numerator variant, denominator variant, metric)
RATIOS: dict[str, tuple[str, str, str]] = {
    "client_cpu_a_over_b": ("A", "B", "client_cpu_ms_per_request"),
    "throughput_a_over_b": ("A", "B", "throughput_per_s"),
    "server_cpu_a_over_b": ("A", "B", "server_cpu_ms_per_request"),
    "client_cpu_a_over_c": ("A", "C", "client_cpu_ms_per_request"),
    "throughput_a_over_c": ("A", "C", "throughput_per_s"),
    "server_cpu_a_over_c": ("A", "C", "server_cpu_ms_per_request"),
    # The seal's cost (issue 15: client CPU within 3%, server CPU within 5%), with U.
    "client_cpu_a_over_u": ("A", "U", "client_cpu_ms_per_request"),
    "throughput_a_over_u": ("A", "U", "throughput_per_s"),
    "server_cpu_a_over_u": ("A", "U", "server_cpu_ms_per_request"),
}
_RATIO_LABELS = {
    k: f"{metric.split('_per_')[0].replace('_cpu_ms', ' CPU')} {top}/{bottom}"
    for k, (top, bottom, metric) in RATIOS.items()
}
# The targets of issue 18 (docs/PERFORMANCE.md): (ratio, "max" or "min", bound).
TARGETS: tuple[tuple[str, str, float], ...] = (
    ("client_cpu_a_over_b", "max", 1.05),
    ("throughput_a_over_b", "min", 0.95),
    ("server_cpu_a_over_c", "max", 1.10),
)
METRICS = (
    "requests",
    "throughput_per_s",
    "client_cpu_ms_per_request",
    "server_cpu_ms_per_request",
    "p50_ms",
    "p95_ms",
)
MAX_REQUESTS_PER_CLIENT = 5_000_000
CLOSE_GRACE_S = 1.0


@dataclass(frozen=True, slots=True)
class BaselineConfig:
    rounds: int = 5
    duration_s: float = 10.0
    class_duration_s: float = 4.0
    warmup_s: float = 2.0
    classes: bool = True
    variants: tuple[str, ...] = DEFAULT_VARIANTS

    def __post_init__(self) -> None:
        unknown = set(self.variants) - set(VARIANTS)
        if unknown or "A" not in self.variants or len(set(self.variants)) < 2:
            raise ValueError(
                f"baseline variants are A and at least one of B, C, D, U, not {','.join(self.variants)}"
            )
        if not 1 <= self.rounds <= 100:
            raise ValueError("baseline rounds must be between 1 and 100")
        for name, value in (
            ("baseline duration", self.duration_s),
            ("baseline class duration", self.class_duration_s),
        ):
            if not 0.5 <= value <= 600:
                raise ValueError(f"{name} must be between 0.5 and 600 seconds")
        if not 0 <= self.warmup_s <= 120:
            raise ValueError("baseline warm-up must be between 0 and 120 seconds")


# --- One phase, in a worker process --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PhaseTask:
    variant: str
    workload: str
    mix: dict[str, int]
    catalog: Catalog
    clients: int
    seed: str
    app_url: str
    plain_url: str
    messages: PackageMessages | None
    t_start: float
    t_measure: float
    t_end: float
    gc_freeze: bool = True


@dataclass(slots=True)
class PhaseResult:
    latencies: dict[str, list[float]] = field(default_factory=dict)
    requests: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)
    client_cpu_s: float = 0.0
    fatal: str | None = None


def phase_main(task: PhaseTask) -> PhaseResult:
    """Entry point of a worker process (spawned once, reused for every phase)."""
    try:
        return asyncio.run(_phase(task))
    except Exception:
        return PhaseResult(fatal=traceback.format_exc(limit=8))


async def _phase(task: PhaseTask) -> PhaseResult:
    env = {k: v for k, v in os.environ.items() if k.startswith("POSTGRES_")}
    runner = make_runner(
        task.variant,
        app_url=make_url(task.app_url),
        plain_url=make_url(task.plain_url),
        env=env,
        messages=task.messages,
    )
    result = PhaseResult(latencies={c: [] for c in CLASSES})
    try:
        await runner.setup()
        if task.gc_freeze:
            gc.collect()
            gc.freeze()
        await asyncio.sleep(max(0.0, task.t_start - time.time()))
        cpu_at = [0.0]

        async def mark_measure() -> None:
            await asyncio.sleep(max(0.0, task.t_measure - time.time()))
            cpu_at[0] = time.process_time()

        async def client(i: int) -> None:
            # The same seed for every variant: each client draws the same requests.
            rng = random.Random(f"{task.seed}:{i}")  # noqa: S311 - benchmark draws
            for _ in range(MAX_REQUESTS_PER_CLIENT):
                begun = time.time()
                if begun >= task.t_end:
                    return
                cls = pick_class(task.mix, rng)
                req = draw_request(cls, task.catalog, rng)
                start = time.perf_counter()
                try:
                    await runner.run(req, rng)
                except Exception as exc:
                    if begun >= task.t_measure:
                        key = f"{cls}: {type(exc).__name__}"
                        result.errors[key] = result.errors.get(key, 0) + 1
                        if len(result.error_samples) < 5:
                            result.error_samples.append(f"{key}: {str(exc)[:300]}")
                    await asyncio.sleep(0.01)
                    continue
                if begun >= task.t_measure and time.time() <= task.t_end:
                    result.latencies[cls].append((time.perf_counter() - start) * 1000.0)
                    result.requests += 1

        await asyncio.gather(mark_measure(), *(client(i) for i in range(task.clients)))
        result.client_cpu_s = time.process_time() - cpu_at[0]
        # Keep the connections open until the parent has read the backends' CPU at
        # t_end: a backend that exits first takes its CPU time with it.
        await asyncio.sleep(max(0.0, task.t_end + CLOSE_GRACE_S - time.time()))
    finally:
        await runner.close()
        if task.gc_freeze:
            gc.unfreeze()
    return result


# --- The server's side of a phase ----------------------------------------------------------


class _BackendCpu:
    """CPU of a variant's backends over the measured window, re-listed at the end so a
    connection opened during the window counts too (all of its CPU is in the window)."""

    def __init__(self, admin: psycopg.Connection[Any], variant: str, user: str | None) -> None:
        self.admin, self.pattern, self.user = admin, APPLICATION_NAMES[variant], user
        self.before: dict[int, float] = {}
        self.machine = (0.0, 0.0)
        self.at = 0.0

    def _pids(self) -> list[int]:
        return stats.backend_pids(self.admin, application_like=self.pattern, user=self.user)

    def start(self) -> None:
        self.at = time.monotonic()
        self.before = stats.process_cpu(self._pids())
        self.machine = stats.machine_cpu()

    def stop(self) -> dict[str, Any]:
        seconds = time.monotonic() - self.at
        now = stats.process_cpu(sorted({*self.before, *self._pids()}))
        server = sum(v - self.before.get(pid, 0.0) for pid, v in now.items())
        busy0, total0 = self.machine
        busy1, total1 = stats.machine_cpu()
        return {
            "seconds": round(seconds, 3),
            "server_backends": len(now),
            "server_cpu_s": round(server, 3),
            "machine_busy": round((busy1 - busy0) / (total1 - total0), 4)
            if total1 > total0
            else None,
        }


def _summary(result: PhaseResult, cpu: Mapping[str, Any], window_s: float) -> dict[str, Any]:
    everything = sorted(v for vs in result.latencies.values() for v in vs)
    n = result.requests
    out: dict[str, Any] = {
        "requests": n,
        "throughput_per_s": round(n / window_s, 2) if window_s else None,
        "client_cpu_ms_per_request": round(result.client_cpu_s * 1000 / n, 4) if n else None,
        "server_cpu_ms_per_request": round(cpu["server_cpu_s"] * 1000 / n, 4) if n else None,
        "p50_ms": _percentile(everything, 50),
        "p95_ms": _percentile(everything, 95),
        "client_cpu_s": round(result.client_cpu_s, 3),
        "server_cpu_s": cpu["server_cpu_s"],
        "server_backends": cpu["server_backends"],
        "machine_busy": cpu["machine_busy"],
        "errors": dict(result.errors),
    }
    if result.error_samples:
        out["error_samples"] = result.error_samples
    return out


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    pos = (len(values) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(values) - 1)
    return round(values[lo] + (values[hi] - values[lo]) * (pos - lo), 3)


# --- The whole comparison --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Logins:
    app_url: URL  # a platform_app login: A and C
    plain_url: URL  # a login that bypasses RLS: B and D


@contextlib.contextmanager
def _workers(processes: int) -> Iterator[ProcessPoolExecutor]:
    with ProcessPoolExecutor(max_workers=processes, mp_context=get_context("spawn")) as ex:
        yield ex


def workloads(mix: Mapping[str, int], config: BaselineConfig) -> list[tuple[str, dict[str, int]]]:
    """The mixed workload ("overall"), then each class of the mix alone."""
    found = [(OVERALL, dict(mix))]
    if config.classes:
        found += [(c, {c: 1}) for c in CLASSES if mix.get(c)]
    return found


def run_baseline(
    *,
    logins: Logins,
    catalog: Catalog,
    mix: Mapping[str, int],
    clients: int,
    processes: int,
    seed: int,
    gc_freeze: bool,
    config: BaselineConfig,
    admin: psycopg.Connection[Any],
    say: Progress,
) -> dict[str, Any]:
    """Run the rounds and return the report's `baseline` section."""
    env = {k: v for k, v in os.environ.items() if k.startswith("POSTGRES_")}
    messages = asyncio.run(capture_package_messages(logins.app_url, env))
    per_process = [
        clients // processes + (1 if i < clients % processes else 0) for i in range(processes)
    ]
    plan = workloads(mix, config)
    rounds: list[dict[str, Any]] = []
    started = time.time()
    say(
        f"baseline: {config.rounds} interleaved rounds of {'/'.join(config.variants)} over {len(plan)} workload(s), "
        f"{clients} clients in {processes} process(es) ..."
    )
    with _workers(processes) as ex:
        for r in range(config.rounds):
            chosen = [v for v in VARIANTS if v in config.variants]
            order = chosen[r % len(chosen) :] + chosen[: r % len(chosen)]
            phases: dict[str, dict[str, Any]] = {}
            for name, workload_mix in plan:
                duration = config.duration_s if name == OVERALL else config.class_duration_s
                phases[name] = {}
                for variant in order:
                    with _unsealed_if(admin, variant == "U"):
                        phases[name][variant] = _run_phase(
                            ex,
                            variant=variant,
                            workload=name,
                            mix=workload_mix,
                            catalog=catalog,
                            per_process=per_process,
                            seed=f"{seed}:{r}:{name}",
                            logins=logins,
                            messages=messages,
                            duration_s=duration,
                            warmup_s=config.warmup_s,
                            gc_freeze=gc_freeze,
                            admin=admin,
                        )
            rounds.append(
                {
                    "round": r + 1,
                    "order": order,
                    "load_average": stats.load_average(),
                    "phases": phases,
                }
            )
            overall = _ratios_of(phases[OVERALL])
            shown = ", ".join(
                f"{_RATIO_LABELS[k]} {_f(v)}" for k, v in overall.items() if v is not None
            )
            say(f"  round {r + 1}/{config.rounds}: {shown or '-'}")
    return summarize_baseline(
        rounds,
        config=config,
        clients=clients,
        processes=processes,
        messages=messages,
        seconds=time.time() - started,
        logins=logins,
    )


@contextlib.contextmanager
def _unsealed_if(admin: psycopg.Connection[Any], unsealed: bool) -> Iterator[None]:
    """For U's phases: the database does not enforce tenant seals (platform_db.ddl.seal);
    as it was afterwards. The other variants' phases never overlap U's."""
    row = None
    if unsealed:
        found = admin.execute("SELECT to_regclass('platform.tenant_seal_settings')").fetchone()
        if found is not None and found[0] is not None:
            row = admin.execute("SELECT enforced FROM platform.tenant_seal_settings").fetchone()
    if row is None or not row[0]:
        yield
        return
    admin.execute("UPDATE platform.tenant_seal_settings SET enforced = false")
    try:
        yield
    finally:
        admin.execute("UPDATE platform.tenant_seal_settings SET enforced = true")


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _run_phase(
    ex: ProcessPoolExecutor,
    *,
    variant: str,
    workload: str,
    mix: dict[str, int],
    catalog: Catalog,
    per_process: list[int],
    seed: str,
    logins: Logins,
    messages: PackageMessages,
    duration_s: float,
    warmup_s: float,
    gc_freeze: bool,
    admin: psycopg.Connection[Any],
) -> dict[str, Any]:
    # Time to open the variant's connections in every process before the clients start.
    t_start = time.time() + 1.5
    t_measure = t_start + warmup_s
    t_end = t_measure + duration_s
    tasks = [
        PhaseTask(
            variant=variant,
            workload=workload,
            mix=mix,
            catalog=catalog,
            clients=n,
            seed=f"{seed}:{i}",
            app_url=logins.app_url.render_as_string(hide_password=False),
            plain_url=logins.plain_url.render_as_string(hide_password=False),
            messages=messages if variant == "C" else None,
            t_start=t_start,
            t_measure=t_measure,
            t_end=t_end,
            gc_freeze=gc_freeze,
        )
        for i, n in enumerate(per_process)
    ]
    futures = [ex.submit(phase_main, t) for t in tasks]
    user = logins.app_url.username if variant in ("A", "C", "U") else logins.plain_url.username
    time.sleep(max(0.0, t_measure - time.time()))
    probe = _BackendCpu(admin, variant, user)
    probe.start()
    time.sleep(max(0.0, t_end - time.time()))
    cpu = probe.stop()
    results = [f.result(timeout=duration_s + warmup_s + 180.0) for f in futures]
    merged = PhaseResult(latencies={c: [] for c in CLASSES})
    for res in results:
        if res.fatal:
            raise RuntimeError(f"baseline variant {variant} failed in a worker:\n{res.fatal}")
        for c, values in res.latencies.items():
            merged.latencies[c].extend(values)
        merged.requests += res.requests
        merged.client_cpu_s += res.client_cpu_s
        for k, v in res.errors.items():
            merged.errors[k] = merged.errors.get(k, 0) + v
        merged.error_samples += res.error_samples
    return _summary(merged, cpu, duration_s)


def _ratio(phases: Mapping[str, Mapping[str, Any]], name: str) -> float | None:
    top, bottom, metric = RATIOS[name]
    a, b = phases.get(top, {}).get(metric), phases.get(bottom, {}).get(metric)
    if a is None or b is None or not b:
        return None
    return round(float(a) / float(b), 4)


def _ratios_of(phases: Mapping[str, Mapping[str, Any]]) -> dict[str, float | None]:
    return {name: _ratio(phases, name) for name in RATIOS}


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 4) if present else None


def _spread(values: list[float | None]) -> dict[str, Any]:
    present = [v for v in values if v is not None]
    return {
        "median": _median(values),
        "min": min(present) if present else None,
        "max": max(present) if present else None,
        "values": values,
    }


def summarize_baseline(
    rounds: list[dict[str, Any]],
    *,
    config: BaselineConfig,
    clients: int,
    processes: int,
    messages: PackageMessages,
    seconds: float,
    logins: Logins,
) -> dict[str, Any]:
    """The report's `baseline` section from the rounds' phases."""
    names = list(rounds[0]["phases"]) if rounds else []
    per_workload: dict[str, dict[str, Any]] = {}
    for name in names:
        per_round = [_ratios_of(r["phases"][name]) for r in rounds]
        spread = {k: _spread([pr[k] for pr in per_round]) for k in RATIOS}
        medians = {
            v: {m: _median([r["phases"][name][v].get(m) for r in rounds]) for m in METRICS}
            for v in config.variants
        }
        per_workload[name] = {
            "ratios": {k: spread[k]["median"] for k in RATIOS},
            "spread": spread,
            "per_round": per_round,
            "medians": medians,
        }
    overall = per_workload.get(OVERALL, {"ratios": {}, "spread": {}, "per_round": []})
    targets = []
    for ratio, kind, bound in TARGETS:
        value = overall["ratios"].get(ratio)
        met = None if value is None else (value <= bound if kind == "max" else value >= bound)
        targets.append(
            {
                "ratio": ratio,
                "target": f"{'<=' if kind == 'max' else '>='} {bound}",
                "median": value,
                "met": met,
            }
        )
    return {
        "config": {
            "rounds": config.rounds,
            "duration_s": config.duration_s,
            "class_duration_s": config.class_duration_s,
            "warmup_s": config.warmup_s,
            "clients": clients,
            "processes": processes,
            "order": f"{', '.join(config.variants)} rotated by one each round; per round the "
            "mix, then each class",
            "seconds": round(seconds, 1),
        },
        "variants": {
            v: {
                "description": DESCRIPTIONS[v],
                "login": (logins.app_url if v in ("A", "C", "U") else logins.plain_url).username,
            }
            for v in config.variants
        },
        "package_messages": {
            "begin": messages.begin,
            "read_end": messages.read_end,
            "write_end": messages.write_end,
        },
        "ratios": overall["ratios"],
        "spread": overall["spread"],
        "per_round": overall["per_round"],
        "targets": targets,
        "classes": {n: w for n, w in per_workload.items() if n != OVERALL},
        "overall": per_workload.get(OVERALL),
        "rounds": rounds,
    }


__all__ = [
    "OVERALL",
    "RATIOS",
    "TARGETS",
    "BaselineConfig",
    "Logins",
    "phase_main",
    "run_baseline",
    "summarize_baseline",
    "workloads",
]
