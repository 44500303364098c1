"""The current definitions of everything in the schema that the models do not describe.

Each object is an entity of one of the kinds in platform_db.ddl.entities (function, view,
materialized view, policy, row-level security, table grants, trigger, partition
protection, scheduled job, privileges revoked from PUBLIC); the modules group them by what they are for:

- `security`: the roles' names, the tenant setting functions, the tenant policy;
- `tenant_table`: what every tenant-owned table gets (and the registry of those tables);
- `partitions`, `audit`, `monitoring`, `dashboards`: their functions, views, triggers;
- `references`: the trigger that clears optional references between tenant tables;
- `jobs`: the one list of scheduled maintenance jobs (pg_cron and `platform-db maintain`).

Revisions never import these: autogenerate compares the database with `definitions()` and
renders what differs, as frozen copies, into a new revision. Editing a definition here
changes no existing revision. Everything is SQL built from code-owned identifiers only.
"""

from __future__ import annotations

from typing import Any

from platform_db.ddl.entities import Entity


def definitions(metadata: Any) -> list[Entity]:
    """Every entity platform-db defines, for the tenant tables of `metadata`."""
    from platform_db.ddl import (  # noqa: PLC0415 - the modules import entities from here
        audit,
        dashboards,
        jobs,
        monitoring,
        partitions,
        references,
        security,
        tenant_table,
    )

    found: list[Entity] = [
        *security.PUBLIC_REVOCATIONS,
        *security.SETTING_FUNCTIONS,
        partitions.PROTECT_PARTITIONS,
        partitions.UNPROTECT_PARTITIONS,
        partitions.ENSURE_MONTHLY_PARTITIONS,
        partitions.ENSURE_FORM_SUBMISSION_PARTITIONS,
        partitions.RETIRE_FORM_SUBMISSION_PARTITIONS,
        *monitoring.FUNCTIONS,
        dashboards.CURRENT_TENANT,
        dashboards.REFRESH_PERFORMANCE_VIEWS,
        dashboards.SCHEDULE_MAINTENANCE_JOBS,
        dashboards.UNSCHEDULE_MAINTENANCE_JOBS,
        audit.AUDIT_ROW_CHANGE,
        audit.AUDIT_LOG_REFUSE_CHANGE,
        references.CLEAR_REFERENCES,
        *security.platform_table_grants("tenants"),
    ]
    for table in tenant_table.tenant_tables(metadata):
        found += table.entities()
    found += [
        *references.CLEAR_TRIGGERS,
        audit.APPEND_ONLY,
        *monitoring.VIEWS,
        dashboards.MATVIEW_FRESHNESS,
        *dashboards.MATERIALIZED_VIEWS,
        *jobs.JOBS,
    ]
    return found


__all__ = ["definitions"]
