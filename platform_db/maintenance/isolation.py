"""What `doctor` checks of the isolation between requests (docs/SECURITY.md, level (b)).

* privileges PUBLIC still holds that the revisions revoke (a revision run without a
  superuser cannot revoke catalog functions: it warns, and this keeps saying so);
* role defaults on the logins that serve requests (members of platform_app): a login may
  set its own (`ALTER ROLE <self> SET work_mem = '64kB'`), and new connections get them.
  The package's engines override the settings that guard a request; the others (planner
  and memory settings) would still slow every new connection down.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, text

from platform_db.ddl.security import APP_ROLE, PUBLIC_REVOCATIONS

_APP_LOGIN_SETTINGS = f"""
SELECT r.rolname AS login, pg_catalog.array_to_string(s.setconfig, ', ') AS settings
FROM pg_catalog.pg_db_role_setting s
JOIN pg_catalog.pg_roles r ON r.oid = s.setrole
WHERE r.rolcanlogin
  AND pg_catalog.pg_has_role(r.oid, '{APP_ROLE}', 'MEMBER')
  AND NOT r.rolsuper
  AND s.setdatabase IN (0, (SELECT oid FROM pg_catalog.pg_database
                            WHERE datname = pg_catalog.current_database()))
ORDER BY 1
"""


def isolation_alerts(conn: Connection) -> list[dict[str, Any]]:
    """Doctor alerts (same shape as check_performance_alerts') about level (b)."""
    alerts: list[dict[str, Any]] = []
    for revocation in PUBLIC_REVOCATIONS:
        still_open = revocation.open_to_public(conn)
        if still_open:
            alerts.append(
                {
                    "metric": "open_to_public",
                    "subject": revocation.name,
                    "value": len(still_open),
                    "threshold": 0,
                    "severity": "warning",
                    "detail": (
                        f"PUBLIC (so platform_app) can still use {', '.join(still_open[:4])}"
                        f"{' ...' if len(still_open) > 4 else ''}: the revision needs a "
                        "superuser (database owner for TEMPORARY) to revoke it "
                        "(docs/SECURITY.md)"
                    ),
                }
            )
    for row in conn.execute(text(_APP_LOGIN_SETTINGS)):
        alerts.append(
            {
                "metric": "app_login_role_settings",
                "subject": row.login,
                "value": row.settings,
                "threshold": None,
                "severity": "warning",
                "detail": (
                    f"login {row.login} (a member of {APP_ROLE}) has role defaults "
                    f"{row.settings}; a login can set its own: check and "
                    f'ALTER ROLE "{row.login}" RESET ALL if unexpected'
                ),
            }
        )
    return alerts


__all__ = ["isolation_alerts"]
