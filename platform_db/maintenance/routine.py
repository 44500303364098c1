"""`maintain`: run every maintenance job once (what pg_cron runs on its schedule).

Takes an engine of a superuser or of a login that owns the maintenance functions (in
practice: the migration login).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, text

from platform_db.maintenance.health import clean_rows


@dataclass(slots=True)
class MaintenanceStep:
    name: str
    seconds: float
    result: list[dict[str, Any]] | int | None
    skipped: str | None = None


Progress = Callable[[str], None]


def maintain(
    engine: Engine,
    *,
    months_ahead: int = 3,
    retention_months: int | None = None,
    drop_retired: bool = False,
    metrics_retention_days: int = 30,
    progress: Progress | None = None,
) -> list[MaintenanceStep]:
    """Run every maintenance job once, each in its own transaction, in a safe order."""
    if retention_months is not None and retention_months < 1:
        raise ValueError("retention_months must be at least 1")
    say = progress or (lambda _msg: None)
    steps: list[MaintenanceStep] = []

    def run(name: str, sql: str | None, skip: str | None = None, **params: Any) -> None:
        say(f"{name} ...")
        start = time.perf_counter()
        result: list[dict[str, Any]] | int | None = None
        if sql is not None and skip is None:
            with engine.begin() as conn:
                rows = conn.execute(text(sql), params)
                result = clean_rows([dict(r._mapping) for r in rows]) if rows.returns_rows else None
        seconds = time.perf_counter() - start
        steps.append(MaintenanceStep(name, round(seconds, 3), result, skip))
        say(f"{name}: {'skipped (' + skip + ')' if skip else 'done'} in {seconds:.2f} s")

    run(
        "create partitions ahead",
        "SELECT * FROM platform.ensure_form_submission_partitions(months_ahead => :m)",
        m=months_ahead,
    )
    # The audit trail (revision e5f7a9b1d407): the same months ahead for audit_log.
    with engine.connect() as conn:
        has_audit = conn.scalar(
            text(
                "SELECT to_regprocedure('platform.ensure_monthly_partitions(regclass, integer, "
                "date)') IS NOT NULL AND to_regclass('public.audit_log') IS NOT NULL"
            )
        )
    run(
        "create audit_log partitions ahead",
        "SELECT * FROM platform.ensure_monthly_partitions("
        "'public.audit_log'::regclass, months_ahead => :m)",
        None if has_audit else "no audit trail in this schema version",
        m=months_ahead,
    )
    run(
        "retire old partitions",
        "SELECT * FROM platform.retire_form_submission_partitions("
        "make_interval(months => :r), drop_tables => :d)",
        None if retention_months is not None else "no --retention-months given",
        r=retention_months or 0,
        d=drop_retired,
    )
    with engine.connect() as conn:
        has_refresh = conn.scalar(
            text("SELECT to_regprocedure('platform.refresh_performance_views()') IS NOT NULL")
        )
    run(
        "refresh materialized views",
        "SELECT * FROM platform.refresh_performance_views()",
        None if has_refresh else "no materialized views in this schema version",
    )
    run("snapshot performance metrics", "SELECT platform.snapshot_performance_metrics() AS rows")
    run(
        "clean up old performance metrics",
        "SELECT platform.cleanup_old_performance_metrics(make_interval(days => :d)) AS deleted",
        d=metrics_retention_days,
    )
    return steps
