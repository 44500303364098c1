"""The sealed tenant (issue 15): SQL run as the app login inside tenant A's transaction
cannot make the policies see tenant B (platform_db.ddl.seal, platform_db.session.seal).

Every attack runs through the package's engine as a login that is only a member of
platform_app, inside a real TenantSession transaction of tenant A, and counts B's rows
it sees and the writes for B it gets through: zero each time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, ProgrammingError
from sqlalchemy.pool import NullPool

from platform_db.session import seal
from platform_db.session.database import Database
from platform_db.session.engines import make_async_engine, make_engine
from platform_db.session.seal import TenantKey, TenantKeyError
from platform_db.session.tenancy import TenantSession, tenant_async_sessionmaker
from platform_db.testing.scratch import temporary_app_login
from tests.isolation_helpers import SeededTenant, tenant_connection, visible_tenant_ids

TABLES = ("users", "pages", "leads", "forms", "form_submissions", "audit_log")


def _rows_of(conn: Connection, tenant: uuid.UUID) -> int:
    return sum(
        int(conn.scalar(text(f"SELECT count(*) FROM {t} WHERE tenant_id = :t"), {"t": tenant}) or 0)
        for t in TABLES
    )


def _all_rows(conn: Connection) -> int:
    return sum(int(conn.scalar(text(f"SELECT count(*) FROM {t}")) or 0) for t in TABLES)


def _write_for(conn: Connection, tenant: uuid.UUID) -> bool:
    """Whether an insert for `tenant` gets through (in a savepoint, rolled back)."""
    conn.execute(text("SAVEPOINT w"))
    try:
        conn.execute(
            text(
                "INSERT INTO forms (tenant_id, id, name, slug, fields) "
                "VALUES (:t, gen_random_uuid(), 'x', :slug, '[]')"
            ),
            {"t": tenant, "slug": f"sealed-{uuid.uuid4().hex[:8]}"},
        )
    except Exception:
        conn.execute(text("ROLLBACK TO SAVEPOINT w"))
        return False
    conn.execute(text("ROLLBACK TO SAVEPOINT w"))
    return True


def _one_form(admin: Engine, tenant: uuid.UUID) -> None:
    with admin.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO forms (tenant_id, id, name, slug, fields) "
                "VALUES (:t, gen_random_uuid(), 'f', 'f', '[]')"
            ),
            {"t": tenant},
        )


def _key() -> TenantKey:
    key = seal.key_from_env()
    assert key is not None, "tests/conftest.py sets the run's tenant key"
    return key


def test_the_run_database_enforces_seals(engine: Engine) -> None:
    with engine.connect() as conn:
        state = seal.read_state(conn)
    assert state is not None
    assert state.enforced
    assert [k for k, _, _ in state.keys] == [_key().key_id]


def test_honest_sessions_see_their_own_rows(
    app_engine: Engine, a: SeededTenant, b: SeededTenant
) -> None:
    with tenant_connection(app_engine, a.tenant_id) as conn:
        assert set(visible_tenant_ids(conn, "leads")) == {a.tenant_id}
        assert _rows_of(conn, a.tenant_id) > 0
        assert _write_for(conn, a.tenant_id)
    with tenant_connection(app_engine, b.tenant_id) as conn:
        assert set(visible_tenant_ids(conn, "leads")) == {b.tenant_id}


async def test_honest_async_sessions_see_their_own_rows(
    app_async_engine: object, a: SeededTenant
) -> None:
    factory = tenant_async_sessionmaker(app_async_engine)  # type: ignore[arg-type]
    async with factory(tenant_id=a.tenant_id) as session:
        got = (await session.execute(text("SELECT DISTINCT tenant_id FROM leads"))).scalars()
        assert set(got) == {a.tenant_id}


def test_set_local_of_another_tenant_sees_nothing(
    app_engine: Engine, a: SeededTenant, b: SeededTenant
) -> None:
    with tenant_connection(app_engine, a.tenant_id) as conn:
        conn.execute(text(f"SET LOCAL app.current_tenant_id = '{b.tenant_id}'"))
        assert _rows_of(conn, b.tenant_id) == 0
        assert _all_rows(conn) == 0
        assert not _write_for(conn, b.tenant_id)
        assert conn.scalar(text("SELECT platform.current_tenant_id()")) is None


def test_own_seal_under_another_tenant_id_sees_nothing(
    app_engine: Engine, a: SeededTenant, b: SeededTenant
) -> None:
    with tenant_connection(app_engine, a.tenant_id) as conn:
        own = conn.scalar(text("SELECT current_setting('app.tenant_seal')"))
        assert own
        assert own.startswith(_key().key_id + ".")
        conn.execute(
            text("SELECT platform.set_tenant(:t, '', :s)"), {"t": str(b.tenant_id), "s": own}
        )
        assert _rows_of(conn, b.tenant_id) == 0
        assert not _write_for(conn, b.tenant_id)


def test_lateral_over_every_tenant_sees_nothing(
    app_engine: Engine, a: SeededTenant, b: SeededTenant
) -> None:
    # The statement, with the one tenant-setting function the app may call.
    sql = """
        SELECT t.id, x.n FROM tenants t,
          LATERAL (SELECT platform.set_tenant(t.id::text, '',
                          current_setting('app.tenant_seal')) AS s) s,
          LATERAL (SELECT count(*) AS n FROM users u WHERE s.s IS NOT NULL) x
    """
    with tenant_connection(app_engine, a.tenant_id) as conn:
        counts = {row.id: row.n for row in conn.execute(text(sql))}
        assert counts.get(b.tenant_id, 0) == 0
        # set_config itself stays revoked.
        conn.execute(text("SAVEPOINT s"))
        with pytest.raises(Exception, match="permission denied for function set_config"):
            conn.execute(
                text("SELECT set_config('app.current_tenant_id', :b, true)"),
                {"b": str(b.tenant_id)},
            )
        conn.execute(text("ROLLBACK TO SAVEPOINT s"))


def test_a_seal_taken_from_another_connection_sees_nothing(
    app_engine: Engine, app_login: URL, a: SeededTenant, b: SeededTenant
) -> None:
    other = make_engine(app_login, pool_size=1)
    try:
        with tenant_connection(other, b.tenant_id) as conn_b:
            b_seal = conn_b.scalar(text("SELECT current_setting('app.tenant_seal')"))
            b_pid = conn_b.scalar(text("SELECT pg_backend_pid()"))
            assert _rows_of(conn_b, b.tenant_id) > 0  # it works where it was made
        with tenant_connection(app_engine, a.tenant_id) as conn:
            assert conn.scalar(text("SELECT pg_backend_pid()")) != b_pid
            conn.execute(
                text("SELECT platform.set_tenant(:t, '', :s)"), {"t": str(b.tenant_id), "s": b_seal}
            )
            assert _rows_of(conn, b.tenant_id) == 0
            assert not _write_for(conn, b.tenant_id)
    finally:
        other.dispose()


def test_an_old_seal_sees_nothing(app_engine: Engine, b: SeededTenant, a: SeededTenant) -> None:
    key = _key()
    with tenant_connection(app_engine, a.tenant_id) as conn:
        pid = int(conn.scalar(text("SELECT pg_backend_pid()")))
        # The step of the transaction's start (now()), and the ones next to it, verify.
        started = float(conn.scalar(text("SELECT extract(epoch FROM now())")))
        step = int(started // seal.SEAL_STEP_SECONDS)
        for offset, works in (
            (0, True),
            (-1, True),
            (1, True),
            (-2, False),
            (2, False),
            (-60, False),
        ):
            at = (step + offset) * seal.SEAL_STEP_SECONDS + 1
            sealed = key.seal(str(b.tenant_id), "", pid, now=at)
            conn.execute(
                text("SELECT platform.set_tenant(:t, '', :s)"), {"t": str(b.tenant_id), "s": sealed}
            )
            assert (_rows_of(conn, b.tenant_id) > 0) is works, offset


def test_forged_and_malformed_seals_see_nothing(
    app_engine: Engine, a: SeededTenant, b: SeededTenant
) -> None:
    key, forger = _key(), TenantKey(_key().key_id, b"\x01" * 32)
    with tenant_connection(app_engine, a.tenant_id) as conn:
        pid = int(conn.scalar(text("SELECT pg_backend_pid()")))
        good = key.seal(str(b.tenant_id), "", pid)
        kid, p, step, mac = good.split(".")
        for bad in (
            forger.seal(str(b.tenant_id), "", pid),  # the id, not the key
            f"{kid}.{p}.{step}.{mac[:-1]}{'0' if mac[-1] != '0' else '1'}",
            f"{kid}.0.{step}.{mac}",  # unbound: the database takes none
            f"{kid}.{p}.{step}",
            f"nokey.{p}.{step}.{mac}",
            "",
            "....",
            "x" * 10000,
            f"{kid}.{p}.{step}.{mac}.extra",
            f"{kid}.{p}.{step}.'; DROP TABLE users; --",
        ):
            conn.execute(
                text("SELECT platform.set_tenant(:t, '', :s)"), {"t": str(b.tenant_id), "s": bad}
            )
            assert _rows_of(conn, b.tenant_id) == 0, bad
        conn.execute(
            text("SELECT platform.set_tenant(:t, '', :s)"), {"t": str(b.tenant_id), "s": good}
        )
        assert _rows_of(conn, b.tenant_id) > 0  # positive control: the same path with a real seal


def test_the_policy_is_an_index_condition_and_runs_once_per_statement(
    app_engine: Engine, a: SeededTenant
) -> None:
    with tenant_connection(app_engine, a.tenant_id) as conn:
        plan = "\n".join(
            conn.scalars(
                text("EXPLAIN (COSTS OFF) SELECT id FROM users WHERE email = 'nobody@example.com'")
            )
        )
        assert re.search(r"Index Cond: \(+tenant_id = platform\.current_tenant_id\(\)\)", plan), (
            plan
        )
        # With the tenant in the SQL (as the package's statements have it) the policy is a
        # one-time filter: one verification per statement.
        plan = "\n".join(
            conn.scalars(
                text(
                    "EXPLAIN (COSTS OFF) SELECT count(*) FROM leads l JOIN forms f "
                    "ON f.tenant_id = l.tenant_id AND f.id = l.form_id WHERE l.tenant_id = :t"
                ),
                {"t": a.tenant_id},
            )
        )
        assert plan.count("One-Time Filter: (platform.current_tenant_id() = ") == 1, plan


def test_the_recorded_actor_is_the_sealed_user(
    app_engine: Engine, a: SeededTenant, engine: Engine
) -> None:
    user = a.ids["users"][0]
    slug = f"actor-{uuid.uuid4().hex[:8]}"
    with TenantSession(app_engine, tenant_id=a.tenant_id, user_id=user) as session:
        session.execute(
            text(
                "INSERT INTO forms (tenant_id, id, name, slug, fields) VALUES (:t, gen_random_uuid(), 'x', :s, '[]')"
            ),
            {"t": a.tenant_id, "s": slug},
        )
        # A forged user in the same transaction is not the actor of what follows.
        session.execute(text(f"SET LOCAL app.current_user_id = '{a.ids['users'][1]}'"))
        assert session.scalar(text("SELECT platform.current_user_id()")) is None
        session.rollback()
    del engine


# --- keys: the start-up check and rotation ------------------------------------------------


@pytest.fixture
def scratch(server_url: URL, database_url: URL, engine: Engine) -> Iterator[tuple[Engine, URL]]:
    """A database of its own (keys change here), with an app login."""
    from platform_db.testing.scratch import temporary_database  # noqa: PLC0415

    del database_url
    with temporary_database(server_url, migrate=True, prefix="pdb_seal") as url:
        admin = create_engine(url, poolclass=NullPool)
        with temporary_app_login(admin, url, prefix="pdb_seal_app") as app:
            yield admin, app
        admin.dispose()
    del engine


def _env(url: URL, key: TenantKey | None) -> dict[str, str]:
    env = {"DATABASE_URL": url.render_as_string(hide_password=False)}
    if key is not None:
        env[seal.ENV_VAR] = key.encode()
    return env


def test_start_up_refuses_a_missing_unknown_or_wrong_key(
    scratch: tuple[Engine, URL], monkeypatch: pytest.MonkeyPatch
) -> None:
    _admin, app = scratch
    run_key = _key()
    monkeypatch.delenv(seal.ENV_VAR)  # from_env falls back to the process's key
    with pytest.raises(
        TenantKeyError, match="enforces sealed tenants and PLATFORM_DB_TENANT_KEY is not set"
    ):
        Database.from_env(_env(app, None))
    with pytest.raises(TenantKeyError, match="does not know tenant key 'other'"):
        Database.from_env(_env(app, TenantKey.generate("other")))
    with pytest.raises(TenantKeyError, match="another secret"):
        Database.from_env(_env(app, TenantKey(run_key.key_id, b"\x02" * 32)))
    with Database.from_env(_env(app, run_key)) as db:
        assert "verifies, enforced" in db.check_tenant_key()


def test_rotation_without_a_failed_request(scratch: tuple[Engine, URL], a: SeededTenant) -> None:
    from platform_db.maintenance.tenant_keys import run  # noqa: PLC0415
    from platform_db.testing.plugin import two_tenants  # noqa: PLC0415

    admin, app = scratch
    old = _key()
    with two_tenants(admin, []) as tenants:
        _one_form(admin, tenants.a)
        old_engine = make_engine(app, tenant_key=old)
        lines = run(admin, "rotate", key_id="k2", grace="1h")
        new = TenantKey.parse(next(x for x in lines if x.startswith(seal.ENV_VAR)).split("=", 1)[1])
        new_engine = make_engine(app, tenant_key=new)
        try:
            for eng in (old_engine, new_engine):  # during the grace period: both verify
                with TenantSession(eng, tenant_id=tenants.a) as s:
                    assert s.scalar(text("SELECT count(*) FROM forms")) == 1
            run(admin, "retire", key_id=old.key_id)
            with TenantSession(old_engine, tenant_id=tenants.a) as s:
                assert s.scalar(text("SELECT count(*) FROM forms")) == 0
            with TenantSession(new_engine, tenant_id=tenants.a) as s:
                assert s.scalar(text("SELECT count(*) FROM forms")) == 1
        finally:
            old_engine.dispose()
            new_engine.dispose()
    del a


def test_an_existing_database_moves_to_sealing_without_downtime(
    scratch: tuple[Engine, URL],
) -> None:
    """Not enforced, unsealed and sealed sessions both work; enforced, only sealed ones."""
    from platform_db.maintenance.tenant_keys import run  # noqa: PLC0415
    from platform_db.testing.plugin import two_tenants  # noqa: PLC0415

    admin, app = scratch
    run(admin, "enforce", off=True)
    unsealed = make_engine(app, tenant_key=None)
    sealed = make_engine(app, tenant_key=_key())
    try:
        with two_tenants(admin, []) as tenants:
            _one_form(admin, tenants.a)
            for eng in (unsealed, sealed):
                with TenantSession(eng, tenant_id=tenants.a) as s:
                    assert s.scalar(text("SELECT count(*) FROM forms")) == 1
            run(admin, "enforce")
            with TenantSession(unsealed, tenant_id=tenants.a) as s:
                assert s.scalar(text("SELECT count(*) FROM forms")) == 0
            with TenantSession(sealed, tenant_id=tenants.a) as s:
                assert s.scalar(text("SELECT count(*) FROM forms")) == 1
    finally:
        unsealed.dispose()
        sealed.dispose()


def test_seal_text_never_reaches_pg_stat_statements(scratch: tuple[Engine, URL]) -> None:
    """What pg_stat_statements keeps of the hook's statement has no seal in it (a SET LOCAL
    would keep its literal: one entry, readable by the same login, per seal)."""
    from platform_db.testing.plugin import two_tenants  # noqa: PLC0415

    admin, app = scratch
    with admin.connect() as conn:
        preloaded = "pg_stat_statements" in str(
            conn.scalar(text("SELECT current_setting('shared_preload_libraries')"))
        )
    if not preloaded:
        if os.environ.get("PLATFORM_DB_REQUIRE_PG_STAT_STATEMENTS") == "1":
            pytest.fail("pg_stat_statements is not in shared_preload_libraries")
        pytest.skip("pg_stat_statements is not preloaded on this server")
    with admin.begin() as conn:
        conn.execute(text("CREATE EXTENSION IF NOT EXISTS pg_stat_statements"))
    eng = make_engine(app, tenant_key=_key())
    try:
        with two_tenants(admin, []) as tenants:
            macs = []
            for _ in range(3):
                with TenantSession(eng, tenant_id=tenants.a) as s:
                    s.scalar(text("SELECT count(*) FROM forms"))
                    macs.append(
                        s.scalar(text("SELECT current_setting('app.tenant_seal')")).split(".")[3]
                    )
    finally:
        eng.dispose()
    with admin.connect() as conn:
        texts = conn.scalars(
            text(
                "SELECT query FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid "
                "WHERE d.datname = current_database()"
            )
        ).all()
    assert not [q for q in texts for mac in macs if mac in q]
    assert any("platform.set_tenant($1, $2, $3)" in q for q in texts), texts


# The attacker's harvesters: each reads the query text of every other backend (the same
# login's: every tenant's) afresh for each row of a series (the statistics snapshot is
# cleared per row), keeping any text that shows 64 hex digits (an HMAC-SHA256, as in a
# seal). One SELECT each: the app login may not use plpgsql (no DO block) nor create
# functions, and an injection is one statement.
_SOURCES = {
    "pg_stat_activity": "SELECT s.query FROM pg_stat_activity AS s WHERE s.pid <> pg_backend_pid()",
    "pg_stat_get_activity": "SELECT s.query FROM pg_stat_get_activity(NULL) AS s "
    "WHERE s.pid <> pg_backend_pid()",
    "pg_stat_get_backend_activity": "SELECT pg_stat_get_backend_activity(i) AS query "
    "FROM pg_stat_get_backend_idset() AS i WHERE pg_stat_get_backend_pid(i) <> pg_backend_pid()",
}
_HARVESTER = """
SELECT DISTINCT x.query
FROM generate_series(1, :n) AS g
CROSS JOIN LATERAL (SELECT pg_stat_clear_snapshot(), g.g AS tick OFFSET 0) AS c
CROSS JOIN LATERAL (SELECT q.query FROM ({source}) AS q
                    WHERE q.query ~ '[0-9a-f]{{64}}' AND c.tick = g.g OFFSET 0) AS x"""


def _harvest_while(
    conn_of: Callable[[], contextlib.AbstractContextManager[Connection]], busy: Callable[[], None]
) -> dict[str, set[str]]:
    """What each harvester, on a connection of `conn_of`, reads while `busy` runs in
    another thread (a source it may not read: nothing)."""
    found: dict[str, set[str]] = {name: set() for name in _SOURCES}
    stop = threading.Event()

    def attacker() -> None:
        with conn_of() as conn:
            while not stop.is_set():
                for name, source in _SOURCES.items():
                    conn.execute(text("SAVEPOINT h"))
                    try:
                        got = conn.scalars(text(_HARVESTER.format(source=source)), {"n": 2000})
                        found[name].update(got)
                    except ProgrammingError:  # permission denied
                        pass
                    conn.execute(text("ROLLBACK TO SAVEPOINT h"))

    thread = threading.Thread(target=attacker)
    thread.start()
    try:
        time.sleep(0.2)
        busy()
    finally:
        stop.set()
        thread.join()
    return found


def _b_requests(app_login: URL, b: SeededTenant, seconds: float) -> Callable[[], None]:
    """Tenant B's sealed transactions, sync and async, over and over for `seconds`."""

    def busy() -> None:
        sync_victim = make_engine(app_login, pool_size=1)
        async_victim = make_async_engine(app_login, pool_size=1)
        stop = time.monotonic() + seconds

        async def async_requests() -> None:
            factory = tenant_async_sessionmaker(async_victim)
            while time.monotonic() < stop:
                async with factory(tenant_id=b.tenant_id) as session:
                    await session.scalar(text("SELECT count(*) FROM users"))
            await async_victim.dispose()

        thread = threading.Thread(target=asyncio.run, args=(async_requests(),))
        thread.start()
        try:
            while time.monotonic() < stop:
                with tenant_connection(sync_victim, b.tenant_id) as conn:
                    conn.scalar(text("SELECT count(*) FROM users"))
        finally:
            thread.join()
            sync_victim.dispose()

    return busy


