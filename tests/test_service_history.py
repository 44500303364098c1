"""A service beside the package: its own tables, revisions and version table.

Written as docs/SERVICES.md tells a service to: its models on platform_db's Base, an
env.py that calls `run_service_migrations` with its own version table. Then, with the
alembic command line: autogenerate touches nothing of the package's; one `upgrade head`
migrates the package first (when it is behind the installed platform-db) and the service
after it; both checks are clean; the service's downgrade leaves the package's schema
intact; a command other than upgrade refuses to run while the package is behind.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from alembic.script import ScriptDirectory
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

from platform_db.migration import runner as migrations
from tests.conftest import temporary_database

REPO = Path(__file__).resolve().parent.parent

MODELS = '''
"""The service's own tables: on platform_db's Base, so they can reference the package's."""

import uuid

from sqlalchemy import ForeignKeyConstraint, Index, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from platform_db.models import Base, TenantMixin, TimestampMixin
from platform_db.models.base import uuid_pk


class Note(TenantMixin, TimestampMixin, Base):
    """A tenant's note on a lead. Key (tenant_id, id); the lead is the same tenant's."""

    __tablename__ = "notes"

    id: Mapped[uuid_pk]
    lead_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    body: Mapped[str] = mapped_column(Text)

    __table_args__ = (
        ForeignKeyConstraint(
            ["tenant_id", "lead_id"], ["leads.tenant_id", "leads.id"], ondelete="CASCADE"
        ),
        Index("ix_notes_tenant_lead", "tenant_id", "lead_id"),
    )
'''

ENV = """
from alembic import context

import svc_models  # noqa: F401 - the service's models, on platform_db's Base
from platform_db.migration.environment import run_service_migrations
from platform_db.models import metadata

run_service_migrations(context, target_metadata=metadata, version_table="svc_alembic_version")
"""

INI = """
[alembic]
script_location = %(here)s/migrations
path_separator = os
file_template = %%(year)d_%%(month).2d_%%(day).2d_%%(hour).2d%%(minute).2d_%%(rev)s_%%(slug)s

[loggers]
keys = root,alembic

[handlers]
keys = console

[formatters]
keys = generic

[logger_root]
level = WARNING
handlers = console

[logger_alembic]
level = INFO
handlers =
qualname = alembic

[handler_console]
class = StreamHandler
args = (sys.stderr,)
level = NOTSET
formatter = generic

[formatter_generic]
format = %(levelname)-5.5s [%(name)s] %(message)s
"""


def _service(tmp_path: Path) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "svc_models.py").write_text(MODELS)
    migrations_dir = tmp_path / "migrations"
    (migrations_dir / "versions").mkdir(parents=True)
    (migrations_dir / "env.py").write_text(ENV)
    shutil.copy(REPO / "alembic" / "script.py.mako", migrations_dir / "script.py.mako")
    (tmp_path / "alembic.ini").write_text(INI)
    return tmp_path


def _alembic(service: Path, url: URL, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["DATABASE_URL"] = url.render_as_string(hide_password=False)
    env["PYTHONPATH"] = os.pathsep.join([str(service), str(REPO)])
    return subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(service / "alembic.ini"), *args],
        env=env,
        cwd=service,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def _package_head() -> str:
    head = ScriptDirectory.from_config(migrations.alembic_config()).get_current_head()
    assert head is not None
    return head


def _versions(conn: Connection, table: str = "alembic_version") -> set[str]:
    if not conn.scalar(text("SELECT to_regclass(:t) IS NOT NULL"), {"t": table}):
        return set()
    return {str(r[0]) for r in conn.execute(text(f"SELECT version_num FROM {table}"))}


def _notes(conn: Connection) -> tuple[object, ...] | None:
    row = conn.execute(
        text(
            "SELECT pg_get_userbyid(relowner), relrowsecurity, relforcerowsecurity, "
            "(SELECT count(*) FROM pg_policy WHERE polrelid = c.oid), "
            "(SELECT count(*) FROM pg_trigger WHERE tgrelid = c.oid AND NOT tgisinternal) "
            "FROM pg_class c WHERE oid = to_regclass('public.notes')"
        )
    ).one_or_none()
    return tuple(row) if row is not None else None


def test_a_service_keeps_its_own_tables_and_history_beside_the_package(
    tmp_path: Path, server_url: URL, database_url: URL
) -> None:
    del database_url  # keeps the cluster-wide roles in use
    service = _service(tmp_path / "svc")
    head = _package_head()
    with temporary_database(server_url, migrate=True) as url:  # `platform-db upgrade` ran
        engine = create_engine(url, poolclass=NullPool)

        made = _ok(_alembic(service, url, "revision", "--autogenerate", "-m", "add notes"))
        (script,) = (service / "migrations" / "versions").glob("*_add_notes.py")
        revision = script.name.split("_")[4]
        source = script.read_text()
        assert "Detected added table 'notes'" in made
        # Nothing of the package's: no partition, version table, clone, function, view.
        upgrade = source.split("def upgrade")[1].split("def downgrade")[0]
        assert "drop_" not in upgrade
        assert "alter_column" not in upgrade
        assert re.findall(r"op\.create_table\(\s*[\"'](\w+)[\"']", upgrade) == ["notes"]
        assert set(re.findall(r"\bon=[\"']([\w.]+)[\"']", source)) == {"public.notes"}
        assert "Function(" not in source
        assert "View(" not in source
        assert "create_entity(notes_tenant_isolation_policy)" in upgrade

        _ok(_alembic(service, url, "upgrade", "head"))
        with engine.connect() as conn:
            assert _versions(conn, "svc_alembic_version") == {revision}
            assert _versions(conn) == {head}
            assert _notes(conn) == ("platform_owner", True, True, 1, 1)
        _ok(_alembic(service, url, "check"))
        with engine.begin() as conn:
            migrations.check(conn)  # the package's check ignores the service's tables

        # The package's schema behind the installed platform-db (a release came with a
        # new revision): the service's check refuses, its upgrade brings the package first.
        with engine.begin() as conn:
            migrations.downgrade(conn, "-1")
        with engine.connect() as conn:
            behind = _versions(conn)
        assert behind != {head}
        refused = _alembic(service, url, "check")
        assert refused.returncode != 0
        assert "platform-db's schema is at" in refused.stderr
        assert "alembic upgrade head" in refused.stderr
        upgraded = _ok(_alembic(service, url, "upgrade", "head"))
        assert "Upgrading platform-db's schema" in upgraded
        with engine.connect() as conn:
            assert _versions(conn) == {head}
        _ok(_alembic(service, url, "check"))

        # The service's downgrade takes its own revisions away, and nothing of the package's.
        _ok(_alembic(service, url, "downgrade", "base"))
        with engine.connect() as conn:
            assert _notes(conn) is None
            assert _versions(conn) == {head}
        with engine.begin() as conn:
            migrations.check(conn)
        engine.dispose()

    # On an empty database, one `upgrade head` runs the package first, then the service.
    with temporary_database(server_url, migrate=False) as url:
        output = _ok(_alembic(service, url, "upgrade", "head"))
        assert output.index("-> e5f7a9b1d407") < output.index(", add notes")
        engine = create_engine(url, poolclass=NullPool)
        with engine.connect() as conn:
            assert _notes(conn) == ("platform_owner", True, True, 1, 1)
        _ok(_alembic(service, url, "check"))
        with engine.begin() as conn:
            migrations.check(conn)
        engine.dispose()
