"""Committed multi-tenant data and assertions shared by the isolation test modules.

Rows are written by the superuser (which row-level security does not filter) and read
back by the app login (member of platform_app only), so every check compares what RLS
lets through with what is really in the tables. The tenants come from the plugin's
`two_tenants` (platform_db.testing), filled by `seed_rows`, one pair per module (the
`tenants`, `a` and `b` fixtures of tests/conftest.py); deleting them at the end takes
their rows with them (ON DELETE CASCADE).

The tables are the tenant-table registry's (`tenant_tables(metadata)`), audit_log
included: a new model with TenantMixin joins every check, and `seed_rows` must give it
rows (test_seeded_rows_exist_for_both_tenants_and_span_partitions says so).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import secrets
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from platform_db.ddl.tenant_table import tenant_tables
from platform_db.models import metadata
from platform_db.session import seal
from platform_db.session.settings import SYNC_DRIVER, with_driver
from platform_db.session.tenancy import TenantSession

# Every tenant-owned table of the schema, as the registry knows them (sorted by name).
TENANT_TABLE_SPECS = {spec.name: spec for spec in tenant_tables(metadata)}
TENANT_TABLES: tuple[str, ...] = tuple(TENANT_TABLE_SPECS)
# Tables split into partitions (COPY ... TO reads only the empty parent under RLS).
PARTITIONED_TABLES = frozenset(
    name
    for name in TENANT_TABLES
    if metadata.tables[name].dialect_options["postgresql"]["partition_by"]
)


def app_may(table: str, privilege: str) -> bool:
    """Whether platform_app holds `privilege` on the table (audit_log: SELECT only)."""
    return privilege in TENANT_TABLE_SPECS[table].protection.app_privileges


def write_refusal(table: str, privilege: str) -> str:
    """What the database says when platform_app's write is refused (SQLSTATE 42501).

    Where platform_app holds the privilege, only RLS can refuse the row; where it does
    not (audit_log is read-only), the statement is refused before any row is looked at.
    """
    if app_may(table, privilege):
        return "row-level security"
    return f"permission denied for table {table}"


# Submissions land in several partitions: this month, next month (both created by the
# migration, which makes this month and three ahead) and the default partition (a date
# long before any monthly partition, and one long after).
FAR_PAST = dt.datetime(2001, 2, 3, 4, 5, 6, tzinfo=dt.UTC)
FAR_FUTURE = dt.datetime(2199, 6, 7, 8, 9, 10, tzinfo=dt.UTC)


def submission_times(now: dt.datetime | None = None) -> tuple[dt.datetime, ...]:
    now = now or dt.datetime.now(dt.UTC)
    this_month = now.replace(day=2, hour=12, minute=0, second=0, microsecond=0)
    next_month = (this_month + dt.timedelta(days=32)).replace(day=3)
    return (this_month, next_month, FAR_PAST, FAR_FUTURE)


@dataclass(frozen=True)
class SeededTenant:
    """One tenant and the ids of the rows it owns in every tenant table."""

    tenant_id: uuid.UUID
    ids: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    user_emails: tuple[str, ...] = ()
    lead_emails: tuple[str, ...] = ()
    submission_keys: tuple[tuple[uuid.UUID, dt.datetime], ...] = ()
    # The partition key (created_at, changed_at) of each row of a partitioned table,
    # in the order of ids[table].
    times: dict[str, tuple[dt.datetime, ...]] = field(default_factory=dict)

    def count(self, table: str) -> int:
        return len(self.ids[table])

    def first(self, table: str) -> Any:
        return self.ids[table][0]


# How many rows seed_rows gives a tenant (audit_log: one per row written, and the update
# of the last lead).
SEEDED_ROWS = {
    "users": 2,
    "forms": 1,
    "leads": 3,
    "pages": 2,
    "form_submissions": 4,
    "audit_log": 13,
}


def seed_rows(conn: Connection, tenant_id: uuid.UUID) -> SeededTenant:
    """Insert rows for an existing tenant in every tenant table (caller commits)."""
    label = tenant_id.hex[:8]
    suffix = secrets.token_hex(4)
    users = (uuid.uuid4(), uuid.uuid4())
    user_emails = tuple(f"user{i}-{suffix}@{label}.example.com" for i in range(len(users)))
    for uid, email in zip(users, user_emails, strict=True):
        conn.execute(
            text(
                "INSERT INTO users (tenant_id, id, email, role) VALUES (:t, :id, :email, 'editor')"
            ),
            {"t": tenant_id, "id": uid, "email": email},
        )
    forms = (uuid.uuid4(),)
    conn.execute(
        text(
            "INSERT INTO forms (tenant_id, id, name, slug) VALUES (:t, :id, 'Contact', 'contact')"
        ),
        {"t": tenant_id, "id": forms[0]},
    )
    leads = (uuid.uuid4(), uuid.uuid4(), uuid.uuid4())
    lead_emails = tuple(f"lead{i}-{suffix}@{label}.example.com" for i in range(len(leads)))
    for i, (lid, email) in enumerate(zip(leads, lead_emails, strict=True)):
        conn.execute(
            text(
                "INSERT INTO leads (tenant_id, id, email, status, form_id, company) "
                "VALUES (:t, :id, :email, :status, :form, :company)"
            ),
            {
                "t": tenant_id,
                "id": lid,
                "email": email,
                "status": ("new", "contacted", "new")[i],
                "form": forms[0],
                "company": f"{label} corp",
            },
        )
    pages = (uuid.uuid4(), uuid.uuid4())
    for i, pid in enumerate(pages):
        conn.execute(
            text(
                "INSERT INTO pages (tenant_id, id, slug, title, content, author_id) "
                "VALUES (:t, :id, :slug, :title, 'secret body', :author)"
            ),
            {
                "t": tenant_id,
                "id": pid,
                "slug": f"page-{i}",
                "title": f"{label} page {i}",
                "author": users[0],
            },
        )
    keys: list[tuple[uuid.UUID, dt.datetime]] = []
    for when in submission_times():
        sid = uuid.uuid4()
        conn.execute(
            text(
                "INSERT INTO form_submissions (tenant_id, id, created_at, form_id, lead_id, data) "
                'VALUES (:t, :id, :at, :form, :lead, \'{"secret": "yes"}\')'
            ),
            {"t": tenant_id, "id": sid, "at": when, "form": forms[0], "lead": leads[0]},
        )
        keys.append((sid, when))
    # The last lead points back at the submission it came from (composite key).
    conn.execute(
        text(
            "UPDATE leads SET source_submission_id = :sid, source_submission_created_at = :at "
            "WHERE tenant_id = :t AND id = :id"
        ),
        {"sid": keys[0][0], "at": keys[0][1], "t": tenant_id, "id": leads[2]},
    )
    # What the audit trigger recorded for all of the above.
    audit = conn.execute(
        text("SELECT id, changed_at FROM audit_log WHERE tenant_id = :t ORDER BY id"),
        {"t": tenant_id},
    ).all()
    return SeededTenant(
        tenant_id=tenant_id,
        ids={
            "users": users,
            "forms": forms,
            "leads": leads,
            "pages": pages,
            "form_submissions": tuple(k[0] for k in keys),
            "audit_log": tuple(r[0] for r in audit),
        },
        user_emails=user_emails,
        lead_emails=lead_emails,
        submission_keys=tuple(keys),
        times={
            "form_submissions": tuple(k[1] for k in keys),
            "audit_log": tuple(r[1] for r in audit),
        },
    )


def delete_tenants(engine: Engine, tenant_ids: Sequence[uuid.UUID]) -> None:
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM tenants WHERE id = ANY(:ids)"), {"ids": list(tenant_ids)})


def fingerprint(engine: Engine, tenant_id: uuid.UUID) -> dict[str, tuple[int, str]]:
    """Row count and a digest of every row of one tenant, per table (read as superuser)."""
    out: dict[str, tuple[int, str]] = {}
    with engine.connect() as conn:
        for table in TENANT_TABLES:
            row = conn.execute(
                text(
                    f"SELECT count(*), md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), ''))"
                    f" FROM {table} x WHERE tenant_id = :t"
                ),
                {"t": tenant_id},
            ).one()
            out[table] = (int(row[0]), str(row[1]))
    return out


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a driver error wrapped by SQLAlchemy (psycopg or asyncpg)."""
    orig: Any = getattr(exc, "orig", exc)
    for candidate in (orig, getattr(orig, "__cause__", None)):
        state = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if isinstance(state, str):
            return state
    return None


