"""Tenant dashboards: exact numbers, tenant-safe access, concurrent refresh, pg_cron."""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import Connection, Engine, create_engine, select, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from platform_db.migration import runner as migrations
from platform_db.models import (
    PlatformTenantSummary,
    ReadOnlyViewError,
    TenantDashboard,
    TenantLeadFunnel,
    TenantSubmissionActivity,
)
from platform_db.session.tenancy import TenantSession
from tests.factories import new_tenant

STATUSES = ("new", "contacted", "qualified", "converted", "lost")


def _seed(conn: Connection, tenant: uuid.UUID, size: int) -> None:
    """`size` scales every table differently, so a join that multiplies rows shows."""
    conn.execute(
        text(
            "INSERT INTO users (tenant_id, email, is_active) "
            "SELECT :t, 'u' || g || '@example.com', g % 3 <> 0 FROM generate_series(1, :n) g"
        ),
        {"t": tenant, "n": size * 2},
    )
    conn.execute(
        text(
            "INSERT INTO pages (tenant_id, slug, title, status, published_at) "
            "SELECT :t, 'p' || g, 'Page', CASE WHEN g % 2 = 0 THEN 'published' ELSE 'draft' END, "
            "CASE WHEN g % 2 = 0 THEN now() END FROM generate_series(1, :n) g"
        ),
        {"t": tenant, "n": size * 3},
    )
    form = conn.scalar(
        text("INSERT INTO forms (tenant_id, name, slug) VALUES (:t, 'F', 'f') RETURNING id"),
        {"t": tenant},
    )
    conn.execute(
        text(
            "INSERT INTO leads (tenant_id, email, status, converted_at, created_at) "
            "SELECT :t, 'l' || g || '@example.com', (ARRAY['new','contacted','qualified',"
            "'converted','lost'])[1 + g % 5], CASE WHEN g % 5 = 3 THEN now() END, "
            "now() - (g % 4) * interval '40 days' FROM generate_series(1, :n) g"
        ),
        {"t": tenant, "n": size * 5},
    )
    conn.execute(
        text(
            "INSERT INTO form_submissions (tenant_id, form_id, created_at) "
            "SELECT :t, :f, now() - (g % 60) * interval '1 day' - interval '1 hour' "
            "FROM generate_series(1, :n) g"
        ),
        {"t": tenant, "f": form, "n": size * 7},
    )


def _direct(conn: Connection, tenant: uuid.UUID) -> dict[str, object]:
    def one(sql: str) -> object:
        return conn.scalar(text(sql), {"t": tenant})

    counts: dict[str, object] = {
        "users_total": one("SELECT count(*) FROM users WHERE tenant_id = :t"),
        "users_active": one("SELECT count(*) FROM users WHERE tenant_id = :t AND is_active"),
        "pages_total": one("SELECT count(*) FROM pages WHERE tenant_id = :t"),
        "pages_published": one(
            "SELECT count(*) FROM pages WHERE tenant_id = :t AND status = 'published'"
        ),
        "forms_total": one("SELECT count(*) FROM forms WHERE tenant_id = :t"),
        "leads_total": one("SELECT count(*) FROM leads WHERE tenant_id = :t"),
        "submissions_total": one("SELECT count(*) FROM form_submissions WHERE tenant_id = :t"),
        "submissions_30d": one(
            "SELECT count(*) FROM form_submissions WHERE tenant_id = :t "
            "AND created_at >= now() - interval '30 days'"
        ),
    }
    for status in STATUSES:
        counts[f"leads_{status}"] = one(
            f"SELECT count(*) FROM leads WHERE tenant_id = :t AND status = '{status}'"
        )
    return counts


@pytest.fixture(scope="module")
def seeded(engine: Engine) -> Iterator[list[uuid.UUID]]:
    tenants = []
    with engine.begin() as conn:
        for size in (1, 4, 13):
            tenant = new_tenant(conn)
            _seed(conn, tenant, size)
            tenants.append(tenant)
        tenants.append(new_tenant(conn))  # a tenant with nothing at all
        conn.execute(text("SELECT * FROM platform.refresh_performance_views()"))
    yield tenants
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM tenants WHERE id = ANY(:t)"), {"t": tenants})


