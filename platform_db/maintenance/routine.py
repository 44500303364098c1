"""`maintain`: run every scheduled maintenance job once (what pg_cron runs on its schedule).

The jobs are the one list of platform_db.ddl.jobs: pg_cron schedules them where it is
installed, and `platform-db maintain` (run daily from the system's cron) runs the same
ones where it is not, with its options in place of the schedule's defaults. Takes an
engine of a superuser or of a login that owns the maintenance functions (in practice:
the migration login).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, text

from platform_db.ddl import jobs
from platform_db.ddl.entities import ScheduledJob
from platform_db.maintenance.health import clean_rows


@dataclass(slots=True)
class MaintenanceStep:
    name: str
    seconds: float
    result: list[dict[str, Any]] | int | None
    skipped: str | None = None


Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class _Run:
    """How `maintain` runs one job: its step name and its SQL with the options bound."""

    job: ScheduledJob | None  # None: a step no schedule runs (retiring is opt-in)
    name: str
    sql: str


# In a safe order: partitions first (nothing may find a month without its partition).
_RUNS = (
    _Run(
        jobs.ENSURE_FORM_SUBMISSION_PARTITIONS,
        "create partitions ahead",
        "SELECT * FROM platform.ensure_form_submission_partitions(months_ahead => :months)",
    ),
    _Run(
        jobs.ENSURE_AUDIT_LOG_PARTITIONS,
        "create audit_log partitions ahead",
        "SELECT * FROM platform.ensure_monthly_partitions("
        "'public.audit_log'::regclass, months_ahead => :months)",
    ),
    _Run(
        None,
        "retire old partitions",
        "SELECT * FROM platform.retire_form_submission_partitions("
        "make_interval(months => :retention), drop_tables => :drop)",
    ),
    _Run(
        jobs.REFRESH_PERFORMANCE_VIEWS,
        "refresh materialized views",
        "SELECT * FROM platform.refresh_performance_views()",
    ),
    _Run(
        jobs.SNAPSHOT_PERFORMANCE_METRICS,
        "snapshot performance metrics",
        "SELECT platform.snapshot_performance_metrics() AS rows",
    ),
    _Run(
        jobs.CLEANUP_PERFORMANCE_METRICS,
        "clean up old performance metrics",
        "SELECT platform.cleanup_old_performance_metrics(make_interval(days => :days)) AS deleted",
    ),
    _Run(
        jobs.CLEANUP_CRON_HISTORY,
        "clean up pg_cron's run history",
        jobs.CLEANUP_CRON_HISTORY.command,
    ),
)

_MISSING = set(jobs.JOBS) - {run.job for run in _RUNS}
if _MISSING:  # a job added to the list must say how `maintain` runs it
    raise RuntimeError(f"maintain does not run {sorted(j.name for j in _MISSING)}")


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
    params: dict[str, Any] = {
        "months": months_ahead,
        "retention": retention_months or 0,
        "drop": drop_retired,
        "days": metrics_retention_days,
    }
    with engine.connect() as conn:
        has_cron = bool(conn.scalar(text("SELECT to_regclass('cron.job_run_details') IS NOT NULL")))
    steps: list[MaintenanceStep] = []
    for run in _RUNS:
        skip = None
        if run.job is None and retention_months is None:
            skip = "no --retention-months given"
        elif run.job is jobs.CLEANUP_CRON_HISTORY and not has_cron:
            skip = "pg_cron is not installed in this database"
        say(f"{run.name} ...")
        start = time.perf_counter()
        result: list[dict[str, Any]] | int | None = None
        if skip is None:
            with engine.begin() as conn:
                rows = conn.execute(
                    text(run.sql), {k: v for k, v in params.items() if f":{k}" in run.sql}
                )
                result = clean_rows([dict(r._mapping) for r in rows]) if rows.returns_rows else None
        seconds = time.perf_counter() - start
        steps.append(MaintenanceStep(run.name, round(seconds, 3), result, skip))
        say(f"{run.name}: {'skipped (' + skip + ')' if skip else 'done'} in {seconds:.2f} s")
    return steps
