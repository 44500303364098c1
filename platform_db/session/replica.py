"""The analytics pool on a streaming replica: routing, lag, read-your-writes, clear errors.

With POSTGRES_REPLICA_URL set, `Database.session(pool="analytics")` (and `async_session`)
gives an `AnalyticsSession`, which picks the server of each transaction when the
transaction starts:

* the primary, when the session was opened with `on_primary=True`;
* the primary, when a session of the same `Database` with the same tenant and acting
  user (`user_id`; none is a key of its own) committed a write less than
  POSTGRES_REPLICA_READ_YOUR_WRITES_MS ago (2000; 0: never), so that whoever has just
  written reads it back (read-your-writes; Payload's Drizzle adapter uses the same 2 s
  window), while the tenant's other users stay on the replica;
* the primary, while the replica cannot be reached or is not a replica (promoted), and,
  with POSTGRES_REPLICA_MAX_LAG_MS set, while it is further behind than that. A
  background thread checks it every POSTGRES_REPLICA_CHECK_INTERVAL_MS (1000; the first
  analytics transaction waits for the first check), a failed connection to it counts at
  once, and a transaction whose connection to the replica cannot be opened runs on the
  primary instead. The switch is logged once each way (WARNING to the primary, INFO
  back). POSTGRES_REPLICA_FALLBACK=off turns all of this off: analytics then always
  read from the replica and fail while it is down;
* the replica otherwise.

Either way the analytics pool is read-only (`default_transaction_read_only`, and a hot
standby refuses writes anyway): a write through it raises `ReadOnlyPoolError`, which names
the pool and the server. A statement the standby cancels because replaying the primary's
changes needed the rows it read (`canceling statement due to conflict with recovery`)
raises `ReplicaConflictError`: retryable (`retry_read` runs the read again), and its
message names the settings that make it rarer (docs/SCALING.md).

The replica's lag is measured on the replica as PostgreSQL's monitoring advice has it:
zero when everything received has been replayed (`pg_last_wal_receive_lsn() <=
pg_last_wal_replay_lsn()`), else the age of the last replayed transaction
(`now() - pg_last_xact_replay_timestamp()`).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, ExceptionContext
from sqlalchemy.orm import ORMExecuteState, Session, SessionTransaction
from sqlalchemy.pool import QueuePool
from sqlalchemy.sql.elements import TextClause

from platform_db.session.settings import SYNC_DRIVER, ReplicaSettings, redact, with_driver
from platform_db.session.tenancy import TenantSession

log = logging.getLogger(__name__)

# Session.info keys.
ROUTER_KEY = "platform_db.replica_router"  # on the service's sessions: report writes here
_WROTE_KEY = "platform_db.wrote"  # this transaction wrote (ORM flush or DML statement)
_ROUTE_KEY = "platform_db.route"  # the engine an analytics transaction runs on
_HELD_KEY = "platform_db.replica_connection"  # its connection to the replica, if any

READ_ONLY_SQL_TRANSACTION = "25006"
SERIALIZATION_FAILURE = "40001"  # PostgreSQL's code for a recovery conflict, too

# Replica-side lag: 0 once everything received is replayed (an idle primary sends nothing,
# so the last replayed transaction can be old without the replica being behind).
LAG_SQL = """
SELECT pg_is_in_recovery() AS in_recovery,
       CASE WHEN NOT pg_is_in_recovery() THEN NULL
            WHEN pg_last_wal_replay_lsn() >= pg_last_wal_receive_lsn() THEN 0
            ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp()) * 1000
       END AS lag_ms
"""

_DML = re.compile(r"^\s*(insert|update|delete|merge)\b", re.IGNORECASE)


def _sqlstate(exc: BaseException | None) -> str | None:
    """The SQLSTATE under SQLAlchemy's and the asyncpg adapter's wrappers, if any."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        for attr in ("sqlstate", "pgcode"):
            state = getattr(exc, attr, None)
            if isinstance(state, str) and state:
                return state
        inner = getattr(exc, "orig", None)
        exc = inner if isinstance(inner, BaseException) else exc.__cause__
    return None


def _first_line(exc: BaseException | None) -> str:
    lines = str(exc or "").strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def server_of(url: URL) -> str:
    """`host:port` of a URL (or its unix-socket directory), for messages: never a password."""
    query_host = url.query.get("host")
    host = query_host[0] if isinstance(query_host, tuple) else query_host
    return f"{host or url.host or 'localhost'}:{url.port or 5432}"


# --- errors -----------------------------------------------------------------------------


