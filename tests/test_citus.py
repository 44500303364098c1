"""platform-db on a Citus cluster (docs/SCALING.md).

Runs when PLATFORM_DB_CITUS_URL names a Citus coordinator: a superuser URL of a database
on it that has the citus extension and its workers added (`citus_add_node`). The tests
create databases of their own on the coordinator and on every worker (same login; the
workers as the coordinator's pg_dist_node names them), migrate one, distribute it with
`platform-db distribute`, and check on it: the isolation suite and the plugin, one shard
per request for every class of the benchmark with the same rows as on a single server,
maintenance, doctor and a later revision. Skipped, saying so, without it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import random
import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Connection, Engine, create_engine, event, select, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, ProgrammingError
from sqlalchemy.pool import NullPool

from platform_db.bench import workload
from platform_db.bench.textgen import INDUSTRIES
from platform_db.ddl.security import ADMIN_ROLE
from platform_db.maintenance import maintain
from platform_db.maintenance.distribute import DistributeError, distribute
from platform_db.maintenance.health import doctor
from platform_db.migration import runner as migrations
from platform_db.models import FormSubmission, Lead, LeadStatus
from platform_db.models.lead import OPEN_STATUSES
from platform_db.session.search import search_pages
from platform_db.session.settings import SYNC_DRIVER, with_driver
from platform_db.session.tenancy import TenantSession
from platform_db.testing.scratch import (
    provision_tenant_key,
    temporary_app_login,
    temporary_database,
)

REPO = Path(__file__).resolve().parents[1]
CITUS_URL = os.environ.get("PLATFORM_DB_CITUS_URL", "").strip()
SKIP_REASON = (
    "PLATFORM_DB_CITUS_URL is not set: it names a Citus coordinator (a superuser on a "
    "database with the citus extension and its workers added) to run these tests on"
)
SHARDS = 4
TENANT_TABLES = ("audit_log", "form_submissions", "forms", "leads", "pages", "users")


# --- A database of our own on every node ----------------------------------------------


@pytest.fixture(scope="module")
def coordinator() -> URL:
    if not CITUS_URL:
        pytest.skip(SKIP_REASON)
    return with_driver(make_url(CITUS_URL), SYNC_DRIVER)


@pytest.fixture(scope="module")
def workers(coordinator: URL) -> list[tuple[str, int]]:
    engine = create_engine(coordinator, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            nodes = [
                (str(host), int(port))
                for host, port in conn.execute(
                    text(
                        "SELECT nodename, nodeport FROM pg_dist_node WHERE groupid <> 0 "
                        "AND noderole = 'primary' AND isactive ORDER BY nodename, nodeport"
                    )
                )
            ]
    finally:
        engine.dispose()
    if not nodes:
        pytest.fail(f"{coordinator.render_as_string()}: no workers in pg_dist_node")
    return nodes


def _autocommit(url: URL, *statements: str) -> None:
    engine = create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            for statement in statements:
                conn.execute(text(statement))
    finally:
        engine.dispose()


@contextlib.contextmanager
def citus_database(
    coordinator: URL,
    workers: list[tuple[str, int]],
    *,
    extension: bool = True,
    add_workers: bool = True,
) -> Iterator[URL]:
    """`pdb_citus_<hex>` on the coordinator and every worker (with citus, the workers
    added on the coordinator, unless told otherwise); dropped everywhere afterwards."""
    name = f"pdb_citus_{secrets.token_hex(4)}"
    nodes = [coordinator.set(database="postgres")] + [
        coordinator.set(host=host, port=port, database="postgres") for host, port in workers
    ]
    created = []
    try:
        for node in nodes:
            _autocommit(node, f'CREATE DATABASE "{name}"')
            created.append(node)
            if extension:
                _autocommit(node.set(database=name), "CREATE EXTENSION citus")
        url = coordinator.set(database=name)
        if extension and add_workers:
            _autocommit(
                url,
                f"SELECT citus_set_coordinator_host('{coordinator.host}', "
                f"{coordinator.port or 5432})",
                *(f"SELECT citus_add_node('{host}', {port})" for host, port in workers),
            )
        yield url
    finally:
        for node in created:
            _autocommit(node, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _migrate(url: URL) -> None:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            migrations.upgrade(conn, "heads")
            conn.commit()
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def distributed(coordinator: URL, workers: list[tuple[str, int]]) -> Iterator[dict[str, Any]]:
    """A freshly migrated database, distributed by `platform-db distribute`."""
    with citus_database(coordinator, workers) as url:
        _migrate(url)
        engine = create_engine(url, poolclass=NullPool)
        with engine.begin() as conn:  # as a monitored database has it (closed by distribute)
            conn.execute(text("CREATE EXTENSION IF NOT EXISTS pg_stat_statements"))
        try:
            steps: list[str] = []
            report = distribute(engine, shard_count=SHARDS, progress=steps.append)
            provision_tenant_key(engine)  # the run's key, on every node
            yield {"url": url, "engine": engine, "report": report, "progress": steps}
        finally:
            engine.dispose()


@pytest.fixture(scope="module")
def citus_engine(distributed: dict[str, Any]) -> Engine:
    engine: Engine = distributed["engine"]
    return engine


@pytest.fixture(scope="module")
def citus_app(citus_engine: Engine, distributed: dict[str, Any]) -> Iterator[Engine]:
    """A platform_app login on the distributed database (Citus creates it on every node)."""
    with temporary_app_login(citus_engine, distributed["url"], prefix="pdb_citus_app") as url:
        engine = create_engine(url, poolclass=NullPool)
        yield engine
        engine.dispose()


# --- distribute -------------------------------------------------------------------------


def test_distribute_without_citus_says_what_to_do(engine: Engine) -> None:
    # Plain PostgreSQL (the run's own database): refused before anything changes.
    with pytest.raises(DistributeError, match="the citus extension is not installed"):
        distribute(engine)


def test_distribute_without_extension_or_workers_says_what_to_do(
    coordinator: URL, workers: list[tuple[str, int]]
) -> None:
    with citus_database(coordinator, workers, extension=False) as url:
        engine = create_engine(url, poolclass=NullPool)
        try:
            with pytest.raises(DistributeError, match="CREATE EXTENSION citus"):
                distribute(engine)
        finally:
            engine.dispose()
    with citus_database(coordinator, workers, add_workers=False) as url:
        engine = create_engine(url, poolclass=NullPool)
        try:
            with pytest.raises(DistributeError, match=r"has no worker nodes.*citus_add_node"):
                distribute(engine)
        finally:
            engine.dispose()


def test_distribute_colocates_every_tenant_table(citus_engine: Engine) -> None:
    with citus_engine.connect() as conn:
        kinds: dict[str, str] = dict(
            conn.execute(
                text(
                    "SELECT c.relname, d.partmethod::text || ':' || "
                    "coalesce(column_to_column_name(d.logicalrelid, d.partkey), '') "
                    "|| ':' || d.colocationid FROM pg_dist_partition d "
                    "JOIN pg_class c ON c.oid = d.logicalrelid WHERE NOT c.relispartition"
                )
            ).all()
        )
        assert kinds["tenants"].startswith("n:")
        groups = {kinds[t] for t in TENANT_TABLES}
        assert len(groups) == 1, kinds
        assert next(iter(groups)).startswith("h:tenant_id:"), kinds
        # Partitions went with their parents, and there are 4 shards per table.
        assert conn.scalar(
            text(
                "SELECT bool_and(EXISTS (SELECT 1 FROM pg_dist_partition d "
                "WHERE d.logicalrelid = i.inhrelid)) FROM pg_inherits i "
                "WHERE i.inhparent IN ('form_submissions'::regclass, 'audit_log'::regclass)"
            )
        )
        assert (
            conn.scalar(
                text("SELECT count(*) FROM pg_dist_shard WHERE logicalrelid = 'leads'::regclass")
            )
            == SHARDS
        )
        # The foreign keys between tenant tables are back, the cycle included.
        keys = set(
            conn.scalars(
                text(
                    "SELECT conname FROM pg_constraint WHERE contype = 'f' AND conparentid = 0 "
                    "AND connamespace = 'public'::regnamespace"
                )
            )
        )
        assert {
            "fk_leads_source_submission",
            "fk_form_submissions_tenant_id_lead_id_leads",
            "fk_leads_tenant_id_form_id_forms",
            "fk_pages_tenant_id_author_id_users",
            "fk_form_submissions_tenant_id_form_id_forms",
        } <= keys
        settings = set(
            conn.scalars(
                text(
                    "SELECT unnest(setconfig) FROM pg_db_role_setting WHERE setrole = 0 AND "
                    "setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())"
                )
            )
        )
        assert {"citus.propagate_set_commands=local", "citus.enable_unsafe_triggers=on"} <= settings


def test_distribute_again_changes_nothing_and_check_agrees(
    citus_engine: Engine, distributed: dict[str, Any]
) -> None:
    first = distributed["report"]
    assert first.changed, first.as_dict()
    assert first.refresh_login is None, first.as_dict()
    again = distribute(citus_engine)
    assert not again.changed, again.as_dict()
    assert again.refresh_login is None
    with citus_engine.connect() as conn:
        migrations.check(conn)  # raises on any drift
        conn.rollback()


def test_distribute_closes_statement_texts_to_the_app(
    citus_engine: Engine, citus_app: Engine
) -> None:
    """On Citus the seal travels as SET LOCAL, which pg_stat_statements keeps with its
    text: distribute closes the statistics to PUBLIC, platform_admin keeps them."""
    with citus_engine.connect() as conn:
        for role, allowed in (("public", False), (ADMIN_ROLE, True)):
            assert (
                conn.scalar(
                    text("SELECT has_table_privilege(:r, 'pg_stat_statements', 'SELECT')"),
                    {"r": role},
                )
                is allowed
            ), role
    with citus_app.connect() as conn, pytest.raises(ProgrammingError, match="permission denied"):
        conn.execute(text("SELECT query FROM pg_stat_statements"))


# --- The isolation suite and the plugin, on the distributed database --------------------


def test_isolation_suite_and_plugin_pass_on_the_distributed_database(
    coordinator: URL, distributed: dict[str, Any]
) -> None:
    env = {
        **os.environ,
        "TEST_DATABASE_URL": coordinator.render_as_string(hide_password=False),
        "PLATFORM_DB_TEST_PREPARED_URL": distributed["url"].render_as_string(hide_password=False),
    }
    env.pop("PLATFORM_DB_CITUS_URL", None)  # no recursion into this module
    suites = [
        "tests/test_isolation.py",
        "tests/test_tenant_isolation_plugin.py",
        "tests/test_references.py",
        "tests/test_tenant_filter.py",
    ]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *suites],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    tail = "\n".join(run.stdout.strip().splitlines()[-25:])
    assert run.returncode == 0, tail
    assert " passed" in tail, tail
    assert " failed" not in tail, tail


# --- The benchmark's requests: one shard each, the same rows as on one server -----------

DATA_TENANTS = 3
BASE = dt.datetime.now(dt.UTC).replace(hour=12, minute=0, second=0, microsecond=0)


def _id(*parts: object) -> uuid.UUID:
    return uuid.uuid5(uuid.NAMESPACE_URL, "/".join(str(p) for p in parts))


def fill(conn: Connection) -> list[uuid.UUID]:
    """The same small platform on any database: 3 tenants of the benchmark's shape."""
    industries = list(INDUSTRIES)
    tenants = []
    for t in range(DATA_TENANTS):
        tid = _id("tenant", t)
        tenants.append(tid)
        industry = industries[t % len(industries)]
        nouns = INDUSTRIES[industry]
        conn.execute(
            text(
                "INSERT INTO tenants (id, name, subdomain, industry_module, created_at, "
                "updated_at) VALUES (:id, :name, :sub, :industry, :at, :at)"
            ),
            {
                "id": tid,
                "name": f"T{t}",
                "sub": f"citus-t{t}",
                "industry": industry,
                "at": BASE - dt.timedelta(days=400),
            },
        )
        for u in range(6):
            conn.execute(
                text(
                    "INSERT INTO users (tenant_id, id, email, role, created_at, updated_at) "
                    "VALUES (:t, :id, :e, :r, :at, :at)"
                ),
                {
                    "t": tid,
                    "id": _id(tid, "user", u),
                    "e": f"user{u}@t{t}.example.com",
                    "r": ("owner", "admin", "editor", "viewer")[u % 4],
                    "at": BASE - dt.timedelta(days=350),
                },
            )
        for p in range(8):
            words = " ".join(nouns[(p + k) % len(nouns)] for k in range(6))
            conn.execute(
                text(
                    "INSERT INTO pages (tenant_id, id, slug, title, content, status, "
                    "published_at, author_id, created_at, updated_at) VALUES (:t, :id, :slug, "
                    ":title, :content, :status, :pub, :author, :at, :at)"
                ),
                {
                    "t": tid,
                    "id": _id(tid, "page", p),
                    "slug": f"page-{p}",
                    "title": f"{nouns[p % len(nouns)]} guide {p}",
                    "content": words,
                    "status": "published" if p % 3 else "draft",
                    "pub": BASE - dt.timedelta(days=p) if p % 3 else None,
                    "author": _id(tid, "user", p % 6),
                    "at": BASE - dt.timedelta(days=p),
                },
            )
        for f in range(2):
            conn.execute(
                text(
                    "INSERT INTO forms (tenant_id, id, name, slug, created_at, updated_at) "
                    "VALUES (:t, :id, :name, :slug, :at, :at)"
                ),
                {
                    "t": tid,
                    "id": _id(tid, "form", f),
                    "name": f"Form {f}",
                    "slug": f"form-{f}",
                    "at": BASE - dt.timedelta(days=300),
                },
            )
        statuses = ("new", "contacted", "qualified", "converted", "lost")
        for n in range(20):
            status = statuses[n % 5]
            at = BASE - dt.timedelta(days=3 * n, hours=n)
            conn.execute(
                text(
                    "INSERT INTO leads (tenant_id, id, email, status, score, form_id, "
                    "converted_at, created_at, updated_at, status_changed_at) VALUES (:t, :id, "
                    ":e, :s, :score, :form, :conv, :at, :at, :at)"
                ),
                {
                    "t": tid,
                    "id": _id(tid, "lead", n),
                    "e": f"lead{n}@t{t}.example.com",
                    "s": status,
                    "score": n * 5 % 100,
                    "form": _id(tid, "form", n % 2),
                    "conv": at if status == "converted" else None,
                    "at": at,
                },
            )
        for n in range(40):
            conn.execute(
                text(
                    "INSERT INTO form_submissions (tenant_id, id, form_id, lead_id, data, "
                    "created_at) VALUES (:t, :id, :form, :lead, '{}', :at)"
                ),
                {
                    "t": tid,
                    "id": _id(tid, "submission", n),
                    "form": _id(tid, "form", n % 2),
                    "lead": _id(tid, "lead", n % 20) if n % 3 == 0 else None,
                    "at": BASE - dt.timedelta(days=9 * n, hours=n),
                },
            )
    return tenants


