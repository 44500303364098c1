"""What autogenerate writes into a revision, for changes an in-place replace cannot make.

Each test changes a definition (or the database) inside a transaction that is rolled
back, compares with `compare_entities` as autogenerate does, and runs the operations it
proposes through an Alembic `Operations` on the same connection.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
from alembic.autogenerate import compare_metadata, render_python_code
from alembic.operations import Operations
from alembic.operations.ops import UpgradeOps
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, Engine, text

from platform_db.ddl.dashboards import REFRESH_PERFORMANCE_VIEWS
from platform_db.ddl.entities import Entity, ScheduledJob
from platform_db.migration.autogenerate import compare_entities
from platform_db.migration.operations import EntityOp, ReplaceEntityOp


@pytest.fixture
def conn(engine: Engine) -> Iterator[Connection]:
    with engine.connect() as c:
        trans = c.begin()
        try:
            yield c
        finally:
            trans.rollback()


def _ops_on(conn: Connection, wanted: Entity, identity: str) -> list[EntityOp]:
    return [o for o in compare_entities(conn, [wanted]) if o.entity.identity == identity]


def _result_columns(conn: Connection) -> list[str]:
    return [
        str(r[0])
        for r in conn.execute(
            text(
                "SELECT unnest(proargnames) FROM pg_proc "
                "WHERE oid = 'platform.refresh_performance_views'::regproc"
            )
        )
    ]


def test_a_function_whose_return_type_changes_is_dropped_and_created(conn: Connection) -> None:
    wider = dataclasses.replace(
        REFRESH_PERFORMANCE_VIEWS,
        definition=REFRESH_PERFORMANCE_VIEWS.definition.replace(
            "duration_ms double precision)", "duration_ms double precision, row_count bigint)", 1
        ),
    )
    assert wider.definition != REFRESH_PERFORMANCE_VIEWS.definition
    (replace,) = _ops_on(conn, wider, wider.identity)
    assert isinstance(replace, ReplaceEntityOp)
    assert replace.recreate, replace.reasons
    assert "cannot be replaced in place" in replace.to_diff_tuple()[2]
    rendered = render_python_code(UpgradeOps(ops=[replace]))
    assert "recreate=True" in rendered
    assert "recreate=True" in render_python_code(UpgradeOps(ops=[replace.reverse()]))

    operations = Operations(MigrationContext.configure(conn))
    operations.invoke(replace)
    assert "row_count" in _result_columns(conn)
    assert _ops_on(conn, wider, wider.identity) == []

    # The downgrade (the reverse) puts the old return type back the same way.
    back = replace.reverse()
    assert isinstance(back, ReplaceEntityOp)
    assert back.recreate
    operations.invoke(back)
    assert "row_count" not in _result_columns(conn)
    assert _ops_on(conn, REFRESH_PERFORMANCE_VIEWS, wider.identity) == []


def test_a_function_replaced_in_place_is_not_recreated(conn: Connection) -> None:
    commented = dataclasses.replace(REFRESH_PERFORMANCE_VIEWS, comment="another comment")
    (replace,) = _ops_on(conn, commented, commented.identity)
    assert isinstance(replace, ReplaceEntityOp)
    assert not replace.recreate
    assert "recreate" not in render_python_code(UpgradeOps(ops=[replace]))


def test_grants_to_other_roles_and_column_grants_are_revoked_by_the_repair(
    conn: Connection,
) -> None:
    from platform_db.ddl import definitions  # noqa: PLC0415
    from platform_db.models import metadata  # noqa: PLC0415

    conn.execute(text("CREATE ROLE pdb_repair_probe NOLOGIN"))
    conn.execute(text("GRANT SELECT, UPDATE ON leads TO pdb_repair_probe"))
    conn.execute(text("GRANT UPDATE (status) ON pages TO pdb_repair_probe"))
    conn.execute(text("GRANT REFERENCES (id, tenant_id) ON leads TO platform_app"))
    wanted = definitions(metadata)
    found = {o.to_diff_tuple()[:2] for o in compare_entities(conn, wanted)}
    assert found == {
        ("drop_table_privileges", "public.leads.pdb_repair_probe"),
        ("drop_table_privileges", "public.pages.pdb_repair_probe"),
        ("replace_table_privileges", "public.leads.platform_app"),
    }
    operations = Operations(MigrationContext.configure(conn))
    for operation in compare_entities(conn, wanted):
        operations.invoke(operation)
    assert compare_entities(conn, wanted) == []
    assert not conn.scalar(
        text("SELECT has_column_privilege('platform_app', 'leads', 'id', 'REFERENCES')")
    )
    assert not conn.scalar(
        text("SELECT has_column_privilege('pdb_repair_probe', 'pages', 'status', 'UPDATE')")
    )


def test_a_trigger_disabled_on_a_partition_is_enabled_again_by_the_repair(
    conn: Connection,
) -> None:
    from platform_db.ddl import definitions  # noqa: PLC0415
    from platform_db.models import metadata  # noqa: PLC0415

    conn.execute(text("ALTER TABLE form_submissions_default DISABLE TRIGGER audit_row_change"))
    conn.execute(text("ALTER TABLE audit_log_default DISABLE TRIGGER audit_log_append_only"))
    wanted = definitions(metadata)
    found = {o.to_diff_tuple()[:2] for o in compare_entities(conn, wanted)}
    assert found == {
        ("replace_partition_protection", "public.form_submissions.partitions"),
        ("replace_partition_protection", "public.audit_log.partitions"),
    }
    operations = Operations(MigrationContext.configure(conn))
    for operation in compare_entities(conn, wanted):
        operations.invoke(operation)
    assert compare_entities(conn, wanted) == []
    disabled = conn.scalar(
        text(
            "SELECT count(*) FROM pg_trigger WHERE tgenabled = 'D' AND tgrelid = ANY("
            "ARRAY['form_submissions_default'::regclass, 'audit_log_default'::regclass])"
        )
    )
    assert disabled == 0


def _package_context(conn: Connection) -> MigrationContext:
    """A migration context with the package's revision history, as autogenerate has."""
    from alembic.runtime.environment import EnvironmentContext  # noqa: PLC0415
    from alembic.script import ScriptDirectory  # noqa: PLC0415

    from platform_db.migration import runner as migrations  # noqa: PLC0415
    from platform_db.models import metadata  # noqa: PLC0415

    config = migrations.alembic_config()
    script = ScriptDirectory.from_config(config)
    return MigrationContext.configure(
        conn,
        opts={"target_metadata": metadata, "script": script},
        environment_context=EnvironmentContext(config, script),
    )


