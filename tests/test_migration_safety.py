"""Migration safety: CONCURRENTLY index builds, lock timeouts everywhere, the SQL linter."""

from __future__ import annotations

import io
import re
import secrets
import threading
import time
from collections.abc import Iterator

import pytest
from alembic import command, op
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import IntegrityError, OperationalError

from platform_db.migration import lint as migration_lint
from platform_db.migration import runner as migrations
from platform_db.migration.lint import Allowance, Violation
from platform_db.migration.locking import MIGRATION_LOCK_KEY
from platform_db.migration.operations import create_index_concurrently, drop_index_concurrently


@pytest.fixture
def scratch_table(engine: Engine) -> Iterator[str]:
    """A committed table with rows, dropped afterwards (the helper commits)."""
    name = f"pdb_cic_{secrets.token_hex(4)}"
    with engine.begin() as conn:
        conn.execute(text(f"CREATE TABLE {name} (id int PRIMARY KEY, v int)"))
        conn.execute(text(f"INSERT INTO {name} SELECT g, g FROM generate_series(1, 1000) g"))
    yield name
    with engine.begin() as conn:
        conn.execute(text(f"DROP TABLE IF EXISTS {name}"))


def _migrate(conn: Connection, fn: object) -> None:
    """Run `fn` as a revision's upgrade would: Alembic owns the transaction."""
    ctx = MigrationContext.configure(conn)
    with ctx.begin_transaction(), Operations.context(ctx):
        conn.execute(text("SELECT set_config('lock_timeout', '1s', true)"))
        assert callable(fn)
        fn()


def _index_state(engine: Engine, name: str) -> tuple[bool, bool] | None:
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT i.indisvalid, i.indisunique FROM pg_index i "
                "WHERE i.indexrelid = to_regclass(:n)"
            ),
            {"n": f"public.{name}"},
        ).one_or_none()
    return None if row is None else (bool(row[0]), bool(row[1]))


