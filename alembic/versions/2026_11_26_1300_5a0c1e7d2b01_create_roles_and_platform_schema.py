"""Create the group roles, the platform schema and the tenant setting functions.

Revision ID: 5a0c1e7d2b01
Revises:
Create Date: 2026-11-26 13:00:00 UTC

Roles are created only if missing (they are cluster-wide); a pre-existing platform_app
is stripped of anything that would let it bypass RLS. Needs a superuser, or a role with
CREATEROLE for the roles and BYPASSRLS for platform_admin.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from platform_db.ddl import partitions, security

revision: str = "5a0c1e7d2b01"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(sa.text(security.CREATE_ROLES))
    op.execute(sa.text(security.CREATE_PLATFORM_SCHEMA))
    op.execute(sa.text(security.CREATE_SETTING_FUNCTIONS))
    op.execute(sa.text(partitions.CREATE_PROTECT_PARTITIONS))


def downgrade() -> None:
    op.execute(sa.text(partitions.DROP_PROTECT_PARTITIONS))
    op.execute(sa.text(security.DROP_SETTING_FUNCTIONS))
    op.execute(sa.text(security.DROP_PLATFORM_SCHEMA))
    op.execute(sa.text(security.DROP_ROLES))
