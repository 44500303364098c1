"""The isolation plugin shipped in platform_db.testing, used on our own schema.

The first test is what a downstream service writes. The second shows that the plugin's
assertion can fail: on a database of its own, it breaks isolation and expects it to. The
last builds the service of docs/TESTING.md (its own models, revisions and alembic.ini) and
runs its tests in a pytest of its own, as the service would.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import Computed, Connection, MetaData, Text, Uuid, create_engine, text
from sqlalchemy.dialects.postgresql import TSVECTOR
from sqlalchemy.engine import URL
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.pool import NullPool

from platform_db.ddl.search import TenantSearch
from platform_db.ddl.tenant_table import tenant_tables
from platform_db.migration import runner as migrations
from platform_db.models import TenantMixin, metadata
from platform_db.session.settings import SYNC_DRIVER, with_driver
from platform_db.testing import (
    IsolationChecker,
    SearchWithoutIndexWarning,
    default_row_factories,
    two_tenants,
)
from tests.conftest import temporary_database


def test_every_tenant_table_is_closed_to_the_other_tenant(
    tenant_isolation: IsolationChecker,
) -> None:
    reports = tenant_isolation.assert_closed()
    assert set(reports) == {t.name for t in metadata.tables.values() if t.name != "tenants"}
    assert reports["audit_log"].checked[-3:] == [
        "insert for B: refused",
        "no TRUNCATE, REFERENCES or TRIGGER",
        "leftover session state: none reaches the next request",
    ]
    # audit_log rows exist for both tenants because the other factories' writes were audited.
    assert reports["audit_log"].rows_of_b >= len(default_row_factories())
    # pages is searched through platform.search_pages: closed, and on its index.
    assert reports["pages"].checked[-1] == "search: own rows only; no tenant: no rows"
    assert (
        "search platform.search_pages: SECURITY DEFINER as platform_admin"
        in (reports["pages"].checked[-2])
    )


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


# --- a service on the plugin ------------------------------------------------------------

DOCS = Path(__file__).resolve().parents[1] / "docs" / "TESTING.md"
# A fenced block whose first line is "# <relative path>" is a file of the example service.
DOC_FILE = re.compile(r"^```\w+\n# ([\w./-]+)\n(.*?)^```", re.MULTILINE | re.DOTALL)

SERVICE_REVISION = '''\
"""Add notes: the service's first revision."""

import sqlalchemy as sa
from alembic import op

from platform_db.ddl.tenant_table import TenantTable
from platform_db.migration.operations import create_entity, drop_entity