class ReadOnlyPoolError(sa_exc.InternalError):
    """A write through the read-only analytics pool (SQLSTATE 25006).

    The message names the pool and the server it was connected to; `pool` and `server`
    hold them. Write through the main pool (`db.session()`); not retryable.
    """

    def __init__(
        self,
        statement: str | None,
        params: Any,
        orig: BaseException,
        *,
        pool: str,
        server: str,
        connection_invalidated: bool = False,
    ) -> None:
        super().__init__(statement, params, orig, connection_invalidated=connection_invalidated)
        self.pool, self.server = pool, server
        self.args = (
            f"the {pool} pool is read-only (connected to {server}): {_first_line(orig)}; "
            f'write through the main pool (db.session() or db.session(pool="main"))',
        )

    def __reduce__(self) -> Any:
        state = (self.statement, self.params, self.orig, self.pool, self.server)
        return (_rebuild, (type(self), state))


class ReplicaConflictError(sa_exc.OperationalError):
    """The replica cancelled a query because replaying the primary's changes needed the
    rows it was reading (SQLSTATE 40001, `... due to conflict with recovery`).

    Retryable (`is_retryable` is true, `retry_read` runs the read again on a fresh
    snapshot). To make it rarer, on the replica: `hot_standby_feedback = on` (the
    primary keeps the rows the replica's queries read, at the cost of bloat on the
    primary while they run) or a longer `max_standby_streaming_delay` (replay waits for
    the query, at the cost of replica lag); docs/SCALING.md.
    """

    def __init__(
        self,
        statement: str | None,
        params: Any,
        orig: BaseException,
        *,
        pool: str,
        server: str,
        connection_invalidated: bool = False,
    ) -> None:
        super().__init__(statement, params, orig, connection_invalidated=connection_invalidated)
        self.pool, self.server = pool, server
        self.args = (
            f"the {pool} pool's query on the replica {server} was cancelled by a recovery "
            f"conflict ({_first_line(orig)}): replaying the primary's changes (VACUUM, "
            "pruning, locks) needed what the query was reading. It is retryable: run the "
            "read again (retry_read). To make it rarer set hot_standby_feedback = on on "
            "the replica (the primary then keeps those rows: bloat while long queries run) "
            "or raise max_standby_streaming_delay (replay waits: the replica lags); "
            "see docs/SCALING.md",
        )

    def __reduce__(self) -> Any:
        state = (self.statement, self.params, self.orig, self.pool, self.server)
        return (_rebuild, (type(self), state))


def _rebuild(
    cls: type[ReadOnlyPoolError | ReplicaConflictError], state: tuple[Any, ...]
) -> BaseException:
    """Unpickle (the errors cross process boundaries in multiprocessing pools)."""
    statement, params, orig, pool, server = state
    return cls(statement, params, orig, pool=pool, server=server)


def is_recovery_conflict(exc: BaseException) -> bool:
    """Whether `exc` is a query or connection cancelled by a hot standby's recovery conflict."""
    return _sqlstate(exc) == SERIALIZATION_FAILURE and "conflict with recovery" in str(exc)


# --- the replica's health ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReplicaStatus:
    """What the router knows of the replica (`Database.replica_status()`).

    `route`: where analytics transactions go now unless asked otherwise ("replica" or
    "primary"); `reason`: why the primary, when it is; `lag_ms`: the last measured lag
    (None: not measured, or not a replica); `checked_at`: time.time() of the last check.
    `checking` is False with POSTGRES_REPLICA_FALLBACK=off (no checks, always the
    replica).
    """

    replica: str
    route: str
    checking: bool
    lag_ms: float | None = None
    in_recovery: bool | None = None
    reason: str | None = None
    checked_at: float | None = None


@dataclass(frozen=True, slots=True)
class _Health:
    usable: bool
    reason: str | None
    lag_ms: float | None = None
    in_recovery: bool | None = None
    checked_at: float | None = None  # time.time()
    checked_mono: float | None = None  # time.monotonic()


def measure_lag(conn: Connection) -> tuple[bool, float | None]:
    """(in recovery, lag in ms) of the server `conn` is connected to (LAG_SQL)."""
    row = conn.execute(text(LAG_SQL)).one()
    lag = None if row.lag_ms is None else float(row.lag_ms)
    return bool(row.in_recovery), lag


