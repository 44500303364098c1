"""What a review of the first fix of issue 14 found open, each now a regression test.

The attacker is a request of tenant A on a login that is only a member of platform_app:
it runs whatever SQL it was tricked into and commits, and the connection goes back to
the pool. The victim is a later request (tenant B, or no tenant) on the same server
session (same `pg_backend_pid()`), through the package's `Database` pools with one
connection per pool. Each docstring says what the review saw before the fix; the last
test documents a limit of PostgreSQL that docs/SECURITY.md lists.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError

from platform_db.models import Lead
from platform_db.session.database import Database
from platform_db.session.tenancy import TenantChangeError, tenant_context
from tests.isolation_helpers import INSUFFICIENT_PRIVILEGE, SeededTenant, expect_db_error
from tests.test_pgbouncer import bouncer  # noqa: F401 - the module's PgBouncer fixture

PID = text("SELECT pg_backend_pid()")
LEAD_TENANTS = text("SELECT tenant_id FROM leads")


def _env(url: URL) -> dict[str, str]:
    return {
        "DATABASE_URL": url.render_as_string(hide_password=False),
        "POSTGRES_POOL_MIN": "1",
        "POSTGRES_POOL_MAX": "1",
    }


@pytest.fixture
def database(app_login: URL) -> Iterator[Database]:
    db = Database.from_env(_env(app_login))
    try:
        yield db
    finally:
        db.dispose()


def _attack(db: Database, tenant: uuid.UUID, payload: list[str]) -> int:
    """Tenant A's request runs `payload` (every statement must succeed) and commits."""
    with db.session(tenant_id=tenant) as session:
        pid = int(session.scalar(PID) or 0)
        for statement in payload:
            session.execute(text(statement))
        session.commit()
    return pid


async def _attack_async(db: Database, tenant: uuid.UUID, payload: list[str]) -> int:
    async with db.async_session(tenant_id=tenant) as session:
        pid = int(await session.scalar(PID) or 0)
        for statement in payload:
            await session.execute(text(statement))
        await session.commit()
    return pid


# --- 1. level (a): the identity map outlives set_tenant() / tenant_context() ------------


def test_identity_map_does_not_serve_the_previous_tenants_rows_after_set_tenant(
    database: Database, a: SeededTenant, b: SeededTenant
) -> None:
    """Breaks (a) "a forgotten tenant / the wrong session cannot cross tenants".

    TenantSession sets expire_on_commit=False and set_tenant() leaves the identity map as
    it is: after set_tenant(B), session.get() returns A's lead from memory (while anything
    still references it: another object's relationship, a variable of a worker loop),
    with no SQL, so neither RLS nor the TenantChangeError guard ever sees it. On a fresh
    session the same get() is None. Lazy loads of relationships loaded under A and
    attribute reads of A's objects are served the same way."""
    a_lead = (a.tenant_id, a.first("leads"))
    with database.session(tenant_id=a.tenant_id) as session:
        loaded = session.get(Lead, a_lead)  # A's request loads its lead and keeps it
        assert loaded is not None
        session.commit()
        session.set_tenant(b.tenant_id)  # the same session now serves B
        # B's request looks a lead up by a key it was handed (a bug: A's key). Under RLS
        # this must be None, as it is on a fresh session.
        leaked = session.get(Lead, a_lead)
        assert leaked is None, f"B was served A's lead {leaked.email!r} ({leaked.tenant_id})"


def test_identity_map_does_not_serve_the_previous_tenants_rows_across_tenant_context(
    database: Database, a: SeededTenant, b: SeededTenant
) -> None:
    """The same with tenant_context() around each request on one long-lived session."""
    a_lead = (a.tenant_id, a.first("leads"))
    with database.session() as session:
        with tenant_context(a.tenant_id):
            loaded = session.get(Lead, a_lead)
            assert loaded is not None
            session.commit()
        with tenant_context(b.tenant_id):
            leaked = session.get(Lead, a_lead)
            assert leaked is None, f"B was served A's lead ({leaked.tenant_id})"


def test_a_connection_taken_before_the_tenant_changed_refuses_to_run(
    database: Database, a: SeededTenant, b: SeededTenant
) -> None:
    """Breaks (a) "the tenant changed while a transaction is open: TenantChangeError
    before any further statement: ORM, Core, text(), and Session.connection() alike" and
    the issue's item 5 (`session.connection().execute(...)` under tenant_context(B) ran
    with A's setting). The guard runs when session.connection() is called, not when the
    Connection it returned executes: code that took the connection earlier (a helper,
    a repository object) and runs Core on it inside tenant_context(B) reads A's rows."""
    with database.session() as session:
        with tenant_context(a.tenant_id):
            conn = session.connection()
            conn.execute(LEAD_TENANTS).all()
        with tenant_context(b.tenant_id), pytest.raises(TenantChangeError):
            conn.execute(LEAD_TENANTS)
        session.rollback()