REFRESH = text("SELECT * FROM platform.refresh_performance_views()")


@pytest.fixture(scope="module")
def filled(citus_engine: Engine, server_url: URL) -> Iterator[dict[str, Any]]:
    """The same data on the distributed database and on a single PostgreSQL server."""
    with citus_engine.begin() as conn:
        tenants = fill(conn)
    # A transaction of its own: on Citus the refresh (as platform_admin) may not read
    # shards that another user changed earlier in the same transaction.
    with citus_engine.begin() as conn:
        conn.execute(REFRESH)
    with temporary_database(server_url, migrate=True, prefix="pdb_citus_plain") as url:
        plain = create_engine(url, poolclass=NullPool)
        with plain.begin() as conn:
            fill(conn)
        with plain.begin() as conn:
            conn.execute(REFRESH)
        with temporary_app_login(plain, url, prefix="pdb_citus_plain_app") as app:
            plain_app = create_engine(app, poolclass=NullPool)
            yield {"tenants": tenants, "plain": plain, "plain_app": plain_app}
            plain_app.dispose()
        plain.dispose()


def _catalog(engine: Engine) -> workload.Catalog:
    """The benchmark's catalog of the database, in a fixed order and at a fixed time."""
    url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url) as conn:
        found = workload.load_catalog(conn)
    tenants = [
        workload.TenantSample(
            id=t.id,
            rows=t.rows,
            industry=t.industry,
            created_at=t.created_at,
            emails=tuple(sorted(t.emails)),
            slugs=tuple(sorted(t.slugs)),
            forms=tuple(sorted(t.forms)),
            leads=tuple(sorted(t.leads, key=lambda r: r.id)),
        )
        for t in sorted(found.tenants, key=lambda t: t.id)
    ]
    return workload.Catalog.of(tenants, BASE)


