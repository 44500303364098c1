"""The scheduled maintenance jobs: one list, for pg_cron and for `platform-db maintain`.

Where pg_cron is installed in the database, the revisions schedule these jobs (each a
`ScheduledJob` entity, compared by `alembic check`); `platform.schedule_maintenance_jobs()`
schedules the same list for a pg_cron installed later. Without pg_cron, `platform-db
maintain` (platform_db.maintenance.routine) runs the same work from the system's cron.
pg_cron runs each job as the role that scheduled it (the migration login).
"""

from __future__ import annotations

from platform_db.ddl.entities import PLATFORM_SCHEMA, ScheduledJob

S = PLATFORM_SCHEMA

REFRESH_PERFORMANCE_VIEWS = ScheduledJob(
    "refresh-performance-views", "*/15 * * * *", f"SELECT {S}.refresh_performance_views()"
)
SNAPSHOT_PERFORMANCE_METRICS = ScheduledJob(
    "snapshot-performance-metrics", "*/5 * * * *", f"SELECT {S}.snapshot_performance_metrics()"
)
CLEANUP_PERFORMANCE_METRICS = ScheduledJob(
    "cleanup-performance-metrics",
    "17 3 * * *",
    f"SELECT {S}.cleanup_old_performance_metrics(interval '30 days')",
)
ENSURE_FORM_SUBMISSION_PARTITIONS = ScheduledJob(
    "ensure-form-submission-partitions",
    "7 2 * * *",
    f"SELECT * FROM {S}.ensure_form_submission_partitions(3)",
)
CLEANUP_CRON_HISTORY = ScheduledJob(
    "cleanup-cron-history",
    "37 3 * * *",
    "DELETE FROM cron.job_run_details WHERE end_time < now() - interval '7 days'",
)
ENSURE_AUDIT_LOG_PARTITIONS = ScheduledJob(
    "ensure-audit-log-partitions",
    "9 2 * * *",
    f"SELECT * FROM {S}.ensure_monthly_partitions('public.audit_log'::regclass, 3)",
)

JOBS: tuple[ScheduledJob, ...] = (
    REFRESH_PERFORMANCE_VIEWS,
    SNAPSHOT_PERFORMANCE_METRICS,
    CLEANUP_PERFORMANCE_METRICS,
    ENSURE_FORM_SUBMISSION_PARTITIONS,
    CLEANUP_CRON_HISTORY,
    ENSURE_AUDIT_LOG_PARTITIONS,
)
