"""A pytest plugin that proves tenant isolation for every tenant-owned table.

Enable it with ``pytest -p platform_db.testing`` (or ``addopts = "-p platform_db.testing"``)
and write one test::

    def test_tenant_tables_are_closed(tenant_isolation):
        tenant_isolation.assert_closed()

It gives two committed tenants with rows in every tenant-owned table, a login that is
only a member of `platform_app`, and an assertion that, for every table of the metadata
whose model has `TenantMixin`:

- the catalog holds exactly the package's definition (the same comparison as
  `alembic check`: RLS forced, policies by meaning, grants, audit trigger, partitions);
- as tenant A, the app login sees all of A's rows and none of B's, and with no tenant it
  sees nothing;
- as tenant A, it cannot insert a row for B, and updates and deletes aimed at B's rows
  change nothing (or are refused outright);
- it has no TRUNCATE, REFERENCES or TRIGGER on the table;
- nothing a request of tenant A leaves on a pooled connection reaches the next request
  on it (the package's engine, one connection): a temporary view shadowing the table is
  refused, and after A commits a session-level `app.current_tenant_id`, B's request on
  the same backend sees only B's rows and a request without a tenant sees none.
- a table that declares a search function (`__tenant_search__`, platform_db.ddl.search):
  the function runs as a NOLOGIN role that bypasses RLS (so its GIN index is usable;
  on a Citus server platform_admin, which `platform-db distribute` lets log in),
  is SECURITY DEFINER with a pinned search_path, is executable by platform_app and not
  by PUBLIC, the tsvector column has a GIN index, and as tenant A a query that matches
  rows of both tenants returns exactly A's matching rows; with no tenant, none. A
  tenant table with a tsvector column and no search function gets a
  `SearchWithoutIndexWarning`: searched under RLS, that column's GIN index is never used.

Settings (pytest ini options, in pytest.ini, pyproject's [tool.pytest.ini_options], ...):

- ``platform_db_alembic_ini``: a service's alembic.ini (relative to the file that sets
  it). The default database is migrated with that configuration to ``heads``, so it
  carries the service's tables beside the package's. Default: the package's revisions.
- ``platform_db_name_prefix``: the default database is ``<prefix>_<hex>``, the login
  ``<prefix>_app_<hex>``. Default: ``pdb_iso``.

Fixtures (override any of them in your conftest.py):

- ``platform_db_url``: superuser URL of a database migrated to your heads. Default: a
  database of its own on ``TEST_DATABASE_URL``, migrated with
  ``platform_db_alembic_config`` and dropped at the end.
- ``platform_db_alembic_config``: the Alembic Config that migrates it (default: from
  ``platform_db_alembic_ini``); ``platform_db_name_prefix``: the prefix (default: from
  the ini option).
- ``platform_db_metadata``: the MetaData to check. Default: platform_db.models.metadata,
  which is ``Base.metadata`` and so holds every model imported by then: import your
  models in your conftest.py.
- ``platform_db_row_factories``: ``{table: factory(conn, tenant_id)}`` inserting at least
  one row of that table for a tenant, as the superuser. Default: the package's own
  tables (``default_row_factories()``); add yours to it. `audit_log` needs none: the
  other factories' writes fill it.
- ``platform_db_app_login``, ``platform_db_app_engine``, ``platform_db_admin_engine``,
  ``platform_db_tenants`` (a ``TwoTenants``), ``tenant_isolation``.

docs/TESTING.md has all of it, with a service's conftest.py.

``two_tenants(admin_engine, factories)`` is what ``platform_db_tenants`` is made with:
use it for tenants of your own scope (per module, per test, on another database).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from platform_db.ddl.entities import ident
from platform_db.ddl.search import MAX_SEARCH_ROWS
from platform_db.ddl.security import ADMIN_ROLE, APP_ROLE, TENANT_SETTING
from platform_db.ddl.tenant_table import TenantTable, tenant_tables
from platform_db.migration import runner as migrations
from platform_db.migration.autogenerate import drift
from platform_db.session import seal
from platform_db.session.engines import make_engine
from platform_db.session.settings import SYNC_DRIVER, with_driver
from platform_db.session.tenancy import TenantSession, scope_statements
from platform_db.testing.scratch import temporary_app_login, temporary_database

RowFactory = Callable[[Connection, uuid.UUID], None]
INSUFFICIENT_PRIVILEGE = "42501"


@dataclass(frozen=True, slots=True)
class TwoTenants:
    a: uuid.UUID
    b: uuid.UUID


@contextlib.contextmanager
def two_tenants(admin_engine: Engine, factories: Iterable[RowFactory]) -> Iterator[TwoTenants]:
    """Tenants A and B, committed with their rows, and deleted again at the end.

    In one transaction of `admin_engine` (a superuser or the owner, which RLS does not
    stop from writing for any tenant), each tenant is inserted and then every factory
    runs for it, in order. Deleting a tenant removes its rows (ON DELETE CASCADE); its
    audit trail stays, as it does for every deleted tenant.
    """
    factories = list(factories)
    tenants = TwoTenants(uuid.uuid4(), uuid.uuid4())
    with admin_engine.begin() as conn:
        for label, tenant in (("a", tenants.a), ("b", tenants.b)):
            conn.execute(
                text("INSERT INTO tenants (id, name, subdomain) VALUES (:i, :n, :s)"),
                {"i": tenant, "n": f"Isolation {label}", "s": f"iso-{label}-{tenant.hex[:12]}"},
            )
            for factory in factories:
                factory(conn, tenant)
    try:
        yield tenants
    finally:
        with admin_engine.begin() as conn:
            conn.execute(
                text("DELETE FROM tenants WHERE id IN (:a, :b)"), {"a": tenants.a, "b": tenants.b}
            )


def _exec(sql: str) -> RowFactory:
    def insert(conn: Connection, tenant_id: uuid.UUID) -> None:
        conn.execute(text(sql), {"t": tenant_id, "s": secrets.token_hex(4)})

    return insert


def _form_submission(conn: Connection, tenant_id: uuid.UUID) -> None:
    form = conn.scalar(
        text("INSERT INTO forms (tenant_id, name, slug) VALUES (:t, 'Isolation', :s) RETURNING id"),
        {"t": tenant_id, "s": f"iso-{secrets.token_hex(4)}"},
    )
    conn.execute(
        text("INSERT INTO form_submissions (tenant_id, form_id) VALUES (:t, :f)"),
        {"t": tenant_id, "f": form},
    )


def default_row_factories() -> dict[str, RowFactory]:
    """Row factories for platform-db's own tenant tables."""
    return {
        "users": _exec(
            "INSERT INTO users (tenant_id, email) VALUES (:t, 'iso-' || :s || '@example.com')"
        ),
        "pages": _exec(
            "INSERT INTO pages (tenant_id, slug, title) VALUES (:t, 'iso-' || :s, 'Isolation')"
        ),
        "forms": _exec(
            "INSERT INTO forms (tenant_id, name, slug) VALUES (:t, 'Isolation', 'iso-' || :s)"
        ),
        "leads": _exec(
            "INSERT INTO leads (tenant_id, email) VALUES (:t, 'iso-' || :s || '@example.com')"
        ),
        "form_submissions": _form_submission,
    }


