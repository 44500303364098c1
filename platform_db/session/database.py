"""`Database`: the three named pools (main, analytics, background) of one service.

    db = Database.from_env()                      # validates the environment, checks the tenant key
    with db.session(tenant_id=t) as s, s.begin():  # main pool, tenant hook
        ...
    async with db.async_session(tenant_id=t) as s: # asyncpg
        ...
    db.session(pool="analytics")                  # read-only, on the replica if configured
    db.session(pool="analytics", on_primary=True) # read-only, on the primary (read your writes)

A tenant session on a login that bypasses row-level security (a superuser, BYPASSRLS)
raises RowLevelSecurityBypassError at its first transaction: request-serving logins are
members of platform_app only. A platform-wide script that means to run tenant sessions on
such a login says so: `Database(settings, allow_rls_bypass=True)`.

Engines are created on first use and shared by every session of that pool. Call
`warm_up()` at start-up to open each pool's minimum of connections, `acquire_stats()` to
see how long checkouts take, `dispose()` at shut-down.

With POSTGRES_REPLICA_URL set, analytics sessions choose between the replica and the
primary per transaction (lag, read-your-writes, `on_primary`): platform_db.session.replica.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import threading
import warnings
from collections.abc import Mapping
from contextlib import ExitStack
from types import TracebackType
from typing import Any, Self

from sqlalchemy import Connection, Engine, event
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.pool import NullPool

from platform_db.session import seal
from platform_db.session.engines import KEY_FROM_ENV, KeyFromEnv, async_engine_for, engine_for
from platform_db.session.pools import AcquireStats, TimedAsyncQueuePool, TimedQueuePool
from platform_db.session.replica import (
    ROUTER_KEY,
    AnalyticsSession,
    ReplicaRouter,
    ReplicaStatus,
    explain_analytics_errors,
    server_of,
)
from platform_db.session.seal import TenantKey
from platform_db.session.settings import POOL_NAMES, PoolSettings, Settings, redact
from platform_db.session.tenancy import TenantSession, canonical_uuid

# The analytics pool's twin on the primary: where analytics sessions read when the
# replica is behind, down, or a session asks for the primary (platform_db.session.replica).
ANALYTICS_ON_PRIMARY = "analytics-primary"


class Database:
    """Lazily created sync and async engines for each named pool, and tenant sessions."""

    def __init__(
        self,
        settings: Settings,
        *,
        pgbouncer: bool = False,
        allow_rls_bypass: bool = False,
        tenant_key: TenantKey | KeyFromEnv | None = KEY_FROM_ENV,
    ) -> None:
        self.settings = settings
        self.tenant_key = seal.key_from_env() if isinstance(tenant_key, KeyFromEnv) else tenant_key
        self.pgbouncer = pgbouncer
        self.allow_rls_bypass = allow_rls_bypass
        self._engines: dict[str, Engine] = {}
        self._async_engines: dict[str, AsyncEngine] = {}
        self._lock = threading.Lock()
        self.router: ReplicaRouter | None = None
        if settings.replica_url is not None:
            self.router = ReplicaRouter(
                settings.replica_url,
                settings.replica,
                connect_timeout_ms=settings.analytics.connect_timeout_ms,
                pgbouncer=pgbouncer,
            )

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        pgbouncer: bool = False,
        allow_rls_bypass: bool = False,
        check_tenant_key: bool = True,
    ) -> Self:
        """The pools of the environment's settings (platform_db.session.settings).

        The tenant key (PLATFORM_DB_TENANT_KEY of `env`, else of os.environ) is checked against the database
        here, with one connection of the main pool: a missing key where the database
        enforces seals, a key it does not know or one whose seals do not verify raise
        TenantKeyError now rather than at the first request. An unreachable database is
        not an error here (warned; the pools report it when they connect).
        """
        # The key from `env`, else from the process environment (a secret is often
        # injected there while the rest of the settings come from a file).
        source = env if env is not None and seal.ENV_VAR in env else os.environ
        db = cls(
            Settings.from_env(env),
            pgbouncer=pgbouncer,
            allow_rls_bypass=allow_rls_bypass,
            tenant_key=seal.key_from_env(source),
        )
        if check_tenant_key:
            db.check_tenant_key()
        return db

    def check_tenant_key(self) -> str:
        """Check the tenant key against the database (see `from_env`); what was found."""
        # A connection of its own (the main pool's settings, no pool): the pools stay as
        # they are until the service uses them.
        engine = engine_for(
            self._pool_settings("main"),
            pgbouncer=self.pgbouncer,
            tenant_key=self.tenant_key,
            poolclass=NullPool,
        )
        try:
            with engine.connect() as conn:
                return seal.check_tenant_key(conn, self.tenant_key, bound=not self.pgbouncer)
        except OperationalError as exc:
            first = str(exc.orig or exc).strip().splitlines()[0] if str(exc) else type(exc).__name__
            warnings.warn(
                f"the tenant key was not checked at start-up, the database is unreachable: {first}",
                stacklevel=2,
            )
            return "tenant seal: not checked (database unreachable)"
        finally:
            engine.dispose()

    def _pool_settings(self, pool: str) -> PoolSettings:
        if pool == ANALYTICS_ON_PRIMARY:
            return dataclasses.replace(
                self.settings.analytics, name=ANALYTICS_ON_PRIMARY, url=self.settings.database_url
            )
        return self.settings.pool(pool)

    def _analytics_errors(self, pool: str) -> Any:
        """The analytics engines' handle_error listener (read-only writes, conflicts)."""
        settings = self._pool_settings(pool)
        on_replica = pool == "analytics" and self.router is not None
        return explain_analytics_errors(
            pool="analytics",
            server=server_of(settings.url),
            router=self.router if on_replica else None,
        )

    def engine(self, pool: str = "main") -> Engine:
        engine = self._engines.get(pool)
        if engine is not None:
            return engine
        settings = self._pool_settings(pool)
        with self._lock:
            if pool not in self._engines:
                engine = engine_for(settings, pgbouncer=self.pgbouncer, tenant_key=self.tenant_key)
                if settings.read_only:
                    event.listen(engine, "handle_error", self._analytics_errors(pool))
                self._engines[pool] = engine
            return self._engines[pool]

    def async_engine(self, pool: str = "main") -> AsyncEngine:
        engine = self._async_engines.get(pool)
        if engine is not None:  # every session after the first: no lock, no lookup
            return engine
        settings = self._pool_settings(pool)
        with self._lock:
            if pool not in self._async_engines:
                engine = async_engine_for(
                    settings, pgbouncer=self.pgbouncer, tenant_key=self.tenant_key
                )
                if settings.read_only:
                    event.listen(engine.sync_engine, "handle_error", self._analytics_errors(pool))
                self._async_engines[pool] = engine
            return self._async_engines[pool]

    def _session_options(
        self, tenant_id: object | None, user_id: object | None, pool: str
    ) -> dict[str, Any]:
        options: dict[str, Any] = {
            "tenant_id": tenant_id,
            "user_id": user_id,
            "allow_rls_bypass": self.allow_rls_bypass,
        }
        if (
            self.router is not None
            and self.settings.replica.read_your_writes_ms
            and not self._pool_settings(pool).read_only
        ):
            # Writes committed here send this tenant's analytics to the primary for a while.
            options["info"] = {ROUTER_KEY: self.router}
        return options

    def session(
        self,
        *,
        tenant_id: object | None = None,
        user_id: object | None = None,
        pool: str = "main",
        on_primary: bool = False,
    ) -> TenantSession:
        """A TenantSession on the pool; without a tenant it uses tenant_context()'s.

        With a replica configured, `pool="analytics"` gives an AnalyticsSession: each
        transaction runs on the replica, or on the primary when `on_primary=True`, right
        after this tenant's own writes, or while the replica lags (replica.py).
        """
        options = self._session_options(tenant_id, user_id, pool)
        if pool == "analytics" and self.router is not None:
            return AnalyticsSession(
                router=self.router,
                replica=self.engine("analytics"),
                primary=self.engine(ANALYTICS_ON_PRIMARY),
                on_primary=on_primary,
                **options,
            )
        engine = self.engine(ANALYTICS_ON_PRIMARY if on_primary and pool == "analytics" else pool)
        return TenantSession(engine, **options)

    def async_session(
        self,
        *,
        tenant_id: object | None = None,
        user_id: object | None = None,
        pool: str = "main",
        on_primary: bool = False,
    ) -> AsyncSession:
        """`session()` for asyncio (asyncpg): an AsyncSession of TenantSession or
        AnalyticsSession."""
        options = self._session_options(tenant_id, user_id, pool)
        if pool == "analytics" and self.router is not None:
            return AsyncSession(
                sync_session_class=AnalyticsSession,
                expire_on_commit=False,
                router=self.router,
                replica=self.async_engine("analytics").sync_engine,
                primary=self.async_engine(ANALYTICS_ON_PRIMARY).sync_engine,
                on_primary=on_primary,
                **options,
            )
        return AsyncSession(
            self.async_engine(pool),
            sync_session_class=TenantSession,
            expire_on_commit=False,
            **options,
        )

    def replica_status(self) -> ReplicaStatus | None:
        """Where analytics read now and why, the replica's last measured lag (None: no
        POSTGRES_REPLICA_URL)."""
        return self.router.status() if self.router is not None else None

    def note_write(self, tenant_id: object | None, user_id: object | None = None) -> None:
        """Announce a write the session hooks did not see (made through
        `Session.connection()`, or by another process): analytics sessions of this tenant
        and acting user read from the primary for POSTGRES_REPLICA_READ_YOUR_WRITES_MS."""
        if self.router is not None:
            self.router.note_write(
                None if tenant_id is None else canonical_uuid(tenant_id),
                None if user_id is None else canonical_uuid(user_id, what="user id"),
            )

    def warm_up(self, *pools: str) -> None:
        """Open each pool's minimum of connections now rather than on the first requests.

        With a replica (and POSTGRES_REPLICA_FALLBACK on, the default), also waits for
        the first check of it (bounded by POSTGRES_ANALYTICS_CONNECT_TIMEOUT), which the
        first analytics transaction would otherwise wait for.
        """
        if self.router is not None and (not pools or "analytics" in pools):
            self.router.wait_for_first_check()
        for pool in pools or POOL_NAMES:
            engine = self.engine(pool)
            with ExitStack() as stack:
                conns: list[Connection] = [
                    stack.enter_context(engine.connect())
                    for _ in range(self.settings.pool(pool).min_size)
                ]
                del conns

    async def warm_up_async(self, *pools: str) -> None:
        if self.router is not None and (not pools or "analytics" in pools):
            await asyncio.to_thread(self.router.wait_for_first_check)
        for pool in pools or POOL_NAMES:
            engine = self.async_engine(pool)
            conns: list[AsyncConnection] = await asyncio.gather(
                *(engine.connect() for _ in range(self.settings.pool(pool).min_size))
            )
            await asyncio.gather(*(c.close() for c in conns))

    def acquire_stats(self) -> list[AcquireStats]:
        """Checkout times of every pool created so far (sync and async)."""
        return [pool.acquire_stats() for pool in self._timed_pools()]

    def _timed_pools(self) -> list[TimedQueuePool | TimedAsyncQueuePool]:
        pools: list[TimedQueuePool | TimedAsyncQueuePool] = []
        for engine in self._engines.values():
            if isinstance(engine.pool, TimedQueuePool):
                pools.append(engine.pool)
        for aengine in self._async_engines.values():
            if isinstance(aengine.sync_engine.pool, TimedAsyncQueuePool):
                pools.append(aengine.sync_engine.pool)
        return pools

    def reset_acquire_stats(self, *, keep: int = 4096) -> None:
        """Start every pool's checkout record afresh (e.g. when a benchmark's warm-up ends)."""
        for pool in self._timed_pools():
            pool.reset_acquire_stats(keep=keep)

    def acquire_times_ms(self) -> dict[str, list[float]]:
        """Each pool's recorded checkout times in ms (sorted), by pool label."""
        out: dict[str, list[float]] = {}
        for pool in self._timed_pools():
            out.setdefault(pool.label, []).extend(pool.acquire_times_ms())
        return {label: sorted(times) for label, times in out.items()}

    def dispose(self) -> None:
        """Close the sync pools (async engines: `await dispose_async()`) and stop checking
        the replica."""
        if self.router is not None:
            self.router.close()
        with self._lock:
            engines, self._engines = self._engines, {}
        for engine in engines.values():
            engine.dispose()

    async def dispose_async(self) -> None:
        self.dispose()
        with self._lock:
            engines, self._async_engines = self._async_engines, {}
        for engine in engines.values():
            await engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.dispose()

    def __repr__(self) -> str:
        return f"Database(main={redact(self.settings.main.url)!r})"

    def describe(self) -> list[dict[str, Any]]:
        """The pools' settings, without passwords (for logs and the CLI)."""

        out = []
        for name in POOL_NAMES:
            p = self.settings.pool(name)
            out.append(
                {
                    "pool": name,
                    "url": redact(p.url),
                    "min": p.min_size,
                    "max": p.max_size,
                    "acquire_timeout_ms": p.acquire_timeout_ms,
                    "statement_timeout_ms": p.statement_timeout_ms,
                    "connect_timeout_ms": p.connect_timeout_ms,
                    "read_only": p.read_only,
                }
            )
        return out