def is_distributed(engine: Engine) -> bool:
    """Whether the tests run on a Citus-distributed database (tests/test_citus.py runs
    this suite there): a few attacks are then refused by Citus before RLS sees them."""
    key = engine.url.render_as_string(hide_password=True)
    if key not in _DISTRIBUTED:
        with engine.connect() as conn:
            _DISTRIBUTED[key] = bool(
                conn.scalar(
                    text(
                        "SELECT to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL "
                        "AND EXISTS (SELECT 1 FROM pg_catalog.pg_extension "
                        "WHERE extname = 'citus')"
                    )
                )
            ) and bool(
                conn.scalar(
                    text(
                        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition "
                        "WHERE logicalrelid = 'public.tenants'::regclass)"
                    )
                )
            )
    return _DISTRIBUTED[key]


_DISTRIBUTED: dict[str, bool] = {}

# Names the shards of a distributed table answer with (tableoid::regclass on Citus).
_SHARD_SUFFIX = re.compile(r"_\d{6,}$")


def logical_name(relation: str) -> str:
    """A relation's name without the shard id Citus appends (users_102008 -> users)."""
    return _SHARD_SUFFIX.sub("", relation)


INSUFFICIENT_PRIVILEGE = "42501"  # permission denied, and RLS WITH CHECK failures
FOREIGN_KEY_VIOLATION = "23503"
FEATURE_NOT_SUPPORTED = "0A000"