revision = "5a1e0b7c9d21"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "notes",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("lead_id", sa.Uuid(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(
            ["tenant_id", "lead_id"], ["leads.tenant_id", "leads.id"], ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("tenant_id", "id"),
    )
    for entity in TenantTable("notes").entities():
        create_entity(entity)


def downgrade() -> None:
    for entity in reversed(TenantTable("notes").entities()):
        drop_entity(entity)
    op.drop_table("notes")
'''

# Beside the documented test: the database is the service's, named as configured, and
# the plugin really checks `notes` (it fails when the table is opened).
SERVICE_CHECKS = """\
import os

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import text


def test_the_database_is_the_services(
    platform_db_url, platform_db_app_login, platform_db_admin_engine, platform_db_alembic_config
):
    prefix = os.environ["EXPECTED_PREFIX"]
    assert platform_db_url.database.startswith(prefix + "_")
    assert platform_db_app_login.username.startswith(prefix + "_app_")
    with platform_db_admin_engine.connect() as conn:
        service = set(conn.scalars(text("SELECT version_num FROM notes_alembic_version")))
        package = set(conn.scalars(text("SELECT version_num FROM alembic_version")))
    # Each history at its head, in its own version table: the package's first.
    assert service == {{"5a1e0b7c9d21"}}
    assert package == {{"{package_head}"}}
    script = ScriptDirectory.from_config(platform_db_alembic_config)
    assert {{r.revision for r in script.walk_revisions()}} == service


def test_an_open_notes_table_fails(tenant_isolation, platform_db_admin_engine):
    with platform_db_admin_engine.begin() as conn:
        conn.execute(text("CREATE POLICY open_door ON notes USING (true)"))
    try:
        with pytest.raises(AssertionError, match=r"open_door"):
            tenant_isolation.assert_closed()
        with pytest.raises(AssertionError, match=r"public\\.notes: tenant A should see exactly"):
            tenant_isolation.assert_closed(check_catalog=False)
    finally:
        with platform_db_admin_engine.begin() as conn:
            conn.execute(text("DROP POLICY open_door ON notes"))
"""


def _write_service(root: Path, prefix: str) -> None:
    """The service of docs/TESTING.md: its documented files, plus a revision and an
    alembic.ini."""
    documented = dict(DOC_FILE.findall(DOCS.read_text()))
    assert {
        "pyproject.toml",
        "notes_service/models.py",
        "migrations/env.py",
        "tests/conftest.py",
    } <= set(documented)
    for name, body in documented.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(body)
    pyproject = (root / "pyproject.toml").read_text()
    assert 'platform_db_name_prefix = "notes_iso"' in pyproject
    (root / "pyproject.toml").write_text(
        pyproject.replace('"notes_iso"', f'"{prefix}"') + 'pythonpath = "."\n'
    )
    (root / "notes_service" / "__init__.py").write_text("")
    package_head = ScriptDirectory.from_config(migrations.alembic_config()).get_current_head()
    assert package_head is not None
    (root / "migrations" / "versions").mkdir(parents=True)
    (root / "migrations" / "versions" / "5a1e0b7c9d21_add_notes.py").write_text(
        SERVICE_REVISION.format(package_head=package_head)
    )
    (root / "tests" / "test_service_database.py").write_text(
        SERVICE_CHECKS.format(package_head=package_head)
    )
    (root / "alembic.ini").write_text(
        "[alembic]\nscript_location = %(here)s/migrations\npath_separator = os\n"
    )


def test_a_service_gets_its_tables_checked_by_the_plugin(server_url: URL, tmp_path: Path) -> None:
    prefix = f"notes_iso_{secrets.token_hex(3)}"
    _write_service(tmp_path, prefix)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTEST_", "PYTHONPATH", "DATABASE_URL"))
    }
    env |= {
        "TEST_DATABASE_URL": server_url.render_as_string(hide_password=False),
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
        "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
        "EXPECTED_PREFIX": prefix,
    }
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert re.search(r"\b3 passed\b", run.stdout), run.stdout

    # The plugin dropped what it made, under the configured names.
    admin = create_engine(with_driver(server_url, SYNC_DRIVER), poolclass=NullPool)
    with admin.connect() as conn:
        left = conn.scalars(
            text(
                "SELECT datname FROM pg_database WHERE starts_with(datname, :p) "
                "UNION ALL SELECT rolname FROM pg_roles WHERE starts_with(rolname, :p)"
            ),
            {"p": prefix},
        ).all()
    admin.dispose()
    assert left == []


# --- a downstream table with a tsvector ---------------------------------------------------


class _DownstreamBase(DeclarativeBase):
    """A service's models, in a metadata of their own (not the package's)."""

    metadata = MetaData()


class _Doc(TenantMixin, _DownstreamBase):
    """A searchable tenant table of a service, declared as docs/SERVICES.md shows."""

    __tablename__ = "iso_docs"
    __tenant_search__ = TenantSearch(function="public.search_iso_docs")

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    body: Mapped[str] = mapped_column(Text)
    search_vector: Mapped[Any] = mapped_column(
        TSVECTOR, Computed("to_tsvector('english'::regconfig, body)", persisted=True)
    )


class _Memo(TenantMixin, _DownstreamBase):
    """A tenant table with a tsvector and no search function: the plugin warns."""

    __tablename__ = "iso_memos"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    body: Mapped[str] = mapped_column(Text)
    search_vector: Mapped[Any] = mapped_column(
        TSVECTOR, Computed("to_tsvector('english'::regconfig, body)", persisted=True)
    )


_DOWNSTREAM_TABLES = """
CREATE TABLE {name} (
    tenant_id uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    id uuid NOT NULL DEFAULT gen_random_uuid(),
    body text NOT NULL,
    search_vector tsvector GENERATED ALWAYS AS (to_tsvector('english'::regconfig, body)) STORED,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX ix_{name}_search ON {name} USING gin (search_vector);
"""


def _downstream_row(conn: Connection, tenant_id: uuid.UUID) -> None:
    for table in ("iso_docs", "iso_memos"):
        conn.execute(
            text(f"INSERT INTO {table} (tenant_id, body) VALUES (:t, :b)"),
            {"t": tenant_id, "b": f"quarterly onboarding checklist {secrets.token_hex(3)}"},
        )


# The breaks below re-check iso_memos too, which warns again each time.
@pytest.mark.filterwarnings("ignore::platform_db.testing.SearchWithoutIndexWarning")
def test_a_downstream_table_with_a_tsvector_gets_its_search_checked(
    server_url: URL, database_url: URL, app_login: URL
) -> None:
    del database_url  # keeps the cluster-wide roles in use
    docs = next(t for t in tenant_tables(_DownstreamBase.metadata) if t.name == "iso_docs")
    function = docs.entities()[-1]
    assert function.identity == "public.search_iso_docs"
    with temporary_database(server_url, migrate=True) as url:
        admin = create_engine(url, poolclass=NullPool)
        app = create_engine(
            url.set(username=app_login.username, password=app_login.password), poolclass=NullPool
        )
        with admin.begin() as conn:
            for name in ("iso_docs", "iso_memos"):
                conn.execute(text(_DOWNSTREAM_TABLES.format(name=name)))
            # What the service's autogenerated revision runs (create_entity of each).
            for spec in tenant_tables(_DownstreamBase.metadata):
                for entity in spec.entities():
                    for statement in entity.create_sql():
                        conn.execute(text(statement))
        with two_tenants(admin, [_downstream_row]) as tenants:
            checker = IsolationChecker(admin, app, _DownstreamBase.metadata, tenants)
            with pytest.warns(SearchWithoutIndexWarning, match=r"public\.iso_memos\.search_vector"):
                reports = checker.assert_closed()
            assert reports["iso_docs"].checked[-1] == "search: own rows only; no tenant: no rows"
            assert reports["iso_memos"].checked[-1] == (
                "search: none declared for tsvector column search_vector"
            )

            # A search function that forgets the tenant: the catalog comparison and the
            # behaviour both give it away.
            leaky = function.create_sql()[0].replace("t.tenant_id = _tenant AND ", "")
            assert leaky != function.create_sql()[0]
            with admin.begin() as conn:
                conn.execute(text(leaky))
            with pytest.raises(AssertionError, match=r"replace_function.*search_iso_docs"):
                checker.assert_closed()
            with pytest.raises(AssertionError, match=r"returns 1 rows of B"):
                checker.assert_closed(check_catalog=False)

            # The right body, but owned by a role under RLS: closed, yet off its index.
            with admin.begin() as conn:
                for statement in function.create_sql():
                    conn.execute(text(statement))
                conn.execute(text("ALTER FUNCTION public.search_iso_docs OWNER TO platform_owner"))
            with pytest.raises(AssertionError, match=r"platform_owner, which does not bypass RLS"):
                checker.assert_closed(check_catalog=False)
        admin.dispose()
        app.dispose()
