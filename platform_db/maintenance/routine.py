"""`maintain`: run every scheduled maintenance job once (what pg_cron runs on its schedule).

The jobs are the one list of platform_db.ddl.jobs: pg_cron schedules them where it is
installed, and `platform-db maintain` (run daily from the system's cron) runs the same
ones where it is not, with its options in place of the schedule's defaults. Takes an
engine of a superuser or of a login that owns the maintenance functions (in practice:
the migration login).

On a Citus-distributed database (docs/SCALING.md) the same functions run on the
coordinator (they switch to Citus' sequential mode themselves), and a last step checks
the cluster: every node reaches every other, and platform_admin reaches the workers (the
dashboards' refresh connects as it).

Maintenance must never freeze the application: each step runs in its own transaction
under a short `lock_timeout` (PLATFORM_DB_MIGRATION_LOCK_TIMEOUT, the migrations' own,
default 5s), so a step that meets a long query gives up instead of queueing every
reader of the table behind its lock. A step that fails is reported (`error`) and the
others still run; every step is idempotent, so the next run retries it. Each step also
takes a transaction-level advisory lock of its own without waiting: a run that overlaps
another skips the step the other is running (`skipped`), it does not queue behind it.

Every job writes, so they run on the primary only: on a standby (`pg_is_in_recovery()`)
`maintain` raises `MaintenanceRefused` before any step, as pg_cron skips its jobs there.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from platform_db.ddl import jobs
from platform_db.ddl.entities import ScheduledJob
from platform_db.maintenance.citus import citus_state, cluster_problems
from platform_db.maintenance.health import clean_rows
from platform_db.migration.operations import migration_lock_timeout
from platform_db.session.replica import server_of

# PostgreSQL's SQLSTATE for a lock wait cut short by lock_timeout (lock_not_available).
LOCK_NOT_AVAILABLE = "55P03"
# The advisory-lock class of `maintain`'s steps (pg_try_advisory_xact_lock(int, int)).
ADVISORY_LOCK_CLASS = 0x706C_6D74  # "plmt"


class MaintenanceRefused(RuntimeError):
    """`maintain` was pointed at a server where its jobs must not run (a standby)."""


STANDBY_REFUSAL = (
    "{database} on {server} is a standby (pg_is_in_recovery() is true): the maintenance "
    "jobs (partitions ahead, materialized-view refresh, metrics snapshot and cleanup) "
    "write, so they run on the primary only, and the standby gets their results by "
    "replaying its WAL; point DATABASE_URL at the primary (pg_cron skips standbys too)"
)


@dataclass(slots=True)
class MaintenanceStep:
    name: str
    seconds: float
    result: list[dict[str, Any]] | int | None
    skipped: str | None = None
    error: str | None = None  # why the step failed (its transaction was rolled back)
    timed_out: bool = False  # it gave up waiting for a lock: the next run retries it

    @property
    def failed(self) -> bool:
        return self.error is not None


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
    lock_timeout: str | None = None,
    progress: Progress | None = None,
) -> list[MaintenanceStep]:
    """Run every maintenance job once, each in its own transaction, in a safe order.

    Every step runs, whatever happened to the ones before it; a failed one has `error`
    set (`timed_out` when it waited longer than `lock_timeout` for a lock). The
    lock_timeout defaults to PLATFORM_DB_MIGRATION_LOCK_TIMEOUT (5s). On a standby it
    raises MaintenanceRefused and runs nothing.
    """
    if retention_months is not None and retention_months < 1:
        raise ValueError("retention_months must be at least 1")
    timeout = migration_lock_timeout() if lock_timeout is None else lock_timeout
    say = progress or (lambda _msg: None)
    params: dict[str, Any] = {
        "months": months_ahead,
        "retention": retention_months or 0,
        "drop": drop_retired,
        "days": metrics_retention_days,
    }
    refusal = MaintenanceRefused(
        STANDBY_REFUSAL.format(database=engine.url.database, server=server_of(engine.url))
    )
    try:
        with engine.connect() as conn:
            if conn.scalar(text("SELECT pg_is_in_recovery()")):
                raise refusal
            has_cron = bool(
                conn.scalar(text("SELECT to_regclass('cron.job_run_details') IS NOT NULL"))
            )
            distributed = citus_state(conn).distributed
    except DBAPIError as exc:
        # The package's read-write engines start each transaction with SET TRANSACTION
        # READ WRITE (platform_db.session.fresh), which a standby refuses outright.
        if "during recovery" in str(exc.orig):
            raise refusal from None
        raise
    steps: list[MaintenanceStep] = []
    for run in _RUNS:
        skip = None
        if run.job is None and retention_months is None:
            skip = "no --retention-months given"
        elif run.job is jobs.CLEANUP_CRON_HISTORY and not has_cron:
            skip = "pg_cron is not installed in this database"
        say(f"{run.name} ...")
        start = time.perf_counter()
        step = MaintenanceStep(run.name, 0.0, None, skip)
        if skip is None:
            _run_step(engine, run, timeout=timeout, params=params, step=step)
        step.seconds = round(time.perf_counter() - start, 3)
        steps.append(step)
        if step.error is not None:
            outcome = f"FAILED ({step.error})"
        elif step.skipped is not None:
            outcome = f"skipped ({step.skipped})"
        else:
            outcome = "done"
        say(f"{run.name}: {outcome} in {step.seconds:.2f} s")
    if distributed:
        steps.append(_check_cluster(engine, say))
    return steps


def _check_cluster(engine: Engine, say: Progress) -> MaintenanceStep:
    """On Citus: every node reaches every other, and the refresh's login reaches the
    workers (a failed refresh would otherwise be the first sign)."""
    name = "check the Citus cluster"
    say(f"{name} ...")
    start = time.perf_counter()
    step = MaintenanceStep(name, 0.0, None)
    try:
        with engine.connect() as conn:
            problems = cluster_problems(conn)
            conn.rollback()
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise
        problems = [(str(exc.orig).strip().splitlines() or ["unknown error"])[0]]
    step.seconds = round(time.perf_counter() - start, 3)
    if problems:
        step.error = "; ".join(problems)
    else:
        step.result = [{"nodes": "all reachable"}]
    say(
        f"{name}: {'FAILED (' + step.error + ')' if step.error else 'done'} in {step.seconds:.2f} s"
    )
    return step


def _run_step(
    engine: Engine,
    run: _Run,
    *,
    timeout: str,
    params: dict[str, Any],
    step: MaintenanceStep,
) -> None:
    """One step in a transaction of its own; a database error is recorded, not raised."""
    try:
        with engine.begin() as conn:
            conn.execute(text("SELECT set_config('lock_timeout', :t, true)"), {"t": timeout})
            mine = conn.scalar(
                text("SELECT pg_try_advisory_xact_lock(CAST(:c AS integer), hashtext(:n))"),
                {"c": ADVISORY_LOCK_CLASS, "n": run.name},
            )
            if not mine:
                step.skipped = "another maintain run is running this step"
                return
            rows = conn.execute(
                text(run.sql), {k: v for k, v in params.items() if f":{k}" in run.sql}
            )
            step.result = (
                clean_rows([dict(r._mapping) for r in rows]) if rows.returns_rows else None
            )
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise  # the server went away: the other steps cannot run either
        sqlstate = getattr(exc.orig, "sqlstate", None)
        message = (str(exc.orig).strip().splitlines() or ["unknown error"])[0]
        step.timed_out = sqlstate == LOCK_NOT_AVAILABLE
        if step.timed_out:
            message = (
                f"gave up after lock_timeout {timeout} waiting for a lock "
                f"(a long query or transaction holds it); the next run retries it: {message}"
            )
        step.error = message
