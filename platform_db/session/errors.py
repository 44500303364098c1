"""One family of errors for both engines, and which of them are worth a retry.

The sync engine (psycopg) raises SQLAlchemy's `DBAPIError` subclasses for everything:
a refused connection is an `OperationalError`, a connection lost mid-transaction is an
`OperationalError` with `connection_invalidated` set. asyncpg, left alone, lets a
refused connection escape as `ConnectionRefusedError`, a server that never answers as a
bare `TimeoutError`, and a connection killed while idle as `InternalClientError` or
`ConnectionDoesNotExistError`. The async engines of this package translate them:

* `connect_asyncpg` (the engines' `async_creator_fn`) raises the asyncpg dialect's
  DBAPI `OperationalError` for any failure to connect, which SQLAlchemy wraps as
  `sqlalchemy.exc.OperationalError`, as on the sync path;
* `quiet_orphaned_connect_errors` keeps asyncio from logging "Future exception was
  never retrieved ... unexpected connection_lost()" after a connect timed out;
* `translate_async_errors` (a `handle_error` listener) marks a connection that the
  driver reports closed or in a broken protocol state as invalidated, so the pool
  drops it and the exception carries `connection_invalidated=True`.

`is_retryable(exc)` says whether a failed transaction may be run again as it is, and
`retry_read` runs an idempotent read transaction again on such errors.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import psycopg
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_dbapi
from sqlalchemy.engine import ExceptionContext

log = logging.getLogger(__name__)

T = TypeVar("T")

# Failures to open a connection: refused, reset, unreachable, no answer in time, or the
# connection closed during the start-up exchange (a server restarting).
_CONNECT_FAILURES = (OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.InternalClientError)


def _operational_error(message: str, orig: BaseException) -> Exception:
    """The asyncpg dialect's DBAPI OperationalError, which SQLAlchemy wraps as its own."""
    error: Exception = AsyncAdapt_asyncpg_dbapi.OperationalError(message, orig)  # type: ignore[no-untyped-call]
    return error


def _where(kwargs: dict[str, Any]) -> str:
    host, port = kwargs.get("host"), kwargs.get("port")
    if host is None:
        return "the server"
    return f"{host}:{port}" if port is not None else str(host)


async def connect_asyncpg(*args: Any, **kwargs: Any) -> Any:
    """asyncpg.connect, raising the dialect's DBAPI errors (SQLAlchemy then wraps them).

    The message names the host and port, never the user's password.
    """
    try:
        return await asyncpg.connect(*args, **kwargs)
    except TimeoutError as exc:
        timeout = kwargs.get("timeout")
        after = f" within {timeout:g} s (POSTGRES_CONNECT_TIMEOUT)" if timeout else ""
        raise _operational_error(
            f"connection to {_where(kwargs)} timed out: no answer{after}", exc
        ) from exc
    except _CONNECT_FAILURES as exc:
        detail = str(exc).strip() or type(exc).__name__
        raise _operational_error(f"connection to {_where(kwargs)} failed: {detail}", exc) from exc
    except asyncpg.PostgresError as exc:  # the server said no: password, database, limits
        raise _operational_error(
            f"connection to {_where(kwargs)} failed: {str(exc).strip()}", exc
        ) from exc


class _OrphanedConnectionLost(logging.Filter):
    """Drops asyncio's "Future exception was never retrieved" for asyncpg's TLS probe.

    When the connect timeout fires while asyncpg is opening the socket (its SSLRequest
    probe, sslmode=prefer), the socket is closed and asyncpg's probe protocol sets
    `ConnectionError('unexpected connection_lost() call')` on a future nobody awaits
    any more; asyncio then logs it at garbage collection. The failure itself was already
    raised to the caller as the timeout, so the record is noise. Only that exact record
    is dropped.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (
            isinstance(exc, ConnectionError)
            and str(exc) == "unexpected connection_lost() call"
            and record.getMessage().startswith("Future exception was never retrieved")
        )


_ORPHAN_FILTER = _OrphanedConnectionLost()


def quiet_orphaned_connect_errors() -> None:
    """Install the filter on the `asyncio` logger (once; the async engines call this)."""
    logger = logging.getLogger("asyncio")
    if _ORPHAN_FILTER not in logger.filters:
        logger.addFilter(_ORPHAN_FILTER)


# asyncpg's words for a connection that can no longer be used.
_BROKEN = (
    "cannot switch to state",
    "another operation is in progress",
    "connection was closed",
    "connection is closed",
    "unexpected connection_lost",
)


def _driver_error(exc: BaseException | None) -> BaseException | None:
    """The driver's own exception under SQLAlchemy's wrappers: DBAPIError.orig, and the
    asyncpg adapter's DBAPI-style error (SQLAlchemy 2.1: EmulatedDBAPIException.orig;
    2.0: raised `from` the driver's error)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        inner = getattr(exc, "orig", None)
        if isinstance(inner, BaseException):
            exc = inner
        elif type(exc).__module__.startswith("sqlalchemy") and exc.__cause__ is not None:
            exc = exc.__cause__
        else:
            break
    return exc


# invalid_sql_statement_name: a prepared statement the connection's cache still names
# is gone from the server.
INVALID_STATEMENT_NAME = "26000"


