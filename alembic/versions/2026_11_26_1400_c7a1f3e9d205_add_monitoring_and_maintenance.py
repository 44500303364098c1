"""Add monitoring views, performance alerts, metric snapshots and partition retirement.

Revision ID: c7a1f3e9d205
Revises: b2e8d5f1c604
Create Date: 2026-11-26 14:00:00 UTC

Everything lives in schema `platform`, readable by platform_admin only. pg_stat_statements
is optional: it is looked up at run time, and its absence is reported as an `info` alert.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from platform_db.ddl import monitoring, partitions

revision: str = "c7a1f3e9d205"
down_revision: str | Sequence[str] | None = "b2e8d5f1c604"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(sa.text(monitoring.CREATE_MONITORING))
    op.execute(sa.text(partitions.CREATE_RETIRE_PARTITIONS))


def downgrade() -> None:
    op.execute(sa.text(partitions.DROP_RETIRE_PARTITIONS))
    op.execute(sa.text(monitoring.DROP_MONITORING))