def _value(value: Any) -> Any:
    return value.isoformat() if isinstance(value, dt.datetime) else str(value)


def _rows(objects: list[Any]) -> list[dict[str, Any]]:
    found = []
    for obj in objects:
        mapper = obj.__mapper__
        found.append(
            {
                c.key: _value(getattr(obj, c.key))
                for c in mapper.column_attrs
                # Set by the server's clock on write or refresh: not the same on two servers.
                if c.key not in ("search_vector", "refreshed_at", "updated_at")
            }
        )
    return found


def _run(session: TenantSession, req: workload.Request) -> list[Any]:
    """One request of the benchmark through a tenant session: what it reads or writes."""
    tid = req.tenant.id
    if req.cls == "lead_update":
        assert req.lead is not None
        lead = session.get(Lead, (tid, req.lead.id))
        assert lead is not None
        status = LeadStatus(lead.status)
        if status in OPEN_STATUSES:
            lead.advance_to(LeadStatus(workload._NEXT[status.value]), at=BASE)
        else:
            lead.score = (lead.score + 1) % 101
        session.flush()
        return [lead]
    if req.cls == "submission_insert":
        values = workload.submission_values(req)
        row = FormSubmission(
            id=_id(tid, "new-submission"),
            form_id=req.form,
            data=values["data"],
            user_agent=values["agent"],
            referrer=values["referrer"],
            created_at=BASE,
        )
        session.add(row)
        session.flush()
        return [row]
    if req.cls == "dashboard_read":
        stmt = workload.select_statement(req, explicit_tenant=False)
        return list(session.scalars(stmt))
    if req.cls == "page_search":
        return [
            page for page, _rank in search_pages(session, req.text, limit=workload.SEARCH_LIMIT)
        ]
    return list(session.scalars(workload.select_statement(req, explicit_tenant=False)))