def translate_async_errors(context: ExceptionContext) -> BaseException | None:
    """`handle_error` listener of the async engines: a broken connection is invalidated.

    A connection the server closed while it sat idle in the pool (a restart, a
    terminated backend) and that is reused before its idle ping is due fails with
    asyncpg's `ConnectionDoesNotExistError`, or `InternalClientError: cannot switch to
    state ...`; either way it is unusable. Marking it a disconnect makes the pool drop it
    and sets `connection_invalidated` on the raised exception. A driver error that
    SQLAlchemy left unwrapped (an OSError from the socket) becomes an OperationalError.
    """
    original = context.original_exception
    driver = _driver_error(original)
    if context.connection is None:
        return None  # opening a connection failed: connect_asyncpg said so, as psycopg would
    if (
        isinstance(driver, asyncpg.ConnectionDoesNotExistError | OSError)
        or (
            isinstance(driver, asyncpg.InterfaceError | asyncpg.InternalClientError)
            and any(words in str(driver) for words in _BROKEN)
        )
        or _sqlstate(driver) == INVALID_STATEMENT_NAME
    ):
        context.is_disconnect = True
    if context.sqlalchemy_exception is None and isinstance(original, OSError):
        dbapi = _operational_error(
            f"connection lost: {str(original).strip() or type(original).__name__}", original
        )
        return sa_exc.OperationalError(
            context.statement,
            context.parameters,
            dbapi,
            connection_invalidated=True,
        )
    return None


def explain_connect_timeout(seconds: int) -> Callable[[ExceptionContext], BaseException | None]:
    """`handle_error` listener of the sync engines: psycopg's bare "connection timeout
    expired" becomes a message naming the server and the limit, like the async one."""

    def listener(context: ExceptionContext) -> BaseException | None:
        original = context.original_exception
        if context.connection is not None or not isinstance(
            original, psycopg.errors.ConnectionTimeout
        ):
            return None
        url = context.engine.url if context.engine is not None else None
        where = _where({"host": url.host, "port": url.port} if url is not None else {})
        driver = psycopg.errors.ConnectionTimeout(
            f"connection to {where} timed out: no answer within {seconds} s "
            "(POSTGRES_CONNECT_TIMEOUT, whole seconds for psycopg)"
        )
        return sa_exc.OperationalError(None, None, driver)

    return listener


# --- what to retry ---------------------------------------------------------------------

# SQLSTATEs after which the same transaction may simply be run again.
RETRYABLE_SQLSTATES = frozenset(
    {
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected
        "55P03",  # lock_not_available (lock_timeout)
        "57P01",  # admin_shutdown (server restarting, backend terminated)
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now (server starting up)
        "53300",  # too_many_connections
    }
)


def _sqlstate(exc: BaseException | None) -> str | None:
    while exc is not None:
        state = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
        if isinstance(state, str):
            return state
        exc = getattr(exc, "orig", None) if exc is not getattr(exc, "orig", None) else None
    return None


def is_retryable(exc: BaseException) -> bool:
    """Whether a transaction that failed with `exc` may be run again unchanged.

    True for: a connection that could not be opened or was lost
    (`OperationalError`, or any `DBAPIError` with `connection_invalidated`), a full pool
    (`PoolExhaustedError`, a `sqlalchemy.exc.TimeoutError`), and the SQLSTATEs in
    `RETRYABLE_SQLSTATES` (serialization failure, deadlock, lock timeout, server shutting
    down or starting). A statement timeout (57014), a constraint violation or a
    programming error is not: running it again gives the same answer.

    Whether a *write* may be retried is the caller's business: after a lost connection
    the COMMIT may or may not have happened. `retry_read` is for reads only.
    """
    if isinstance(exc, sa_exc.TimeoutError):
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        state = _sqlstate(exc.orig)
        if state is not None:
            return state in RETRYABLE_SQLSTATES
        return isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError)
    return False


def _pause(attempt: int, base_s: float) -> float:
    return float(base_s * (2**attempt) * (0.5 + random.random()))  # noqa: S311 - jitter


def retry_read(fn: Callable[[], T], *, attempts: int = 3, backoff_s: float = 0.1) -> T:
    """Run `fn` (one idempotent read transaction) again while it fails with a retryable
    error, up to `attempts` times in all, with jittered exponential back-off.

        rows = retry_read(lambda: _load_pages(db, tenant))   # _load_pages opens its session

    `fn` must open its own session or transaction: one whose connection was lost cannot
    be reused.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    for attempt in range(attempts):
        try:
            return fn()
        except sa_exc.SQLAlchemyError as exc:
            if attempt == attempts - 1 or not is_retryable(exc):
                raise
            log.warning("retrying a read after %s (attempt %d)", type(exc).__name__, attempt + 1)
            time.sleep(_pause(attempt, backoff_s))
    raise AssertionError("unreachable")


async def retry_read_async(
    fn: Callable[[], Awaitable[T]], *, attempts: int = 3, backoff_s: float = 0.1
) -> T:
    """`retry_read` for coroutines: `await retry_read_async(lambda: load(db, tenant))`."""
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    for attempt in range(attempts):
        try:
            return await fn()
        except sa_exc.SQLAlchemyError as exc:
            if attempt == attempts - 1 or not is_retryable(exc):
                raise
            log.warning("retrying a read after %s (attempt %d)", type(exc).__name__, attempt + 1)
            await asyncio.sleep(_pause(attempt, backoff_s))
    raise AssertionError("unreachable")


__all__ = [
    "RETRYABLE_SQLSTATES",
    "connect_asyncpg",
    "explain_connect_timeout",
    "is_retryable",
    "quiet_orphaned_connect_errors",
    "retry_read",
    "retry_read_async",
    "translate_async_errors",
]