def test_create_index_concurrently_replaces_an_invalid_leftover_and_reruns(
    engine: Engine, scratch_table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PLATFORM_DB_MIGRATION_LOCK_TIMEOUT", "1s")
    index = f"ix_{scratch_table}_v"
    # An interrupted build leaves an INVALID index behind: here, a unique build that
    # meets a duplicate.
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE {scratch_table} SET v = 1 WHERE id = 2"))
    with (
        engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn,
        pytest.raises(IntegrityError, match="could not create unique index"),
    ):
        conn.execute(text(f"CREATE UNIQUE INDEX CONCURRENTLY {index} ON {scratch_table} (v)"))
    assert _index_state(engine, index) == (False, True)
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE {scratch_table} SET v = 2 WHERE id = 2"))

    after: list[str] = []

    def build() -> None:
        create_index_concurrently(index, scratch_table, ["v"], unique=True)
        after.append(str(op.get_bind().scalar(text("SHOW lock_timeout"))))

    with engine.connect() as engine_conn:
        before = engine_conn.scalar(text("SHOW lock_timeout"))
        engine_conn.rollback()
        _migrate(engine_conn, build)
        # The session-level setting used inside the block was reset afterwards.
        assert engine_conn.scalar(text("SHOW lock_timeout")) == before
    assert _index_state(engine, index) == (True, True)
    assert after == ["1s"], "the transaction after the autocommit block keeps a lock_timeout"

    with engine.connect() as conn:  # re-runnable: IF NOT EXISTS
        _migrate(conn, build)
    assert _index_state(engine, index) == (True, True)
    with engine.connect() as conn:
        _migrate(conn, lambda: drop_index_concurrently(index, scratch_table))
    assert _index_state(engine, index) is None


def test_the_lock_timeout_holds_inside_the_autocommit_block(
    engine: Engine, scratch_table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long transaction holding a conflicting lock makes the build give up, not queue."""
    monkeypatch.setenv("PLATFORM_DB_MIGRATION_LOCK_TIMEOUT", "500ms")
    holding = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with engine.begin() as conn:
            conn.execute(text(f"LOCK TABLE {scratch_table} IN SHARE UPDATE EXCLUSIVE MODE"))
            holding.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(10)
        started = time.monotonic()
        with engine.connect() as conn, pytest.raises(OperationalError, match="lock timeout"):
            _migrate(
                conn,
                lambda: create_index_concurrently(f"ix_{scratch_table}_lt", scratch_table, ["v"]),
            )
        assert time.monotonic() - started < 10
    finally:
        release.set()
        holder.join()


def test_create_index_concurrently_refuses_to_run_in_the_callers_transaction(
    engine: Engine, scratch_table: str
) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))  # the caller's transaction is open
        ctx = MigrationContext.configure(conn)
        with Operations.context(ctx), pytest.raises(RuntimeError, match="caller's transaction"):
            create_index_concurrently(f"ix_{scratch_table}_x", scratch_table, ["v"])
        conn.rollback()


def _offline(fn: object) -> str:
    buffer = io.StringIO()
    ctx = MigrationContext.configure(
        dialect_name="postgresql",
        opts={"as_sql": True, "output_buffer": buffer, "transactional_ddl": True},
    )
    with ctx.begin_transaction(), Operations.context(ctx):
        assert callable(fn)
        fn()
    return buffer.getvalue()


def test_offline_script_of_an_index_build_is_guarded_and_timed_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PLATFORM_DB_MIGRATION_LOCK_TIMEOUT", "3s")
    sql = _offline(lambda: create_index_concurrently("ix_leads_company", "leads", ["company"]))
    steps = [s.strip() for s in sql.split(";\n\n") if s.strip()]
    kinds = [
        s.split()[0] + (" " + s.split()[1] if s.startswith(("SET", "CREATE")) else "")
        for s in steps
    ]
    assert kinds == [
        "BEGIN",
        "DO",  # stops on an INVALID leftover, with the instructions to drop it
        "SELECT",  # the migration lock, held by the session across the commit
        "COMMIT",
        "SET lock_timeout",
        "CREATE INDEX",
        "RESET",
        "BEGIN",
        "SET LOCAL",
        "SELECT",  # ... and handed back to the new transaction
        "SELECT",
        "COMMIT",
    ], steps
    key = MIGRATION_LOCK_KEY
    assert steps[2] == f"SELECT pg_catalog.pg_advisory_lock({key})"
    assert steps[9:11] == [
        f"SELECT pg_catalog.pg_advisory_xact_lock({key})",
        f"SELECT pg_catalog.pg_advisory_unlock({key})",
    ]
    assert "CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_leads_company ON public.leads" in sql
    assert "SET lock_timeout = '3s'" in sql
    assert "SET LOCAL lock_timeout = '3s'" in sql
    # And squawk finds nothing that the allow-list does not accept for every revision.
    allow = [
        a
        for a in migration_lint.load_allow_list(migration_lint.DEFAULT_ALLOW_LIST)
        if a.revision == "*"
    ]
    refused, _ = migration_lint.judge(migration_lint.squawk({"offline": sql}), allow)
    assert refused == []


def test_every_transaction_of_the_upgrade_script_starts_with_a_lock_timeout() -> None:
    cfg = migrations.alembic_config()
    buffer = io.StringIO()
    cfg.output_buffer = buffer
    command.upgrade(cfg, "head", sql=True)
    statements = [s.strip() for s in buffer.getvalue().split(";\n\n") if s.strip()]
    statements = [s for s in statements if not s.startswith("--")]
    begins = [i for i, s in enumerate(statements) if s == "BEGIN"]
    assert begins
    for i in begins:
        assert re.match(r"SET LOCAL lock_timeout = '\d+(ms|s|min)?'", statements[i + 1]), (
            statements[i + 1]
        )


def test_lock_timeout_setting_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    from platform_db.migration.operations import migration_lock_timeout  # noqa: PLC0415

    monkeypatch.setenv("PLATFORM_DB_MIGRATION_LOCK_TIMEOUT", "5s'; DROP TABLE leads; --")
    with pytest.raises(ValueError, match="must look like"):
        migration_lock_timeout()


# --- the linter's judgement -------------------------------------------------------------


def _v(rule: str, revision: str = "r1", statement: str = "CREATE INDEX ix ON t (x)") -> Violation:
    return Violation(revision, rule, 1, statement, "msg")


def test_lint_refuses_findings_without_an_exemption_and_reports_stale_ones() -> None:
    allow = [
        Allowance("require-concurrent-index-creation", "r1", "new table", "CREATE INDEX ix"),
        Allowance("prefer-text-field", "*", "reason"),
    ]
    refused, stale = migration_lint.judge(
        [
            _v("require-concurrent-index-creation"),
            _v("require-concurrent-index-creation", statement="CREATE INDEX other ON t (x)"),
            _v("require-concurrent-index-creation", revision="r2"),
        ],
        allow,
    )
    assert [(v.revision, v.statement) for v in refused] == [
        ("r1", "CREATE INDEX other ON t (x)"),
        ("r2", "CREATE INDEX ix ON t (x)"),
    ]
    assert stale == [allow[1]]


def test_lint_allow_list_needs_reasons(tmp_path: object) -> None:
    from pathlib import Path  # noqa: PLC0415

    assert isinstance(tmp_path, Path)
    path = tmp_path / "allow.toml"
    path.write_text('[[allow]]\nrule = "prefer-text-field"\nrevision = "*"\nreason = " "\n')
    with pytest.raises(ValueError, match="needs rule, revision and a reason"):
        migration_lint.load_allow_list(path)
    assert migration_lint.load_allow_list(migration_lint.DEFAULT_ALLOW_LIST)


def test_squawk_flags_a_blocking_index_build_on_an_existing_table() -> None:
    found = migration_lint.squawk(
        {"r9": "BEGIN;\n\nCREATE INDEX ix_leads_x ON leads (company);\n\nCOMMIT;\n"}
    )
    assert "require-concurrent-index-creation" in {v.rule for v in found}
    refused, _ = migration_lint.judge(
        found, migration_lint.load_allow_list(migration_lint.DEFAULT_ALLOW_LIST)
    )
    assert "require-concurrent-index-creation" in {v.rule for v in refused}