_DML = ("SELECT", "INSERT", "UPDATE", "DELETE", "WITH")


def test_every_benchmark_request_reads_one_shard_and_the_rows_of_one_server(
    citus_engine: Engine, citus_app: Engine, filled: dict[str, Any]
) -> None:
    catalog = _catalog(citus_engine)
    assert [t.id for t in catalog.tenants] == [t.id for t in _catalog(filled["plain"]).tenants]
    assert catalog == _catalog(filled["plain"])
    sent: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, params: Any, *args: Any) -> None:
        if statement.lstrip().upper().startswith(_DML):
            sent.append((statement, params))

    event.listen(citus_app, "before_cursor_execute", record)
    answered: dict[str, int] = {}
    try:
        for cls in workload.CLASSES:
            for n in range(3):
                rng = random.Random(f"{cls}{n}")  # noqa: S311 - request parameters, not secrets
                req = workload.draw_request(cls, catalog, rng)
                results = {}
                for name, engine in (("citus", citus_app), ("plain", filled["plain_app"])):
                    sent.clear()
                    with TenantSession(engine, tenant_id=req.tenant.id) as session:
                        results[name] = _rows(_run(session, req))
                        if name == "citus":
                            plans = [
                                "\n".join(
                                    r[0]
                                    for r in session.connection().exec_driver_sql(
                                        "EXPLAIN " + statement, params
                                    )
                                )
                                for statement, params in list(sent)
                            ]
                        session.rollback()
                assert results["citus"] == results["plain"], (cls, req)
                answered[cls] = answered.get(cls, 0) + bool(results["citus"])
                assert plans, (cls, "no statement was sent")
                for plan in plans:
                    # A distributed statement must be planned onto one shard; a statement
                    # on the coordinator's own relations (the dashboards) has no tasks.
                    if "Citus" in plan:
                        assert "Task Count: 1\n" in plan + "\n", (cls, plan)
    finally:
        event.remove(citus_app, "before_cursor_execute", record)
    # Every class found rows in some of its requests (an empty answer proves nothing).
    assert set(answered) == set(workload.CLASSES)
    assert all(answered.values()), answered