def _sqlstate(exc: BaseException) -> str | None:
    orig: Any = getattr(exc, "orig", exc)
    state = getattr(orig, "sqlstate", None)
    return state if isinstance(state, str) else None


class SearchWithoutIndexWarning(UserWarning):
    """A tenant table has a tsvector column but no search function (`__tenant_search__`).

    Beneath the table's policy, `@@` is not leakproof and so never an index condition:
    a full-text search of it reads every row of the tenant (platform_db.ddl.search).
    """


@dataclass(slots=True)
class TableReport:
    table: str
    rows_of_a: int
    rows_of_b: int
    checked: list[str] = field(default_factory=list)


@dataclass(slots=True)
class IsolationChecker:
    """What the `tenant_isolation` fixture gives: `assert_closed()` and its report."""

    admin_engine: Engine
    app_engine: Engine
    metadata: Any
    tenants: TwoTenants
    reports: dict[str, TableReport] = field(default_factory=dict)

    def assert_closed(self, *, check_catalog: bool = True) -> dict[str, TableReport]:
        """Assert every tenant-owned table of the metadata is closed to the other tenant."""
        specs = tenant_tables(self.metadata)
        assert specs, "the metadata has no tenant-owned table (no model with TenantMixin)"
        if check_catalog:
            with self.admin_engine.connect() as conn:
                problems = drift(conn, self.metadata)
            assert not problems, (
                "the database differs from the tenant-table definition "
                f"(run `alembic check`): {problems}"
            )
        failures: list[str] = []
        for spec in specs:
            try:
                self.reports[spec.name] = self._check_table(spec)
            except AssertionError as exc:
                failures.append(f"{spec.qualified}: {exc}")
        assert not failures, "tenant isolation broken:\n" + "\n".join(failures)
        return self.reports

    # -- one table -------------------------------------------------------------------

    def _check_table(self, spec: TenantTable) -> TableReport:
        a, b = self.tenants.a, self.tenants.b
        t = spec.qualified
        with self.admin_engine.connect() as conn:
            count_a = int(
                conn.scalar(text(f"SELECT count(*) FROM {t} WHERE tenant_id = :t"), {"t": a}) or 0
            )
            count_b = int(
                conn.scalar(text(f"SELECT count(*) FROM {t} WHERE tenant_id = :t"), {"t": b}) or 0
            )
        for label, count in (("A", count_a), ("B", count_b)):
            assert count, (
                f"tenant {label} has no rows in {t}, so isolation cannot be shown: "
                f"add a factory for {spec.name!r} to platform_db_row_factories"
            )
        report = TableReport(spec.name, count_a, count_b)
        if not spec.protection.rls:
            report.checked.append(f"not under RLS by decision: {spec.protection.reason}")
            return report

        with self._as_tenant(a) as conn:
            seen = conn.execute(text(f"SELECT tenant_id, count(*) FROM {t} GROUP BY 1")).all()
            assert [(r[0], r[1]) for r in seen] == [(a, count_a)], (
                f"tenant A should see exactly its {count_a} rows, saw {seen}"
            )
            other = conn.scalar(text(f"SELECT count(*) FROM {t} WHERE tenant_id = :b"), {"b": b})
            assert other == 0, f"tenant A sees {other} rows of tenant B"
        report.checked.append("reads: own rows only")

        with self._as_tenant(None) as conn:
            n = conn.scalar(text(f"SELECT count(*) FROM {t}"))
            assert n == 0, f"a session without a tenant sees {n} rows"
        report.checked.append("no tenant: no rows")

        for verb, sql in (
            ("update", f"UPDATE {t} SET tenant_id = tenant_id WHERE tenant_id = :b RETURNING 1"),
            ("delete", f"DELETE FROM {t} WHERE tenant_id = :b RETURNING 1"),
        ):
            outcome = self._attempt(a, sql, {"b": b})
            assert outcome in ("0 rows", "refused"), f"{verb} of tenant B's rows: {outcome}"
            report.checked.append(f"{verb} of B's rows: {outcome}")
        outcome = self._attempt(a, f"INSERT INTO {t} (tenant_id) VALUES (:b)", {"b": b})
        assert outcome == "refused", f"insert of a row for tenant B: {outcome}"
        report.checked.append("insert for B: refused")

        with self.app_engine.connect() as conn:
            extra = [
                p
                for p in ("TRUNCATE", "REFERENCES", "TRIGGER")
                if conn.scalar(text("SELECT has_table_privilege(:r, :p)"), {"r": t, "p": p})
            ]
        assert not extra, f"{APP_ROLE} has {extra}"
        report.checked.append("no TRUNCATE, REFERENCES or TRIGGER")

        self._check_leftovers(spec, count_b)
        report.checked.append("leftover session state: none reaches the next request")
        if spec.search is not None:
            report.checked += self._check_search(spec)
        else:
            self._warn_unsearchable(spec, report)

        with self.admin_engine.connect() as conn:
            after = conn.scalar(text(f"SELECT count(*) FROM {t} WHERE tenant_id = :t"), {"t": b})
        assert after == count_b, f"tenant B's rows changed: {count_b} -> {after}"
        return report

    def _check_leftovers(self, spec: TenantTable, count_b: int) -> None:
        """Tenant A's request leaves state on a pooled connection; B's comes next."""
        a, b = self.tenants.a, self.tenants.b
        t = spec.qualified
        pooled = make_engine(
            self.app_engine.url, pool_size=1, application_name="platform-db-plugin"
        )
        try:
            with TenantSession(pooled, tenant_id=a) as session:
                pid = session.scalar(text("SELECT pg_backend_pid()"))
                session.execute(text("SAVEPOINT shadow"))
                refused: str | None = None
                try:
                    session.execute(
                        text(f"CREATE TEMP VIEW {ident(spec.name)} AS SELECT * FROM {t}")
                    )
                except DBAPIError as exc:
                    refused = _sqlstate(exc)
                    session.execute(text("ROLLBACK TO SAVEPOINT shadow"))
                assert refused == INSUFFICIENT_PRIVILEGE, (
                    f"{APP_ROLE} may create a temporary view named {spec.name} (it would "
                    f"shadow the table for every later request on the connection): {refused}"
                )
                session.execute(text(f"SET SESSION {TENANT_SETTING} = '{a}'"))
                session.commit()
            with TenantSession(pooled, tenant_id=b) as session:
                assert session.scalar(text("SELECT pg_backend_pid()")) == pid
                seen = session.execute(text(f"SELECT tenant_id, count(*) FROM {t} GROUP BY 1"))
                rows = [(r[0], r[1]) for r in seen]
                assert rows == [(b, count_b)], (
                    f"after A's request left a session tenant, B's request saw {rows}"
                )
            with TenantSession(pooled) as session:
                n = session.scalar(text(f"SELECT count(*) FROM {t}"))
                assert n == 0, f"after A's request, a session without a tenant sees {n} rows"
        finally:
            pooled.dispose()

    # -- its search function -----------------------------------------------------------

    def _check_search(self, spec: TenantTable) -> list[str]:
        search = spec.search
        assert search is not None
        a, b = self.tenants.a, self.tenants.b
        t, vector, fn = spec.qualified, ident(search.vector), search.function
        key = ", ".join(ident(k) for k in spec.key)
        with self.admin_engine.connect() as conn:
            found = conn.execute(
                text(_SEARCH_FUNCTION_SQL),
                {"name": fn, "table": t, "vector": vector, "app": APP_ROLE},
            ).one_or_none()
            assert found is not None, f"search function {fn} does not exist"
            assert found.prosecdef, f"{fn} is not SECURITY DEFINER: it runs under RLS"
            assert found.rolbypassrls, (
                f"{fn} is owned by {found.owner}, which does not bypass RLS: beneath the "
                "policy its @@ cannot use the GIN index"
            )
            # On a Citus server, `platform-db distribute` lets platform_admin log in (no
            # password; roles are the server's): its functions' worker connections open
            # as that role (docs/SCALING.md).
            assert not found.rolcanlogin or (found.citus and found.owner == ADMIN_ROLE), (
                f"{fn} is owned by a LOGIN role ({found.owner})"
            )
            assert any(c.startswith("search_path=") for c in found.proconfig or ()), (
                f"{fn} has no pinned search_path (SET search_path = pg_catalog, pg_temp)"
            )
            assert found.app_may, f"{APP_ROLE} may not execute {fn}"
            assert not found.public_may, f"PUBLIC may execute {fn}"
            assert found.gin, f"{t}.{vector} has no GIN index for {fn} to use"
            # A query that matches rows of both tenants, made of their own lexemes.
            lexemes = conn.scalars(
                text(
                    "SELECT DISTINCT l FROM (SELECT l, row_number() OVER (PARTITION BY tenant_id "
                    "ORDER BY l) AS n FROM (SELECT DISTINCT tenant_id, l "
                    f"FROM {t}, unnest(tsvector_to_array({vector})) AS l "
                    "WHERE tenant_id IN (:a, :b)) d) x WHERE n <= 50 ORDER BY l"
                ),
                {"a": a, "b": b},
            ).all()
            assert lexemes, f"no lexemes in {t}.{vector} of tenants A and B to search for"
            query = " | ".join(
                "'" + str(x).replace("\\", "\\\\").replace("'", "''") + "'" for x in lexemes
            )
            rows = conn.execute(
                text(
                    f"SELECT tenant_id, {key} FROM {t} "
                    f"WHERE tenant_id IN (:a, :b) AND {vector} @@ CAST(:q AS tsquery)"
                ),
                {"a": a, "b": b, "q": query},
            ).all()
        mine = {tuple(r[1:]) for r in rows if r[0] == a}
        theirs = {tuple(r[1:]) for r in rows if r[0] == b}
        assert mine, "the probe query matches no row of tenant A"
        assert theirs, "the probe query matches no row of tenant B"
        call = f"SELECT {key} FROM {fn}(CAST(:q AS tsquery), {MAX_SEARCH_ROWS}"
        call += ", false)" if search.subset is not None else ")"
        with self._as_tenant(a) as conn:
            seen = {tuple(r) for r in conn.execute(text(call), {"q": query})}
        assert not seen & theirs, f"{fn} as tenant A returns {len(seen & theirs)} rows of B"
        assert seen == mine or len(seen) == MAX_SEARCH_ROWS, (
            f"{fn} as tenant A should return A's {len(mine)} matching rows, returned {len(seen)}"
        )
        with self._as_tenant(None) as conn:
            none = conn.execute(text(call), {"q": query}).all()
        assert not none, f"{fn} without a tenant returns {len(none)} rows"
        return [
            f"search {fn}: SECURITY DEFINER as {found.owner} (NOLOGIN, BYPASSRLS), "
            "search_path pinned, EXECUTE for platform_app and not PUBLIC, GIN index",
            "search: own rows only; no tenant: no rows",
        ]

    def _warn_unsearchable(self, spec: TenantTable, report: TableReport) -> None:
        with self.admin_engine.connect() as conn:
            columns = conn.scalars(
                text(
                    "SELECT attname FROM pg_catalog.pg_attribute "
                    "WHERE attrelid = CAST(:t AS regclass) AND atttypid = 'tsvector'::regtype "
                    "AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
                ),
                {"t": spec.qualified},
            ).all()
        for column in columns:
            warnings.warn(
                f"{spec.qualified}.{column} is a tsvector column but its model declares no "
                "__tenant_search__: searched under RLS, its GIN index is never used "
                "(platform_db.ddl.search, docs/SERVICES.md)",
                SearchWithoutIndexWarning,
                stacklevel=4,
            )
            report.checked.append(f"search: none declared for tsvector column {column}")

    def _as_tenant(self, tenant: uuid.UUID | None) -> Any:
        return _TenantTransaction(self.app_engine, tenant)

    def _attempt(self, tenant: uuid.UUID, sql: str, params: Mapping[str, Any]) -> str:
        """Run one write as the app login in a transaction that is rolled back."""
        with self._as_tenant(tenant) as conn:
            try:
                rows = conn.execute(text(sql), dict(params)).all()
            except DBAPIError as exc:
                state = _sqlstate(exc)
                if state == INSUFFICIENT_PRIVILEGE:
                    return "refused"
                return f"failed with SQLSTATE {state}: {str(exc.orig).strip()}"
        return f"{len(rows)} rows" if rows else "0 rows"


