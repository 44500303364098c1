"""The benchmark report: numbers per class and overall, the seed's targets, text, JSON, HTML.

Percentiles are computed from every measured sample (linear interpolation between the
closest ranks), for the workload and for pgbench's per-transaction logs alike.
"""

from __future__ import annotations

import datetime as dt
import html
import io
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from platform_db.bench.workload import CLASSES
from platform_db.textfmt import write_table

if TYPE_CHECKING:
    from platform_db.bench.pgbench import PgbenchRun
    from platform_db.bench.runner import BenchConfig, WorkerResult
    from platform_db.bench.stats import ServerDelta

REPORT_VERSION = 1
QUERY_TARGET_MS = 100.0
ACQUIRE_TARGET_MS = 10.0


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) of sorted values, interpolated; None when empty."""
    if not values:
        return None
    if len(values) == 1:
        return float(values[0])
    pos = (len(values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(values) - 1)
    return float(values[lo] + (values[hi] - values[lo]) * (pos - lo))


def _r(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def summarize(latencies_ms: Sequence[float], window_s: float) -> dict[str, Any]:
    """Count, throughput and latency percentiles of one set of samples."""
    values = sorted(latencies_ms)
    n = len(values)
    under = sum(1 for v in values if v < QUERY_TARGET_MS)
    return {
        "count": n,
        "throughput_per_s": round(n / window_s, 1) if window_s else None,
        "mean_ms": _r(sum(values) / n) if n else None,
        "p50_ms": _r(percentile(values, 50)),
        "p95_ms": _r(percentile(values, 95)),
        "p99_ms": _r(percentile(values, 99)),
        "max_ms": _r(values[-1]) if n else None,
        "share_under_100ms": round(under / n, 5) if n else None,
    }


def _per_class(latencies: Mapping[str, Sequence[float]], window_s: float) -> dict[str, Any]:
    names = [c for c in CLASSES if latencies.get(c)]
    names += [k for k in latencies if k not in CLASSES and latencies[k]]
    classes = {c: summarize(latencies[c], window_s) for c in names}
    everything = [v for c in names for v in latencies[c]]
    return {"classes": classes, "overall": summarize(everything, window_s)}


def _cpu_per(cpu: Mapping[str, Any] | None, per_s: float | None) -> dict[str, Any] | None:
    """CPU seconds over the window, and milliseconds of CPU per request/transaction."""
    if not cpu or not per_s:
        return dict(cpu) if cpu else None
    out = dict(cpu)
    n = per_s * cpu["seconds"]
    out["server_cpu_ms_per_request"] = round(cpu["server_cpu_s"] * 1000 / n, 3) if n else None
    if "client_cpu_s" in cpu and n:
        out["client_cpu_ms_per_request"] = round(
            cpu["client_cpu_s"] * 1000 / (per_s * cpu["window_s"]), 3
        )
    return out


def _pgbench_section(pg: Mapping[str, Any], window_s: float) -> dict[str, Any]:
    if not pg.get("available"):
        return dict(pg)
    out: dict[str, Any] = {
        "available": True,
        "version": pg.get("version"),
        "scripts_per_variant": pg.get("scripts_per_variant"),
        "pgbouncer": pg.get("pgbouncer"),
        "runs": {},
        "sample_scripts": pg.get("sample_scripts", {}),
    }
    servers: Mapping[str, ServerDelta] = pg.get("server", {})
    for name, run in pg.get("runs", {}).items():
        r: PgbenchRun = run
        section = _per_class(r.latencies, r.window_s or window_s)
        section["cpu"] = _cpu_per(r.cpu, section["overall"]["throughput_per_s"])
        section.update(
            {
                "command": " ".join(r.command),
                "clients": r.clients,
                "failed_transactions": r.failed,
                "error": r.error,
            }
        )
        if name in servers:
            section["server"] = servers[name].as_dict()
        out["runs"][name] = section
    return out


def _comparison(workload: Mapping[str, Any], pgbench: Mapping[str, Any]) -> dict[str, Any]:
    """Per class: p50/p95 of the package and of each pgbench variant, and the differences."""
    runs = pgbench.get("runs", {}) if pgbench.get("available") else {}
    out: dict[str, Any] = {}
    for cls in [*CLASSES, "overall"]:
        pkg = workload["overall"] if cls == "overall" else workload["classes"].get(cls)
        if not pkg:
            continue
        row: dict[str, Any] = {"package": {k: pkg[k] for k in ("p50_ms", "p95_ms", "p99_ms")}}
        row["package"]["throughput_per_s"] = pkg["throughput_per_s"]
        for variant in ("sql", "sql_tx", "sql_tx_rls"):
            run = runs.get(variant)
            if not run:
                continue
            v = run["overall"] if cls == "overall" else run["classes"].get(cls)
            if v:
                row[variant] = {k: v[k] for k in ("p50_ms", "p95_ms", "p99_ms", "throughput_per_s")}

        row["cost_ms_p50"] = {
            "tenant_transaction": _diff(row, "sql_tx", "sql"),
            "rls_over_explicit_filter": _diff(row, "sql_tx_rls", "sql_tx"),
            "package_over_database": _diff(row, "package", "sql_tx_rls"),
        }
        out[cls] = row
    return out


def _diff(row: Mapping[str, Any], a: str, b: str, key: str = "p50_ms") -> float | None:
    if a in row and b in row and row[a][key] is not None and row[b][key] is not None:
        return _r(row[a][key] - row[b][key])
    return None


def _connections_measured(report: Mapping[str, Any]) -> str:
    cfg, w = report["config"], report["workload"]
    parts = [
        f"{cfg['clients']} concurrent clients through the package's pools (main max "
        f"{cfg.get('pool_max', '?')}, analytics max {cfg.get('analytics_pool_max', '?')} "
        f"server connections): p95 {w['overall']['p95_ms']} ms, {len(w['errors'])} error kinds"
    ]
    run = report["pgbench"].get("runs", {}).get("sql_tx_rls_pgbouncer")
    if run:
        pb = report["pgbench"].get("pgbouncer") or {}
        parts.append(
            f"{run['clients']} client connections through PgBouncer "
            f"({pb.get('server_connections')} server connections): "
            f"{run['overall']['throughput_per_s']:,}/s, p95 {run['overall']['p95_ms']} ms, "
            f"{run['failed_transactions']} failed"
        )
    parts.append(f"server max_connections = {report['server'].get('max_connections')}")
    return "; ".join(parts)


def _connections_met(report: Mapping[str, Any]) -> bool:
    w = report["workload"]
    if report["config"]["clients"] >= 100 and not w["errors"]:
        return True
    run = report["pgbench"].get("runs", {}).get("sql_tx_rls_pgbouncer")
    return bool(
        run
        and run["clients"] >= 100
        and not run["error"]
        and not run["failed_transactions"]
        and run["overall"]["count"]
    )


def _targets(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    w = report["workload"]
    overall = w["overall"]
    server = w["server"]
    acquire = w["acquire"]
    runs = report["pgbench"].get("runs", {}) if report["pgbench"].get("available") else {}
    worst_acquire = max(
        (a["p99_ms"] for a in acquire.values() if a.get("p99_ms") is not None), default=None
    )
    data = report["data"]

    def t(target: str, measured: str, met: bool | None, note: str = "") -> dict[str, Any]:
        return {"target": target, "measured": measured, "met": met, "note": note}

    share = overall["share_under_100ms"]
    out = [
        t(
            "95% of queries under 100 ms",
            f"{share * 100:.2f}% under 100 ms (p95 {overall['p95_ms']} ms, p99 "
            f"{overall['p99_ms']} ms)"
            if share is not None
            else "no samples",
            None if share is None else share >= 0.95,
        ),
        t(
            "connection acquisition under 10 ms",
            "; ".join(
                f"{pool}: p50 {a['p50_ms']} / p95 {a['p95_ms']} / p99 {a['p99_ms']} / max "
                f"{a['max_ms']} ms over {a['count']} checkouts"
                for pool, a in acquire.items()
            )
            or "no checkouts",
            None if worst_acquire is None else worst_acquire < ACQUIRE_TARGET_MS,
            "judged on p99 of every pool",
        ),
        t(
            "buffer cache hit ratio above 95%",
            f"{server['cache_hit_ratio'] * 100:.2f}% ({server['blocks_hit']:,} hits, "
            f"{server['blocks_read']:,} reads)"
            if server["cache_hit_ratio"] is not None
            else "no block access",
            None if server["cache_hit_ratio"] is None else server["cache_hit_ratio"] > 0.95,
            f"shared_buffers = {report['server'].get('shared_buffers')}",
        ),
        t(
            "index use above 90%",
            f"{server['index_scan_share'] * 100:.2f}% of scans ({server['index_scans']:,} "
            f"index, {server['seq_scans']:,} sequential)"
            if server["index_scan_share"] is not None
            else "no scans",
            None if server["index_scan_share"] is None else server["index_scan_share"] > 0.90,
        ),
        t(
            "100+ concurrent connections",
            _connections_measured(report),
            _connections_met(report),
            "the server's max_connections is shared with everything else on it; many "
            "client connections go through the package's pools or PgBouncer",
        ),
        t(
            "1,000+ active tenants",
            f"{w['tenants_touched']:,} distinct tenants served in the measured window "
            f"({report['tenants_sampled']:,} seeded)",
            w["tenants_touched"] >= 1000,
        ),
        t(
            "100 GB+ with consistent performance",
            f"database of {data['database_bytes'] / 1024**3:.1f} GiB, "
            f"{data['total_rows_estimated']:,} rows",
            None,
            "not reachable on this machine in a run: see the scaling comparison",
        ),
        t(
            "10,000+ queries per second",
            f"package {overall['throughput_per_s']:,} requests/s"
            + "".join(
                f"; pgbench {name} {runs[name]['overall']['throughput_per_s']:,}/s"
                for name in ("sql", "sql_tx_rls", "select_only")
                if name in runs and runs[name]["overall"]["throughput_per_s"]
            ),
            (overall["throughput_per_s"] or 0) >= 10_000,
            "judged on the package's own throughput",
        ),
    ]
    return out


def build_report(
    *,
    label: str | None,
    started: dt.datetime,
    finished: dt.datetime,
    config: BenchConfig,
    database: str,
    machine: Mapping[str, Any],
    server: Mapping[str, str],
    data: Mapping[str, Any],
    workload: WorkerResult | None,
    workload_server: ServerDelta | None,
    workload_load: Mapping[str, Any],
    tenants_sampled: int,
    plans: Mapping[str, Any],
    pgbench: Mapping[str, Any],
    load: Mapping[str, Any],
    baseline: Mapping[str, Any] | None = None,
    search: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    window = float(config.duration_s)
    report = _report_head(
        label=label,
        started=started,
        finished=finished,
        config=config,
        database=database,
        machine=machine,
        server=server,
        data=data,
        tenants_sampled=tenants_sampled,
        load=load,
    )
    report["plans"] = dict(plans)
    report["search"] = dict(search) if search is not None else None
    report["baseline"] = dict(baseline) if baseline is not None else {"ran": False}
    if workload is None or workload_server is None:
        # --baseline-only: no main workload and no pgbench, so no seed targets either.
        report.update(workload=None, pgbench=dict(pgbench), comparison={}, targets=[])
        return report
    w = _per_class(workload.latencies, window)
    setup = [v for c in CLASSES for v in workload.setup.get(c, [])]
    w.update(
        {
            "errors": dict(workload.errors),
            "error_samples": workload.error_samples,
            "tenants_touched": len(workload.tenants),
            "session_setup": summarize(setup, window),
            "acquire": {
                pool: summarize(times, window) for pool, times in sorted(workload.acquire.items())
            },
            "server": workload_server.as_dict(),
            "load_average": {k: v for k, v in workload_load.items() if k != "cpu"},
        }
    )
    report["workload"] = w
    report["pgbench"] = _pgbench_section(pgbench, window)
    cpu = dict(workload_load.get("cpu") or {})
    if cpu:
        cpu["window_s"] = window
    report["workload"]["cpu"] = _cpu_per(cpu, w["overall"]["throughput_per_s"])
    report["comparison"] = _comparison(report["workload"], report["pgbench"])
    report["targets"] = _targets(report)
    return report


def _report_head(
    *,
    label: str | None,
    started: dt.datetime,
    finished: dt.datetime,
    config: BenchConfig,
    database: str,
    machine: Mapping[str, Any],
    server: Mapping[str, str],
    data: Mapping[str, Any],
    tenants_sampled: int,
    load: Mapping[str, Any],
) -> dict[str, Any]:
    from platform_db.session.settings import Settings  # noqa: PLC0415

    pools: dict[str, int] = {}
    try:
        settings = Settings.from_env({"DATABASE_URL": "postgresql://x@127.0.0.1/x", **_env()})
        pools = {
            "pool_max": settings.main.max_size,
            "analytics_pool_max": settings.analytics.max_size,
        }
    except ValueError:
        pools = {}
    return {
        "version": REPORT_VERSION,
        "label": label,
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": finished.isoformat(timespec="seconds"),
        "database": database,
        "machine": dict(machine),
        "server": dict(server),
        "load_average": dict(load),
        "config": {
            "clients": config.clients,
            "processes": config.processes,
            "duration_s": config.duration_s,
            "warmup_s": config.warmup_s,
            "seed": config.seed,
            "gc_freeze": config.gc_freeze,
            "first_tenants": config.first_tenants,
            "rate": config.rate,
            "mix": dict(config.mix),
            "baseline": config.baseline,
            "baseline_only": config.baseline_only,
            **pools,
        },
        "data": dict(data),
        "tenants_sampled": tenants_sampled,
    }


def _env() -> dict[str, str]:
    import os  # noqa: PLC0415

    return {k: v for k, v in os.environ.items() if k.startswith("POSTGRES_")}


# --- Text -------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}" if value < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def render_text(report: Mapping[str, Any]) -> str:
    out = io.StringIO()
    m, s, c = report["machine"], report["server"], report["config"]
    out.write(
        f"platform-db bench{' (' + report['label'] + ')' if report.get('label') else ''}: "
        f"{report['database']}, {report['started_at']}\n"
        f"  machine: {m['cpus']} CPUs ({m.get('cpu_model') or '?'}), {m['memory_gib']} GiB; "
        f"PostgreSQL {s.get('server_version')}, shared_buffers {s.get('shared_buffers')}, "
        f"max_connections {s.get('max_connections')}\n"
        f"  data: {report['data']['total_rows_estimated']:,} rows, "
        f"{report['data']['database_bytes'] / 1024**3:.2f} GiB, "
        f"{report['data']['partitions']} partitions, "
        f"{report['data'].get('tenants', report['tenants_sampled']):,} tenants; requests drawn "
        f"over {report['tenants_sampled']:,}"
        + (f" (seed index below {c['first_tenants']:,})" if c.get("first_tenants") else "")
        + "\n"
        f"  run: {c['clients']} clients, {c['processes']} process(es), "
        + (
            f"open loop at {c['rate']:,g} requests/s (latency from when due), "
            if c.get("rate")
            else "closed loop, "
        )
        + (
            f"{c['warmup_s']} s warm-up + {c['duration_s']} s, "
            if report.get("workload") is not None
            else "baseline only, "
        )
        + "gc.freeze "
        f"{'on' if c.get('gc_freeze') else 'off'}; load average "
        f"{_load(report['load_average'].get('before'))} -> "
        f"{_load(report['load_average'].get('after'))}\n\n"
    )
    w = report["workload"]
    if w is None:
        out.write("(--baseline-only: no main workload, no pgbench, no seed targets)\n")
        _render_search(out, report.get("search"))
        _render_baseline(out, report.get("baseline") or {})
        return out.getvalue()
    out.write("Workload through the package (tenant sessions, platform_app login, RLS)\n")
    header = ["class", "requests", "per s", "p50 ms", "p95 ms", "p99 ms", "max ms"]
    rows = [
        [
            name,
            v["count"],
            v["throughput_per_s"],
            v["p50_ms"],
            v["p95_ms"],
            v["p99_ms"],
            v["max_ms"],
        ]
        for name, v in [*w["classes"].items(), ("overall", w["overall"])]
    ]
    write_table(out, header, [[_fmt(x) if i else x for i, x in enumerate(r)] for r in rows])
    a = w["acquire"]
    out.write("\nConnection acquisition (pool checkout) and session setup\n")
    write_table(
        out,
        ["pool", "checkouts", "p50 ms", "p95 ms", "p99 ms", "max ms"],
        [
            [
                k,
                _fmt(v["count"]),
                _fmt(v["p50_ms"]),
                _fmt(v["p95_ms"]),
                _fmt(v["p99_ms"]),
                _fmt(v["max_ms"]),
            ]
            for k, v in [*a.items(), ("session setup*", w["session_setup"])]
        ],
    )
    out.write(
        "  * checkout (+ a ping after idling) and the tenant hook, as seen by the caller; on\n"
        "    asyncpg, BEGIN and the tenant setting then travel with the first query\n"
    )
    sv = w["server"]
    out.write(
        f"\nServer over the measured window: cache hit {_pct(sv['cache_hit_ratio'])}, "
        f"index scans {_pct(sv['index_scan_share'])} ({sv['index_scans']:,} index, "
        f"{sv['seq_scans']:,} sequential), {sv['commits']:,} commits\n"
    )
    cpu = w.get("cpu") or {}
    if cpu.get("server_cpu_ms_per_request") is not None:
        out.write(
            f"CPU per request: client {_fmt(cpu.get('client_cpu_ms_per_request'))} ms, server "
            f"{_fmt(cpu['server_cpu_ms_per_request'])} ms ({cpu['server_backends']} backends); "
            f"machine busy {_pct(cpu.get('machine_busy'))}; disk read "
            f"{_fmt(cpu.get('disk_read_mib'))} MiB, written {_fmt(cpu.get('disk_written_mib'))} MiB "
            "(whole machine)\n"
        )
    if w["errors"]:
        out.write(f"Errors: {w['errors']}\n")
    pg = report["pgbench"]
    if pg.get("available"):
        out.write(f"\npgbench ({pg.get('version')}), same clients and duration\n")
        rows2 = []
        for name, run in pg["runs"].items():
            o = run["overall"]
            rcpu = run.get("cpu") or {}
            rows2.append(
                [
                    name,
                    _fmt(run.get("clients")),
                    _fmt(o["count"]),
                    _fmt(o["throughput_per_s"]),
                    _fmt(o["p50_ms"]),
                    _fmt(o["p95_ms"]),
                    _fmt(o["p99_ms"]),
                    _fmt(rcpu.get("server_cpu_ms_per_request")),
                    run.get("error") or "",
                ]
            )
        write_table(
            out,
            [
                "run",
                "clients",
                "transactions",
                "per s",
                "p50 ms",
                "p95 ms",
                "p99 ms",
                "server CPU ms/tx",
                "error",
            ],
            rows2,
        )
        out.write("\nPer class p50 / p95 ms: package vs the same SQL in pgbench\n")
        comp = report["comparison"]
        rows3 = []
        for cls, row in comp.items():

            def pv(key: str, row: Mapping[str, Any] = row) -> str:
                v = row.get(key)
                return f"{_fmt(v['p50_ms'])} / {_fmt(v['p95_ms'])}" if v else "-"

            cost = row["cost_ms_p50"]
            rows3.append(
                [
                    cls,
                    pv("package"),
                    pv("sql_tx_rls"),
                    pv("sql_tx"),
                    pv("sql"),
                    _fmt(cost["tenant_transaction"]),
                    _fmt(cost["rls_over_explicit_filter"]),
                    _fmt(cost["package_over_database"]),
                ]
            )
        write_table(
            out,
            ["class", "package", "sql_tx_rls", "sql_tx", "sql", "tx cost", "RLS cost", "pkg cost"],
            rows3,
        )
        out.write(
            "  costs: p50 differences in ms (sql_tx - sql, sql_tx_rls - sql_tx, package - sql_tx_rls)\n"
        )
    else:
        out.write(f"\npgbench: {pg.get('reason')}\n")
    out.write("\nTargets of the seed\n")
    write_table(
        out,
        ["target", "met", "measured"],
        [
            [t["target"], {True: "yes", False: "NO", None: "n/a"}[t["met"]], t["measured"]]
            for t in report["targets"]
        ],
    )
    _render_search(out, report.get("search"))
    _render_baseline(out, report.get("baseline") or {})
    return out.getvalue()


def _render_search(out: io.StringIO, search: Mapping[str, Any] | None) -> None:
    if not search:
        return
    out.write(
        f"\nFull-text search, the tenant with the most published pages "
        f"({search['published_pages']:,}), limit {search['limit']}: median ms of "
        f"{search['repeats']} interleaved runs (server ms from EXPLAIN ANALYZE)\n"
    )
    rows = []
    for text, t in search["terms"].items():
        v = t["variants"]

        def cell(name: str, v: Mapping[str, Any] = v) -> str:
            if name not in v:
                return "-"
            share = v[name].get("share_of_right_results")
            same = (
                ""
                if v[name]["same_results_as_superuser"]
                else f" (other results: {share:.0%} of the right ones)"
                if share is not None
                else " (other results)"
            )
            return f"{_fmt(v[name]['median_ms'])} ({_fmt(v[name]['server_ms'])}){same}"

        rows.append(
            [
                f"{text} ({t['kind']})",
                _fmt(t["matches"]),
                cell("package"),
                cell("rls_plain"),
                cell("superuser"),
                cell("top_candidates"),
                _fmt(t["package_over_superuser"]),
            ]
        )
    write_table(
        out,
        [
            "term",
            "matches",
            "package",
            "one statement, RLS",
            "superuser, tenant written out",
            "rank top 100 only",
            "package/superuser",
        ],
        rows,
    )


_RATIO_COLUMNS = (
    ("client_cpu_a_over_b", "client CPU A/B"),
    ("throughput_a_over_b", "req/s A/B"),
    ("server_cpu_a_over_b", "server CPU A/B"),
    ("client_cpu_a_over_c", "client CPU A/C"),
    ("throughput_a_over_c", "req/s A/C"),
    ("server_cpu_a_over_c", "server CPU A/C"),
    ("client_cpu_a_over_u", "client CPU A/U"),
    ("throughput_a_over_u", "req/s A/U"),
    ("server_cpu_a_over_u", "server CPU A/U"),
)


def _ratio_cell(spread: Mapping[str, Any] | None) -> str:
    if not spread or spread.get("median") is None:
        return "-"
    return f"{spread['median']:.3f} ({spread['min']:.2f}-{spread['max']:.2f})"


def _render_baseline(out: io.StringIO, b: Mapping[str, Any]) -> None:
    if not b.get("rounds"):
        return
    c = b["config"]
    out.write(
        f"\nBaseline: the same drawn requests four ways, {c['rounds']} interleaved rounds "
        f"({c['warmup_s']:g} s warm-up + {c['duration_s']:g} s for the mix, "
        f"{c['class_duration_s']:g} s per class), {c['clients']} clients in "
        f"{c['processes']} process(es)\n"
    )
    for v, desc in b["variants"].items():
        out.write(f"  {v}: {desc['description']} (login {desc['login']})\n")
    out.write("Ratios, median over the rounds (min-max):\n")
    ran = list(b["variants"])
    columns = [(k, label) for k, label in _RATIO_COLUMNS if label[-1] in ran]
    rows = []
    for name, w in [("overall", b["overall"]), *b["classes"].items()]:
        if w:
            rows.append([name, *(_ratio_cell(w["spread"].get(k)) for k, _ in columns)])
    write_table(out, ["workload", *(label for _, label in columns)], rows)
    out.write(
        "Per variant, median over the rounds: req/s / client CPU ms / server CPU ms per request\n"
    )
    rows = []
    for name, w in [("overall", b["overall"]), *b["classes"].items()]:
        if not w:
            continue
        cells = []
        for v in ran:
            m = w["medians"].get(v)
            if m is None:
                cells.append("-")
                continue
            cells.append(
                f"{_fmt(m.get('throughput_per_s'))} / {_fmt(m.get('client_cpu_ms_per_request'))}"
                f" / {_fmt(m.get('server_cpu_ms_per_request'))}"
            )
        rows.append([name, *cells])
    write_table(out, ["workload", *ran], rows)
    out.write("Targets (overall medians)\n")
    write_table(
        out,
        ["ratio", "target", "median", "met"],
        [
            [
                t["ratio"],
                t["target"],
                _fmt(t["median"]),
                {True: "yes", False: "NO", None: "n/a"}[t["met"]],
            ]
            for t in b["targets"]
        ],
    )
    errors = {
        f"round {r['round']} {w} {v}": p["errors"]
        for r in b["rounds"]
        for w, phases in r["phases"].items()
        for v, p in phases.items()
        if p.get("errors")
    }
    if errors:
        out.write(f"Errors: {errors}\n")


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v * 100:.2f}%"


def _load(v: Any) -> str:
    if not v:
        return "?"
    return " ".join(f"{x:.2f}" for x in v)


def _count(n: object) -> str:
    return f"{n:,}" if isinstance(n, int) else "?"


def compare_text(a: Mapping[str, Any], b: Mapping[str, Any]) -> str:
    """Two reports side by side (the scaling run): per-class p50/p95 and their ratio."""
    out = io.StringIO()
    da, db = a["data"], b["data"]
    out.write(
        f"A: {a.get('label') or a['database']}: {da['total_rows_estimated']:,} rows, "
        f"{da['database_bytes'] / 1024**3:.2f} GiB, {_count(da.get('tenants'))} tenants, "
        f"requests over {a['tenants_sampled']:,}\n"
        f"B: {b.get('label') or b['database']}: {db['total_rows_estimated']:,} rows, "
        f"{db['database_bytes'] / 1024**3:.2f} GiB, {_count(db.get('tenants'))} tenants, "
        f"requests over {b['tenants_sampled']:,}\n"
        f"data ratio B/A: {db['total_rows_estimated'] / max(da['total_rows_estimated'], 1):.1f}x\n\n"
    )
    rows = []
    for cls in [*CLASSES, "overall"]:
        wa = a["workload"]["overall"] if cls == "overall" else a["workload"]["classes"].get(cls)
        wb = b["workload"]["overall"] if cls == "overall" else b["workload"]["classes"].get(cls)
        if not wa or not wb:
            continue
        ratio = wb["p95_ms"] / wa["p95_ms"] if wa["p95_ms"] and wb["p95_ms"] is not None else None
        rows.append(
            [
                cls,
                _fmt(wa["p50_ms"]),
                _fmt(wb["p50_ms"]),
                _fmt(wa["p95_ms"]),
                _fmt(wb["p95_ms"]),
                "-" if ratio is None else f"{ratio:.2f}x",
                _fmt(wa["throughput_per_s"]),
                _fmt(wb["throughput_per_s"]),
            ]
        )
    write_table(
        out, ["class", "p50 A", "p50 B", "p95 A", "p95 B", "p95 B/A", "per s A", "per s B"], rows
    )
    return out.getvalue()


# --- HTML with inline SVG ---------------------------------------------------------------------

_COLORS = ("#2b6cb0", "#dd6b20", "#38a169", "#805ad5", "#718096")


def bar_chart(
    title: str,
    groups: Sequence[str],
    series: Sequence[tuple[str, Sequence[float | None]]],
    *,
    unit: str,
    log: bool = True,
    reference: tuple[float, str] | None = None,
) -> str:
    """A grouped bar chart as an SVG string (log scale by default)."""
    width, height, left, bottom, top = 900, 360, 70, 90, 40
    plot_w, plot_h = width - left - 20, height - bottom - top
    values = [v for _, vs in series for v in vs if v is not None and v > 0]
    if reference:
        values.append(reference[0])
    if not values:
        return f"<p>{html.escape(title)}: no data</p>"
    lo = 10 ** math.floor(math.log10(min(values))) if log else 0.0
    hi = 10 ** math.ceil(math.log10(max(values))) if log else max(values) * 1.1
    if log and hi <= lo:
        hi = lo * 10

    def y(v: float) -> float:
        if log:
            frac = (math.log10(max(v, lo)) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))
        else:
            frac = v / hi if hi else 0.0
        return top + plot_h * (1 - frac)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="12">',
        f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="15">{html.escape(title)}</text>',
    ]
    ticks: list[float] = []
    if log:
        e = round(math.log10(lo))
        while 10**e <= hi * 1.0001:
            ticks.extend(m * 10**e for m in (1, 2, 5) if m * 10**e <= hi * 1.0001)
            e += 1
    else:
        ticks = [hi * i / 5 for i in range(6)]
    for tv in ticks:
        ty = y(tv)
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{ty:.1f}" y2="{ty:.1f}" stroke="#e2e8f0"/>'
            f'<text x="{left - 6}" y="{ty + 4:.1f}" text-anchor="end">{tv:g}</text>'
        )
    parts.append(
        f'<text x="16" y="{top + plot_h / 2}" transform="rotate(-90 16 {top + plot_h / 2})" '
        f'text-anchor="middle">{html.escape(unit)}{" (log)" if log else ""}</text>'
    )
    group_w = plot_w / max(len(groups), 1)
    bar_w = group_w * 0.8 / max(len(series), 1)
    for gi, group in enumerate(groups):
        gx = left + gi * group_w + group_w * 0.1
        for si, (name, vs) in enumerate(series):
            v = vs[gi] if gi < len(vs) else None
            if v is None or v <= 0:
                continue
            bx, by = gx + si * bar_w, y(v)
            parts.append(
                f'<rect x="{bx:.1f}" y="{by:.1f}" width="{bar_w - 1:.1f}" '
                f'height="{top + plot_h - by:.1f}" fill="{_COLORS[si % len(_COLORS)]}">'
                f"<title>{html.escape(name)} {html.escape(group)}: {v:g} {html.escape(unit)}</title></rect>"
            )
        parts.append(
            f'<text x="{gx + group_w * 0.4:.1f}" y="{top + plot_h + 14}" text-anchor="end" '
            f'transform="rotate(-30 {gx + group_w * 0.4:.1f} {top + plot_h + 14})">'
            f"{html.escape(group)}</text>"
        )
    if reference:
        ry = y(reference[0])
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{ry:.1f}" y2="{ry:.1f}" stroke="#e53e3e" '
            f'stroke-dasharray="6 4"/><text x="{left + plot_w - 4}" y="{ry - 4:.1f}" '
            f'text-anchor="end" fill="#e53e3e">{html.escape(reference[1])}</text>'
        )
    for si, (name, _) in enumerate(series):
        lx = left + si * 150
        parts.append(
            f'<rect x="{lx}" y="{height - 18}" width="12" height="12" fill="{_COLORS[si % len(_COLORS)]}"/>'
            f'<text x="{lx + 16}" y="{height - 8}">{html.escape(name)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _workload_charts(report: Mapping[str, Any]) -> list[str]:
    w = report["workload"]
    classes = list(w["classes"])
    charts = [
        bar_chart(
            "Latency per query class, through the package",
            classes,
            [(p, [w["classes"][c][f"{p}_ms"] for c in classes]) for p in ("p50", "p95", "p99")],
            unit="ms",
            reference=(QUERY_TARGET_MS, "target 100 ms"),
        )
    ]
    comp = report["comparison"]
    variants = [
        v for v in ("package", "sql_tx_rls", "sql_tx", "sql") if any(v in r for r in comp.values())
    ]
    if len(variants) > 1:
        names = [c for c in comp if c != "overall"]
        charts.append(
            bar_chart(
                "p95 per class: the package vs the same SQL in pgbench",
                names,
                [
                    (v, [comp[c][v]["p95_ms"] if v in comp[c] else None for c in names])
                    for v in variants
                ],
                unit="ms",
            )
        )
        runs = report["pgbench"].get("runs", {})
        labels = [
            "package",
            *[n for n in ("sql_tx_rls", "sql_tx", "sql", "select_only") if n in runs],
        ]
        tput = [
            w["overall"]["throughput_per_s"],
            *[runs[n]["overall"]["throughput_per_s"] for n in labels[1:]],
        ]
        charts.append(
            bar_chart(
                "Throughput (requests or transactions per second)",
                labels,
                [("per s", tput)],
                unit="per s",
                log=False,
            )
        )
    return charts


def baseline_charts(b: Mapping[str, Any]) -> list[str]:
    """The baseline's ratios per workload (medians) and per round (the mix)."""
    if not b.get("rounds"):
        return []
    names = ["overall", *b["classes"]]
    spreads = {n: (b["overall"] if n == "overall" else b["classes"][n])["spread"] for n in names}
    main = ("client_cpu_a_over_b", "throughput_a_over_b", "server_cpu_a_over_c")
    charts = [
        bar_chart(
            "Baseline: A/B client CPU, A/B throughput, A/C server CPU per workload (median of rounds)",
            names,
            [(k, [spreads[n][k]["median"] for n in names]) for k in main],
            unit="ratio",
            log=False,
            reference=(1.0, "1.0 = same as the baseline"),
        ),
        bar_chart(
            "Baseline, the mix: each round's ratios (the spread)",
            [f"round {r['round']}" for r in b["rounds"]],
            [(k, list(b["spread"][k]["values"])) for k in main],
            unit="ratio",
            log=False,
            reference=(1.0, "1.0"),
        ),
    ]
    overall = b["overall"]["medians"]
    variants = [v for v in ("A", "B", "C", "D", "U") if v in overall]
    charts.append(
        bar_chart(
            "Baseline, the mix: CPU per request of each variant (median of rounds)",
            variants,
            [
                (label, [overall[v][metric] for v in variants])
                for label, metric in (
                    ("client CPU ms", "client_cpu_ms_per_request"),
                    ("server CPU ms", "server_cpu_ms_per_request"),
                )
            ],
            unit="ms per request",
            log=False,
        )
    )
    return charts


def render_html(report: Mapping[str, Any]) -> str:
    """A self-contained page: charts (inline SVG), the text report, the targets."""
    charts = _workload_charts(report) if report.get("workload") else []
    charts += baseline_charts(report.get("baseline") or {})
    title = f"platform-db bench: {report['database']} {report['started_at']}"
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:24px;max-width:1000px}"
        "pre{background:#f7fafc;padding:12px;overflow-x:auto;font-size:12px}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        + "".join(f"<div>{c}</div>" for c in charts)
        + f"<h2>Report</h2><pre>{html.escape(render_text(report))}</pre></body></html>"
    )
