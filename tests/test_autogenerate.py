"""A new tenant model, `alembic revision --autogenerate`, upgrade, check, downgrade.

What an engineer does when they add a table, run as they would run it: the `alembic`
command line, in a copy of the migration directory, in a process whose models include
two new classes (one fully protected, one that opts out of auditing with a reason).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.pool import NullPool

from platform_db.ddl.tenant_table import TenantProtection
from platform_db.migration import runner as migrations
from platform_db.models import TenantMixin
from platform_db.session.tenancy import scope_statements
from tests.conftest import temporary_database
from tests.isolation_helpers import INSUFFICIENT_PRIVILEGE, expect_db_error

REPO = Path(__file__).resolve().parent.parent

# Runs the alembic CLI in a process whose models have two more tenant tables.
RUNNER = textwrap.dedent(
    """
    import sys
    import uuid

    from sqlalchemy import Text
    from sqlalchemy.orm import Mapped, mapped_column

    from platform_db.ddl.tenant_table import TenantProtection
    from platform_db.models import Base, TenantMixin, TimestampMixin
    from platform_db.models.base import uuid_pk


    class Note(TenantMixin, TimestampMixin, Base):
        __tablename__ = "notes"
        id: Mapped[uuid_pk]
        body: Mapped[str] = mapped_column(Text)


    class Draft(TenantMixin, Base):
        __tablename__ = "drafts"
        __tenant_protection__ = TenantProtection(
            audit=False, reason="drafts are scratch space, audited when published"
        )
        id: Mapped[uuid_pk]
        body: Mapped[str] = mapped_column(Text)


    from alembic.config import main

    main(argv=sys.argv[1:])
    """
)


def _alembic(workdir: Path, url: URL, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["DATABASE_URL"] = url.render_as_string(hide_password=False)
    env["PYTHONPATH"] = str(REPO)
    result = subprocess.run(
        [sys.executable, str(workdir / "runner.py"), "-c", str(workdir / "alembic.ini"), *args],
        env=env,
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    return result


def _catalog(conn: object, table: str) -> dict[str, object]:
    from sqlalchemy import Connection  # noqa: PLC0415

    assert isinstance(conn, Connection)
    row = conn.execute(
        text(
            """
            SELECT c.relrowsecurity, c.relforcerowsecurity,
                   (SELECT array_agg(polname || ':' || pg_get_expr(polqual, polrelid)
                                     || ':' || pg_get_expr(polwithcheck, polrelid))
                    FROM pg_policy WHERE polrelid = c.oid) AS policies,
                   (SELECT array_agg(tgname ORDER BY tgname) FROM pg_trigger
                    WHERE tgrelid = c.oid AND NOT tgisinternal) AS triggers,
                   has_table_privilege('platform_app', c.oid, 'SELECT, INSERT, UPDATE, DELETE')
                       AS app_rows,
                   has_table_privilege('platform_app', c.oid, 'TRUNCATE') AS app_truncate
            FROM pg_class c WHERE c.oid = to_regclass(:t)
            """
        ),
        {"t": f"public.{table}"},
    ).one_or_none()
    return dict(row._mapping) if row is not None else {}


def test_new_tenant_model_gets_rls_policy_grants_and_audit_from_autogenerate(
    tmp_path: Path, server_url: URL, database_url: URL, app_login: URL
) -> None:
    del database_url  # keeps the cluster-wide roles in use
    shutil.copytree(
        REPO / "alembic", tmp_path / "alembic", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(REPO / "alembic.ini", tmp_path / "alembic.ini")
    (tmp_path / "runner.py").write_text(RUNNER)
    with temporary_database(server_url, migrate=True) as url:
        made = _alembic(tmp_path, url, "revision", "--autogenerate", "-m", "add notes and drafts")
        assert made.returncode == 0, made.stderr
        (script,) = [
            p for p in (tmp_path / "alembic" / "versions").glob("*add_notes_and_drafts.py")
        ]
        source = script.read_text()
        upgrade, downgrade = source.split("def downgrade() -> None:")
        # Frozen: the revision holds the definitions it runs, as entities at module level
        # (readable, no SQL copied), created right after the table and dropped before it.
        assert "notes_tenant_isolation_policy = Policy(" in source
        assert 'on="public.notes"' in source
        for entity in (
            "notes_row_level_security",
            "notes_tenant_isolation_policy",
            "notes_platform_app_table_privileges",
            "notes_audit_row_change_trigger",
        ):
            assert f"create_entity({entity})" in upgrade
            assert upgrade.index('op.create_table(\n        "notes"') < upgrade.index(
                f"create_entity({entity})"
            )
            assert f"drop_entity({entity})" in downgrade
            assert downgrade.index(f"drop_entity({entity})") < downgrade.index(
                'op.drop_table("notes")'
            )
        assert "drafts_audit_row_change_trigger" not in source
        assert "# public.drafts: not audited" in source
        assert "drafts are scratch space, audited when published" in source
        assert "CREATE POLICY" not in source
        assert "protect_tenant_table" not in source

        applied = _alembic(tmp_path, url, "upgrade", "head")
        assert applied.returncode == 0, applied.stderr
        engine = create_engine(url, poolclass=NullPool)
        with engine.connect() as conn:
            notes = _catalog(conn, "notes")
            drafts = _catalog(conn, "drafts")
        assert (notes["relrowsecurity"], notes["relforcerowsecurity"]) == (True, True)
        assert notes["policies"] == [
            "tenant_isolation:(tenant_id = platform.current_tenant_id()):"
            "(tenant_id = platform.current_tenant_id())"
        ]
        assert notes["triggers"] == ["audit_row_change"]
        assert (notes["app_rows"], notes["app_truncate"]) == (True, False)
        assert drafts["relforcerowsecurity"] is True
        assert drafts["policies"]
        assert drafts["triggers"] is None  # opted out of auditing, with its reason

        checked = _alembic(tmp_path, url, "check")
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "No new upgrade operations detected" in checked.stdout

        # It behaves: a tenant writes its own notes only, and each write is audited.
        a, b = uuid.uuid4(), uuid.uuid4()
        with engine.begin() as conn:
            for t in (a, b):
                conn.execute(
                    text("INSERT INTO tenants (id, name, subdomain) VALUES (:i, 'N', :s)"),
                    {"i": t, "s": f"notes-{t.hex[:12]}"},
                )
            conn.execute(text(f"GRANT CONNECT ON DATABASE {url.database} TO {app_login.username}"))
        app = create_engine(
            app_login.set(database=url.database, drivername="postgresql+psycopg"),
            poolclass=NullPool,
        )
        with app.begin() as conn:
            conn.exec_driver_sql(scope_statements(conn, str(a), ""))
            conn.execute(text("INSERT INTO notes (tenant_id, body) VALUES (:t, 'mine')"), {"t": a})
        with app.begin() as conn:
            conn.exec_driver_sql(scope_statements(conn, str(a), ""))
            with expect_db_error(INSUFFICIENT_PRIVILEGE, "row-level security"):
                conn.execute(
                    text("INSERT INTO notes (tenant_id, body) VALUES (:t, 'theirs')"), {"t": b}
                )
        app.dispose()
        with engine.connect() as conn:
            audited = conn.execute(
                text(
                    "SELECT tenant_id, action, new_values FROM audit_log WHERE table_name = 'notes'"
                )
            ).all()
        assert [(r[0], r[1], r[2]["body"]) for r in audited] == [(a, "INSERT", "mine")]

        # notes holds a row (and the audit trail one about it): the downgrade that drops
        # the table refuses until told to destroy data (issue 20).
        refused = _alembic(tmp_path, url, "downgrade", "-1")
        assert refused.returncode != 0
        assert "public.notes  1 row" in refused.stderr, refused.stderr
        down = _alembic(tmp_path, url, "-x", "destroy_data=true", "downgrade", "-1")
        assert down.returncode == 0, down.stderr
        with engine.connect() as conn:
            assert _catalog(conn, "notes") == {}
            assert _catalog(conn, "drafts") == {}
            # Back at the package's head, and the package's own check is clean again.
            migrations.check(conn)
        engine.dispose()


def test_turning_protection_off_needs_a_reason() -> None:
    with pytest.raises(
        ValueError, match="row-level security of a tenant-owned table needs a reason"
    ):
        TenantProtection(rls=False)
    with pytest.raises(ValueError, match="auditing of a tenant-owned table needs a reason"):
        TenantProtection(audit=False, reason="  ")
    assert (
        TenantProtection(rls=False, reason="public catalogue, same for every tenant").policies == ()
    )


def test_a_model_cannot_smuggle_in_something_else_as_its_protection() -> None:
    class LocalBase(DeclarativeBase):
        pass

    with pytest.raises(TypeError, match="must be a TenantProtection"):

        class Loose(TenantMixin, LocalBase):
            __tablename__ = "loose"
            __tenant_protection__ = False  # type: ignore[assignment]
            id: Mapped[int] = mapped_column(primary_key=True)