_SEARCH_FUNCTION_SQL = """
SELECT p.prosecdef, p.proconfig, r.rolname AS owner, r.rolbypassrls, r.rolcanlogin,
       pg_catalog.has_function_privilege(:app, p.oid, 'EXECUTE') AS app_may,
       EXISTS (SELECT FROM pg_catalog.aclexplode(
                   coalesce(p.proacl, pg_catalog.acldefault('f', p.proowner))) x
               WHERE x.grantee = 0 AND x.privilege_type = 'EXECUTE') AS public_may,
       EXISTS (SELECT FROM pg_catalog.pg_index i
               JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid
               JOIN pg_catalog.pg_am am ON am.oid = c.relam
               JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid
                    AND a.attnum = ANY(i.indkey) AND a.attname = :vector
               WHERE i.indrelid = CAST(:table AS regclass) AND am.amname = 'gin') AS gin,
       'citus' = ANY(pg_catalog.string_to_array(pg_catalog.replace(
           pg_catalog.current_setting('shared_preload_libraries'), ' ', ''), ',')) AS citus
FROM pg_catalog.pg_proc p
JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
JOIN pg_catalog.pg_roles r ON r.oid = p.proowner
WHERE n.nspname || '.' || p.proname = :name
"""


def ensure_test_tenant_key() -> seal.TenantKey:
    """The tenant key of the test run: PLATFORM_DB_TENANT_KEY if set, else a new one put
    there (the package's engines read it; the scratch databases store it)."""
    return seal.key_from_env_or_new("test")


