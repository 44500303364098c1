"""What an on-call engineer meets when the server misbehaves (issue 20, items 4-7).

Every wait for a connection is bounded; both engines raise SQLAlchemy's exceptions; a
password never shows, whatever the URL looks like; the CLI reads the same validated
settings as a service and answers a bad one with one line and exit status 2.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import socket
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import asyncpg
import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_dbapi
from sqlalchemy.engine import URL, make_url

from platform_db import cli
from platform_db.session.database import Database
from platform_db.session.engines import make_async_engine, make_engine
from platform_db.session.errors import (
    _driver_error,
    is_retryable,
    retry_read,
    retry_read_async,
    translate_async_errors,
)
from platform_db.session.settings import (
    ConfigurationError,
    Settings,
    parse_database_url,
    redact,
)

SECRET = "ssw0rd"
# The URL: a password `p@ssw0rd` written without percent-encoding.
UNESCAPED = f"postgresql://flt_pw:p@{SECRET}@127.0.0.1:55432/db"


class SilentServer:
    """Accepts TCP connections on 127.0.0.1 and never answers (a hung server)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port: int = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self._stop = threading.Event()
        self.sock.settimeout(0.1)
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self._stop.set()
        self.thread.join()
        for conn in self.held:
            conn.close()
        self.sock.close()


class ClosingServer(SilentServer):
    """Accepts and closes at once, as a server that is shutting down does."""

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.close()


@pytest.fixture
def silent_server() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()


@pytest.fixture
def closing_server() -> Iterator[ClosingServer]:
    server = ClosingServer()
    yield server
    server.close()


