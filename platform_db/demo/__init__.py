"""`platform-db demo`: migrate a database, create sample tenants, show what exists."""

from __future__ import annotations

import re
import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import Connection, Engine, create_engine, select, text
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from platform_db.ddl.security import APP_ROLE, scram_sha_256
from platform_db.demo.sample import SAMPLE_TENANTS, ensure_tenant, fill_tenant
from platform_db.migration import runner as migrations
from platform_db.models import TENANT_OWNED_TABLES, Tenant, TenantDashboard
from platform_db.session import seal
from platform_db.session.engines import make_engine
from platform_db.session.search import search_pages
from platform_db.session.settings import SYNC_DRIVER, database_url_from_env, redact, with_driver
from platform_db.session.tenancy import TenantSession
from platform_db.textfmt import write_table

DEMO_DATABASE = "platform_demo"
DEMO_LOGIN = "platform_demo_app"
DISPLAY_ORDER = ("users", "pages", "forms", "leads", "form_submissions")


@contextmanager
def demo_database(data_dir: Path) -> Iterator[tuple[URL, str]]:
    """DATABASE_URL if set, else an embedded server (stopped again on exit)."""
    url = database_url_from_env()
    if url is not None:
        yield with_driver(url, SYNC_DRIVER), "DATABASE_URL"
        return
    from platform_db.demo.embedded import start_embedded  # noqa: PLC0415

    server_url, server = start_embedded(data_dir, keep_running=False)
    try:
        admin = create_engine(
            with_driver(server_url, SYNC_DRIVER), poolclass=NullPool, isolation_level="AUTOCOMMIT"
        )
        with admin.connect() as conn:
            exists = conn.scalar(
                text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": DEMO_DATABASE}
            )
            if not exists:
                conn.execute(text(f"CREATE DATABASE {DEMO_DATABASE}"))
        admin.dispose()
        yield (
            with_driver(server_url, SYNC_DRIVER).set(database=DEMO_DATABASE),
            (f"embedded server, data in {data_dir}"),
        )
    finally:
        server.cleanup()


def _bounds(bound: str) -> tuple[str, str]:
    """('2026-05-01', '2026-06-01') from "FOR VALUES FROM ('2026-05-01 00:00:00+00') TO (...)"."""
    dates = re.findall(r"'(\d{4}-\d{2}-\d{2})", bound)
    return (dates[0], dates[1]) if len(dates) == 2 else ("DEFAULT", "")


def _counts_by_tenant(conn: Connection) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for table in TENANT_OWNED_TABLES:
        rows = conn.execute(
            text(
                f"SELECT t.subdomain, count(x.tenant_id) FROM tenants t "
                f"LEFT JOIN {table} x ON x.tenant_id = t.id GROUP BY t.subdomain"
            )
        )
        for subdomain, n in rows:
            counts.setdefault(subdomain, {})[table] = n
    return counts