async def test_an_async_connection_taken_before_the_tenant_changed_refuses_to_run(
    database: Database, a: SeededTenant, b: SeededTenant
) -> None:
    async with database.async_session() as session:
        with tenant_context(a.tenant_id):
            conn = await session.connection()
            (await conn.execute(LEAD_TENANTS)).all()
        with tenant_context(b.tenant_id), pytest.raises(TenantChangeError):
            await conn.execute(LEAD_TENANTS)
        await session.rollback()


# --- 2. level (b): what RESET ALL does not reset -----------------------------------------


def test_set_role_does_not_survive_the_request(
    database: Database, a: SeededTenant, b: SeededTenant
) -> None:
    """Breaks (b) "RESET ALL returns to the values the engine sent at connection start":
    `role` is GUC_NO_RESET_ALL. A's `SET ROLE platform_app` stays; B's requests run as
    another current_user (any grant made to the login itself is lost to them; a login
    with more memberships could leave any of its roles for the next request)."""
    with database.session(tenant_id=b.tenant_id) as fresh:
        login = fresh.scalar(text("SELECT current_user"))
    pid = _attack(database, a.tenant_id, ["SET SESSION ROLE platform_app"])
    with database.session(tenant_id=b.tenant_id) as session:
        assert session.scalar(PID) == pid
        assert session.scalar(text("SELECT current_user")) == login


async def test_set_role_does_not_survive_the_request_async(
    database: Database, a: SeededTenant, b: SeededTenant
) -> None:
    async with database.async_session(tenant_id=b.tenant_id) as fresh:
        login = await fresh.scalar(text("SELECT current_user"))
    pid = await _attack_async(database, a.tenant_id, ["SET SESSION ROLE platform_app"])
    async with database.async_session(tenant_id=b.tenant_id) as session:
        assert await session.scalar(PID) == pid
        assert await session.scalar(text("SELECT current_user")) == login


def test_a_request_cannot_choose_the_random_seed(database: Database, a: SeededTenant) -> None:
    """Seen before the fix: setseed() was open to PUBLIC and the seed is session state
    that neither RESET ALL nor PgBouncer's DISCARD ALL resets, so A chose the random()
    sequence of B's next requests on the connection. setseed is revoked from PUBLIC."""
    with (
        database.session(tenant_id=a.tenant_id) as session,
        expect_db_error(INSUFFICIENT_PRIVILEGE, "permission denied for function setseed"),
    ):
        session.execute(text("SELECT setseed(0.25)"))


def test_a_request_cannot_choose_the_random_seed_through_pgbouncer(
    request: pytest.FixtureRequest, a: SeededTenant
) -> None:
    """The same through PgBouncer in transaction mode (DISCARD ALL keeps the seed)."""
    through = request.getfixturevalue("bouncer")  # tests/test_pgbouncer.py's PgBouncer
    db = Database.from_env(_env(through.single_url), pgbouncer=True)
    try:
        with (
            db.session(tenant_id=a.tenant_id) as session,
            expect_db_error(INSUFFICIENT_PRIVILEGE, "permission denied for function setseed"),
        ):
            session.execute(text("SELECT setseed(0.25)"))
    finally:
        db.dispose()


def test_with_hold_cursors_do_not_survive_on_the_packages_pools(
    database: Database, a: SeededTenant, b: SeededTenant
) -> None:
    """Breaks (b) "nothing a request leaves on a pooled connection reaches another
    request" (docs/OPERATIONS.md counts WITH HOLD cursors among what must not reach the
    next client, but only PgBouncer's DISCARD ALL removes them; the package's prologue
    has no CLOSE ALL). A's cursor, with A's rows, is open in B's request; and a cursor
    materialised at COMMIT (say 10 GB of repeat()) keeps its temporary files for the life
    of the pooled connection (temp_file_limit is -1 by default): a disk-filling DoS that
    outlives the request and every timeout."""
    pid = _attack(
        database, a.tenant_id, ["DECLARE loot CURSOR WITH HOLD FOR SELECT email FROM leads"]
    )
    with database.session(tenant_id=b.tenant_id) as session:
        assert session.scalar(PID) == pid
        left = session.execute(text("SELECT name, statement FROM pg_cursors")).all()
        assert left == [], f"A's cursor is open in B's request: {left}"


