"""Enable row-level security on every tenant-owned table and grant the roles their rights.

Revision ID: b2e8d5f1c604
Revises: 9d4f2a6c8b03
Create Date: 2026-11-26 13:03:00 UTC

RLS is enabled and forced on each tenant table and on each of its partitions, with one
policy comparing tenant_id to platform.current_tenant_id(). platform_app gets row rights
on the tenant tables and read on tenants, nothing else; platform_admin (BYPASSRLS) gets
row rights everywhere for platform-wide work.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from platform_db.ddl import security

revision: str = "b2e8d5f1c604"
down_revision: str | Sequence[str] | None = "9d4f2a6c8b03"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen here: the tenant tables as of this revision.
TENANT_TABLES = ("users", "pages", "forms", "leads", "form_submissions")
PLATFORM_TABLES = ("tenants",)


def upgrade() -> None:
    for table in PLATFORM_TABLES:
        for statement in security.grant_platform_table(table):
            op.execute(sa.text(statement))
    for table in TENANT_TABLES:
        for statement in security.protect_tenant_table(table):
            op.execute(sa.text(statement))
    # Only the owner and superusers run maintenance; the policy helpers stay callable.
    op.execute(sa.text(security.GRANT_FUNCTIONS))


def downgrade() -> None:
    op.execute(sa.text(security.REVOKE_FUNCTIONS))
    for table in reversed(TENANT_TABLES):
        for statement in security.unprotect_tenant_table(table):
            op.execute(sa.text(statement))
    for table in PLATFORM_TABLES:
        for statement in security.revoke_platform_table(table):
            op.execute(sa.text(statement))