def test_the_asyncpg_path_of_the_benchmark_reads_the_tenants_rows(
    citus_app: Engine, filled: dict[str, Any], citus_engine: Engine
) -> None:
    """The benchmark's own run_request (asyncpg, the Database pools, BEGIN and SET LOCAL in
    one message) against both databases: the same outcome for every class."""
    import asyncio  # noqa: PLC0415

    from platform_db.session.database import Database  # noqa: PLC0415
    from platform_db.session.settings import Settings  # noqa: PLC0415

    catalog = _catalog(citus_engine)

    async def outcomes(url: URL) -> list[int]:
        settings = Settings.from_env(
            {
                "DATABASE_URL": url.render_as_string(hide_password=False),
                "POSTGRES_POOL_MIN": "1",
                "POSTGRES_POOL_MAX": "2",
            }
        )
        db = Database(settings)
        try:
            found = []
            for cls in workload.CLASSES:
                if cls in workload.WRITE_CLASSES:
                    continue  # they commit: compared above, rolled back
                rng = random.Random(f"async-{cls}")  # noqa: S311 - not secrets
                req = workload.draw_request(cls, catalog, rng)
                found.append((await workload.run_request(db, req, rng)).rows)
            return found
        finally:
            await db.dispose_async()

    citus = asyncio.run(outcomes(citus_app.url))
    plain = asyncio.run(outcomes(filled["plain_app"].url))
    assert citus == plain
    assert sum(citus) > 0