class _TenantTransaction:
    """A transaction of the app login with the tenant set as the session hook sets it."""

    def __init__(self, engine: Engine, tenant: uuid.UUID | None) -> None:
        self.engine, self.tenant = engine, tenant

    def __enter__(self) -> Connection:
        self.conn = self.engine.connect()
        tenant = str(self.tenant) if self.tenant else ""
        # Sealed as the tenant hook seals (PLATFORM_DB_TENANT_KEY for an engine of yours).
        for statement in scope_statements(self.conn, tenant, "").split("; "):
            self.conn.exec_driver_sql(statement)
        return self.conn

    def __exit__(self, *exc: object) -> None:
        self.conn.rollback()
        self.conn.close()


# --- fixtures ---------------------------------------------------------------------------


ALEMBIC_INI_OPTION = "platform_db_alembic_ini"
NAME_PREFIX_OPTION = "platform_db_name_prefix"
DEFAULT_NAME_PREFIX = "pdb_iso"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        ALEMBIC_INI_OPTION,
        "a service's alembic.ini (relative to the file that sets it): the plugin's database "
        "is migrated with it to heads (default: platform-db's own revisions)",
        default="",
    )
    parser.addini(
        NAME_PREFIX_OPTION,
        "prefix of the plugin's scratch database (<prefix>_<hex>) and login "
        f"(<prefix>_app_<hex>); a lower-case identifier (default: {DEFAULT_NAME_PREFIX})",
        default=DEFAULT_NAME_PREFIX,
    )