def test_leftover_session_characteristics_do_not_make_the_victims_transaction_deferrable(
    database: Database, a: SeededTenant, b: SeededTenant
) -> None:
    """Breaks (b) "a later request behaves as on a fresh connection" (minor): BEGIN takes
    transaction_deferrable from A's leftover default before the prologue's RESET ALL, and
    the prologue fixes only the read/write mode (`SET TRANSACTION READ WRITE`), the
    isolation level being explicit in BEGIN. Harmless under READ COMMITTED; a service's
    SERIALIZABLE read-only transaction (reports on the read-only pool) would wait for a
    safe snapshot."""
    pid = _attack(
        database,
        a.tenant_id,
        ["SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE, DEFERRABLE"],
    )
    with database.session(tenant_id=b.tenant_id) as session:
        assert session.scalar(PID) == pid
        assert session.scalar(text("SHOW transaction_deferrable")) == "off"


# --- 3. level (c) paragraph: DO blocks ----------------------------------------------------


def test_do_blocks_are_refused_to_the_app_login(database: Database, a: SeededTenant) -> None:
    """Seen before the fix: DO needs only USAGE on plpgsql, which PUBLIC held, so one
    statement could loop over every tenant with EXECUTE 'SET LOCAL ...' (set_config()
    revoked or not). USAGE on plpgsql is revoked from PUBLIC; calling the package's
    plpgsql functions needs none."""
    with (
        database.session(tenant_id=a.tenant_id) as session,
        expect_db_error(INSUFFICIENT_PRIVILEGE, "permission denied for language plpgsql"),
    ):
        session.execute(
            text(
                "DO $$DECLARE t uuid; BEGIN FOR t IN SELECT id FROM tenants LOOP "
                "EXECUTE format('SET LOCAL app.current_tenant_id = %L', t); END LOOP; END$$"
            )
        )


# --- 4. role defaults the login sets itself: beyond the four guarded settings ------------


@pytest.fixture
def role_defaults_reset(engine: Any, app_login: URL) -> Iterator[None]:
    yield
    with engine.begin() as conn:
        conn.execute(text(f'ALTER ROLE "{app_login.username}" RESET ALL'))


@pytest.mark.usefixtures("role_defaults_reset")
@pytest.mark.parametrize(
    "setting", ["search_path = ''", "row_security = off"], ids=["search_path", "row_security"]
)
async def test_role_defaults_the_login_sets_itself_do_not_break_new_connections(
    app_login: URL, a: SeededTenant, b: SeededTenant, setting: str
) -> None:
    """Breaks the fix of the issue's item 3 ("ALTER ROLE <own login> SET
    default_transaction_read_only = on broke every new connection until a superuser reset
    it") and SECURITY.md's "the settings that matter are sent at connection start": only
    the timeouts and default_transaction_read_only are. One injected ALTER ROLE with
    another setting breaks every request on every new connection, sync and async, until a
    superuser resets the role (RESET ALL returns to the role default)."""
    db = Database.from_env(_env(app_login))
    try:
        _attack(db, a.tenant_id, [f'ALTER ROLE "{app_login.username}" SET {setting}'])
    finally:
        db.dispose()
    fresh = Database.from_env(_env(app_login))
    failures: list[str] = []
    try:
        try:
            with fresh.session(tenant_id=b.tenant_id) as session:
                assert set(session.scalars(LEAD_TENANTS)) == {b.tenant_id}
        except DBAPIError as exc:
            failures.append(f"sync: {str(exc.orig).splitlines()[0]}")
        try:
            async with fresh.async_session(tenant_id=b.tenant_id) as s:
                assert set(await s.scalars(LEAD_TENANTS)) == {b.tenant_id}
        except DBAPIError as exc:
            failures.append(f"async: {str(exc.orig).splitlines()[0]}")
    finally:
        await fresh.dispose_async()
    assert failures == []


# --- 5. the login's password: any role may change its own ------------------------------


@pytest.fixture
def password_restored(engine: Any, app_login: URL) -> Iterator[str]:
    with engine.connect() as conn:
        verifier = conn.scalar(
            text("SELECT rolpassword FROM pg_authid WHERE rolname = :r"), {"r": app_login.username}
        )
    yield str(verifier)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"ALTER ROLE \"{app_login.username}\" PASSWORD '{verifier}'")


def test_a_request_can_still_change_the_app_logins_password(
    database: Database, engine: Any, app_login: URL, a: SeededTenant, password_restored: str
) -> None:
    """A limit of PostgreSQL, listed in docs/SECURITY.md (denial of service, and a way in
    where the server accepts passwords from the attacker's network): `ALTER ROLE <own
    login> PASSWORD ...` needs no privilege, so one injected statement replaces the app
    login's password. Nothing in the database can refuse it; the mitigation is how the
    login authenticates (pg_hba.conf). This test fails when PostgreSQL starts refusing
    it, and the docs should then say so."""
    _attack(database, a.tenant_id, [f"ALTER ROLE \"{app_login.username}\" PASSWORD 'owned'"])
    with engine.connect() as conn:
        now = conn.scalar(
            text("SELECT rolpassword FROM pg_authid WHERE rolname = :r"), {"r": app_login.username}
        )
    assert now != password_restored