def _free_port() -> int:
    """A port nothing listens on: connections to it are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _url(port: int, password: str = "p@" + SECRET) -> str:
    """A URL whose password holds an '@', correctly percent-encoded."""
    return URL.create(
        "postgresql",
        username="flt_pw",
        password=password,
        host="127.0.0.1",
        port=port,
        database="db",
    ).render_as_string(hide_password=False)


def _env(port: int, **extra: str) -> dict[str, str]:
    return {"DATABASE_URL": _url(port), "POSTGRES_CONNECT_TIMEOUT": "1000", **extra}


def _no_secret(*texts: object) -> None:
    for t in texts:
        assert SECRET not in str(t), t
        assert "p@ss" not in str(t), t


# --- 4. every wait is bounded ----------------------------------------------------------


def test_connect_timeout_is_a_validated_setting() -> None:
    settings = Settings.from_env({"DATABASE_URL": "postgresql://h/db"})
    assert settings.main.connect_timeout_ms == 5_000
    assert settings.background.connect_timeout_ms == 5_000
    settings = Settings.from_env(
        {"DATABASE_URL": "postgresql://h/db", "POSTGRES_ANALYTICS_CONNECT_TIMEOUT": "1500"}
    )
    assert settings.analytics.connect_timeout_ms == 1500
    for bad, message in (("2s", "whole number"), ("0", "between 1 and")):
        with pytest.raises(ConfigurationError, match=message):
            Settings.from_env(
                {"DATABASE_URL": "postgresql://h/db", "POSTGRES_CONNECT_TIMEOUT": bad}
            )


def test_sync_session_gives_up_on_a_silent_server(silent_server: SilentServer) -> None:
    db = Database.from_env(_env(silent_server.port))
    start = time.monotonic()
    try:
        with pytest.raises(sa_exc.OperationalError) as info, db.session() as session:
            session.execute(text("SELECT 1"))
    finally:
        db.dispose()
    # libpq counts whole seconds, at least 2.
    assert time.monotonic() - start < 6
    assert f"127.0.0.1:{silent_server.port} timed out" in str(info.value.orig)
    assert is_retryable(info.value)
    _no_secret(info.value)


async def test_async_session_gives_up_on_a_silent_server(silent_server: SilentServer) -> None:
    db = Database.from_env(_env(silent_server.port))
    start = time.monotonic()
    try:
        with pytest.raises(sa_exc.OperationalError) as info:
            async with db.async_session() as session:
                await session.execute(text("SELECT 1"))
    finally:
        await db.dispose_async()
    assert time.monotonic() - start < 4
    message = str(info.value.orig)
    assert "timed out" in message
    assert f"127.0.0.1:{silent_server.port}" in message
    assert "POSTGRES_CONNECT_TIMEOUT" in message
    assert is_retryable(info.value)
    _no_secret(info.value)


def test_cli_current_gives_up_on_a_silent_server(
    silent_server: SilentServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in _env(silent_server.port).items():
        monkeypatch.setenv(name, value)
    start = time.monotonic()
    assert cli.main(["current"]) == cli.EXIT_UNHEALTHY
    assert time.monotonic() - start < 6
    err = capsys.readouterr().err
    assert err.startswith("platform-db: database error: connection to 127.0.0.1:")
    assert "POSTGRES_CONNECT_TIMEOUT" in err
    assert len(err.strip().splitlines()) == 1
    _no_secret(err)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("POSTGRES_POOL_MAX", "twenty"),
        ("POSTGRES_CONNECT_TIMEOUT", "soon"),
        ("POSTGRES_LOCK_TIMEOUT", "-1"),
        ("POSTGRES_REPLICA_URL", "postgresql://u:hunter2@/db"),
    ],
)
def test_cli_validates_the_services_settings(
    variable: str,
    value: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DATABASE_URL", _url(_free_port()))
    monkeypatch.setenv(variable, value)
    assert cli.main(["current"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert variable in err
    assert "hunter2" not in err
    _no_secret(err)


def test_doctor_reports_bad_settings_as_alerts(
    database_url: URL, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """doctor's own business is the service's environment: it connects anyway and names
    the bad value in its report (a critical alert, exit 1)."""
    monkeypatch.setenv("DATABASE_URL", database_url.render_as_string(hide_password=False))
    monkeypatch.setenv("POSTGRES_POOL_MAX", "twenty")
    assert cli.main(["doctor"]) == cli.EXIT_UNHEALTHY
    out = capsys.readouterr().out
    assert "POSTGRES_POOL_MAX must be a whole number" in out, out


def test_cli_reports_every_bad_setting_on_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", _url(_free_port()))
    monkeypatch.setenv("POSTGRES_POOL_MAX", "twenty")
    monkeypatch.setenv("POSTGRES_STATEMENT_TIMEOUT", "30s")
    assert cli.main(["check"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "POSTGRES_POOL_MAX" in err
    assert "POSTGRES_STATEMENT_TIMEOUT" in err


# --- 5. one family of errors -----------------------------------------------------------


async def test_async_refused_connection_is_an_operational_error() -> None:
    engine = make_async_engine(_url(_free_port()), connect_timeout_ms=2000)
    try:
        with pytest.raises(sa_exc.OperationalError) as info:
            async with engine.connect():
                pass
    finally:
        await engine.dispose()
    assert isinstance(info.value.orig, AsyncAdapt_asyncpg_dbapi.OperationalError)
    # Under the adapter's error: SQLAlchemy 2.1 keeps the driver's as .orig, 2.0 raises
    # from it; either way it is the refused connection.
    assert isinstance(_driver_error(info.value), ConnectionRefusedError)
    assert is_retryable(info.value)
    _no_secret(info.value)


def test_sync_refused_connection_is_an_operational_error() -> None:
    engine = make_engine(_url(_free_port()), connect_timeout_ms=2000)
    try:
        with pytest.raises(sa_exc.OperationalError) as info:
            engine.connect()
    finally:
        engine.dispose()
    assert is_retryable(info.value)
    _no_secret(info.value)


async def test_async_connection_closed_at_start_up_is_an_operational_error(
    closing_server: ClosingServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A server going down accepts and drops: no raw ConnectionError, no log noise."""
    caplog.set_level(logging.DEBUG)
    engine = make_async_engine(_url(closing_server.port), connect_timeout_ms=2000)
    try:
        for _ in range(3):
            with pytest.raises(sa_exc.OperationalError) as info:
                async with engine.connect():
                    pass
            assert is_retryable(info.value)
    finally:
        await engine.dispose()
    gc.collect()
    await asyncio.sleep(0.05)
    assert "never retrieved" not in caplog.text
    _no_secret(info.value, caplog.text)


