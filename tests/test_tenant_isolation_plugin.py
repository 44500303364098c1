"""The isolation plugin shipped in platform_db.testing, used on our own schema.

The first test is what a downstream service writes. The others show that the plugin's
assertion can fail: on a database of their own, they break isolation and expect it to.
"""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

from platform_db.models import metadata
from platform_db.testing import IsolationChecker, default_row_factories, two_tenants
from tests.conftest import temporary_database


def test_every_tenant_table_is_closed_to_the_other_tenant(
    tenant_isolation: IsolationChecker,
) -> None:
    reports = tenant_isolation.assert_closed()
    assert set(reports) == {t.name for t in metadata.tables.values() if t.name != "tenants"}
    assert reports["audit_log"].checked[-2:] == [
        "insert for B: refused",
        "no TRUNCATE, REFERENCES or TRIGGER",
    ]
    # audit_log rows exist for both tenants because the other factories' writes were audited.
    assert reports["audit_log"].rows_of_b >= len(default_row_factories())


def test_the_plugin_fails_on_a_broken_table_and_on_a_table_without_rows(
    server_url: URL, database_url: URL, app_login: URL
) -> None:
    del database_url  # keeps the cluster-wide roles in use
    with temporary_database(server_url, migrate=True) as url:
        admin = create_engine(url, poolclass=NullPool)
        app = create_engine(
            url.set(username=app_login.username, password=app_login.password), poolclass=NullPool
        )
        factories = default_row_factories()
        del factories["pages"]
        with two_tenants(admin, factories.values()) as tenants:
            checker = IsolationChecker(admin, app, metadata, tenants)
            with pytest.raises(AssertionError, match=r"public\.pages: tenant A has no rows"):
                checker.assert_closed()

            with admin.begin() as conn:
                default_row_factories()["pages"](conn, tenants.a)
                default_row_factories()["pages"](conn, tenants.b)
            checker.assert_closed()  # positive control: now everything is shown closed

            with admin.begin() as conn:
                conn.execute(text("CREATE POLICY open_door ON leads USING (true)"))
            with pytest.raises(AssertionError, match=r"drop_policy.*open_door"):
                checker.assert_closed()
            # Even without the catalog comparison, behaviour gives the hole away.
            with pytest.raises(AssertionError, match=r"public\.leads: tenant A should see exactly"):
                checker.assert_closed(check_catalog=False)
        admin.dispose()
        app.dispose()
