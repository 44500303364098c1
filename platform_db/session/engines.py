"""Engine factories for psycopg 3 (sync) and asyncpg (async). Nothing connects at import.

Per-connection settings are limited to what PostgreSQL accepts at connection start
(application_name, statement_timeout, lock_timeout, idle_in_transaction_session_timeout,
work_mem, default_transaction_read_only); server-wide tuning such as shared_buffers is
the server's business (`platform-db doctor` checks it).

Nothing a request leaves on a connection reaches the next one: every transaction starts
with a prologue that resets the session (platform_db.session.fresh), psycopg never
prepares statements and asyncpg's get names nobody can guess
(platform_db.session.statements), and every BEGIN names its isolation level.

Every connection attempt is bounded by `connect_timeout_ms` (POSTGRES_CONNECT_TIMEOUT):
a server that accepts the TCP connection and never answers fails the checkout with an
OperationalError after that long instead of hanging for minutes. Both engines raise
SQLAlchemy's exceptions for everything the driver reports (`platform_db.session.errors`).

Pools keep up to `pool_size` connections open (no overflow churn), check a connection
before use when it has sat idle in the pool for more than `ping_after_ms` (see
`ping_when_idle`), replace connections older than `pool_recycle` seconds, time every
checkout, and raise `PoolExhaustedError` naming the pool when none comes free in time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Dialect
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, Pool, PoolProxiedConnection

from platform_db.session import fresh, seal
from platform_db.session.asyncpg_connection import TenantConnection, as_tenant_connection
from platform_db.session.errors import (
    connect_asyncpg,
    explain_connect_timeout,
    quiet_orphaned_connect_errors,
    translate_async_errors,
)
from platform_db.session.fresh import prologue_sql
from platform_db.session.pools import TimedAsyncQueuePool, TimedQueuePool
from platform_db.session.rls_bypass import note_on_connect
from platform_db.session.seal import TenantKey
from platform_db.session.settings import (
    ASYNC_DRIVER,
    SYNC_DRIVER,
    ConfigurationError,
    PoolSettings,
    check_url_host,
    with_driver,
)
from platform_db.session.statements import note_statement_names, secret_statement_name

# Settings a login may give itself as role defaults (ALTER ROLE <self> SET ...) that
# would break every new connection, so the engines send their own at connection start
# (which wins over role defaults) - and, behind PgBouncer, with every transaction:
RELIED_ON_SETTINGS = {
    "search_path": '"$user", public',  # the models name tables without a schema
    "row_security": "on",  # off makes every query on a tenant table fail
}
# ... and how values are written in text, which the drivers parse (PgBouncer sets
# client_encoding, DateStyle, TimeZone and standard_conforming_strings itself).
PARSED_SETTINGS = {
    "DateStyle": "ISO,MDY",
    "IntervalStyle": "postgres",
    "bytea_output": "hex",
    "extra_float_digits": "1",
    "standard_conforming_strings": "on",
    "gin_fuzzy_search_limit": "0",  # else GIN scans return a random subset
    "transform_null_equals": "off",
    "client_min_messages": "notice",
}

DEFAULT_STATEMENT_TIMEOUT_MS = 30_000
DEFAULT_LOCK_TIMEOUT_MS = 10_000
DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT_MS = 60_000
DEFAULT_PING_AFTER_MS = 500
DEFAULT_CONNECT_TIMEOUT_MS = 5_000

_IDLE_SINCE = "platform_db.idle_since"


def ping_when_idle(pool: Pool, dialect: Dialect, *, after_ms: int) -> None:
    """Ping a connection at checkout only if it sat idle in the pool for over `after_ms`.

    SQLAlchemy's `pool_pre_ping` pings on every checkout; with asyncpg that is three
    round trips (BEGIN, an empty query, ROLLBACK) before each transaction, which the
    benchmark measured as the largest avoidable cost of a request (docs/PERFORMANCE.md).
    A connection returned moments ago was alive moments ago: like HikariCP's 500 ms
    bypass window, only connections idle for longer are checked, and a dead one is
    replaced (DisconnectionError makes the pool retry with a fresh connection).
    """
    after_s = after_ms / 1000.0

    @event.listens_for(pool, "checkin")
    def _idle_from(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        if dbapi_connection is not None:
            record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(pool, "checkout")
    def _ping_if_idle(
        dbapi_connection: Any, record: ConnectionPoolEntry, proxy: PoolProxiedConnection
    ) -> None:
        since = record.info.pop(_IDLE_SINCE, None)
        if since is None or time.monotonic() - since < after_s:
            return  # brand new, or in use moments ago
        try:
            alive = dialect.do_ping(dbapi_connection)
        except Exception as exc:  # any failure to ping: replace the connection
            raise sa_exc.DisconnectionError(f"connection failed its ping: {exc}") from exc
        if not alive:
            raise sa_exc.DisconnectionError("connection failed its ping")


@dataclass(frozen=True, slots=True, kw_only=True)
class _EngineOptions:
    """The arguments make_engine and make_async_engine share, validated once.

    Both engines are built from it: the per-connection settings, each driver's connect
    arguments (with or without PgBouncer), the timed pool, the idle ping and the pool's
    label. The two factories keep their explicit keyword-only signatures (the public
    API, which IDEs and mypy show) and only hand their arguments over.
    """

    application_name: str
    pool_size: int
    max_overflow: int
    pool_timeout: float
    pool_recycle: int
    statement_timeout_ms: int
    lock_timeout_ms: int
    idle_in_transaction_timeout_ms: int
    work_mem: str | None
    read_only: bool
    pgbouncer: bool
    pool_label: str | None
    ping_after_ms: int
    connect_timeout_ms: int

    def __post_init__(self) -> None:
        if self.connect_timeout_ms <= 0:
            raise ValueError(
                f"connect_timeout_ms must be > 0 (every wait is bounded), got {self.connect_timeout_ms}"
            )
        for name, value in (
            ("statement_timeout_ms", self.statement_timeout_ms),
            ("lock_timeout_ms", self.lock_timeout_ms),
            ("idle_in_transaction_timeout_ms", self.idle_in_transaction_timeout_ms),
            ("ping_after_ms", self.ping_after_ms),
        ):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")

    def server_settings(self) -> dict[str, str]:
        """Per-connection settings, all of which PostgreSQL accepts at connection start.

        Sent at connection start, they win over the login's role defaults (which the
        login may change itself), and every transaction's `RESET ALL` returns to them
        (platform_db.session.fresh).
        """
        settings = {
            "application_name": self.application_name,
            **self.guarded_settings(),
            **PARSED_SETTINGS,
            "default_transaction_read_only": "on" if self.read_only else "off",
        }
        if self.work_mem:
            settings["work_mem"] = self.work_mem
        return settings

    def guarded_settings(self) -> dict[str, str]:
        """The pool's timeouts and what the package's SQL relies on: at connection start,
        or per transaction behind PgBouncer."""
        return {
            "statement_timeout": str(self.statement_timeout_ms),
            "lock_timeout": str(self.lock_timeout_ms),
            "idle_in_transaction_session_timeout": str(self.idle_in_transaction_timeout_ms),
            **RELIED_ON_SETTINGS,
        }

    def prologue(self) -> str:
        """What starts every transaction (platform_db.session.fresh)."""
        settings = self.guarded_settings() if self.pgbouncer else {}
        if self.pgbouncer and self.work_mem:
            settings["work_mem"] = self.work_mem
        return prologue_sql(read_only=self.read_only, settings=settings)

    @property
    def psycopg_connect_timeout_s(self) -> int:
        return max(2, -(-self.connect_timeout_ms // 1000))

    def psycopg_connect_args(self) -> dict[str, Any]:
        """psycopg takes the settings as `-c` options (none behind PgBouncer); never prepares.

        libpq counts `connect_timeout` in whole seconds, at least 2: the timeout is
        rounded up to that.
        """
        # Never prepared: a named statement could be redefined by an earlier request on
        # the same connection (platform_db.session.statements).
        common = {
            "application_name": self.application_name,
            "connect_timeout": self.psycopg_connect_timeout_s,
            "prepare_threshold": None,
        }
        if self.pgbouncer:
            return common
        # libpq splits `options` at spaces unless escaped with a backslash.
        options = " ".join(
            f"-c {k}={_escaped(v)}"
            for k, v in self.server_settings().items()
            if k != "application_name"
        )
        return {**common, "options": options}

    def asyncpg_connect_args(self) -> dict[str, Any]:
        """asyncpg takes the settings as `server_settings`; behind PgBouncer, no cache."""
        # asyncpg's own cache off (its internal queries use the unnamed statement);
        # SQLAlchemy's statements get names nobody can guess (platform_db.session.statements).
        connect_args: dict[str, Any] = {
            "statement_cache_size": 0,
            "prepared_statement_name_func": secret_statement_name,
        }
        if self.pgbouncer:
            connect_args["server_settings"] = {"application_name": self.application_name}
            connect_args["prepared_statement_cache_size"] = 0
        else:
            connect_args["server_settings"] = self.server_settings()
        # Lets the tenant hook send its setting in the same message as BEGIN
        # (platform_db.session.asyncpg_connection).
        connect_args["connection_class"] = TenantConnection
        connect_args["timeout"] = self.connect_timeout_ms / 1000.0
        # asyncpg.connect, with refused, lost and timed-out attempts raised as the
        # DBAPI errors SQLAlchemy wraps (the sync engine's OperationalError).
        connect_args["async_creator_fn"] = connect_asyncpg
        return connect_args

    def engine_arguments(
        self,
        connect_args: dict[str, Any],
        engine_kwargs: dict[str, Any],
        *,
        poolclass: type[Pool],
    ) -> dict[str, Any]:
        """Keyword arguments of create_engine/create_async_engine.

        The caller's own `connect_args` win over the driver's; a caller's `poolclass`
        replaces the timed pool together with its sizing.
        """
        arguments = dict(engine_kwargs)
        if "pool_pre_ping" in arguments:
            raise TypeError("pool_pre_ping comes from ping_after_ms (0: ping at every checkout)")
        connect_args = _merged_connect_args(connect_args, arguments.pop("connect_args", {}))
        # An explicit isolation level in every BEGIN, so that a session default a request
        # left behind (default_transaction_isolation) does not choose it.
        arguments.setdefault("isolation_level", "READ COMMITTED")
        if "poolclass" not in arguments:
            arguments.update(
                poolclass=poolclass,
                pool_size=self.pool_size,
                max_overflow=self.max_overflow,
                pool_timeout=self.pool_timeout,
                pool_recycle=self.pool_recycle,
            )
        return {"pool_pre_ping": self.ping_after_ms == 0, "connect_args": connect_args, **arguments}

    def configure_pool(self, pool: Pool, dialect: Dialect) -> None:
        """The idle ping and the label that checkout times are reported under."""
        if self.ping_after_ms:
            ping_when_idle(pool, dialect, after_ms=self.ping_after_ms)
        if isinstance(pool, TimedQueuePool | TimedAsyncQueuePool):
            pool.label = self.pool_label or self.application_name


def _escaped(value: str) -> str:
    return value.replace("\\", "\\\\").replace(" ", "\\ ")


class KeyFromEnv:
    """The default of `tenant_key`: PLATFORM_DB_TENANT_KEY when the engine is made."""

    def __repr__(self) -> str:
        return "KEY_FROM_ENV"


KEY_FROM_ENV = KeyFromEnv()


def _tenant_key(value: TenantKey | KeyFromEnv | None) -> TenantKey | None:
    return seal.key_from_env() if isinstance(value, KeyFromEnv) else value


def _merged_connect_args(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    """The caller's connect arguments win, except that their startup settings (psycopg's
    `options`, asyncpg's `server_settings`) are added to the engine's, not put in place
    of them: a caller's `-c search_path=...` still overrides that one setting."""
    merged = {**ours, **theirs}
    if "options" in ours and "options" in theirs:
        merged["options"] = f"{ours['options']} {theirs['options']}"
    if "server_settings" in ours and "server_settings" in theirs:
        merged["server_settings"] = {**ours["server_settings"], **theirs["server_settings"]}
    return merged