@contextlib.contextmanager
def expect_db_error(state: str, match: str = "") -> Iterator[list[Exception]]:
    """Expect a database error with this SQLSTATE (and text, if given) inside the block.

    Accepts SQLAlchemy-wrapped errors and raw driver errors (psycopg COPY, asyncpg);
    anything without a SQLSTATE propagates unchanged.
    """
    caught: list[Exception] = []
    try:
        yield caught
    except Exception as exc:
        got = sqlstate(exc)
        if got is None:
            raise
        message = str(exc.orig if isinstance(exc, DBAPIError) else exc)
        assert got == state, f"expected SQLSTATE {state}, got {got}: {message}"
        assert match.lower() in message.lower(), f"{match!r} not in {message}"
        caught.append(exc)
    else:
        raise AssertionError(f"expected a database error with SQLSTATE {state}; none was raised")


@contextlib.contextmanager
def tenant_connection(
    app_engine: Engine, tenant_id: uuid.UUID | None, *, commit: bool = False
) -> Iterator[Connection]:
    """The connection of a TenantSession transaction as the app login (the real hook runs).

    Rolled back at the end unless `commit` (and the block raised nothing).
    """
    with TenantSession(app_engine, tenant_id=tenant_id) as session:
        conn = session.connection()
        try:
            yield conn
        except BaseException:
            session.rollback()
            raise
        if commit:
            session.commit()
        else:
            session.rollback()


def visible_tenant_ids(conn: Connection, table: str) -> list[uuid.UUID]:
    """tenant_id of every row of `table` the connection can see (an unfiltered scan)."""
    return [r[0] for r in conn.execute(text(f"SELECT tenant_id FROM {table}"))]


@contextlib.contextmanager
def unbound_seals(database_url: URL) -> Iterator[None]:
    """The database takes seals not bound to a backend (PgBouncer) inside the block."""
    admin = create_engine(with_driver(database_url, SYNC_DRIVER), poolclass=NullPool)
    try:
        with admin.begin() as conn:
            before = conn.scalar(text("SELECT unbound_seals FROM platform.tenant_seal_settings"))
            conn.execute(text("UPDATE platform.tenant_seal_settings SET unbound_seals = true"))
        yield
        with admin.begin() as conn:
            conn.execute(
                text("UPDATE platform.tenant_seal_settings SET unbound_seals = :b"), {"b": before}
            )
    finally:
        admin.dispose()


def sealed_tenant_sql(tenant_id: uuid.UUID | str, *, pid: int = 0, user_id: str = "") -> str:
    """What the tenant hook sends for `tenant_id`, sealed with the run's key for backend
    `pid` (0: any backend, as behind PgBouncer): for raw driver connections in tests."""
    key = seal.key_from_env()
    assert key is not None, "tests/conftest.py sets PLATFORM_DB_TENANT_KEY"
    tenant = str(tenant_id)
    return seal.enter_sql(tenant, user_id, key.seal(tenant, user_id, pid))