def test_tenant_sessions_through_pgbouncer_reach_the_shards(
    coordinator: URL, citus_app: Engine, filled: dict[str, Any]
) -> None:
    """PgBouncer in transaction mode in front of the coordinator: the tenant, sent as
    SET LOCAL in each transaction, reaches the workers on the sync and the async path."""
    import asyncio  # noqa: PLC0415

    from platform_db.bench.bouncer import find_pgbouncer, pgbouncer  # noqa: PLC0415
    from platform_db.session.engines import make_async_engine, make_engine  # noqa: PLC0415
    from platform_db.session.query import find_many, find_many_async  # noqa: PLC0415

    binary = find_pgbouncer()
    if binary is None:
        pytest.skip("pgbouncer binary not found (install the Debian package `pgbouncer`)")
    app = citus_app.url
    with pgbouncer(
        binary,
        server_host=str(coordinator.host),
        server_port=coordinator.port or 5432,
        dbname=str(app.database),
        user=str(app.username),
        password=str(app.password),
        server_pool=2,
        max_clients=20,
    ) as bouncer:
        through = app.set(host=bouncer.host, port=bouncer.port)
        sync = make_engine(through, pgbouncer=True, pool_size=2)
        try:
            for tenant in filled["tenants"]:
                with TenantSession(sync, tenant_id=tenant) as session:
                    owners = [lead.tenant_id for lead in find_many(session, Lead, limit=1000).items]
                    session.rollback()
                assert set(owners) == {tenant}
                assert len(owners) == 20
        finally:
            sync.dispose()

        async def read() -> list[set[uuid.UUID]]:
            engine = make_async_engine(through, pgbouncer=True, pool_size=2)
            try:
                from platform_db.session.tenancy import tenant_async_sessionmaker  # noqa: PLC0415

                factory = tenant_async_sessionmaker(engine)
                seen = []
                for tenant in filled["tenants"]:
                    async with factory(tenant_id=tenant) as session, session.begin():
                        page = await find_many_async(session, Lead, limit=1000)
                    seen.append({lead.tenant_id for lead in page.items})
                return seen
            finally:
                await engine.dispose()

        assert asyncio.run(read()) == [{t} for t in filled["tenants"]]