def _ini(config: pytest.Config, name: str) -> str:
    value = config.getini(name)
    return value.strip() if isinstance(value, str) else ""


@pytest.fixture(scope="session")
def platform_db_name_prefix(pytestconfig: pytest.Config) -> str:
    """Prefix of the default database's and login's names (ini `platform_db_name_prefix`)."""
    prefix = _ini(pytestconfig, NAME_PREFIX_OPTION) or DEFAULT_NAME_PREFIX
    try:
        ident(f"{prefix}_app_{'0' * 8}")
    except ValueError:
        pytest.fail(
            f"{NAME_PREFIX_OPTION} = {prefix!r}: use lower-case letters, digits and _, "
            "at most 50 characters, not starting with a digit",
            pytrace=False,
        )
    return prefix


@pytest.fixture(scope="session")
def platform_db_alembic_config(pytestconfig: pytest.Config) -> Config:
    """The Alembic configuration the default database is migrated with (to heads).

    Ini `platform_db_alembic_ini` names a service's alembic.ini, relative to the
    configuration file that sets it (else to the rootdir); unset, the package's own.
    """
    value = _ini(pytestconfig, ALEMBIC_INI_OPTION)
    if not value:
        return migrations.alembic_config()
    base = pytestconfig.inipath.parent if pytestconfig.inipath else pytestconfig.rootpath
    path = base / value
    if not path.is_file():
        pytest.fail(f"{ALEMBIC_INI_OPTION} = {value!r}: {path} does not exist", pytrace=False)
    return migrations.alembic_config(ini=path)