async def test_timeouts_mid_connect_leave_no_orphaned_future_noise(
    database_url: URL, caplog: pytest.LogCaptureFixture
) -> None:
    """A connect timeout that lands while asyncpg opens the socket logged "Future
    exception was never retrieved ... unexpected connection_lost()" (16 in 400 here)."""
    caplog.set_level(logging.WARNING)
    failures: list[str] = []
    for attempt in range(300):
        engine = make_async_engine(database_url, connect_timeout_ms=1 + attempt % 8)
        try:
            async with engine.connect():
                pass
        except sa_exc.OperationalError as exc:
            failures.append(str(exc.orig))
        finally:
            await engine.dispose()
    gc.collect()
    await asyncio.sleep(0.2)
    gc.collect()
    assert failures
    assert all("timed out" in message for message in failures), set(failures)
    assert "never retrieved" not in caplog.text


async def test_connection_killed_while_idle_is_invalidated(database_url: URL) -> None:
    """Reused inside the ping-free window: a DBAPIError saying the connection is gone."""
    engine = make_async_engine(database_url, pool_size=1, ping_after_ms=60_000)
    admin = make_engine(database_url)
    try:
        async with engine.connect() as conn:
            pid = await conn.scalar(text("SELECT pg_backend_pid()"))
        with admin.connect() as other:
            other.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        await asyncio.sleep(0.1)
        with pytest.raises(sa_exc.DBAPIError) as info:
            async with engine.connect() as conn:
                await conn.scalar(text("SELECT 1"))
        assert info.value.connection_invalidated
        assert is_retryable(info.value)
        async with engine.connect() as conn:  # the pool replaced it
            assert await conn.scalar(text("SELECT pg_backend_pid()")) != pid
    finally:
        admin.dispose()
        await engine.dispose()


def _context(exc: BaseException, *, wrapped: bool = True) -> Any:
    dbapi: BaseException = exc
    if wrapped:
        # The asyncpg adapter's error for it: InternalClientError holding the driver's as
        # .orig (SQLAlchemy 2.1), or InternalError raised from it (2.0).
        adapter: Any = getattr(AsyncAdapt_asyncpg_dbapi, "InternalClientError", None)
        if adapter is None:
            adapter = AsyncAdapt_asyncpg_dbapi.InternalError
        dbapi = adapter(str(exc), exc)
        dbapi.__cause__ = exc
    return SimpleNamespace(
        original_exception=dbapi,
        sqlalchemy_exception=sa_exc.DBAPIError("SELECT 1", None, dbapi) if wrapped else None,
        connection=object(),
        statement="SELECT 1",
        parameters=None,
        is_disconnect=False,
    )


def test_asyncpg_state_errors_invalidate_the_connection() -> None:
    state = asyncpg.InternalClientError(
        "cannot switch to state 15; another operation (2) is in progress"
    )
    ctx = _context(state)
    assert translate_async_errors(ctx) is None
    assert ctx.is_disconnect
    other = _context(asyncpg.InternalClientError("some other client-side trouble"))
    translate_async_errors(other)
    assert not other.is_disconnect
    raw = _context(ConnectionResetError("reset by peer"), wrapped=False)
    replacement = translate_async_errors(raw)
    assert isinstance(replacement, sa_exc.OperationalError)
    assert replacement.connection_invalidated
    assert raw.is_disconnect


def _operational() -> sa_exc.OperationalError:
    return sa_exc.OperationalError("SELECT 1", None, Exception("server closed the connection"))


def test_retry_read_retries_only_what_is_retryable() -> None:
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise _operational()
        return "rows"

    assert retry_read(flaky, attempts=3, backoff_s=0.001) == "rows"
    assert len(calls) == 3

    def integrity() -> str:
        calls.append(1)
        raise sa_exc.IntegrityError("INSERT", None, Exception("duplicate key"))

    calls.clear()
    with pytest.raises(sa_exc.IntegrityError):
        retry_read(integrity, attempts=5, backoff_s=0.001)
    assert len(calls) == 1

    def always() -> str:
        calls.append(1)
        raise _operational()

    calls.clear()
    with pytest.raises(sa_exc.OperationalError):
        retry_read(always, attempts=2, backoff_s=0.001)
    assert len(calls) == 2


async def test_retry_read_async_recovers_after_a_lost_connection(database_url: URL) -> None:
    engine = make_async_engine(database_url, pool_size=1, ping_after_ms=60_000)
    admin = make_engine(database_url)
    try:
        async with engine.connect() as conn:
            pid = await conn.scalar(text("SELECT pg_backend_pid()"))
        with admin.connect() as other:
            other.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        await asyncio.sleep(0.1)

        async def read() -> int:
            async with engine.connect() as conn:
                return int(await conn.scalar(text("SELECT 42")))

        assert await retry_read_async(read, backoff_s=0.001) == 42
    finally:
        admin.dispose()
        await engine.dispose()


