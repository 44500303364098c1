"""Engine factories for psycopg 3 (sync) and asyncpg (async). Nothing connects at import.

Per-connection settings are limited to what PostgreSQL accepts per session
(statement_timeout, lock_timeout, idle_in_transaction_session_timeout, application_name).
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from platform_db.settings import ASYNC_DRIVER, SYNC_DRIVER, with_driver

DEFAULT_STATEMENT_TIMEOUT_MS = 30_000
DEFAULT_LOCK_TIMEOUT_MS = 10_000
DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT_MS = 60_000


def _server_settings(
    application_name: str,
    statement_timeout_ms: int,
    lock_timeout_ms: int,
    idle_in_transaction_timeout_ms: int,
) -> dict[str, str]:
    for name, value in (
        ("statement_timeout_ms", statement_timeout_ms),
        ("lock_timeout_ms", lock_timeout_ms),
        ("idle_in_transaction_timeout_ms", idle_in_transaction_timeout_ms),
    ):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    return {
        "application_name": application_name,
        "statement_timeout": str(statement_timeout_ms),
        "lock_timeout": str(lock_timeout_ms),
        "idle_in_transaction_session_timeout": str(idle_in_transaction_timeout_ms),
    }


def make_engine(
    url: URL | str,
    *,
    application_name: str = "platform-db",
    pool_size: int = 5,
    max_overflow: int = 15,
    pool_timeout: float = 30.0,
    statement_timeout_ms: int = DEFAULT_STATEMENT_TIMEOUT_MS,
    lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS,
    idle_in_transaction_timeout_ms: int = DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT_MS,
    pgbouncer: bool = False,
    **engine_kwargs: Any,
) -> Engine:
    """A psycopg 3 engine with pre-ping and per-connection timeouts.

    `pgbouncer=True` is for PgBouncer in transaction mode: psycopg never prepares
    statements, and only application_name is sent at startup (PgBouncer refuses other
    startup parameters); set the timeouts on the login role (ALTER ROLE ... SET) instead.
    """
    settings = _server_settings(
        application_name, statement_timeout_ms, lock_timeout_ms, idle_in_transaction_timeout_ms
    )
    options = " ".join(f"-c {k}={v}" for k, v in settings.items() if k != "application_name")
    connect_args: dict[str, Any] = {"application_name": application_name}
    if pgbouncer:
        connect_args["prepare_threshold"] = None
    else:
        connect_args["options"] = options
    connect_args.update(engine_kwargs.pop("connect_args", {}))
    return create_engine(
        with_driver(url, SYNC_DRIVER),
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=pool_timeout,
        pool_pre_ping=True,
        connect_args=connect_args,
        **engine_kwargs,
    )


def make_async_engine(
    url: URL | str,
    *,
    application_name: str = "platform-db",
    pool_size: int = 5,
    max_overflow: int = 15,
    pool_timeout: float = 30.0,
    statement_timeout_ms: int = DEFAULT_STATEMENT_TIMEOUT_MS,
    lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS,
    idle_in_transaction_timeout_ms: int = DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT_MS,
    pgbouncer: bool = False,
    **engine_kwargs: Any,
) -> AsyncEngine:
    """An asyncpg engine with pre-ping and per-connection timeouts.

    `pgbouncer=True` is for PgBouncer in transaction mode: asyncpg's statement caches are
    off and every prepared statement gets a unique name, so a statement prepared on one
    server connection is never looked up on another (SQLAlchemy's documented recipe).
    PgBouncer ignores startup parameters it does not track, so only application_name is
    sent; set the timeouts on the login role (ALTER ROLE ... SET) behind PgBouncer.
    """
    settings = _server_settings(
        application_name, statement_timeout_ms, lock_timeout_ms, idle_in_transaction_timeout_ms
    )
    connect_args: dict[str, Any] = {}
    if pgbouncer:
        connect_args.update(
            server_settings={"application_name": application_name},
            statement_cache_size=0,
            prepared_statement_cache_size=0,
            prepared_statement_name_func=lambda: f"__asyncpg_{uuid.uuid4()}__",
        )
    else:
        connect_args["server_settings"] = settings
    connect_args.update(engine_kwargs.pop("connect_args", {}))
    pool_args: dict[str, Any] = {}
    if engine_kwargs.get("poolclass") is not NullPool:
        pool_args = {
            "pool_size": pool_size,
            "max_overflow": max_overflow,
            "pool_timeout": pool_timeout,
        }
    return create_async_engine(
        with_driver(url, ASYNC_DRIVER),
        pool_pre_ping=True,
        connect_args=connect_args,
        **pool_args,
        **engine_kwargs,
    )