def test_no_seal_can_be_harvested_from_other_sessions_activity(
    engine: Engine, app_engine: Engine, app_login: URL, a: SeededTenant, b: SeededTenant
) -> None:
    """Tenant B's seals travel as literals in its statements' text (with asyncpg, in the
    BEGIN message); a seal read there would be replayable on B's backend when a later
    request of the attacker landed on it. The app login cannot read another backend's
    query text: every harvester, run in A's sealed transaction while B's requests run,
    reads nothing. The superuser's harvesters, run the same way, read B's seals: the
    control that shows they would."""
    as_superuser = _harvest_while(engine.begin, _b_requests(app_login, b, 1.5))
    for name, texts in as_superuser.items():
        assert any(str(b.tenant_id) in q and "set_tenant" in q for q in texts), name
    as_app = _harvest_while(
        lambda: tenant_connection(app_engine, a.tenant_id), _b_requests(app_login, b, 1.5)
    )
    assert as_app == {name: set() for name in _SOURCES}


@pytest.mark.parametrize(
    "view", ["tenant_dashboard", "tenant_lead_funnel", "tenant_submission_activity"]
)
def test_a_leaky_condition_on_a_dashboard_view_sees_only_the_own_tenant(
    engine: Engine, app_engine: Engine, a: SeededTenant, b: SeededTenant, view: str
) -> None:
    """A condition that raises with the row in its message (`row::text::int`) runs only on
    the current tenant's rows of a tenant view, never on the materialized view's rows of
    other tenants (found by a review: security_barrier did not hold over UNION ALL)."""
    with engine.begin() as conn:
        for (matview,) in conn.execute(
            text("SELECT matviewname FROM pg_matviews WHERE schemaname = 'platform'")
        ):
            conn.execute(text(f"REFRESH MATERIALIZED VIEW platform.{matview}"))
        assert conn.scalar(
            text(f"SELECT count(*) FROM platform.{_MATVIEWS[view]} WHERE tenant_id = :b"),
            {"b": b.tenant_id},
        )
    messages = []
    for condition in (
        "(v.*)::text::int = 1",
        "v.tenant_id <> :a AND (v.*)::text::int = 1",
        "v.tenant_id > '00000000-0000-0000-0000-000000000000' AND 1 / (length(v::text) - 1) = 0",
    ):
        with tenant_connection(app_engine, a.tenant_id) as conn:
            try:
                conn.execute(
                    text(f"SELECT * FROM {view} AS v WHERE {condition}"), {"a": a.tenant_id}
                )
            except DBAPIError as exc:  # the message is what leaks
                messages.append(str(exc.orig))
    assert not [m for m in messages if str(b.tenant_id) in m]


_MATVIEWS = {
    "tenant_dashboard": "tenant_performance_summary",
    "tenant_lead_funnel": "lead_funnel_monthly",
    "tenant_submission_activity": "form_submissions_daily",
}
