"""Issue 20, item 1: a downgrade that would drop tables holding rows refuses unless told.

Against real databases: a populated one refuses `platform-db downgrade base` and `-1`
(from the baseline), naming each table with its row count and the audit trail, exits
non-zero and changes nothing; `--destroy-data` and `-x destroy_data=true` proceed; an
empty one downgrades with one command; the runner refuses inside the caller's
transaction and leaves that transaction as it was.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

from platform_db.migration import runner as migrations
from platform_db.migration.downgrade_guard import DowngradeRefused
from tests.conftest import temporary_database
from tests.isolation_helpers import seed_rows

BASELINE = "e5f7a9b1d407"
ROOT = Path(__file__).resolve().parents[1]


def _env(url: URL) -> dict[str, str]:
    return dict(
        os.environ,
        DATABASE_URL=url.render_as_string(hide_password=False),
        PYTHONPATH=str(ROOT),
    )


def _cli(*args: str, url: URL) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "platform_db.cli", *args],
        env=_env(url),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _alembic(*args: str, url: URL) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "alembic", *args],
        env=_env(url),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _populate(url: URL, tenants: int = 2) -> None:
    engine = create_engine(url, poolclass=NullPool)
    with engine.begin() as conn:
        for i in range(tenants):
            tenant = uuid.uuid4()
            conn.execute(
                text("INSERT INTO tenants (id, name, subdomain) VALUES (:id, :n, :n)"),
                {"id": tenant, "n": f"guard{i}-{tenant.hex[:6]}"},
            )
            seed_rows(conn, tenant)
    engine.dispose()


def _counts(url: URL) -> dict[str, int]:
    """Rows per table of the package's (partitions summed under their parent)."""
    engine = create_engine(url, poolclass=NullPool)
    with engine.connect() as conn:
        tables = [
            "tenants",
            "users",
            "pages",
            "leads",
            "forms",
            "form_submissions",
            "audit_log",
        ]
        counts = {t: int(conn.scalar(text(f"SELECT count(*) FROM {t}")) or 0) for t in tables}
    engine.dispose()
    return counts


def _head(url: URL) -> tuple[str, ...]:
    engine = create_engine(url, poolclass=NullPool)
    with engine.connect() as conn:
        heads = tuple(r[0] for r in conn.execute(text("SELECT version_num FROM alembic_version")))
    engine.dispose()
    return heads


def _reported(message: str) -> dict[str, int]:
    return {
        name: int(count.replace(",", ""))
        for name, count in re.findall(r"^  public\.(\w+)\s+([\d,]+) rows?", message, re.MULTILINE)
    }


@pytest.fixture
def populated(server_url: URL, database_url: URL) -> Iterator[URL]:
    del database_url  # keeps the cluster's roles in use while this database comes and goes
    with temporary_database(server_url, migrate=True) as url:
        _populate(url)
        yield url


def test_a_populated_database_refuses_downgrade_base_naming_tables_and_counts(
    populated: URL,
) -> None:
    before = _counts(populated)
    head = _head(populated)
    assert before["audit_log"] > 0
    assert before["leads"] > 0

    refused = _cli("downgrade", "base", url=populated)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "Traceback" not in refused.stderr
    message = refused.stderr
    assert "refusing to downgrade" in message
    assert "deleting the audit trail" in message
    assert "the audit trail: every recorded change would be deleted" in message
    assert "--destroy-data base" in message
    assert "-x destroy_data=true" in message
    # Every table that holds rows is named with its exact count (partitions summed).
    assert _reported(message) == {t: n for t, n in before.items() if n}
    assert refused.stdout == ""
    # Nothing changed.
    assert _head(populated) == head
    assert _counts(populated) == before

    # Through Alembic's own command line: the same refusal, exit non-zero.
    plain = _alembic("downgrade", "base", url=populated)
    assert plain.returncode != 0
    assert "refusing to downgrade" in plain.stdout + plain.stderr
    assert _head(populated) == head
    assert _counts(populated) == before


def test_downgrade_minus_one_from_the_baseline_refuses_and_later_ones_pass(
    populated: URL,
) -> None:
    before = _counts(populated)
    # The later revisions replace functions and views: no table is dropped, no flag needed.
    down = _cli("downgrade", BASELINE, url=populated)
    assert down.returncode == 0, down.stderr
    assert _head(populated) == (BASELINE,)

    refused = _cli("downgrade", "-1", url=populated)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert f"reverting {BASELINE}" in refused.stderr
    assert "audit trail" in refused.stderr
    assert _reported(refused.stderr) == {t: n for t, n in before.items() if n}
    assert _head(populated) == (BASELINE,)
    assert _counts(populated) == before


def test_destroy_data_proceeds_and_says_the_audit_trail_went(populated: URL) -> None:
    done = _cli("downgrade", "--destroy-data", "base", url=populated)
    assert done.returncode == 0, done.stderr
    assert "now at base" in done.stdout
    assert "this deleted the audit trail" in done.stderr
    assert _head(populated) == ()
    engine = create_engine(populated, poolclass=NullPool)
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT to_regclass('public.audit_log')")) is None
        assert conn.scalar(text("SELECT to_regclass('public.tenants')")) is None
    engine.dispose()


def test_alembic_x_destroy_data_proceeds(populated: URL) -> None:
    bad = _alembic("-x", "destroy_data=perhaps", "downgrade", "base", url=populated)
    assert bad.returncode != 0
    assert "destroy_data must be true or false" in bad.stdout + bad.stderr
    done = _alembic("-x", "destroy_data=true", "downgrade", "base", url=populated)
    assert done.returncode == 0, done.stderr
    assert _head(populated) == ()


def test_an_empty_database_downgrades_with_one_command(server_url: URL, database_url: URL) -> None:
    del database_url
    with temporary_database(server_url, migrate=True) as url:
        done = _cli("downgrade", "base", url=url)
        assert done.returncode == 0, done.stderr
        assert _head(url) == ()


def _relations(conn: Connection) -> set[str]:
    return {
        r[0]
        for r in conn.execute(
            text("SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace")
        )
    }


def test_runner_refuses_in_the_callers_transaction_and_leaves_it_as_it_was(
    populated: URL,
) -> None:
    before = _counts(populated)
    engine = create_engine(populated, poolclass=NullPool)
    with engine.begin() as conn:
        relations = _relations(conn)
        with pytest.raises(DowngradeRefused) as refused:
            migrations.downgrade(conn, "base")
        assert _reported(str(refused.value)) == {t: n for t, n in before.items() if n}
        # The caller's transaction is usable and holds everything it held.
        assert _relations(conn) == relations
        assert int(conn.scalar(text("SELECT count(*) FROM audit_log")) or 0) == before["audit_log"]
        assert conn.scalar(text("SELECT version_num FROM alembic_version")) is not None
    with engine.begin() as conn:
        migrations.downgrade(conn, "base", destroy_data=True)
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT to_regclass('public.leads')")) is None
    engine.dispose()