def test_dashboard_numbers_equal_direct_counts(engine: Engine, seeded: list[uuid.UUID]) -> None:
    with engine.connect() as conn:
        for tenant in seeded:
            row = conn.execute(
                text("SELECT * FROM platform.tenant_performance_summary WHERE tenant_id = :t"),
                {"t": tenant},
            ).one()
            direct = _direct(conn, tenant)
            assert {k: row._mapping[k] for k in direct} == direct
            total = direct["leads_total"]
            assert isinstance(total, int)
            expected_rate = round(direct["leads_converted"] / total, 4) if total else 0  # type: ignore[operator]
            assert float(row.conversion_rate) == pytest.approx(expected_rate)


def test_funnel_and_activity_match_the_tables(engine: Engine, seeded: list[uuid.UUID]) -> None:
    tenant = seeded[2]
    with engine.connect() as conn:
        funnel = conn.execute(
            text(
                "SELECT month, leads_created, converted FROM platform.lead_funnel_monthly "
                "WHERE tenant_id = :t ORDER BY month"
            ),
            {"t": tenant},
        ).all()
        direct = conn.execute(
            text(
                "SELECT date_trunc('month', created_at AT TIME ZONE 'UTC')::date, count(*), "
                "count(*) FILTER (WHERE status = 'converted') FROM leads WHERE tenant_id = :t "
                "GROUP BY 1 ORDER BY 1"
            ),
            {"t": tenant},
        ).all()
        assert [tuple(r) for r in funnel] == [tuple(r) for r in direct]
        per_day = conn.scalar(
            text(
                "SELECT sum(submissions) FROM platform.form_submissions_daily WHERE tenant_id = :t"
            ),
            {"t": tenant},
        )
        assert per_day == 13 * 7


def test_tenant_sees_only_its_row_and_never_the_materialized_view(
    app_engine: Engine, seeded: list[uuid.UUID]
) -> None:
    mine, other = seeded[1], seeded[2]
    with TenantSession(app_engine, tenant_id=mine) as session, session.begin():
        rows = session.scalars(select(TenantDashboard)).all()
        assert [r.tenant_id for r in rows] == [mine]
        assert rows[0].leads_total == 20
        assert rows[0].refreshed_at <= dt.datetime.now(dt.UTC)
        assert (
            session.scalars(select(TenantDashboard).where(TenantDashboard.tenant_id == other)).all()
            == []
        )
        funnel = session.scalars(select(TenantLeadFunnel)).all()
        assert funnel
        assert {f.tenant_id for f in funnel} == {mine}
        activity = session.scalars(select(TenantSubmissionActivity)).all()
        assert {a.tenant_id for a in activity} == {mine}
        rows[0].leads_total = 0
        with pytest.raises(ReadOnlyViewError):
            session.flush()
        session.rollback()
    with TenantSession(app_engine) as session, session.begin():
        assert session.scalars(select(TenantDashboard)).all() == []
    for relation in (
        "platform.tenant_performance_summary",
        "platform.lead_funnel_monthly",
        "platform.form_submissions_daily",
    ):
        with (
            pytest.raises(DBAPIError, match="permission denied"),
            TenantSession(app_engine, tenant_id=mine) as session,
            session.begin(),
        ):
            session.execute(text(f"SELECT * FROM {relation}"))
    with (
        pytest.raises(DBAPIError, match="permission denied"),
        TenantSession(app_engine, tenant_id=mine) as session,
        session.begin(),
    ):
        session.execute(text("SELECT platform.refresh_performance_views()"))


def test_admin_reads_across_tenants(engine: Engine, seeded: list[uuid.UUID]) -> None:
    with TenantSession(engine) as session, session.begin():
        session.execute(text("SET LOCAL ROLE platform_admin"))
        rows = session.scalars(
            select(PlatformTenantSummary).where(PlatformTenantSummary.tenant_id.in_(seeded))
        ).all()
        assert {r.tenant_id for r in rows} == set(seeded)


def test_refresh_does_not_block_readers(
    engine: Engine, app_engine: Engine, seeded: list[uuid.UUID]
) -> None:
    refresher = engine.connect()
    refresher.begin()
    try:
        done = refresher.execute(text("SELECT * FROM platform.refresh_performance_views()")).all()
        assert all(r.was_concurrent for r in done)
        # The refresh's locks are still held: a reader must not wait for them.
        with TenantSession(app_engine, tenant_id=seeded[0]) as session, session.begin():
            session.execute(text("SET LOCAL lock_timeout = '1s'"))
            assert session.scalars(select(TenantDashboard)).one().tenant_id == seeded[0]
    finally:
        refresher.rollback()
        refresher.close()
    # And a reader in the middle of a transaction does not hold up a refresh.
    with TenantSession(app_engine, tenant_id=seeded[0]) as session, session.begin():
        session.scalars(select(TenantDashboard)).one()
        with engine.begin() as conn:
            conn.execute(text("SET LOCAL lock_timeout = '2s'"))
            conn.execute(text("SELECT * FROM platform.refresh_performance_views()"))