def test_a_connection_lost_inside_a_transaction_stays_retryable(database_url: URL) -> None:
    """The server ends the backend between two statements of a session's transaction: the
    next statement fails with OperationalError, and ending the transaction (the rollback
    of `with session.begin()`) keeps it that way, so retry_read runs the read again."""
    from platform_db.session.tenancy import TenantSession  # noqa: PLC0415

    engine = make_engine(database_url, pool_size=1, ping_after_ms=60_000)
    admin = make_engine(database_url)
    calls: list[int] = []

    def read() -> int:
        calls.append(1)
        with TenantSession(engine) as session, session.begin():
            pid = session.scalar(text("SELECT pg_backend_pid()"))
            if len(calls) == 1:
                with admin.connect() as other:
                    other.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
                time.sleep(0.1)
            return int(session.scalar(text("SELECT 42")) or 0)

    try:
        assert retry_read(read, backoff_s=0.001) == 42
        assert len(calls) == 2
    finally:
        admin.dispose()
        engine.dispose()


# --- 6. passwords never leak -----------------------------------------------------------


def test_a_host_holding_an_at_sign_is_refused_without_the_password() -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_database_url(UNESCAPED)
    assert "%40" in str(info.value)
    _no_secret(info.value)
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env({"DATABASE_URL": UNESCAPED})
    _no_secret(info.value)
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env({"DATABASE_URL": "postgresql://h/db", "POSTGRES_REPLICA_URL": UNESCAPED})
    _no_secret(info.value)


@pytest.mark.parametrize("factory", [make_engine, make_async_engine])
def test_engine_factories_refuse_such_a_url(factory: Any) -> None:
    for url in (UNESCAPED, make_url(UNESCAPED)):
        with pytest.raises(ConfigurationError) as info:
            factory(url)
        _no_secret(info.value)


def test_redact_repr_and_describe_hide_every_part_of_the_password() -> None:
    assert SECRET not in redact(UNESCAPED)
    assert "127.0.0.1:55432/db" in redact(UNESCAPED)
    assert SECRET not in redact("postgresql://u:p@ss:w0rd:x@h:port/db")
    assert SECRET not in redact(f"postgresql://h/db?password={SECRET}")
    # Settings built by hand, around the checks of from_env:
    settings = Settings.from_env({"DATABASE_URL": _url(55432)})
    bad = make_url(UNESCAPED)
    settings = dataclasses.replace(
        settings,
        database_url=bad,
        main=dataclasses.replace(settings.main, url=bad),
        analytics=dataclasses.replace(settings.analytics, url=bad),
        background=dataclasses.replace(settings.background, url=bad),
    )
    db = Database(settings)
    _no_secret(repr(db), db.describe())
    # ... and a correctly encoded password with '@':
    db = Database.from_env(_env(55432))
    _no_secret(repr(db), db.describe(), repr(db.settings))