@pytest.fixture(scope="session")
def platform_db_url(
    platform_db_alembic_config: Config, platform_db_name_prefix: str
) -> Iterator[URL]:
    """Superuser URL of a migrated database (default: its own, on TEST_DATABASE_URL)."""
    raw = os.environ.get("TEST_DATABASE_URL", "").strip()
    if not raw:
        pytest.skip("TEST_DATABASE_URL is not set (or override the platform_db_url fixture)")
    ensure_test_tenant_key()
    with temporary_database(
        make_url(raw),
        migrate=True,
        prefix=platform_db_name_prefix,
        alembic_config=platform_db_alembic_config,
    ) as url:
        yield url


@pytest.fixture(scope="session")
def platform_db_metadata() -> Any:
    """platform_db.models.metadata (Base.metadata): every model imported by now, yours too."""
    from platform_db.models import metadata  # noqa: PLC0415

    return metadata


@pytest.fixture(scope="session")
def platform_db_row_factories() -> dict[str, RowFactory]:
    return default_row_factories()


@pytest.fixture(scope="session")
def platform_db_admin_engine(platform_db_url: URL) -> Iterator[Engine]:
    engine = create_engine(with_driver(platform_db_url, SYNC_DRIVER), poolclass=NullPool)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def platform_db_app_login(
    platform_db_admin_engine: Engine, platform_db_url: URL, platform_db_name_prefix: str
) -> Iterator[URL]:
    """URL of a LOGIN role that is only a member of platform_app, as a deployer makes it."""
    with temporary_app_login(
        platform_db_admin_engine, platform_db_url, prefix=f"{platform_db_name_prefix}_app"
    ) as url:
        yield url


