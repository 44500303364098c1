"""`platform-db seed`: the requested shape, valid constraints, correct tenants, determinism.

A tiny seed in a database of its own (the seed commits, rebuilds indexes and vacuums, so
it cannot run inside the rolled-back test transaction). Behaviour only: no timing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import URL

from platform_db.bench.seed import (
    SeedConfig,
    SeedError,
    SeedResult,
    conninfo,
    foreign_key_violations,
    plan,
    run_seed,
)
from tests.conftest import temporary_database
from tests.isolation_helpers import sealed_tenant_sql

CONFIG = SeedConfig(tenants=12, rows_per_tenant=400, months=6, seed=7, as_of=dt.date(2026, 6, 15))
TABLES = ("tenants", "users", "forms", "pages", "leads", "form_submissions")


@pytest.fixture(scope="module")
def seeded(server_url: URL) -> Iterator[tuple[URL, SeedResult]]:
    with temporary_database(server_url, migrate=True) as url:
        yield url, run_seed(url, CONFIG)


def _one(conn: psycopg.Connection[Any], query: str, *params: Any) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def _fingerprint(url: URL) -> dict[str, str]:
    """A hash of every seeded row of every table, in key order."""
    with psycopg.connect(conninfo(url)) as conn:
        return {
            table: _one(
                conn,
                f"SELECT md5(string_agg(t::text, '|' ORDER BY t::text)) FROM {table} t",
            )
            for table in TABLES
        }


def test_shape_is_what_was_asked(seeded: tuple[URL, SeedResult]) -> None:
    url, result = seeded
    specs = plan(CONFIG)
    assert result.tenants == CONFIG.tenants
    assert result.total_rows == sum(s.rows for s in specs)
    with psycopg.connect(conninfo(url)) as conn:
        for table in TABLES:
            assert _one(conn, f"SELECT count(*) FROM {table}") == result.rows[table]
        # Every tenant has something in every table.
        for table in TABLES[1:]:
            assert _one(conn, f"SELECT count(DISTINCT tenant_id) FROM {table}") == CONFIG.tenants
        # Skewed sizes: the largest tenant holds far more than the median one.
        assert result.largest_tenant_rows > 3 * result.median_tenant_rows
        # Leads across the funnel; pages with real text; many months of submissions.
        statuses = {r[0] for r in conn.execute("SELECT DISTINCT status FROM leads")}
        assert statuses == {"new", "contacted", "qualified", "converted", "lost"}
        assert _one(conn, "SELECT min(length(content)) FROM pages") > 200
        assert _one(conn, "SELECT count(*) FROM pages WHERE search_vector @@ 'contact'") > 0
        months = _one(
            conn, "SELECT count(DISTINCT date_trunc('month', created_at)) FROM form_submissions"
        )
        assert months >= CONFIG.months - 1
        # Every month of history has its own partition: nothing in the default one.
        assert _one(conn, "SELECT count(*) FROM form_submissions_default") == 0
        assert result.partitions >= CONFIG.months + 3
        # Three quarters of leads came from a submission that points back at them.
        linked = _one(
            conn,
            "SELECT count(*) FROM leads l JOIN form_submissions s ON s.tenant_id = l.tenant_id "
            "AND s.id = l.source_submission_id AND s.created_at = l.source_submission_created_at "
            "AND s.lead_id = l.id",
        )
        assert linked > 0.5 * result.rows["leads"]


def test_constraints_hold(seeded: tuple[URL, SeedResult]) -> None:
    url, result = seeded
    assert result.foreign_key_violations
    assert not any(result.foreign_key_violations.values())
    with psycopg.connect(conninfo(url)) as conn:
        # Checked again here, independently of the seed's own report.
        assert not any(foreign_key_violations(conn).values())
        invalid = _one(
            conn,
            "SELECT count(*) FROM pg_constraint c JOIN pg_class r ON r.oid = c.conrelid "
            "WHERE r.relnamespace = 'public'::regnamespace AND NOT c.convalidated",
        )
        assert invalid == 0
        assert _one(conn, "SELECT count(*) FROM pg_index WHERE NOT indisvalid") == 0
        # Foreign-key triggers are enabled again (the load ran them in replica mode).
        assert _one(conn, "SELECT current_setting('session_replication_role')") == "origin"


def test_indexes_are_rebuilt_exactly(seeded: tuple[URL, SeedResult], server_url: URL) -> None:
    url, _ = seeded
    query = (
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' "
        "AND tablename = ANY(%s) ORDER BY 1"
    )
    with psycopg.connect(conninfo(url)) as conn:
        after = conn.execute(query, (list(TABLES),)).fetchall()
    with (
        temporary_database(server_url, migrate=True) as fresh,
        psycopg.connect(conninfo(fresh)) as conn,
    ):
        before = conn.execute(query, (list(TABLES),)).fetchall()
    assert after == before


def test_rows_belong_to_their_tenant_under_rls(
    seeded: tuple[URL, SeedResult], app_login: URL
) -> None:
    url, _ = seeded
    app = app_login.set(database=url.database)
    with psycopg.connect(conninfo(url)) as admin:
        counts: dict[Any, int] = dict(
            admin.execute("SELECT tenant_id, count(*) FROM leads GROUP BY 1").fetchall()
        )
    tenant = max(counts, key=lambda t: counts[t])
    with psycopg.connect(conninfo(app)) as conn:
        conn.execute(sealed_tenant_sql(tenant, pid=conn.info.backend_pid))
        seen = conn.execute("SELECT DISTINCT tenant_id, count(*) OVER () FROM leads").fetchall()
        assert seen == [(tenant, counts[tenant])]


def test_same_seed_same_rows(seeded: tuple[URL, SeedResult]) -> None:
    url, _ = seeded
    first = _fingerprint(url)
    with pytest.raises(SeedError, match="--replace"):
        run_seed(url, CONFIG)
    run_seed(url, CONFIG, replace=True, verify=False)
    assert _fingerprint(url) == first


def test_tenants_do_not_depend_on_how_many_there_are() -> None:
    # The first tenants of a larger seed are exactly those of a smaller one (scaling run).
    small = {s.index: s for s in plan(SeedConfig(tenants=5, as_of=CONFIG.as_of))}
    large = {s.index: s for s in plan(SeedConfig(tenants=50, as_of=CONFIG.as_of))}
    assert all(large[i] == small[i] for i in small)


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(SeedError, match="tenants"):
        SeedConfig(tenants=0)
    with pytest.raises(SeedError, match="months"):
        SeedConfig(months=0)