def _ensure_demo_login(conn: Connection) -> str:
    password = secrets.token_urlsafe(18)
    exists = conn.scalar(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": DEMO_LOGIN})
    verb = "ALTER" if exists else "CREATE"
    # The password is generated here, never from input; DDL cannot take bind parameters.
    # Sent as its SCRAM verifier; exec_driver_sql, as text() would read ":" as a parameter.
    conn.exec_driver_sql(f"{verb} ROLE {DEMO_LOGIN} LOGIN PASSWORD '{scram_sha_256(password)}'")
    conn.execute(text(f"GRANT {APP_ROLE} TO {DEMO_LOGIN}"))
    return password


@dataclass(slots=True)
class _Prepared:
    tenants: list[Tenant]
    created: list[str]
    moved: list[tuple[str, int]]


def _prepare(engine: Engine, app_engine: Engine) -> _Prepared:
    """Create the sample tenants that are missing, fill them, run maintenance and refresh.

    `engine` is the migration login (it creates tenants, which platform_app may not);
    the rows of each tenant are written through `app_engine`, the demo's platform_app
    login, so that RLS checks every one of them. A tenant session on the migration login
    would be refused: RLS does not filter a superuser (RowLevelSecurityBypassError).
    """
    created = []
    with Session(engine, expire_on_commit=False) as session, session.begin():
        tenants = [ensure_tenant(session, spec) for spec in SAMPLE_TENANTS]
    for spec, (tenant, is_new) in zip(SAMPLE_TENANTS, tenants, strict=True):
        if is_new:
            with TenantSession(app_engine, tenant_id=tenant.id) as session, session.begin():
                fill_tenant(session, spec)
            created.append(spec.subdomain)
    moved: list[tuple[str, int]] = []
    with engine.begin() as conn:
        if created:
            # The sample history reaches months before the first partition: those rows
            # sit in the default partition until maintenance creates their months.
            rows = conn.execute(
                text(
                    "SELECT partition_name, rows_moved FROM "
                    "platform.ensure_form_submission_partitions(months_ahead => 9, "
                    "start_month => (date_trunc('month', now()) - interval '6 months')::date)"
                )
            )
            moved = [(str(name), int(n)) for name, n in rows]
        conn.execute(text("SELECT * FROM platform.refresh_performance_views()"))
    return _Prepared([t for t, _ in tenants], created, moved)


def _catalog(conn: Connection) -> dict[str, Any]:
    return {
        "version": conn.scalar(text("SELECT version_num FROM alembic_version")),
        "server_version": conn.scalar(text("SHOW server_version")),
        "counts": _counts_by_tenant(conn),
        "partitions": conn.execute(
            text(
                """
                SELECT c.relname, pg_get_expr(c.relpartbound, c.oid),
                       (SELECT count(*) FROM form_submissions s WHERE s.tableoid = c.oid)
                FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                WHERE i.inhparent = 'form_submissions'::regclass
                ORDER BY c.relname
                """
            )
        ).all(),
        "rls": conn.execute(
            text(
                "SELECT count(*) FILTER (WHERE relrowsecurity AND relforcerowsecurity), count(*) "
                "FROM pg_class WHERE relkind IN ('r', 'p') AND (relname = ANY(:t) "
                "OR relispartition AND relname LIKE 'form_submissions%')"
            ),
            {"t": list(TENANT_OWNED_TABLES)},
        ).one(),
    }


def _as_tenant(app_engine: Engine, tenant: Tenant) -> dict[str, Any]:
    """What a platform_app login sees with and without a tenant."""
    with TenantSession(app_engine, tenant_id=tenant.id) as session, session.begin():
        seen = {t: session.scalar(text(f"SELECT count(*) FROM {t}")) for t in DISPLAY_ORDER}
        hits = search_pages(session, "guide", published_only=False)
        dashboard = session.scalars(select(TenantDashboard)).first()
    with TenantSession(app_engine) as session, session.begin():
        unseen = sum(
            session.scalar(text(f"SELECT count(*) FROM {t}")) or 0 for t in TENANT_OWNED_TABLES
        )
    return {"seen": seen, "hits": hits, "dashboard": dashboard, "unseen": unseen}


def _demo_key(data_dir: Path) -> seal.TenantKey:
    """The tenant key of the demo: PLATFORM_DB_TENANT_KEY if set, else the one kept in
    a file beside the demo's data directory (`.pgdata-tenant-key`, made on the first run,
    readable by its owner only)."""
    key = seal.key_from_env()
    if key is not None:
        return key
    path = data_dir.parent / f"{data_dir.name}-tenant-key"
    if path.exists():
        return seal.TenantKey.parse(path.read_text(), source=str(path))
    key = seal.TenantKey.generate("demo")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(key.encode() + "\n")
    return key


def run_demo(data_dir: Path, out: TextIO = sys.stdout) -> int:
    with demo_database(data_dir) as (url, origin):
        key = _demo_key(data_dir)
        engine = make_engine(url, application_name="platform-db-demo", tenant_key=key)
        with engine.begin() as conn:
            migrations.upgrade(conn)
            password = _ensure_demo_login(conn)
        seal.store_key(engine, key)
        with engine.begin() as conn:
            sealing = seal.read_state(conn)
        app_engine = make_engine(
            url.set(username=DEMO_LOGIN, password=password),
            application_name="platform-db-demo-app",
            pool_size=1,
            tenant_key=key,
        )
        prepared = _prepare(engine, app_engine)
        with engine.begin() as conn:
            catalog = _catalog(conn)
        engine.dispose()
        first = prepared.tenants[0]
        view = _as_tenant(app_engine, first)
        app_engine.dispose()
        _report(
            out,
            url=url,
            origin=origin,
            prepared=prepared,
            catalog=catalog,
            first=first,
            view=view,
        )
        if sealing is not None:
            state = "enforced" if sealing.enforced else "not enforced (tenants existed before it)"
            out.write(
                f"\ntenant seal  {state}; the demo's sessions seal with key {key.key_id} "
                f"({key.fingerprint}) - platform-db tenant-key list\n"
            )
    return 0


def _partition_summary(moved: list[tuple[str, int]], partitions: list[Any]) -> str:
    """What maintenance did to the partitions, in the numbers of the table printed next.

    Only the months it created take rows out of the default partition; rows no month
    covers stay there (the sample puts one per tenant 30 months back, on purpose).
    """
    left = sum(n for _, bound, n in partitions if _bounds(bound)[0] == "DEFAULT")
    parts = []
    if moved:
        months = sorted(name.removeprefix("form_submissions_") for name, _ in moved)
        span = months[0] if len(months) == 1 else f"{months[0]} to {months[-1]}"
        parts.append(
            f"Partition maintenance created {len(moved)} monthly partition(s) ({span}) and "
            f"moved {sum(n for _, n in moved)} rows into them from the default partition"
        )
    if left:
        parts.append(
            f"{left} row(s) that no monthly partition covers stay in form_submissions_default"
        )
    return ";\n".join(parts)


def _report(
    out: TextIO,
    *,
    url: URL,
    origin: str,
    prepared: _Prepared,
    catalog: dict[str, Any],
    first: Tenant,
    view: dict[str, Any],
) -> None:
    counts = catalog["counts"]
    created = prepared.created
    out.write("platform-db demo\n")
    out.write(
        f"  database    {redact(url.set(drivername='postgresql'))} "
        f"({origin}; PostgreSQL {catalog['server_version']})\n"
    )
    out.write(f"  migrations  at head, revision {catalog['version']}\n")
    done = "created " + ", ".join(created) if created else "already there"
    out.write(f"  tenants     {len(counts)} ({done})\n\n")
    out.write("Rows per tenant\n")
    cols = [t for t in DISPLAY_ORDER if t in TENANT_OWNED_TABLES]
    write_table(
        out,
        ["tenant", *cols],
        [[sub, *[c.get(t, 0) for t in cols]] for sub, c in sorted(counts.items())],
    )
    summary = _partition_summary(prepared.moved, catalog["partitions"])
    if summary:
        out.write(f"\n{summary}\n")
    out.write("\nform_submissions partitions (monthly, UTC, plus the default)\n")
    write_table(
        out,
        ["partition", "from", "to", "rows"],
        [[name, *_bounds(bound), n] for name, bound, n in catalog["partitions"]],
    )
    forced, total = catalog["rls"]
    out.write(f"\nRow-level security: enabled and forced on {forced} of {total} tenant tables")
    out.write(" and partitions\n")
    out.write(f"  as login {DEMO_LOGIN} (member of {APP_ROLE}) with tenant {first.subdomain}:\n")
    out.write("    sees " + ", ".join(f"{t} {n}" for t, n in view["seen"].items()) + "\n")
    out.write(f"  as the same login with no tenant set: sees {view['unseen']} rows in all\n")
    d = view["dashboard"]
    if d is not None:
        out.write(
            f"\nDashboard of {d.subdomain} (view tenant_dashboard, refreshed "
            f"{d.refreshed_at:%H:%M:%S} UTC): {d.users_active} active users, "
            f"{d.pages_published} published pages, {d.leads_total} leads "
            f"({d.leads_converted} converted, rate {d.conversion_rate:.0%}), "
            f"{d.submissions_30d} submissions in the last 30 days\n"
        )
    if view["hits"]:
        page, rank = view["hits"][0]
        out.write(
            f"\nFull-text search for 'guide' in {first.subdomain}: "
            f"{page.title!r} (/{page.slug}, rank {rank:.3f})\n"
        )