def test_driver_errors_and_logs_show_no_password(
    silent_server: SilentServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for port in (_free_port(), silent_server.port):
        engine = make_engine(_url(port), connect_timeout_ms=1000, echo="debug", echo_pool="debug")
        try:
            with pytest.raises(sa_exc.OperationalError) as info:
                engine.connect()
        finally:
            engine.dispose()
        _no_secret(info.value, repr(engine), caplog.text)


async def test_async_driver_errors_and_logs_show_no_password(
    silent_server: SilentServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for port in (_free_port(), silent_server.port):
        engine = make_async_engine(
            _url(port), connect_timeout_ms=1000, echo="debug", echo_pool="debug"
        )
        try:
            with pytest.raises(sa_exc.OperationalError) as info:
                async with engine.connect():
                    pass
        finally:
            await engine.dispose()
        _no_secret(info.value, repr(engine), caplog.text)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        (UNESCAPED, "%40"),
        ("postgresql://flt_pw:pw@127.0.0.1:fivefour/db", "port that is not a number"),
        (f"postgresql://flt_pw:p@{SECRET}:x@127.0.0.1:5432/db", "%40"),
        ("postgresql://flt_pw:pw@127.0.0.1:99999/db", "outside 1-65535"),
    ],
)
@pytest.mark.parametrize("command", ["current", "upgrade", "doctor", "maintain", "check"])
def test_cli_bad_urls_are_one_line_and_exit_2(
    url: str,
    says: str,
    command: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DATABASE_URL", url)
    assert cli.main([command]) == cli.EXIT_USAGE
    captured = capsys.readouterr()
    assert len(captured.err.strip().splitlines()) == 1, captured.err
    assert says in captured.err
    _no_secret(captured.out, captured.err)


# --- 7. the migration lock timeout -----------------------------------------------------


@pytest.mark.parametrize("value", ["forever", "0", "0s", "00ms", "0min", "5 s"])
def test_cli_refuses_a_bad_migration_lock_timeout(
    value: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", _url(_free_port()))
    monkeypatch.setenv("PLATFORM_DB_MIGRATION_LOCK_TIMEOUT", value)
    for command in (["upgrade"], ["downgrade", "-1"], ["upgrade", "--sql"]):
        assert cli.main(command) == cli.EXIT_USAGE
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err
        assert "PLATFORM_DB_MIGRATION_LOCK_TIMEOUT" in err


def test_migration_lock_timeout_refuses_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    from platform_db.migration.operations import migration_lock_timeout  # noqa: PLC0415

    for value in ("0", "0s", "0ms", "0min"):
        monkeypatch.setenv("PLATFORM_DB_MIGRATION_LOCK_TIMEOUT", value)
        with pytest.raises(ValueError, match="more than 0"):
            migration_lock_timeout()
    for value in ("5s", "500ms", "1min", "10"):
        monkeypatch.setenv("PLATFORM_DB_MIGRATION_LOCK_TIMEOUT", value)
        assert migration_lock_timeout() == value


async def test_a_statement_timeout_is_not_retryable_on_either_driver(database_url: URL) -> None:
    sync_engine = make_engine(database_url, statement_timeout_ms=50)
    async_engine = make_async_engine(database_url, statement_timeout_ms=50)
    try:
        with pytest.raises(sa_exc.DBAPIError) as sync_info, sync_engine.connect() as conn:
            conn.execute(text("SELECT pg_sleep(1)"))
        with pytest.raises(sa_exc.DBAPIError) as async_info:
            async with async_engine.connect() as aconn:
                await aconn.execute(text("SELECT pg_sleep(1)"))
    finally:
        sync_engine.dispose()
        await async_engine.dispose()
    assert not is_retryable(sync_info.value)
    assert not is_retryable(async_info.value)


def test_alembic_upgrade_gives_up_on_a_silent_server(silent_server: SilentServer) -> None:
    """`alembic upgrade head` run directly connects through the environment's own engine:
    bounded by POSTGRES_CONNECT_TIMEOUT too, and nothing of the password shown."""
    import os  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, **_env(silent_server.port), "PYTHONPATH": str(repo)}
    start = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(repo / "alembic.ini"), "upgrade", "head"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode != 0
    assert time.monotonic() - start < 20
    _no_secret(run.stdout, run.stderr)


def test_cli_tools_with_their_own_connections_give_up_on_a_silent_server(
    silent_server: SilentServer, tmp_path: Any
) -> None:
    """import-mongo opens psycopg connections of its own: bounded too (PGCONNECT_TIMEOUT
    from POSTGRES_CONNECT_TIMEOUT), one line, no password."""
    import os  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    dump = tmp_path / "dump"
    subprocess.run(
        [sys.executable, "-m", "platform_db.importer.sampledump", str(dump)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    env = {**os.environ, **_env(silent_server.port)}
    env.pop("PGCONNECT_TIMEOUT", None)
    start = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "platform_db.cli", "import-mongo", str(dump)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert run.returncode != 0
    assert time.monotonic() - start < 30
    _no_secret(run.stdout, run.stderr)


def test_cli_refuses_a_bad_migration_lock_wait(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", _url(_free_port()))
    monkeypatch.setenv("PLATFORM_DB_MIGRATION_LOCK_WAIT", "forever")
    for command in (["upgrade"], ["downgrade", "-1"]):
        assert cli.main(command) == cli.EXIT_USAGE
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err
        assert "PLATFORM_DB_MIGRATION_LOCK_WAIT" in err
