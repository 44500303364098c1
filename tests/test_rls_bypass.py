"""A tenant session on a login that row-level security does not filter is refused.

Superusers and BYPASSRLS roles see every tenant's rows whatever `app.current_tenant_id`
says: a seeding script that opened `db.session(tenant_id=beta)` on the superuser URL
saw and wrote every tenant's rows without a warning (issue 13, point 5).
"""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, text

from platform_db.session.tenancy import TenantError, TenantSession
from tests.isolation_helpers import SeededTenant


@pytest.mark.xfail(strict=True, reason="issue 13.5: not detected yet")
def test_tenant_session_on_the_superuser_is_refused(
    engine: Engine, a: SeededTenant, b: SeededTenant
) -> None:
    # Without the check the query runs and returns the leads of both a and b.
    with (
        TenantSession(engine, tenant_id=b.tenant_id) as session,
        pytest.raises(TenantError, match="bypasses row-level security"),
    ):
        session.scalars(text("SELECT DISTINCT tenant_id FROM leads"))
