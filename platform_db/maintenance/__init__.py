"""Operations on a migrated database: `doctor` (health report) and `maintain` (the jobs
pg_cron runs, once, in a safe order)."""

from platform_db.maintenance.health import (
    SEVERITY_ORDER,
    DoctorCannotRun,
    DoctorReport,
    SettingCheck,
    check_environment,
    check_settings,
    doctor,
)
from platform_db.maintenance.routine import (
    MaintenanceRefused,
    MaintenanceStep,
    Progress,
    maintain,
)

__all__ = [
    "SEVERITY_ORDER",
    "DoctorCannotRun",
    "DoctorReport",
    "MaintenanceRefused",
    "MaintenanceStep",
    "Progress",
    "SettingCheck",
    "check_environment",
    "check_settings",
    "doctor",
    "maintain",
]