@pytest.fixture(scope="session")
def platform_db_app_engine(platform_db_app_login: URL) -> Iterator[Engine]:
    engine = create_engine(with_driver(platform_db_app_login, SYNC_DRIVER), poolclass=NullPool)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def platform_db_tenants(
    platform_db_admin_engine: Engine, platform_db_row_factories: dict[str, RowFactory]
) -> Iterator[TwoTenants]:
    """Tenants A and B, committed, each with rows from every row factory."""
    with two_tenants(platform_db_admin_engine, platform_db_row_factories.values()) as tenants:
        yield tenants


@pytest.fixture
def tenant_isolation(
    platform_db_admin_engine: Engine,
    platform_db_app_engine: Engine,
    platform_db_metadata: Any,
    platform_db_tenants: TwoTenants,
) -> IsolationChecker:
    return IsolationChecker(
        platform_db_admin_engine, platform_db_app_engine, platform_db_metadata, platform_db_tenants
    )


__all__ = [
    "IsolationChecker",
    "RowFactory",
    "SearchWithoutIndexWarning",
    "TableReport",
    "TwoTenants",
    "default_row_factories",
    "platform_db_admin_engine",
    "platform_db_alembic_config",
    "platform_db_app_engine",
    "platform_db_app_login",
    "platform_db_metadata",
    "platform_db_name_prefix",
    "platform_db_row_factories",
    "platform_db_tenants",
    "platform_db_url",
    "pytest_addoption",
    "tenant_isolation",
    "two_tenants",
]
