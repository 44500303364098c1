"""`Database`: the three named pools (main, analytics, background) of one service.

    db = Database.from_env()                      # validates the environment, connects nothing
    with db.session(tenant_id=t) as s, s.begin():  # main pool, tenant hook
        ...
    async with db.async_session(tenant_id=t) as s: # asyncpg
        ...
    db.session(pool="analytics")                  # read-only, on the replica if configured

A tenant session on a login that bypasses row-level security (a superuser, BYPASSRLS)
raises RowLevelSecurityBypassError at its first transaction: request-serving logins are
members of platform_app only. A platform-wide script that means to run tenant sessions on
such a login says so: `Database(settings, allow_rls_bypass=True)`.

Engines are created on first use and shared by every session of that pool. Call
`warm_up()` at start-up to open each pool's minimum of connections, `acquire_stats()` to
see how long checkouts take, `dispose()` at shut-down.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from contextlib import ExitStack
from types import TracebackType
from typing import Any, Self

from sqlalchemy import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from platform_db.session.engines import async_engine_for, engine_for
from platform_db.session.pools import AcquireStats, TimedAsyncQueuePool, TimedQueuePool
from platform_db.session.settings import POOL_NAMES, Settings, redact
from platform_db.session.tenancy import TenantSession


class Database:
    """Lazily created sync and async engines for each named pool, and tenant sessions."""

    def __init__(
        self, settings: Settings, *, pgbouncer: bool = False, allow_rls_bypass: bool = False
    ) -> None:
        self.settings = settings
        self.pgbouncer = pgbouncer
        self.allow_rls_bypass = allow_rls_bypass
        self._engines: dict[str, Engine] = {}
        self._async_engines: dict[str, AsyncEngine] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        pgbouncer: bool = False,
        allow_rls_bypass: bool = False,
    ) -> Self:
        return cls(Settings.from_env(env), pgbouncer=pgbouncer, allow_rls_bypass=allow_rls_bypass)

    def engine(self, pool: str = "main") -> Engine:
        engine = self._engines.get(pool)
        if engine is not None:
            return engine
        settings = self.settings.pool(pool)
        with self._lock:
            if pool not in self._engines:
                self._engines[pool] = engine_for(settings, pgbouncer=self.pgbouncer)
            return self._engines[pool]

    def async_engine(self, pool: str = "main") -> AsyncEngine:
        engine = self._async_engines.get(pool)
        if engine is not None:  # every session after the first: no lock, no lookup
            return engine
        settings = self.settings.pool(pool)
        with self._lock:
            if pool not in self._async_engines:
                self._async_engines[pool] = async_engine_for(settings, pgbouncer=self.pgbouncer)
            return self._async_engines[pool]

    def session(
        self, *, tenant_id: object | None = None, user_id: object | None = None, pool: str = "main"
    ) -> TenantSession:
        """A TenantSession on the pool; without a tenant it uses tenant_context()'s."""
        return TenantSession(
            self.engine(pool),
            tenant_id=tenant_id,
            user_id=user_id,
            allow_rls_bypass=self.allow_rls_bypass,
        )

    def async_session(
        self, *, tenant_id: object | None = None, user_id: object | None = None, pool: str = "main"
    ) -> AsyncSession:
        return AsyncSession(
            self.async_engine(pool),
            sync_session_class=TenantSession,
            expire_on_commit=False,
            tenant_id=tenant_id,
            user_id=user_id,
            allow_rls_bypass=self.allow_rls_bypass,
        )

    def warm_up(self, *pools: str) -> None:
        """Open each pool's minimum of connections now rather than on the first requests."""
        for pool in pools or POOL_NAMES:
            engine = self.engine(pool)
            with ExitStack() as stack:
                conns: list[Connection] = [
                    stack.enter_context(engine.connect())
                    for _ in range(self.settings.pool(pool).min_size)
                ]
                del conns

    async def warm_up_async(self, *pools: str) -> None:
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
        """Close the sync pools (async engines: `await dispose_async()`)."""
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
