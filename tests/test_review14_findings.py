"""Review of issue 14 (pooled-connection attacks): findings, each a failing test.

The attacker is a request of tenant A on a login that is only a member of platform_app:
it runs whatever SQL it was tricked into and commits, and the connection goes back to
the pool. The victim is a later request (tenant B, or no tenant) on the same server
session (same `pg_backend_pid()`), through the package's `Database` pools with one
connection per pool. Each test names the claim of docs/SECURITY.md (or of the issue) it
breaks. These tests FAIL on main as of review 14: they document what is still open.
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
from platform_db.session.tenancy import tenant_context
from tests.isolation_helpers import SeededTenant, sqlstate
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


def test_identity_map_serves_the_previous_tenants_rows_after_set_tenant(
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


def test_identity_map_serves_the_previous_tenants_rows_across_tenant_context(
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


def test_a_connection_taken_before_the_tenant_changed_still_runs_as_the_old_tenant(
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
        with tenant_context(b.tenant_id):
            seen = set(conn.execute(LEAD_TENANTS).scalars())  # expected: TenantChangeError
        session.rollback()
    assert seen != {a.tenant_id}, "a statement under tenant_context(B) returned A's rows"


async def test_an_async_connection_taken_before_the_tenant_changed_still_runs_as_the_old_tenant(
    database: Database, a: SeededTenant, b: SeededTenant
) -> None:
    async with database.async_session() as session:
        with tenant_context(a.tenant_id):
            conn = await session.connection()
            (await conn.execute(LEAD_TENANTS)).all()
        with tenant_context(b.tenant_id):
            seen = set((await conn.execute(LEAD_TENANTS)).scalars())
        await session.rollback()
    assert seen != {a.tenant_id}, "a statement under tenant_context(B) returned A's rows"


# --- 2. level (b): what RESET ALL does not reset -----------------------------------------


def test_set_role_survives_reset_all(database: Database, a: SeededTenant, b: SeededTenant) -> None:
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


async def test_set_role_survives_reset_all_async(
    database: Database, a: SeededTenant, b: SeededTenant
) -> None:
    async with database.async_session(tenant_id=b.tenant_id) as fresh:
        login = await fresh.scalar(text("SELECT current_user"))
    pid = await _attack_async(database, a.tenant_id, ["SET SESSION ROLE platform_app"])
    async with database.async_session(tenant_id=b.tenant_id) as session:
        assert await session.scalar(PID) == pid
        assert await session.scalar(text("SELECT current_user")) == login


def test_random_seed_survives_the_request(
    database: Database, a: SeededTenant, b: SeededTenant
) -> None:
    """Breaks (b) "nothing a request leaves on a pooled connection reaches another
    request": setseed() is open to PUBLIC and the seed is session state that neither
    RESET ALL nor PgBouncer's DISCARD ALL resets. A predicts every random() of B's next
    requests (sampling, codes, tokens a service makes with random())."""
    predicted = _attack(database, a.tenant_id, ["SELECT setseed(0.25)"])
    with database.session() as scratch:
        scratch.execute(text("SELECT setseed(0.25)"))  # what A computes on its own
        expected = [scratch.scalar(text("SELECT random()")) for _ in range(3)]
        scratch.rollback()
    _attack(database, a.tenant_id, ["SELECT setseed(0.25)"])
    with database.session(tenant_id=b.tenant_id) as victim:
        assert victim.scalar(PID) == predicted
        got = [victim.scalar(text("SELECT random()")) for _ in range(3)]
    assert got != expected, "B's random() was the sequence A chose"


def test_random_seed_survives_pgbouncers_discard_all(
    request: pytest.FixtureRequest, a: SeededTenant, b: SeededTenant
) -> None:
    """The same through PgBouncer in transaction mode, with the reset docs/OPERATIONS.md
    prescribes (server_reset_query = DISCARD ALL, always): DISCARD ALL does not reset the
    seed either. pgbouncer=True engines, one server connection shared by both."""
    through = request.getfixturevalue("bouncer")  # tests/test_pgbouncer.py's PgBouncer
    db = Database.from_env(_env(through.single_url), pgbouncer=True)
    try:
        with db.session() as scratch:
            scratch.execute(text("SELECT setseed(0.25)"))
            expected = [scratch.scalar(text("SELECT random()")) for _ in range(3)]
            scratch.rollback()
        pid = _attack(db, a.tenant_id, ["SELECT setseed(0.25)"])
        with db.session(tenant_id=b.tenant_id) as victim:
            assert victim.scalar(PID) == pid
            got = [victim.scalar(text("SELECT random()")) for _ in range(3)]
    finally:
        db.dispose()
    assert got != expected, "B's random() was the sequence A chose, through PgBouncer"


def test_with_hold_cursors_survive_on_the_packages_pools(
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


def test_leftover_session_characteristics_make_the_victims_transaction_deferrable(
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


def test_do_blocks_run_for_the_app_login(
    database: Database, a: SeededTenant, b: SeededTenant
) -> None:
    """Breaks SECURITY.md (c): "no function or DO block can be created by the login (no
    TEMPORARY, no CREATE)". DO needs only USAGE on plpgsql, which PUBLIC holds: one
    statement loops over every tenant with EXECUTE 'SET LOCAL ...' (set_config() revoked
    does not matter) and, for example, counts every tenant's leads."""
    with database.session(tenant_id=a.tenant_id) as session:
        session.execute(
            text(
                "DO $$DECLARE t uuid; n bigint; total bigint := 0; BEGIN "
                "FOR t IN SELECT id FROM tenants LOOP "
                "EXECUTE format('SET LOCAL app.current_tenant_id = %L', t); "
                "SELECT count(*) INTO n FROM leads; total := total + n; END LOOP; "
                "RAISE NOTICE 'leads of every tenant: %', total; END$$"
            )
        )
        now = session.scalar(text("SELECT platform.current_tenant_id()"))
        session.rollback()
    assert now == a.tenant_id, f"one DO statement switched the tenant to {now}"


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
async def test_role_defaults_the_login_sets_itself_break_every_new_connection(
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


def test_a_request_can_change_the_app_logins_password(
    database: Database, engine: Any, app_login: URL, a: SeededTenant, password_restored: str
) -> None:
    """Not covered by SECURITY.md's DoS table or level (b): `ALTER ROLE <own login>
    PASSWORD ...` needs no privilege. One injected statement locks every new connection
    of every service on that login out (the configured password no longer matches:
    password auth, PgBouncer's auth_file), until an admin resets it - and gives the
    attacker a working password for the login, i.e. direct, interactive access as
    platform_app (level (c) without any injection) wherever the server is reachable."""
    outcome = "ok"
    try:
        _attack(database, a.tenant_id, [f"ALTER ROLE \"{app_login.username}\" PASSWORD 'owned'"])
    except DBAPIError as exc:
        outcome = sqlstate(exc) or "error"
    with engine.connect() as conn:
        now = conn.scalar(
            text("SELECT rolpassword FROM pg_authid WHERE rolname = :r"), {"r": app_login.username}
        )
    assert outcome != "ok", "the request's ALTER ROLE ... PASSWORD was not refused"
    assert now == password_restored, "a request replaced the app login's password"
