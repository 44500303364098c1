"""Add the tenant dashboards: materialized views, tenant views, refresh and scheduling.

Revision ID: d4e6b8a0c306
Revises: c7a1f3e9d205
Create Date: 2026-11-26 14:30:00 UTC

Materialized views in `platform` (owned by platform_admin, so REFRESH sees every tenant)
with the unique indexes REFRESH ... CONCURRENTLY needs; security-barrier views in
`public` that show a tenant its own rows; platform.refresh_performance_views(); and, when
pg_cron is installed in this database, the maintenance jobs.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from platform_db.ddl import dashboards

revision: str = "d4e6b8a0c306"
down_revision: str | Sequence[str] | None = "c7a1f3e9d205"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    for view in dashboards.MATERIALIZED_VIEWS:
        for statement in view.create():
            op.execute(sa.text(statement))
    op.execute(sa.text(dashboards.CREATE_REFRESH))
    op.execute(sa.text(dashboards.CREATE_SCHEDULING))


def downgrade() -> None:
    op.execute(sa.text(dashboards.DROP_SCHEDULING))
    op.execute(sa.text(dashboards.DROP_REFRESH))
    for view in reversed(dashboards.MATERIALIZED_VIEWS):
        for statement in view.drop():
            op.execute(sa.text(statement))
