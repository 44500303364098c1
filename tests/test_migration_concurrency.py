"""Issue 20, item 2: migrations serialise themselves.

Two `platform-db upgrade` processes of one database, started while a test session holds
the migration lock and released together (so they really contend for it): both exit 0,
one applies the revisions and the other finds nothing to do, and `platform-db check` is
clean; from base, and from the middle of the history. Two databases of one cluster
upgrade at once. A deploy that waits too long gives up with one line naming the holder.

The cluster-wide role race cannot be shown with the real roles on a shared server (other
databases use them, so they cannot be dropped): `ensure_roles` is run concurrently in two
sessions with roles of throw-away names instead, one session's CREATE ROLE left
uncommitted while the other waits on it.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

from platform_db.migration import runner
from platform_db.migration.locking import MIGRATION_LOCK_KEY, ensure_roles
from tests.conftest import temporary_database

BASELINE = "e5f7a9b1d407"
ROOT = Path(__file__).resolve().parents[1]


# How many revisions the package's history holds: an upgrade from base applies them all.
REVISIONS = len(list(ScriptDirectory.from_config(runner.alembic_config()).walk_revisions()))


def _env(url: URL, **extra: str) -> dict[str, str]:
    return dict(
        os.environ,
        DATABASE_URL=url.render_as_string(hide_password=False),
        PYTHONPATH=str(ROOT),
        **extra,
    )


def _start(*args: str, url: URL, **extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "platform_db.cli", *args],
        env=_env(url, **extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def _cli(*args: str, url: URL) -> tuple[int, str, str]:
    return _finish(_start(*args, url=url))


def _activity(conn: Connection, query: str, **params: object) -> int:
    """A count over pg_stat_activity, fresh (its view is fixed for a transaction)."""
    try:
        return int(conn.scalar(text(query), params) or 0)
    finally:
        conn.rollback()


def _migrators(conn: Connection, database: str) -> int:
    return _activity(
        conn,
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = :db AND application_name = 'platform-db:migrate'",
        db=database,
    )


def _wait_for(predicate: object, *, seconds: float = 60) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.1)


def _contend(urls: list[URL], *, held_on: URL | None) -> list[tuple[int, str, str]]:
    """Start an upgrade per URL; with `held_on`, while the migration lock of that
    database is held by this test, released once both upgrades are waiting on it."""
    if held_on is None:
        procs = [_start("upgrade", url=u) for u in urls]
        return [_finish(p) for p in procs]
    engine = create_engine(held_on, poolclass=NullPool)
    try:
        with engine.connect() as holder, engine.connect() as watcher:
            holder.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
            procs = [_start("upgrade", url=u) for u in urls]
            database = str(held_on.database)
            # Both have connected and begun their migration transaction (they poll the lock).
            _wait_for(lambda: _migrators(watcher, database) >= len(urls))
            time.sleep(0.5)
            holder.rollback()  # releases the lock: they now race for it
            return [_finish(p) for p in procs]
    finally:
        engine.dispose()


def _check_clean(url: URL) -> None:
    code, out, err = _cli("check", url=url)
    assert code == 0, out + err
    assert "no drift" in out


@pytest.fixture
def empty_db(server_url: URL, database_url: URL) -> Iterator[URL]:
    del database_url  # keeps the cluster's roles in use
    with temporary_database(server_url, migrate=False) as url:
        yield url


def _applied(out: str) -> int:
    found = re.search(r"applied (\d+) revision\(s\)", out)
    return int(found.group(1)) if found else 0


def test_two_concurrent_upgrades_from_base_both_succeed(empty_db: URL) -> None:
    results = _contend([empty_db, empty_db], held_on=empty_db)
    for code, out, err in results:
        assert code == 0, out + err
        assert "Traceback" not in err
    applied = sorted(_applied(out) for _, out, _ in results)
    assert applied == [0, REVISIONS], results
    assert any("nothing applied" in out for _, out, _ in results), results
    assert any("another migration of this database is running" in err for _, _, err in results)
    _check_clean(empty_db)


def test_two_concurrent_upgrades_from_the_middle_both_succeed(empty_db: URL) -> None:
    code, out, err = _cli("upgrade", BASELINE, url=empty_db)
    assert code == 0, out + err
    results = _contend([empty_db, empty_db], held_on=empty_db)
    for code, out, err in results:
        assert code == 0, out + err
    assert sorted(_applied(out) for _, out, _ in results) == [0, REVISIONS - 1], results
    _check_clean(empty_db)


def test_two_databases_of_one_cluster_upgrade_at_once(server_url: URL, database_url: URL) -> None:
    del database_url
    with (
        temporary_database(server_url, migrate=False) as one,
        temporary_database(server_url, migrate=False) as two,
    ):
        results = _contend([one, two], held_on=None)
        for code, out, err in results:
            assert code == 0, out + err
            assert _applied(out) == REVISIONS
        _check_clean(one)
        _check_clean(two)


def test_a_deploy_that_waits_too_long_gives_up_naming_the_holder(empty_db: URL) -> None:
    engine = create_engine(empty_db, poolclass=NullPool)
    try:
        with engine.connect() as holder:
            holder.execute(text("SET application_name = 'the-other-deploy'"))
            holder.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
            started = time.monotonic()
            proc = _start("upgrade", url=empty_db, PLATFORM_DB_MIGRATION_LOCK_WAIT="1s")
            code, out, err = _finish(proc)
            assert time.monotonic() - started < 60
            holder.rollback()
        assert code == 1, out + err
        assert "Traceback" not in err
        assert "another migration of this database is running" in err
        assert "'the-other-deploy'" in err
        assert "PLATFORM_DB_MIGRATION_LOCK_WAIT" in err
        with engine.connect() as conn:
            assert conn.scalar(text("SELECT to_regclass('public.alembic_version')")) is None
    finally:
        engine.dispose()


def test_offline_script_takes_the_same_lock_first() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "platform_db.cli", "upgrade", "--sql"],
        env=dict(
            os.environ,
            DATABASE_URL="postgresql://nobody@127.0.0.1:1/none",
            PYTHONPATH=str(ROOT),
        ),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    statements = [s.strip() for s in proc.stdout.split(";\n") if s.strip()]
    statements = [s for s in statements if not s.startswith("--")]
    first = statements.index("BEGIN")
    assert statements[first + 1] == "SET LOCAL lock_timeout = '10min'"
    assert statements[first + 2] == f"SELECT pg_catalog.pg_advisory_xact_lock({MIGRATION_LOCK_KEY})"
    assert statements[first + 3].startswith("SET LOCAL lock_timeout = '5s'")
    # Before anything reads or creates the version table.
    assert "alembic_version" not in " ".join(statements[: first + 3])


# --- the cluster-wide roles ------------------------------------------------------------


@pytest.fixture
def role_names(server_url: URL) -> Iterator[list[str]]:
    base = f"pdb_i20_{secrets.token_hex(3)}"
    names = [f"{base}_owner", f"{base}_app", f"{base}_admin"]
    yield names
    # The run's server, whichever it is (TEST_DATABASE_URL, or the embedded one).
    admin = create_engine(server_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        for name in names:
            conn.execute(text(f'DROP ROLE IF EXISTS "{name}"'))
    admin.dispose()


def _roles(conn: Connection, names: list[str]) -> dict[str, tuple[bool, bool, str | None]]:
    rows = conn.execute(
        text(
            "SELECT rolname, rolcanlogin, rolbypassrls, shobj_description(oid, 'pg_authid') "
            "FROM pg_roles WHERE rolname = ANY(:n)"
        ),
        {"n": names},
    )
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def test_ensure_roles_survives_a_concurrent_creator(
    database_url: URL, role_names: list[str]
) -> None:
    """Another database's migration created the first role and has not committed yet:
    ensure_roles waits on it, takes the duplicate as created, and creates the rest."""
    owner, app, admin = role_names
    roles = [(owner, False), (app, False), (admin, True)]
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as other, engine.connect() as watcher:
            other.exec_driver_sql(f'CREATE ROLE "{owner}" NOLOGIN NOBYPASSRLS')
            other.exec_driver_sql(f"COMMENT ON ROLE \"{owner}\" IS 'created by platform-db'")
            outcome: dict[str, object] = {}

            def run() -> None:
                try:
                    with engine.connect() as conn:
                        outcome["created"] = ensure_roles(conn, roles)
                except Exception as exc:  # reported by the assertion below
                    outcome["error"] = exc

            thread = threading.Thread(target=run)
            thread.start()
            # It waits on the uncommitted role (a transaction lock), it does not fail.
            _wait_for(
                lambda: _activity(
                    watcher,
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE wait_event_type = 'Lock' AND query LIKE :q",
                    q=f'CREATE ROLE "{owner}"%',
                ),
                seconds=30,
            )
            other.commit()
            thread.join(60)
            assert not thread.is_alive()
            assert "error" not in outcome, outcome
            assert outcome["created"] == [app, admin]
            found = _roles(watcher, role_names)
        assert found == {
            owner: (False, False, "created by platform-db"),
            app: (False, False, "created by platform-db"),
            admin: (False, True, "created by platform-db"),
        }
    finally:
        engine.dispose()


def test_ensure_roles_in_two_sessions_at_once(database_url: URL, role_names: list[str]) -> None:
    roles = [(role_names[0], False), (role_names[1], False), (role_names[2], True)]
    engine = create_engine(database_url, poolclass=NullPool)
    barrier = threading.Barrier(2)
    results: list[object] = []

    def run() -> None:
        try:
            with engine.connect() as conn:
                barrier.wait()
                results.append(ensure_roles(conn, roles))
        except Exception as exc:  # reported by the assertion below
            results.append(exc)

    try:
        threads = [threading.Thread(target=run) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert all(isinstance(r, list) for r in results), results
        created = [name for r in results if isinstance(r, list) for name in r]
        assert sorted(created) == sorted(role_names)  # each created exactly once
        with engine.connect() as conn:
            assert set(_roles(conn, role_names)) == set(role_names)
    finally:
        engine.dispose()