# --- Maintenance, doctor, a later revision ------------------------------------------------


def test_partition_maintenance_moves_rows_without_audit_and_keeps_references(
    citus_engine: Engine, filled: dict[str, Any]
) -> None:
    tid = filled["tenants"][0]
    month = (BASE.replace(day=1) + dt.timedelta(days=32 * 30)).replace(day=1)  # ~30 months on
    part = f"form_submissions_{month:%Y_%m}"
    with citus_engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO form_submissions (tenant_id, id, form_id, created_at) "
                "VALUES (:t, :id, :f, :at)"
            ),
            {
                "t": tid,
                "id": _id(tid, "future"),
                "f": _id(tid, "form", 0),
                "at": month + dt.timedelta(days=3),
            },
        )
        conn.execute(
            text(
                "UPDATE leads SET source_submission_id = :id, source_submission_created_at = :at "
                "WHERE tenant_id = :t AND id = :lead"
            ),
            {
                "t": tid,
                "id": _id(tid, "future"),
                "at": month + dt.timedelta(days=3),
                "lead": _id(tid, "lead", 0),
            },
        )
    audit = text("SELECT count(*) FROM audit_log WHERE tenant_id = :t")
    with citus_engine.begin() as conn:
        before = conn.scalar(audit, {"t": tid})
        moved = conn.execute(
            text(
                "SELECT partition_name, rows_moved FROM platform.ensure_monthly_partitions("
                "'public.form_submissions'::regclass, 0, CAST(:m AS date))"
            ),
            {"m": month.date()},
        ).all()
        assert [tuple(r) for r in moved] == [(part, 1)]
    with citus_engine.connect() as conn:
        assert conn.scalar(audit, {"t": tid}) == before  # no spurious audit rows
        where = conn.scalar(
            text("SELECT tableoid::regclass::text FROM form_submissions WHERE id = :id"),
            {"id": _id(tid, "future")},
        )
        assert str(where).startswith(part)
        link = conn.scalar(
            text("SELECT source_submission_id FROM leads WHERE tenant_id = :t AND id = :l"),
            {"t": tid, "l": _id(tid, "lead", 0)},
        )
        assert link == _id(tid, "future")  # the move is not a delete
        assert conn.scalar(
            text(
                "SELECT bool_and(relrowsecurity AND relforcerowsecurity) FROM pg_class "
                "WHERE relname = :p"
            ),
            {"p": part},
        )
        assert conn.scalar(
            text(
                "SELECT colocationid FROM pg_dist_partition WHERE logicalrelid = CAST(:p AS regclass)"
            ),
            {"p": part},
        ) == conn.scalar(
            text(
                "SELECT colocationid FROM pg_dist_partition WHERE logicalrelid = 'users'::regclass"
            )
        )