class ReplicaRouter:
    """Decides, per analytics transaction, between the replica and the primary.

    Made by `Database` when POSTGRES_REPLICA_URL is set; connects nothing until the first
    analytics transaction (or `Database.warm_up()`), which starts the check thread unless
    POSTGRES_REPLICA_FALLBACK=off (stopped by `close()`, i.e. `Database.dispose()`).
    `pgbouncer`: the replica is reached through PgBouncer (no startup options).
    """

    def __init__(
        self,
        replica_url: URL,
        settings: ReplicaSettings,
        *,
        connect_timeout_ms: int = 5_000,
        pgbouncer: bool = False,
    ) -> None:
        self.replica_url = replica_url
        self.pgbouncer = pgbouncer
        self.settings = settings
        self.server = server_of(replica_url)
        self._connect_timeout_s = max(2, -(-connect_timeout_ms // 1000))
        self._lock = threading.Lock()
        self._writes: dict[tuple[uuid.UUID | None, uuid.UUID | None], float] = {}
        self._health = _Health(usable=False, reason="not checked yet")
        self._logged_route = "replica"
        self._first_check = threading.Event()
        self._first_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._probe: Engine | None = None
        # Analytics transactions sent each way so far (for benchmarks and health pages).
        self.routes: dict[str, int] = {"replica": 0, "primary": 0}

    # -- decisions ------------------------------------------------------------------

    @property
    def checking(self) -> bool:
        """Whether the replica is checked and left for the primary when unusable."""
        return self.settings.fallback

    def route(
        self,
        tenant_id: uuid.UUID | None,
        user_id: uuid.UUID | None = None,
        *,
        on_primary: bool = False,
    ) -> str:
        """Where a transaction of this tenant and user starting now runs: "replica" or
        "primary"."""
        if on_primary or self.wrote_recently(tenant_id, user_id):
            chosen = "primary"
        elif not self.checking:
            chosen = "replica"
        else:
            self._ensure_thread()
            if not self._first_check.is_set():
                self._check_first()
            chosen = "replica" if self._current().usable else "primary"
        self.routes[chosen] += 1
        return chosen

    def _check_first(self) -> None:
        """The first analytics transaction of the process waits for the first check (one
        caller measures, the others wait for it), so that it already reads where it
        should; `Database.warm_up()` does this at start-up instead."""
        with self._first_lock:
            if not self._first_check.is_set():
                self._set(self._measure())
                self._first_check.set()

    def wrote_recently(self, tenant_id: uuid.UUID | None, user_id: uuid.UUID | None = None) -> bool:
        window = self.settings.read_your_writes_ms
        if not window:
            return False
        at = self._writes.get((tenant_id, user_id))
        return at is not None and (time.monotonic() - at) * 1000 < window

    def note_write(self, tenant_id: uuid.UUID | None, user_id: uuid.UUID | None = None) -> None:
        """A write of this tenant and acting user was committed: their analytics read from
        the primary for POSTGRES_REPLICA_READ_YOUR_WRITES_MS. The Database's sessions call
        this."""
        if not self.settings.read_your_writes_ms:
            return
        now = time.monotonic()
        with self._lock:
            self._writes[(tenant_id, user_id)] = now
            if len(self._writes) > 10_000:  # forget windows that have ended
                horizon = now - self.settings.read_your_writes_ms / 1000
                self._writes = {k: v for k, v in self._writes.items() if v >= horizon}

    def _current(self) -> _Health:
        health = self._health
        if not health.usable or health.checked_mono is None:
            return health
        # A check that hangs (a replica that accepts connections and never answers) must
        # not keep the last good answer alive for ever.
        overdue = 3 * self.settings.check_interval_ms / 1000 + self._connect_timeout_s
        if time.monotonic() - health.checked_mono > overdue:
            return _Health(usable=False, reason=f"no answer to the lag check for {overdue:g} s")
        return health

    def status(self) -> ReplicaStatus:
        health = self._current()
        usable = health.usable or not self.checking
        return ReplicaStatus(
            replica=redact(self.replica_url),
            route="replica" if usable else "primary",
            checking=self.checking,
            lag_ms=health.lag_ms,
            in_recovery=health.in_recovery,
            reason=None if usable else health.reason,
            checked_at=health.checked_at,
        )

    # -- what tells it ----------------------------------------------------------------

    def report_failure(self, reason: str) -> None:
        """A connection to the replica failed: read from the primary until a check passes."""
        if not self.checking:
            return
        self._set(_Health(usable=False, reason=reason, checked_mono=time.monotonic()))
        self._wake.set()

    def check_now(self) -> ReplicaStatus:
        """Measure the replica once, now (in the caller's thread), and use the result."""
        self._set(self._measure())
        self._first_check.set()
        return self.status()

    def _measure(self) -> _Health:
        max_lag = self.settings.max_lag_ms
        now, mono = time.time(), time.monotonic()
        try:
            with self._probe_engine().connect() as conn:
                in_recovery, lag = measure_lag(conn)
        except sa_exc.SQLAlchemyError as exc:
            cause = exc.orig if isinstance(exc, sa_exc.DBAPIError) else exc
            reason = f"the replica {self.server} cannot be reached: {_first_line(cause)}"
            return _Health(False, reason, checked_at=now, checked_mono=mono)
        if not in_recovery:
            reason = f"{self.server} is not a replica (pg_is_in_recovery() is false: promoted?)"
            return _Health(False, reason, None, False, now, mono)
        if lag is None and max_lag is not None:
            reason = f"the replica {self.server} has not replayed a transaction yet (lag unknown)"
            return _Health(False, reason, None, True, now, mono)
        if lag is not None and max_lag is not None and lag > max_lag:
            reason = (
                f"the replica {self.server} is {lag:,.0f} ms behind "
                f"(POSTGRES_REPLICA_MAX_LAG_MS={max_lag})"
            )
            return _Health(False, reason, lag, True, now, mono)
        return _Health(True, None, lag, True, now, mono)

    def _set(self, health: _Health) -> None:
        with self._lock:
            self._health = health
            route = "replica" if health.usable else "primary"
            changed, self._logged_route = route != self._logged_route, route
        if not changed:
            return
        if route == "primary":
            log.warning(
                "analytics pool: reading from the primary instead of the replica %s: %s",
                self.server,
                health.reason,
            )
        else:
            lag = "" if health.lag_ms is None else f" (lag {health.lag_ms:,.0f} ms)"
            log.info("analytics pool: reading from the replica %s again%s", self.server, lag)

    # -- the check thread ---------------------------------------------------------------

    def _probe_engine(self) -> Engine:
        if self._probe is None:
            self._probe = create_engine(
                with_driver(self.replica_url, SYNC_DRIVER),
                poolclass=QueuePool,
                pool_size=1,
                max_overflow=0,
                pool_timeout=self._connect_timeout_s,
                connect_args=self._probe_connect_args(),
            )
        return self._probe

    def _probe_connect_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {
            "application_name": "platform-db:replica-check",
            "connect_timeout": self._connect_timeout_s,
        }
        if self.pgbouncer:  # PgBouncer refuses startup options; psycopg must not prepare
            args["prepare_threshold"] = None
        else:
            args["options"] = f"-c statement_timeout={self._connect_timeout_s * 1000}"
        return args

    def _ensure_thread(self) -> None:
        thread = self._thread
        if thread is not None and thread.is_alive() and self._pid == os.getpid():
            return
        with self._lock:
            if self._pid != os.getpid():  # a forked worker: the parent's thread is not here
                self._pid, self._probe, self._thread = os.getpid(), None, None
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._run, name="platform-db-replica-check", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        interval = self.settings.check_interval_ms / 1000
        while not self._stop.is_set():
            self._set(self._measure())
            self._first_check.set()
            self._wake.wait(interval)
            self._wake.clear()

    def wait_for_first_check(self, timeout_s: float | None = None) -> bool:
        """Start checking (unless POSTGRES_REPLICA_FALLBACK=off) and wait for the first
        answer; `Database.warm_up()` calls it."""
        if not self.checking:
            return True
        self._ensure_thread()
        return self._first_check.wait(
            timeout_s if timeout_s is not None else self._connect_timeout_s + 1
        )

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self._connect_timeout_s + 1)
        probe, self._probe = self._probe, None
        if probe is not None:
            probe.dispose()


# --- sessions ------------------------------------------------------------------------------


class AnalyticsSession(TenantSession):
    """A TenantSession of the analytics pool that runs each transaction on the replica or
    on the primary, as its `ReplicaRouter` decides when the transaction starts.

    `replica` and `primary` are the sync engines of the two (for an AsyncSession, the
    `sync_engine` of its AsyncEngines); `on_primary=True` reads from the primary always.
    """

    def __init__(
        self,
        bind: Engine | Connection | None = None,
        *,
        router: ReplicaRouter,
        replica: Engine,
        primary: Engine,
        on_primary: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(None, **kwargs)
        self.router = router
        self.on_primary = on_primary
        self._engines = {"replica": replica, "primary": primary}

    def get_bind(self, mapper: Any = None, *, clause: Any = None, **kw: Any) -> Any:
        if kw.get("bind") is not None:
            return kw["bind"]
        held: Connection | None = self.info.get(_HELD_KEY)
        if held is not None:
            return held
        route = self.route
        if route == "replica" and self.router.checking:
            # Open the transaction's connection to the replica here: if it cannot be had
            # (the replica went down since the last check), the transaction runs on the
            # primary instead of failing. The listener has told the router already.
            try:
                held = self._engines["replica"].connect()
            except sa_exc.OperationalError:
                self.info[_ROUTE_KEY] = "primary"
                return self._engines["primary"]
            self.info[_HELD_KEY] = held
            return held
        return self._engines[route]

    def close(self) -> None:
        try:
            super().close()
        finally:
            _release(self)

    @property
    def route(self) -> str:
        """Where this transaction runs ("replica" or "primary"); decided at its start."""
        chosen: str | None = self.info.get(_ROUTE_KEY)
        if chosen is None:
            scope = self.tenant_scope
            chosen = self.info[_ROUTE_KEY] = self.router.route(
                scope.tenant_id if scope else None,
                scope.user_id if scope else None,
                on_primary=self.on_primary,
            )
        return chosen


def _release(session: Session) -> None:
    """Back to the pool: the replica connection a transaction held (the session does not
    close a connection it was handed by get_bind, only ends its transaction)."""
    held: Connection | None = session.info.pop(_HELD_KEY, None)
    if held is not None:
        held.close()


@event.listens_for(AnalyticsSession, "after_transaction_end")
def _forget_route(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:
        session.info.pop(_ROUTE_KEY, None)
        _release(session)


# The service's own sessions (main and background pools) tell the router about their
# writes: an ORM flush, or an INSERT/UPDATE/DELETE/MERGE through Session.execute. Writes
# made otherwise (Session.connection().execute, another process) are announced with
# `Database.note_write(tenant_id)`, or read with `on_primary=True`.


@event.listens_for(TenantSession, "after_flush")
def _flushed(session: Session, flush_context: Any) -> None:
    if ROUTER_KEY in session.info:
        session.info[_WROTE_KEY] = True


@event.listens_for(TenantSession, "do_orm_execute")
def _executed(state: ORMExecuteState) -> None:
    info = state.session.info
    if ROUTER_KEY not in info or _WROTE_KEY in info:
        return
    statement = state.statement
    if (
        state.is_insert
        or state.is_update
        or state.is_delete
        or (isinstance(statement, TextClause) and _DML.match(statement.text))
    ):
        info[_WROTE_KEY] = True


@event.listens_for(TenantSession, "after_commit")
def _committed(session: Session) -> None:
    info = session.info
    if info.pop(_WROTE_KEY, None) and ROUTER_KEY in info:
        router: ReplicaRouter = info[ROUTER_KEY]
        scope = getattr(session, "tenant_scope", None)
        if scope is None:
            router.note_write(None)
        else:
            router.note_write(scope.tenant_id, scope.user_id)


@event.listens_for(TenantSession, "after_rollback")
def _rolled_back(session: Session) -> None:
    session.info.pop(_WROTE_KEY, None)


# --- engines ---------------------------------------------------------------------------


def explain_analytics_errors(
    *, pool: str, server: str, router: ReplicaRouter | None = None
) -> Callable[[ExceptionContext], BaseException | None]:
    """`handle_error` listener of the analytics pool's engines (replica and primary).

    A write (25006) becomes `ReadOnlyPoolError`, a recovery conflict
    `ReplicaConflictError`; a connection to the replica that fails or is lost tells the
    router (`router`: only on the replica's engine), which then reads from the primary
    when POSTGRES_REPLICA_MAX_LAG_MS is set.
    """

    def listener(context: ExceptionContext) -> BaseException | None:
        original = context.original_exception
        state = _sqlstate(original)
        current = getattr(context, "chained_exception", None) or context.sqlalchemy_exception
        statement = context.statement
        params = context.parameters
        if state == READ_ONLY_SQL_TRANSACTION:
            return ReadOnlyPoolError(
                statement,
                params,
                original,
                pool=pool,
                server=server,
                connection_invalidated=context.is_disconnect,
            )
        if state == SERIALIZATION_FAILURE and "conflict with recovery" in str(original):
            return ReplicaConflictError(
                statement,
                params,
                original,
                pool=pool,
                server=server,
                connection_invalidated=context.is_disconnect,
            )
        if router is not None and (context.is_disconnect or context.connection is None):
            reason = _first_line(getattr(current, "orig", None) or original)
            router.report_failure(f"the replica {server} failed: {reason}")
        return None

    return listener


__all__ = [
    "LAG_SQL",
    "ROUTER_KEY",
    "AnalyticsSession",
    "ReadOnlyPoolError",
    "ReplicaConflictError",
    "ReplicaRouter",
    "ReplicaStatus",
    "explain_analytics_errors",
    "is_recovery_conflict",
    "measure_lag",
    "server_of",
]