def make_engine(
    url: URL | str,
    *,
    application_name: str = "platform-db",
    pool_size: int = 5,
    max_overflow: int = 0,
    pool_timeout: float = 30.0,
    pool_recycle: int = 1800,
    statement_timeout_ms: int = DEFAULT_STATEMENT_TIMEOUT_MS,
    lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS,
    idle_in_transaction_timeout_ms: int = DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT_MS,
    work_mem: str | None = None,
    read_only: bool = False,
    pgbouncer: bool = False,
    pool_label: str | None = None,
    ping_after_ms: int = DEFAULT_PING_AFTER_MS,
    connect_timeout_ms: int = DEFAULT_CONNECT_TIMEOUT_MS,
    tenant_key: TenantKey | KeyFromEnv | None = KEY_FROM_ENV,
    **engine_kwargs: Any,
) -> Engine:
    """A psycopg 3 engine.

    `pgbouncer=True` is for PgBouncer in transaction mode: only application_name is sent
    at startup (PgBouncer refuses other startup parameters), and every transaction sets
    the timeouts with SET LOCAL instead.

    `tenant_key`: the key that seals the tenant of every tenant transaction
    (platform_db.session.seal); by default the one in PLATFORM_DB_TENANT_KEY, if set.
    """
    options = _EngineOptions(
        application_name=application_name,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=pool_timeout,
        pool_recycle=pool_recycle,
        statement_timeout_ms=statement_timeout_ms,
        lock_timeout_ms=lock_timeout_ms,
        idle_in_transaction_timeout_ms=idle_in_transaction_timeout_ms,
        work_mem=work_mem,
        read_only=read_only,
        pgbouncer=pgbouncer,
        pool_label=pool_label,
        ping_after_ms=ping_after_ms,
        connect_timeout_ms=connect_timeout_ms,
    )
    engine = create_engine(
        _checked(url, SYNC_DRIVER),
        **options.engine_arguments(
            options.psycopg_connect_args(), engine_kwargs, poolclass=TimedQueuePool
        ),
    )
    options.configure_pool(engine.pool, engine.dialect)
    fresh.install(engine, options.prologue())
    seal.install(engine, _tenant_key(tenant_key), bound=not pgbouncer)
    event.listen(engine, "handle_error", explain_connect_timeout(options.psycopg_connect_timeout_s))
    # Whether the login bypasses RLS, asked once per connection for the tenant hook.
    note_on_connect(engine)
    return engine