def test_maintain_and_doctor_tell_the_truth(
    citus_engine: Engine, citus_app: Engine, filled: dict[str, Any]
) -> None:
    tid = filled["tenants"][1]
    with TenantSession(citus_app, tenant_id=tid) as session:
        for _ in range(20):  # index scans on the shards, through the tenant's shard
            session.scalars(select(Lead).where(Lead.status == "new")).all()
        session.rollback()
    steps = maintain(citus_engine, retention_months=24)
    failed = {s.name: s.error for s in steps if s.failed}
    assert not failed, failed
    assert "check the Citus cluster" in [s.name for s in steps]
    with citus_engine.connect() as conn:
        report = doctor(conn)
        conn.rollback()
    assert report.citus is not None
    nodes = {n["node"]: n for n in report.citus["nodes"]}
    holding = [n for n in nodes.values() if n["shards"]]
    assert holding
    assert sum(n["tenants"] for n in nodes.values()) >= DATA_TENANTS
    largest = report.citus["largest_tenants"]
    assert {t["tenant_id"] for t in largest} >= {str(t) for t in filled["tenants"]}
    assert all(t["node"] in nodes for t in largest)
    # Index usage comes from the shards (the coordinator's shell tables are never read).
    assert report.index_usage.get("HIGH_USAGE", 0) + report.index_usage.get("LOW_USAGE", 0) > 0
    shard_tables = {t["table"]: t for t in report.citus["shard_tables"]}
    assert shard_tables["leads"]["live_rows"] + shard_tables["leads"]["dead_rows"] > 0
    # Dead rows are the shards' (the isolation suite leaves many on this database): the
    # only critical alert doctor may raise here is theirs, never a cluster problem.
    critical = {a["metric"] for a in report.alerts if a["severity"] == "critical"}
    assert critical <= {"table_bloat"}, report.alerts
    if "table_bloat" in critical:
        assert any(b["table"] in TENANT_TABLES for b in report.bloat), report.bloat
    json.dumps(report.as_dict(), default=str)


def test_a_later_revision_adds_a_distributed_tenant_table(
    distributed: dict[str, Any],
    citus_engine: Engine,
    citus_app: Engine,
    filled: dict[str, Any],
) -> None:
    """The example service's revision (a tenant table referencing leads) runs on the
    distributed database: the environment creates the table distributed, co-located."""
    service = REPO / "examples" / "service"

    def alembic(*args: str) -> None:
        # A process of its own: the service's models must not join this process's metadata.
        env = {
            **os.environ,
            "DATABASE_URL": distributed["url"].render_as_string(hide_password=False),
            "PYTHONPATH": os.pathsep.join([str(service), str(REPO)]),
        }
        run = subprocess.run(
            [sys.executable, "-m", "alembic", "-c", str(service / "alembic.ini"), *args],
            cwd=service,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert run.returncode == 0, run.stderr[-3000:]

    alembic("upgrade", "head")
    with citus_engine.connect() as conn:
        groups = conn.execute(
            text(
                "SELECT logicalrelid::regclass::text, colocationid FROM pg_dist_partition "
                "WHERE logicalrelid IN ('notes'::regclass, 'users'::regclass)"
            )
        ).all()
        conn.rollback()
    assert len(groups) == 2, groups
    assert len({g[1] for g in groups}) == 1, groups
    alembic("check")
    a, b = filled["tenants"][0], filled["tenants"][1]
    with TenantSession(citus_app, tenant_id=a) as session:
        conn = session.connection()
        conn.execute(
            text("INSERT INTO notes (tenant_id, lead_id, body) VALUES (:t, :l, 'call back')"),
            {"t": a, "l": _id(a, "lead", 1)},
        )
        assert conn.scalar(text("SELECT count(*) FROM notes")) == 1
        savepoint = conn.begin_nested()
        with pytest.raises(DBAPIError):
            conn.execute(
                text("INSERT INTO notes (tenant_id, lead_id, body) VALUES (:t, :l, 'x')"),
                {"t": a, "l": _id(b, "lead", 1)},
            )
        savepoint.rollback()
        session.rollback()