def test_freshness_is_recorded(engine: Engine, seeded: list[uuid.UUID]) -> None:
    with engine.connect() as conn:
        fresh = {
            r.view_name: r for r in conn.execute(text("SELECT * FROM platform.matview_freshness"))
        }
    assert set(fresh) == {
        "platform.tenant_performance_summary",
        "platform.lead_funnel_monthly",
        "platform.form_submissions_daily",
    }
    assert all(r.last_refresh is not None and r.populated for r in fresh.values())


def test_scheduling_without_pg_cron_is_a_clear_error(engine: Engine) -> None:
    with engine.connect() as conn:
        if conn.scalar(text("SELECT count(*) FROM pg_extension WHERE extname = 'pg_cron'")):
            pytest.skip("pg_cron is installed in the test database")
        with pytest.raises(DBAPIError, match="pg_cron is not installed"):
            conn.execute(text("SELECT * FROM platform.schedule_maintenance_jobs()"))
        conn.rollback()
        assert conn.scalar(text("SELECT platform.unschedule_maintenance_jobs()")) == 0


@pytest.fixture
def cron_database(server_url: URL, database_url: URL) -> Iterator[URL]:
    """The database pg_cron serves (cron.database_name), created for this test only."""
    del database_url  # keeps the cluster roles in use
    admin = create_engine(
        server_url.set(drivername="postgresql+psycopg"),
        poolclass=NullPool,
        isolation_level="AUTOCOMMIT",
    )
    with admin.connect() as conn:
        preload = conn.scalar(text("SHOW shared_preload_libraries")) or ""
        name = conn.scalar(
            text("SELECT setting FROM pg_settings WHERE name = 'cron.database_name'")
        )
    if "pg_cron" not in preload or not name:
        admin.dispose()
        if os.environ.get("PLATFORM_DB_REQUIRE_PG_CRON") == "1":
            pytest.fail("pg_cron is not in shared_preload_libraries")
        pytest.skip("pg_cron is not preloaded on this server")
    if name in ("postgres", "template0", "template1"):
        admin.dispose()
        pytest.skip(f"cron.database_name is {name!r}: the tests will not migrate that database")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = server_url.set(drivername="postgresql+psycopg", database=name)
    try:
        yield url
    finally:
        # Left behind empty rather than dropped: without its database, pg_cron's launcher
        # exits and is restarted by the postmaster every second, a process fork a second
        # for as long as the server runs (it showed in the benchmark's server log).
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()


def test_revisions_schedule_jobs_with_pg_cron(cron_database: URL) -> None:
    engine = create_engine(cron_database, poolclass=NullPool)
    with engine.begin() as conn:
        conn.execute(text("CREATE EXTENSION pg_cron"))
    with engine.begin() as conn:
        migrations.upgrade(conn)
    with engine.connect() as conn:
        jobs = {
            str(name): str(schedule)
            for name, schedule in conn.execute(text("SELECT jobname, schedule FROM cron.job"))
        }
    assert jobs["refresh-performance-views"] == "*/15 * * * *"
    assert "cleanup-performance-metrics" in jobs
    assert "ensure-form-submission-partitions" in jobs
    assert "cleanup-cron-history" in jobs  # pg_cron's run history does not grow forever
    assert jobs["ensure-audit-log-partitions"] == "9 2 * * *"  # added by the audit revision
    # Scheduling again replaces, never duplicates.
    with engine.begin() as conn:
        conn.execute(text("SELECT * FROM platform.schedule_maintenance_jobs()"))
        count = conn.scalar(
            text("SELECT count(*) FROM cron.job WHERE jobname = 'refresh-performance-views'")
        )
        assert count == 1
    with engine.begin() as conn:
        migrations.downgrade(conn, "base")
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM cron.job")) == 0
    engine.dispose()


