"""Commands say what they did: `platform-db upgrade`/`downgrade`, the demo's partition lines."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy.engine import URL

from platform_db import demo
from platform_db.migration import runner as migrations
from platform_db.session.engines import make_engine
from platform_db.testing.scratch import provision_tenant_key
from tests.conftest import temporary_database


@pytest.fixture(scope="module")
def scratch_url(server_url: URL, database_url: URL) -> Iterator[URL]:
    """An empty database of this module's own (no revision applied)."""
    del database_url  # keeps the cluster roles in use while this database comes and goes
    with temporary_database(server_url, migrate=False) as url:
        yield url


def _cli(*args: str, url: URL) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DATABASE_URL=url.render_as_string(hide_password=False))
    return subprocess.run(
        [sys.executable, "-m", "platform_db.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_upgrade_lists_what_it_applied_then_says_already_at_head(scratch_url: URL) -> None:
    script = ScriptDirectory.from_config(migrations.alembic_config())
    history = [rev.revision for rev in reversed(list(script.walk_revisions()))]
    head = script.get_current_head()
    assert head == history[-1]

    first = _cli("upgrade", url=scratch_url)
    assert first.returncode == 0, first.stderr
    assert f"applied {len(history)} revision(s)" in first.stdout, first.stdout
    listed = re.findall(r"^  ([0-9a-f]{12})  \S", first.stdout, re.MULTILINE)
    assert listed == history  # oldest first, each with its message
    assert first.stdout.rstrip().endswith(f"now at {head} (head)")

    again = _cli("upgrade", url=scratch_url)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip().endswith(f"already at head {head}, nothing applied")
    assert "revision(s)" not in again.stdout

    down = _cli("downgrade", "-1", url=scratch_url)
    assert down.returncode == 0, down.stderr
    assert f"reverted 1 revision(s)\n  {head}  " in down.stdout, down.stdout
    assert down.stdout.rstrip().endswith(f"now at {history[-2]}")

    back = _cli("upgrade", url=scratch_url)
    assert f"applied 1 revision(s)\n  {head}  " in back.stdout, back.stdout


def test_demo_partition_lines_agree_with_its_table(scratch_url: URL) -> None:
    # Issue 19: the demo said 18 rows moved out of the default partition and then showed
    # 3 rows there. Both were true; the line now says so in the table's numbers.
    engine = make_engine(scratch_url, application_name="platform-db-tests-demo")
    with engine.begin() as conn:
        password = demo._ensure_demo_login(conn)
    provision_tenant_key(engine)  # as run_demo does: the database knows the seal's key
    app_engine = make_engine(
        scratch_url.set(username=demo.DEMO_LOGIN, password=password),
        application_name="platform-db-tests-demo-app",
        pool_size=1,
    )
    try:
        prepared = demo._prepare(engine, app_engine)
        with engine.begin() as conn:
            catalog = demo._catalog(conn)
    finally:
        engine.dispose()
        app_engine.dispose()
    assert prepared.moved, "the sample history reaches months before the first partition"
    out = io.StringIO()
    demo._report(
        out,
        url=scratch_url,
        origin="test",
        prepared=prepared,
        catalog=catalog,
        first=prepared.tenants[0],
        view={"seen": {}, "hits": [], "dashboard": None, "unseen": 0},
    )
    text = out.getvalue()
    table = {
        m[1]: int(m[2])
        for m in re.finditer(r"^  (form_submissions_\w+)\s.*?(\d+)$", text, re.MULTILINE)
    }
    said = re.search(
        r"created (\d+) monthly partition\(s\) \((\d{4}_\d{2}) to (\d{4}_\d{2})\) and moved "
        r"(\d+) rows into them from the default partition;\n"
        r"(\d+) row\(s\) that no monthly partition covers stay in form_submissions_default",
        text,
    )
    assert said, text
    created, first_month, last_month, moved, left = said.groups()
    months = [name for name, _ in prepared.moved]
    assert int(created) == len(months)
    assert (f"form_submissions_{first_month}", f"form_submissions_{last_month}") == (
        min(months),
        max(months),
    )
    # The rows moved are the rows the table shows in the partitions just created, and
    # the rows left are the default partition's row of the table.
    assert int(moved) == sum(table[name] for name in months)
    assert int(left) == table["form_submissions_default"] > 0
