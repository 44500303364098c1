"""`doctor`: the health report (alerts, slow queries, index usage, bloat, partitions,
settings, materialized views; on Citus also nodes, shards and tenants per node).

Takes a connection of a superuser or of a member of platform_admin (in practice: the
migration login). On a database without the package's schema, or as a login that cannot
read the monitoring objects, it raises `DoctorCannotRun` with what to do instead.

The verdict (`healthy`) is what an alert can key on: no warning or critical alert, where
alerts include, besides `platform.check_performance_alerts()`, stale dashboards and server
settings at warning level (`autovacuum = off`, ...). `check_environment()` adds the
service's own settings (POSTGRES_*, the replica URL).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, text

from platform_db.maintenance.isolation import isolation_alerts
from platform_db.maintenance.replication import DEFAULT_MAX_LAG_MS, server_replication

SEVERITY_ORDER = {"info": 0, "warning": 1, "critical": 2}
UPGRADE_COMMAND = "platform-db upgrade"


class DoctorCannotRun(RuntimeError):
    """The database cannot be examined as it is: the message says what to do instead."""


@dataclass(frozen=True, slots=True)
class SettingCheck:
    name: str
    current: str
    recommendation: str
    status: str  # ok | advice | warning


@dataclass(slots=True)
class DoctorReport:
    server_version: str
    database: str
    extensions: dict[str, bool]
    alerts: list[dict[str, Any]]
    slow_queries: list[dict[str, Any]]
    index_usage: dict[str, int]
    unused_indexes: list[dict[str, Any]]
    bloat: list[dict[str, Any]]
    cache_hit: list[dict[str, Any]]
    partitions: dict[str, Any]
    settings: list[SettingCheck] = field(default_factory=list)
    materialized_views: list[dict[str, Any]] = field(default_factory=list)
    # On a Citus-distributed database: nodes, tenants per node, the largest tenants and
    # where they live (index usage, dead rows and unused indexes above are then the
    # shards', summed per table; see citus_section()). None elsewhere.
    citus: dict[str, Any] | None = None
    # platform_db.maintenance.replication: this server's role, its standbys and slots (or
    # its own replay state), and `replica`: POSTGRES_REPLICA_URL's view, added by the CLI.
    replication: dict[str, Any] = field(default_factory=dict)

    @property
    def worst_severity(self) -> str | None:
        if not self.alerts:
            return None
        worst: str = max((str(a["severity"]) for a in self.alerts), key=SEVERITY_ORDER.__getitem__)
        return worst

    @property
    def healthy(self) -> bool:
        return self.worst_severity in (None, "info")

    @property
    def headline(self) -> str:
        """One line for an alert: the verdict and what it rests on."""
        if self.healthy:
            return f"{self.database}: healthy"
        serious = [a for a in self.alerts if SEVERITY_ORDER.get(str(a["severity"]), 0) > 0]
        names = [
            f"{a['metric']} {a['subject']}" if a["subject"] else str(a["metric"]) for a in serious
        ]
        what = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        return (
            f"{self.database}: attention needed ({self.worst_severity}): "
            f"{len(serious)} alert{'s' if len(serious) != 1 else ''}: {what}"
        )

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["healthy"] = self.healthy
        data["headline"] = self.headline
        return data


def _rows(conn: Connection, sql: str, **params: Any) -> list[dict[str, Any]]:
    return [dict(r._mapping) for r in conn.execute(text(sql), params)]


def _json_safe(value: Any) -> Any:
    if isinstance(value, int | float | str | bool) or value is None:
        return value
    if isinstance(value, Decimal):
        return float(value)
    return str(value)


def clean_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: _json_safe(v) for k, v in r.items()} for r in rows]


# (setting, test on the current value, recommendation, status when the test fails)
_SETTING_RULES: list[tuple[str, Callable[[str], bool], str, str]] = [
    (
        # Optional (DESIGN.md): its absence is reported (an `info` alert), not unhealthy.
        "shared_preload_libraries",
        lambda v: "pg_stat_statements" in v,
        "include pg_stat_statements (and pg_cron to schedule maintenance)",
        "advice",
    ),
    ("autovacuum", lambda v: v == "on", "on: without it dead rows and bloat only grow", "warning"),
    ("track_counts", lambda v: v == "on", "on: autovacuum and index statistics need it", "warning"),
    ("fsync", lambda v: v == "on", "on: off risks corruption after a crash", "warning"),
    (
        "shared_buffers",
        lambda v: v != "128MB",
        "about 25% of the server's RAM (128MB is the built-in default)",
        "advice",
    ),
    (
        "effective_cache_size",
        lambda v: v != "4GB",
        "50-75% of the server's RAM (4GB is the built-in default)",
        "advice",
    ),
    (
        "maintenance_work_mem",
        lambda v: v != "64MB",
        "256MB-1GB, so VACUUM and index builds run in memory",
        "advice",
    ),
    ("random_page_cost", lambda v: float(v) <= 2, "1.1 on SSD storage", "advice"),
    ("track_io_timing", lambda v: v == "on", "on, so slow queries show their I/O time", "advice"),
    (
        "log_min_duration_statement",
        lambda v: v != "-1",
        "e.g. 500ms, so slow statements reach the server log",
        "advice",
    ),
    ("wal_compression", lambda v: v not in ("off", ""), "on (lz4 where available)", "advice"),
]


def check_settings(conn: Connection) -> list[SettingCheck]:
    current: dict[str, str] = dict(
        conn.execute(
            text("SELECT name, current_setting(name) FROM pg_settings WHERE name = ANY(:n)"),
            {"n": [r[0] for r in _SETTING_RULES]},
        ).all()
    )
    checks = []
    for name, test, recommendation, failing in _SETTING_RULES:
        value = current.get(name)
        if value is None:
            continue
        try:
            ok = test(value)
        except ValueError:
            ok = False
        checks.append(SettingCheck(name, value, recommendation, "ok" if ok else failing))
    return checks


def doctor(
    conn: Connection,
    *,
    stale_after_s: float = 3600,
    max_replica_lag_ms: float = DEFAULT_MAX_LAG_MS,
) -> DoctorReport:
    """Collect the health report. Read-only; works without pg_stat_statements, and on a
    standby.

    A dashboard materialized view not refreshed for `stale_after_s` seconds (the refresh
    job runs every 15 minutes) is reported as a `matview_stale` warning; a standby
    replaying more than `max_replica_lag_ms` behind as `replication_lag`
    (platform_db.maintenance.replication).
    """
    version = conn.scalar(text("SHOW server_version")) or "?"
    database = conn.scalar(text("SELECT current_database()")) or "?"
    _preflight(conn, str(database))
    available = set(
        conn.scalars(
            text(
                "SELECT name FROM pg_available_extensions "
                "WHERE name IN ('pg_stat_statements', 'pg_cron')"
            )
        )
    )
    installed = set(
        conn.scalars(
            text(
                "SELECT extname FROM pg_extension WHERE extname IN ('pg_stat_statements', 'pg_cron')"
            )
        )
    )
    pgss_usable = conn.scalar(text("SELECT platform.pg_stat_statements_relation() IS NOT NULL"))
    extensions = {
        "pg_stat_statements_available": "pg_stat_statements" in available,
        "pg_stat_statements_installed": "pg_stat_statements" in installed,
        "pg_stat_statements_usable": bool(pgss_usable),
        "pg_cron_available": "pg_cron" in available,
        "pg_cron_installed": "pg_cron" in installed,
    }
    alerts = clean_rows(_rows(conn, "SELECT * FROM platform.check_performance_alerts()"))
    alerts += isolation_alerts(conn)
    slow = clean_rows(
        _rows(
            conn,
            "SELECT queryid, calls, round(mean_ms::numeric, 1) AS mean_ms, "
            "round(total_ms::numeric, 1) AS total_ms, left(query, 160) AS query "
            "FROM platform.slow_queries LIMIT 10",
        )
    )
    usage: dict[str, int] = dict(
        conn.execute(
            text("SELECT usage, count(*) FROM platform.index_usage_stats GROUP BY usage")
        ).all()
    )
    unused = clean_rows(
        _rows(
            conn,
            "SELECT parent_index AS index, parent_table AS table, "
            "sum(index_bytes)::bigint AS bytes FROM platform.index_usage_stats "
            "WHERE NOT is_unique AND NOT detached_partition GROUP BY parent_index, parent_table "
            "HAVING sum(idx_scan) = 0 ORDER BY 3 DESC LIMIT 20",
        )
    )
    bloat = clean_rows(
        _rows(
            conn,
            "SELECT schema_name || '.' || table_name AS table, live_rows, dead_rows, dead_ratio, "
            "greatest(last_vacuum, last_autovacuum) AS last_vacuum, "
            "greatest(last_analyze, last_autoanalyze) AS last_analyze "
            "FROM platform.table_bloat_stats WHERE dead_rows > 0 "
            "ORDER BY dead_ratio DESC, dead_rows DESC LIMIT 10",
        )
    )
    cache = clean_rows(_rows(conn, "SELECT * FROM platform.cache_hit_ratios"))
    partitions = conn.execute(
        text(
            """
            SELECT count(*) FILTER (WHERE NOT is_default) AS monthly,
                   count(*) FILTER (WHERE NOT is_default AND
                       substring(partition_name from '(\\d{4}_\\d{2})$')
                       > to_char(now() AT TIME ZONE 'UTC', 'YYYY_MM')) AS months_ahead,
                   max(substring(partition_name from '(\\d{4}_\\d{2})$')) AS last_month,
                   bool_and(rls_forced) AS rls_forced_everywhere,
                   (SELECT count(*) FROM public.form_submissions_default) AS default_rows
            FROM platform.partition_status
            """
        )
    ).one()
    matviews: list[dict[str, Any]] = []
    if conn.scalar(text("SELECT to_regclass('platform.matview_refresh_log') IS NOT NULL")):
        matviews = clean_rows(_rows(conn, "SELECT * FROM platform.matview_freshness"))
        for view in matviews:
            age = view["age_seconds"]
            if age is None or age > stale_after_s:
                alerts.append(
                    {
                        "metric": "matview_stale",
                        "subject": view["view_name"],
                        "value": age,
                        "threshold": stale_after_s,
                        "severity": "warning",
                        "detail": "never refreshed by platform.refresh_performance_views()"
                        if age is None
                        else f"last refreshed {age / 60:.0f} minutes ago: is the refresh job running?",
                    }
                )
    citus = None
    if _distributed(conn):
        citus, usage, unused, bloat, citus_alerts = citus_section(conn)
        alerts.extend(citus_alerts)
        cache.extend(_worker_cache(conn))
    replication, replication_alerts = server_replication(conn, max_lag_ms=max_replica_lag_ms)
    alerts.extend(replication_alerts)
    settings = check_settings(conn)
    for check in settings:
        if check.status == "warning":
            alerts.append(
                {
                    "metric": "setting",
                    "subject": check.name,
                    "value": check.current,
                    "threshold": None,
                    "severity": "warning",
                    "detail": f"{check.name} = {check.current}; should be {check.recommendation}",
                }
            )
    return DoctorReport(
        server_version=str(version),
        database=str(database),
        extensions=extensions,
        alerts=alerts,
        slow_queries=slow,
        index_usage={str(k): int(v) for k, v in usage.items()},
        unused_indexes=unused,
        bloat=bloat,
        cache_hit=cache,
        partitions={k: _json_safe(v) for k, v in partitions._mapping.items()},
        settings=settings,
        materialized_views=matviews,
        citus=citus,
        replication=replication,
    )


def _distributed(conn: Connection) -> bool:
    from platform_db.maintenance.citus import citus_state  # noqa: PLC0415

    return citus_state(conn).distributed


# On the shards, the thresholds check_performance_alerts() applies on one server.
SHARD_DEAD_RATIO = 0.2
SHARD_MIN_DEAD_ROWS = 1000
# A node holding more than this many times its fair share of the bytes, on a database
# of at least SKEW_MIN_BYTES, is reported; a tenant holding more than TENANT_SHARE of all
# rows too (it is a candidate for a shard of its own).
NODE_SKEW = 1.5
SKEW_MIN_BYTES = 1 << 30
TENANT_SHARE = 0.2


def _alert(
    metric: str, subject: str | None, *, value: Any, threshold: Any, severity: str, detail: str
) -> dict[str, Any]:
    return {
        "metric": metric,
        "subject": subject,
        "value": value,
        "threshold": threshold,
        "severity": severity,
        "detail": detail,
    }


def citus_section(
    conn: Connection,
) -> tuple[
    dict[str, Any], dict[str, int], list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]
]:
    """What doctor reports on a Citus-distributed database, where the coordinator's tables
    are empty shells: (the citus section, index usage, unused indexes and dead rows from
    the shards, the alerts they raise)."""
    from platform_db.maintenance import citus  # noqa: PLC0415

    stats = citus.shard_statistics(conn)
    usage = stats.usage
    unused = clean_rows(
        [
            {"index": i["index"], "table": i["table"], "bytes": i["bytes"]}
            for i in sorted(stats.indexes, key=lambda i: -int(i["bytes"]))
            if i["idx_scan"] == 0 and not i["is_unique"]
        ][:20]
    )
    bloat = clean_rows(
        [
            {
                "table": t["table"],
                "live_rows": t["live_rows"],
                "dead_rows": t["dead_rows"],
                "dead_ratio": t["dead_ratio"],
                "last_vacuum": t["last_vacuum"],
                "last_analyze": None,
            }
            for t in sorted(stats.tables, key=lambda t: (-t["dead_ratio"], -t["dead_rows"]))
            if t["dead_rows"] > 0
        ][:10]
    )
    alerts = [
        _alert(
            "table_bloat",
            f"public.{t['table']} (shards)",
            value=t["dead_ratio"],
            threshold=SHARD_DEAD_RATIO,
            severity="critical" if t["dead_ratio"] > 0.5 else "warning",
            detail=f"{t['dead_rows']} dead of {t['dead_rows'] + t['live_rows']} rows over "
            f"{t['shards']} shards; oldest vacuum {t['last_vacuum'] or 'never'}",
        )
        for t in stats.tables
        if t["dead_rows"] >= SHARD_MIN_DEAD_ROWS and t["dead_ratio"] > SHARD_DEAD_RATIO
    ]
    nodes = citus.placement(conn)
    per_node = citus.tenants_per_node(conn)
    for node in nodes:
        node.update(per_node.get(str(node["node"]), {"tenants": 0, "rows": 0}))
    holding = [n for n in nodes if int(n["shards"]) > 0]
    total = sum(int(n["bytes"]) for n in holding)
    if holding and total >= SKEW_MIN_BYTES:
        fair = 1 / len(holding)
        for n in holding:
            if n["share"] > NODE_SKEW * fair:
                alerts.append(
                    _alert(
                        "node_skew",
                        str(n["node"]),
                        value=n["share"],
                        threshold=round(NODE_SKEW * fair, 4),
                        severity="warning",
                        detail=f"holds {n['share']:.0%} of the distributed bytes ({len(holding)} nodes): "
                        "rebalance (SELECT citus_rebalance_start()) or move a large tenant "
                        "(isolate_tenant_to_new_shard)",
                    )
                )
    largest = clean_rows(citus.largest_tenants(conn))
    for t in largest:
        if t["share"] > TENANT_SHARE and len(largest) > 1:
            alerts.append(
                _alert(
                    "tenant_skew",
                    str(t["subdomain"]),
                    value=t["share"],
                    threshold=TENANT_SHARE,
                    severity="info",
                    detail=f"tenant {t['tenant_id']} holds {t['share']:.0%} of all rows, on {t['node']}: "
                    "a candidate for a shard of its own (isolate_tenant_to_new_shard)",
                )
            )
    problem = citus.refresh_login_problem(conn)
    if problem is not None:
        alerts.append(
            _alert(
                "citus_refresh_login",
                citus.REFRESH_ROLE,
                value=None,
                threshold=None,
                severity="critical",
                detail=problem,
            )
        )
    section = {
        "nodes": clean_rows(nodes),
        "largest_tenants": largest,
        "shard_tables": clean_rows(stats.tables),
    }
    return section, usage, unused, bloat, alerts


def _worker_cache(conn: Connection) -> list[dict[str, Any]]:
    from platform_db.maintenance.citus import worker_cache_hits  # noqa: PLC0415

    return clean_rows(worker_cache_hits(conn))


def _preflight(conn: Connection, database: str) -> None:
    """Refuse, with what to do, where the report cannot be collected."""
    state = conn.execute(
        text(
            "SELECT to_regnamespace('platform') IS NOT NULL AS schema, "
            "EXISTS (SELECT FROM pg_proc WHERE proname = 'check_performance_alerts' "
            "AND pronamespace = to_regnamespace('platform')) AS alerts, "
            "current_user AS login, "
            "(SELECT rolsuper FROM pg_roles WHERE rolname = current_user) "
            "OR coalesce(pg_has_role(current_user, (SELECT oid FROM pg_roles "
            "WHERE rolname = 'platform_admin'), 'USAGE'), false) AS can_read"
        )
    ).one()
    if not state.schema or not state.alerts:
        raise DoctorCannotRun(
            f"database {database} has not been migrated (no schema platform"
            f"{'' if not state.schema else ' monitoring functions'}): run `{UPGRADE_COMMAND}` "
            "(or `alembic upgrade head`) with DATABASE_URL of the migration login, "
            "then run doctor again"
        )
    if not state.can_read:
        raise DoctorCannotRun(
            f"login {state.login} cannot read the monitoring views and functions (they are "
            "platform_admin's): run doctor as the migration login (a superuser, or a member "
            "of platform_admin) - an app login (member of platform_app) is not enough"
        )


def check_environment(
    env: Mapping[str, str], *, connect_timeout_s: int = 5
) -> list[dict[str, Any]]:
    """Alerts for the service's own settings: every POSTGRES_* problem Settings would
    refuse at start-up (critical), and a replica URL that cannot be reached or is not a
    replica."""
    from platform_db.session.settings import (  # noqa: PLC0415
        ConfigurationError,
        Settings,
        parse_database_url,
        redact,
    )

    def alert(subject: str, severity: str, detail: str) -> dict[str, Any]:
        return {
            "metric": "environment",
            "subject": subject,
            "value": None,
            "threshold": None,
            "severity": severity,
            "detail": detail,
        }

    alerts = []
    try:
        Settings.from_env(env)
    except ConfigurationError as exc:
        for line in str(exc).splitlines()[1:] or [str(exc)]:
            problem = line.strip()
            alerts.append(alert(problem.split(" ", 1)[0], "critical", problem))
    raw_replica = env.get("POSTGRES_REPLICA_URL", "").strip()
    if raw_replica:
        try:
            replica = parse_database_url(raw_replica, name="POSTGRES_REPLICA_URL")
        except ConfigurationError:
            return alerts  # reported above
        from sqlalchemy import create_engine  # noqa: PLC0415
        from sqlalchemy.exc import DBAPIError  # noqa: PLC0415
        from sqlalchemy.pool import NullPool  # noqa: PLC0415

        engine = create_engine(
            replica, poolclass=NullPool, connect_args={"connect_timeout": connect_timeout_s}
        )
        try:
            with engine.connect() as conn:
                in_recovery = conn.scalar(text("SELECT pg_is_in_recovery()"))
        except DBAPIError as exc:
            alerts.append(
                alert(
                    "POSTGRES_REPLICA_URL",
                    "critical",
                    f"cannot connect to the replica {redact(replica)}: "
                    f"{str(exc.orig).strip().splitlines()[0] if exc.orig else exc}",
                )
            )
        else:
            if not in_recovery:
                alerts.append(
                    alert(
                        "POSTGRES_REPLICA_URL",
                        "warning",
                        f"{redact(replica)} is not a replica (pg_is_in_recovery() is false): "
                        "the analytics pool reads from a primary",
                    )
                )
        finally:
            engine.dispose()
    return alerts