def test_doctor_reports_stale_dashboards(engine: Engine, seeded: list[uuid.UUID]) -> None:
    from platform_db.maintenance import doctor  # noqa: PLC0415

    with engine.connect() as conn:
        fresh = doctor(conn)
        stale = doctor(conn, stale_after_s=-1)
    assert not [a for a in fresh.alerts if a["metric"] == "matview_stale"]
    flagged = {a["subject"] for a in stale.alerts if a["metric"] == "matview_stale"}
    assert "platform.tenant_performance_summary" in flagged
    assert len(fresh.materialized_views) == 3


def test_the_seeds_names_are_in_the_catalog(engine: Engine, seeded: list[uuid.UUID]) -> None:
    def columns(conn: Connection, relation: str) -> set[str]:
        return set(
            conn.scalars(
                text(
                    "SELECT attname FROM pg_attribute WHERE attrelid = CAST(:r AS regclass) "
                    "AND attnum > 0 AND NOT attisdropped"
                ),
                {"r": relation},
            )
        )

    seed = {"total_users", "total_pages", "total_leads"}
    richer = {"users_total", "pages_total", "leads_total", "conversion_rate"}
    with engine.connect() as conn:
        for relation in ("platform.tenant_performance_summary", "public.tenant_dashboard"):
            assert seed | richer <= columns(conn, relation)
        assert "usage_category" in columns(conn, "platform.index_usage_stats")
        categories = set(
            conn.scalars(text("SELECT DISTINCT usage_category FROM platform.index_usage_stats"))
        )
        assert categories
        assert categories <= {"UNUSED", "LOW_USAGE", "HIGH_USAGE"}
        for tenant in seeded:
            row = conn.execute(
                text("SELECT * FROM platform.tenant_performance_summary WHERE tenant_id = :t"),
                {"t": tenant},
            ).one()
            direct = _direct(conn, tenant)
            assert (row.total_users, row.total_pages, row.total_leads) == (
                direct["users_total"],
                direct["pages_total"],
                direct["leads_total"],
            )


def test_a_tenant_created_after_the_refresh_reads_zeros(
    engine: Engine, app_engine: Engine, seeded: list[uuid.UUID]
) -> None:
    with engine.begin() as conn:
        refreshed = {
            name: conn.scalar(text(f"SELECT max(refreshed_at) FROM platform.{name}"))
            for name in ("tenant_performance_summary", "lead_funnel_monthly")
        }
        late = new_tenant(conn)
    try:
        with TenantSession(app_engine, tenant_id=late) as session, session.begin():
            [summary] = session.scalars(select(TenantDashboard)).all()
            assert summary.tenant_id == late
            assert summary.subdomain
            assert (summary.total_users, summary.total_pages, summary.total_leads) == (0, 0, 0)
            assert summary.leads_total == summary.submissions_total == 0
            assert summary.conversion_rate == 0
            assert summary.refreshed_at == refreshed["tenant_performance_summary"]
            [funnel] = session.scalars(select(TenantLeadFunnel)).all()
            assert (funnel.tenant_id, funnel.leads_created, funnel.converted) == (late, 0, 0)
            assert funnel.month == dt.datetime.now(dt.UTC).date().replace(day=1)
            assert funnel.refreshed_at == refreshed["lead_funnel_monthly"]
            [activity] = session.scalars(select(TenantSubmissionActivity)).all()
            assert (activity.tenant_id, activity.form_id, activity.submissions) == (late, None, 0)
            assert activity.refreshed_at is not None
        # A tenant the views know reads only its own rows, no zero row beside them.
        with TenantSession(app_engine, tenant_id=seeded[2]) as session, session.begin():
            funnel_rows = session.scalars(select(TenantLeadFunnel)).all()
            assert funnel_rows
            assert all(f.leads_created > 0 for f in funnel_rows)
            assert len(session.scalars(select(TenantDashboard)).all()) == 1
        # No tenant set: nothing at all, not a zero row.
        with TenantSession(app_engine) as session, session.begin():
            for model in (TenantDashboard, TenantLeadFunnel, TenantSubmissionActivity):
                assert session.scalars(select(model)).all() == []
        # After a refresh the tenant has its real row.
        with engine.begin() as conn:
            conn.execute(text("SELECT * FROM platform.refresh_performance_views()"))
        with TenantSession(app_engine, tenant_id=late) as session, session.begin():
            [summary] = session.scalars(select(TenantDashboard)).all()
            assert summary.refreshed_at > refreshed["tenant_performance_summary"]
    finally:
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM tenants WHERE id = :t"), {"t": late})