def _checked(url: URL | str, driver: str) -> URL:
    """The URL with the driver; one whose password hides an unescaped '@' is refused."""
    try:
        parsed = with_driver(url, driver)
    except (sa_exc.ArgumentError, ValueError):
        # make_url's message quotes what it took for the port: maybe part of a password.
        raise ConfigurationError(
            "the database URL does not parse (a password with ':', '@' or '/' must be "
            "percent-encoded: %3A, %40, %2F)"
        ) from None
    check_url_host(parsed)
    return parsed


def _discard_pending(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
    """A statement waiting for a BEGIN never outlives its checkout (platform_db.session.asyncpg_connection)."""
    driver = (
        as_tenant_connection(record.driver_connection) if dbapi_connection is not None else None
    )
    if driver is not None:
        driver.discard_pending()


def make_async_engine(
    url: URL | str,
    *,
    application_name: str = "platform-db",
    pool_size: int = 5,
    max_overflow: int = 0,
    pool_timeout: float = 30.0,
    pool_recycle: int = 1800,
    statement_timeout_ms: int = DEFAULT_STATEMENT_TIMEOUT_MS,
    lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS,
    idle_in_transaction_timeout_ms: int = DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT_MS,
    work_mem: str | None = None,
    read_only: bool = False,
    pgbouncer: bool = False,
    pool_label: str | None = None,
    ping_after_ms: int = DEFAULT_PING_AFTER_MS,
    connect_timeout_ms: int = DEFAULT_CONNECT_TIMEOUT_MS,
    tenant_key: TenantKey | KeyFromEnv | None = KEY_FROM_ENV,
    **engine_kwargs: Any,
) -> AsyncEngine:
    """An asyncpg engine.

    `pgbouncer=True` is for PgBouncer in transaction mode: asyncpg's statement caches are
    off and every prepared statement gets a unique name, so a statement prepared on one
    server connection is never looked up on another (SQLAlchemy's documented recipe).
    PgBouncer ignores startup parameters it does not track, so only application_name is
    sent, and every transaction sets the timeouts with SET LOCAL instead.

    `tenant_key`: as for make_engine.
    """
    options = _EngineOptions(
        application_name=application_name,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=pool_timeout,
        pool_recycle=pool_recycle,
        statement_timeout_ms=statement_timeout_ms,
        lock_timeout_ms=lock_timeout_ms,
        idle_in_transaction_timeout_ms=idle_in_transaction_timeout_ms,
        work_mem=work_mem,
        read_only=read_only,
        pgbouncer=pgbouncer,
        pool_label=pool_label,
        ping_after_ms=ping_after_ms,
        connect_timeout_ms=connect_timeout_ms,
    )
    engine = create_async_engine(
        _checked(url, ASYNC_DRIVER),
        **options.engine_arguments(
            options.asyncpg_connect_args(), engine_kwargs, poolclass=TimedAsyncQueuePool
        ),
    )
    options.configure_pool(engine.sync_engine.pool, engine.dialect)
    fresh.install(engine, options.prologue())
    seal.install(engine, _tenant_key(tenant_key), bound=not pgbouncer)
    if not pgbouncer:
        note_statement_names(engine)
    event.listen(engine.sync_engine.pool, "checkin", _discard_pending)
    event.listen(engine.sync_engine, "handle_error", translate_async_errors)
    quiet_orphaned_connect_errors()
    note_on_connect(engine)
    return engine


def _pool_kwargs(pool: PoolSettings) -> dict[str, Any]:
    return {
        "application_name": pool.application_name,
        "pool_label": pool.name,
        "pool_size": pool.max_size,
        "pool_timeout": pool.acquire_timeout_ms / 1000.0,
        "pool_recycle": pool.recycle_s,
        "statement_timeout_ms": pool.statement_timeout_ms,
        "lock_timeout_ms": pool.lock_timeout_ms,
        "idle_in_transaction_timeout_ms": pool.idle_in_transaction_timeout_ms,
        "work_mem": pool.work_mem,
        "read_only": pool.read_only,
        "ping_after_ms": pool.ping_after_ms,
        "connect_timeout_ms": pool.connect_timeout_ms,
    }


def engine_for(pool: PoolSettings, *, pgbouncer: bool = False, **kwargs: Any) -> Engine:
    """A sync engine configured from one named pool's settings."""
    return make_engine(pool.url, pgbouncer=pgbouncer, **_pool_kwargs(pool), **kwargs)


def async_engine_for(pool: PoolSettings, *, pgbouncer: bool = False, **kwargs: Any) -> AsyncEngine:
    """An async engine configured from one named pool's settings."""
    return make_async_engine(pool.url, pgbouncer=pgbouncer, **_pool_kwargs(pool), **kwargs)