def test_a_changed_job_schedule_gets_a_revision_where_pg_cron_is_absent(
    conn: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    from alembic.autogenerate import produce_migrations  # noqa: PLC0415

    from platform_db.ddl import jobs  # noqa: PLC0415
    from platform_db.migration.autogenerate import prepare_revision  # noqa: PLC0415
    from platform_db.migration.operations import CreateEntityOp  # noqa: PLC0415
    from platform_db.models import metadata  # noqa: PLC0415

    assert not conn.scalar(text("SELECT count(*) FROM pg_extension WHERE extname = 'pg_cron'"))
    context = _package_context(conn)
    # At head, the jobs are the ones the revisions hold: nothing to do.
    assert [d for d in compare_metadata(context, metadata) if "scheduled_job" in d[0]] == []

    hourly = dataclasses.replace(jobs.REFRESH_PERFORMANCE_VIEWS, schedule="0 * * * *")
    nightly = ScheduledJob("vacuum-nightly", "0 4 * * *", "VACUUM ANALYZE")
    monkeypatch.setattr(
        jobs,
        "JOBS",
        (*(hourly if j.name == hourly.name else j for j in jobs.JOBS), nightly),
    )
    script = produce_migrations(context, metadata)
    prepare_revision(context, None, [script])
    assert script.upgrade_ops is not None
    found = {
        o.entity.identity: o
        for o in script.upgrade_ops.ops
        if isinstance(o, EntityOp) and isinstance(o.entity, ScheduledJob)
    }
    assert set(found) == {hourly.identity, nightly.identity}
    replace, create = found[hourly.identity], found[nightly.identity]
    assert isinstance(replace, ReplaceEntityOp)
    assert replace.entity == hourly
    assert replace.replaces == "e5f7a9b1d407.cron_refresh_performance_views_scheduled_job"
    assert isinstance(create, CreateEntityOp)
    rendered = render_python_code(script.upgrade_ops)
    assert "0 * * * *" in rendered
    assert "vacuum-nightly" in rendered
