"""Revisions are history: what a landed revision runs never changes.

- every revision runs exactly the SQL fingerprinted when it landed (alembic/fingerprints.json);
- a change to a revision's SQL fails with "write a new revision instead";
- editing a current definition in platform_db/ddl/ changes no revision; autogenerate
  writes a new one that replaces the definition, pointing at the revision that holds the
  old one; upgrade applies it, `alembic check` is clean, downgrade restores the old one.
"""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

from platform_db.ddl import dashboards, definitions, security, tenant_table
from platform_db.migration import history
from platform_db.migration import runner as migrations
from platform_db.models import metadata
from tests.conftest import temporary_database
from tests.test_autogenerate import REPO, _alembic


def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(migrations.alembic_config())


def test_every_revision_runs_what_it_ran_when_it_landed() -> None:
    report = history.check(_script())
    assert report.ok, report.message()


def _copy_of_the_history(tmp_path: Path) -> Path:
    shutil.copytree(
        REPO / "alembic", tmp_path / "alembic", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(REPO / "alembic.ini", tmp_path / "alembic.ini")
    return tmp_path / "alembic"


def test_a_revision_whose_sql_changed_fails_with_write_a_new_revision(tmp_path: Path) -> None:
    location = _copy_of_the_history(tmp_path)
    (baseline,) = location.glob("versions/*_e5f7a9b1d407_*.py")
    source = baseline.read_text()
    # SQL only the baseline runs (a later revision that replaces one of the baseline's
    # entities runs the baseline's definition in its downgrade, and would change too).
    edited = source.replace("ix_matview_refresh_log_view ON", "ix_matview_refresh_log_by_view ON")
    assert edited != source
    baseline.write_text(edited)
    script = ScriptDirectory(str(location))
    report = history.check(script)
    assert report.changed == ["e5f7a9b1d407"]
    assert "write a new revision instead" in report.message()
    # Recording does not paper over it.
    history.record(script)
    assert history.check(script).changed == ["e5f7a9b1d407"]


def test_a_new_revision_needs_its_fingerprint_recorded(tmp_path: Path) -> None:
    location = _copy_of_the_history(tmp_path)
    (location / "versions" / "2026_12_01_0000_0a1b2c3d4e5f_add_nothing.py").write_text(
        textwrap.dedent(
            '''
            """Add nothing."""
            revision = "0a1b2c3d4e5f"
            down_revision = "e5f7a9b1d407"
            branch_labels = None
            depends_on = None


            def upgrade() -> None:
                pass


            def downgrade() -> None:
                pass
            '''
        )
    )
    script = ScriptDirectory(str(location))
    assert history.check(script).unrecorded == ["0a1b2c3d4e5f"]
    assert history.record(script) == ["0a1b2c3d4e5f"]
    assert history.check(script).ok


def test_editing_a_current_definition_changes_no_revision(monkeypatch: pytest.MonkeyPatch) -> None:
    before = {rev: history.fingerprint(_script(), rev) for rev in _revisions()}
    loosened = security.TENANT_POLICY.__class__(
        "tenant_isolation", using="true", check=security.TENANT_POLICY.check
    )
    monkeypatch.setattr(security, "TENANT_POLICY", loosened)
    monkeypatch.setattr(tenant_table, "TENANT_POLICY", loosened)
    monkeypatch.setattr(dashboards, "MATERIALIZED_VIEWS", ())
    assert any(getattr(e, "using", None) == "true" for e in definitions(metadata))
    after = {rev: history.fingerprint(_script(), rev) for rev in _revisions()}
    assert after == before


def _revisions() -> list[str]:
    return [rev.revision for rev in _script().walk_revisions()]


# The alembic CLI in a process whose current definitions were edited as a contributor
# would edit platform_db/ddl/: the funnel's conversion rate rounded to 2 places, and the
# tenant policy written with one more condition.
EDITED = textwrap.dedent(
    """
    import dataclasses
    import sys

    from platform_db.ddl import dashboards, security, tenant_table

    funnel = dataclasses.replace(
        dashboards.LEAD_FUNNEL_MONTHLY,
        query=dashboards.LEAD_FUNNEL_MONTHLY.query.replace(", 4)", ", 2)"),
    )
    dashboards.LEAD_FUNNEL_MONTHLY = funnel
    dashboards.MATERIALIZED_VIEWS = tuple(
        funnel if v.name == funnel.name else v for v in dashboards.MATERIALIZED_VIEWS
    )
    policy = dataclasses.replace(
        security.TENANT_POLICY,
        using="tenant_id = platform.current_tenant_id() AND tenant_id IS NOT NULL",
    )
    security.TENANT_POLICY = policy
    tenant_table.TENANT_POLICY = policy

    from alembic.config import main

    main(argv=sys.argv[1:])
    """
)


def _policy(conn: Connection, table: str) -> str:
    return str(
        conn.scalar(
            text(
                "SELECT pg_get_expr(polqual, polrelid) FROM pg_policy "
                "WHERE polrelid = CAST(:t AS regclass) AND polname = 'tenant_isolation'"
            ),
            {"t": table},
        )
    )


def _funnel(conn: Connection) -> str:
    return str(conn.scalar(text("SELECT pg_get_viewdef('platform.lead_funnel_monthly')")))


def test_a_changed_definition_becomes_a_replace_revision_that_points_at_the_old_one(
    tmp_path: Path, server_url: URL, database_url: URL
) -> None:
    del database_url  # keeps the cluster-wide roles in use
    location = _copy_of_the_history(tmp_path)
    (tmp_path / "runner.py").write_text(EDITED)
    before = (location / "versions").glob("*.py")
    sources_before = {p.name: p.read_text() for p in before}
    with temporary_database(server_url, migrate=True) as url:
        engine = create_engine(url, poolclass=NullPool)
        with engine.connect() as conn:
            old_policy, old_funnel = _policy(conn, "leads"), _funnel(conn)
            old_partitions = conn.scalar(
                text("SELECT count(*) FROM pg_policies WHERE tablename LIKE 'audit_log_%'")
            )
        made = _alembic(tmp_path, url, "revision", "--autogenerate", "-m", "round the funnel")
        assert made.returncode == 0, made.stderr
        assert "Detected replace materialized view 'platform.lead_funnel_monthly'" in made.stderr
        assert "Detected replace policy 'public.leads.tenant_isolation'" in made.stderr
        # The revisions that were there are untouched.
        for name, source in sources_before.items():
            assert (location / "versions" / name).read_text() == source
        (script,) = (location / "versions").glob("*_round_the_funnel.py")
        source = script.read_text()
        upgrade, downgrade = source.split("def downgrade() -> None:")
        assert "lead_funnel_monthly_materialized_view = MaterializedView(" in source
        assert ", 2)" in source
        assert (
            "replace_entity(\n        lead_funnel_monthly_materialized_view,\n"
            '        replaces="aab12d3d3596.lead_funnel_monthly_materialized_view",'
        ) in upgrade or (
            "replace_entity(lead_funnel_monthly_materialized_view, "
            'replaces="aab12d3d3596.lead_funnel_monthly_materialized_view")'
        ) in upgrade
        assert 'replaces="e5f7a9b1d407.leads_tenant_isolation_policy"' in upgrade
        assert 'replace_with="e5f7a9b1d407.leads_tenant_isolation_policy"' in downgrade
        # The funnel's latest definition before this one is aab12d3d3596's.
        assert 'replace_with="aab12d3d3596.lead_funnel_monthly_materialized_view"' in downgrade
        assert "previous=" not in source  # the old definitions are history's, not copied
        assert "_as_found" not in source
        assert "as they were found in the" not in source

        applied = _alembic(tmp_path, url, "upgrade", "head")
        assert applied.returncode == 0, applied.stderr
        with engine.connect() as conn:
            assert "IS NOT NULL" in _policy(conn, "leads")
            assert "IS NOT NULL" in _policy(conn, "audit_log")
            assert ", 2)" in _funnel(conn)
            # Partitions follow their parent's new policy.
            assert "IS NOT NULL" in _policy(conn, "form_submissions_default")
        checked = _alembic(tmp_path, url, "check")
        assert checked.returncode == 0, checked.stdout + checked.stderr

        down = _alembic(tmp_path, url, "downgrade", "-1")
        assert down.returncode == 0, down.stderr
        with engine.connect() as conn:
            assert _policy(conn, "leads") == old_policy
            assert _policy(conn, "form_submissions_default") == old_policy
            assert _funnel(conn) == old_funnel
            assert (
                conn.scalar(
                    text("SELECT count(*) FROM pg_policies WHERE tablename LIKE 'audit_log_%'")
                )
                == old_partitions
            )
            # Back at the package's head, and the package's own check is clean again.
            migrations.check(conn)
        engine.dispose()


PLAIN = textwrap.dedent(
    """
    import sys

    from alembic.config import main

    main(argv=sys.argv[1:])
    """
)


def test_drift_is_repaired_by_the_next_autogenerate_and_restored_by_its_downgrade(
    tmp_path: Path, server_url: URL, database_url: URL
) -> None:
    del database_url  # keeps the cluster-wide roles in use
    location = _copy_of_the_history(tmp_path)
    (tmp_path / "runner.py").write_text(PLAIN)
    breaks = [
        "ALTER POLICY tenant_isolation ON forms USING (true)",
        "GRANT TRUNCATE ON pages TO platform_app",
        "ALTER TABLE users DISABLE TRIGGER audit_row_change",
        "CREATE POLICY open_door ON leads USING (true)",
    ]

    def state(conn: Connection) -> tuple[object, ...]:
        return (
            _policy(conn, "forms"),
            conn.scalar(text("SELECT has_table_privilege('platform_app', 'pages', 'TRUNCATE')")),
            conn.scalar(
                text(
                    "SELECT tgenabled FROM pg_trigger WHERE tgname = 'audit_row_change' "
                    "AND tgrelid = 'users'::regclass"
                )
            ),
            conn.scalar(text("SELECT count(*) FROM pg_policy WHERE polname = 'open_door'")),
        )

    with temporary_database(server_url, migrate=True) as url:
        engine = create_engine(url, poolclass=NullPool)
        with engine.connect() as conn:
            good = state(conn)
        with engine.begin() as conn:
            for statement in breaks:
                conn.execute(text(statement))
        with engine.connect() as conn:
            broken = state(conn)
        assert broken != good
        assert _alembic(tmp_path, url, "check").returncode != 0

        made = _alembic(tmp_path, url, "revision", "--autogenerate", "-m", "repair drift")
        assert made.returncode == 0, made.stderr
        (script,) = (location / "versions").glob("*_repair_drift.py")
        source = script.read_text()
        # What the database held is no revision's: it is written out for the downgrade.
        assert "previous=" in source
        assert 'using="true"' in source
        assert "drop_entity(leads_open_door_policy)" in source
        # ... and the downgrade that would put it back says so, above those definitions.
        note = source.index("# The downgrade restores the *_as_found definitions")
        assert "they were found in the\n# database, which no revision defined" in source
        assert note < source.index("_as_found = ")

        assert _alembic(tmp_path, url, "upgrade", "head").returncode == 0
        with engine.connect() as conn:
            assert state(conn) == good
        checked = _alembic(tmp_path, url, "check")
        assert checked.returncode == 0, checked.stdout + checked.stderr

        assert _alembic(tmp_path, url, "downgrade", "-1").returncode == 0
        with engine.connect() as conn:
            assert state(conn) == broken
        engine.dispose()


def test_the_comparator_honours_include_object_and_include_name(engine: Engine) -> None:
    from alembic.autogenerate import compare_metadata  # noqa: PLC0415
    from alembic.runtime.migration import MigrationContext  # noqa: PLC0415

    def diffs(**opts: object) -> list[str]:
        with engine.connect() as conn:
            trans = conn.begin()
            conn.execute(text("ALTER POLICY tenant_isolation ON forms USING (true)"))
            conn.execute(text("GRANT TRUNCATE ON pages TO platform_app"))
            context = MigrationContext.configure(conn, opts={"target_metadata": metadata, **opts})
            found = [str(d[0]) for d in compare_metadata(context, metadata)]
            trans.rollback()
        return found

    assert {"replace_policy", "replace_table_privileges"} <= set(diffs())
    no_policies = diffs(include_object=lambda _o, _n, type_, _r, _c: type_ != "policy")
    assert "replace_policy" not in no_policies
    assert "replace_table_privileges" in no_policies
    no_pages = diffs(
        include_name=lambda name, type_, _p: not (type_ == "table" and name == "pages")
    )
    assert "replace_table_privileges" not in no_pages
    assert "replace_policy" in no_pages
