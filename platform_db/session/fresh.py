"""Every transaction starts as on a fresh connection, whatever the previous request left.

A pooled connection serves one request after another, of different tenants (the
package's pools, and PgBouncer's server connections in transaction mode). SQL that a
request was tricked into running can leave session state behind; none of it may reach
the next request. What each kind of state gets:

* Session settings (`SET SESSION statement_timeout = 1`, `default_transaction_read_only`,
  a session-level `app.current_tenant_id`, `search_path`, `work_mem`, `SET ROLE`, ...):
  every transaction of the package's engines starts with `RESET ALL; RESET ROLE`, which
  returns each setting to its value at connection start.
* Cursors declared `WITH HOLD`: `CLOSE ALL`. The engines send their own settings at
  connection start (startup options), and those win over the login's role defaults, so
  `ALTER ROLE <own login> SET ...` (which any role may do for itself) cannot weaken them
  either. Behind PgBouncer there are no startup options: the prologue sets the pool's
  timeouts with `SET LOCAL` instead.
* The read/write mode of the transaction, fixed at BEGIN from the (possibly tampered)
  session default: `SET TRANSACTION READ WRITE` (READ ONLY on a read-only pool) right
  after BEGIN, before any query.
* Temporary objects shadowing the tables: impossible for platform_app (TEMPORARY on the
  database is revoked from PUBLIC; platform_db.ddl.security).
* Prepared statements: see platform_db.session.statements.
* Channels between sessions (large objects, pg_notify, advisory locks, other backends'
  query text, signalling other backends): revoked (platform_db.ddl.security,
  docs/SECURITY.md).

The prologue costs no round trip: with asyncpg it travels in the BEGIN message
(platform_db.session.asyncpg_connection); with psycopg it is sent with the tenant setting,
or before the first statement of a transaction without one. A connection in AUTOCOMMIT
has no transaction to start: its session is reset (`RESET ALL`) when it begins (with
asyncpg: before its first statement after each checkout), at the cost of one round trip.

A service's own session-level settings therefore belong in the connection's startup
options (the engines' `connect_args`), in `SET LOCAL` inside a transaction, or on the
role; a `SET` in a "connect" event listener lasts until the first transaction.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any

import psycopg
from sqlalchemy import Connection, Engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import ConnectionPoolEntry

from platform_db.session.asyncpg_connection import as_tenant_connection, quote_literal

_PENDING = "platform_db.prologue"
# In a pooled asyncpg connection's info: its prologue (set when it opens), and that it
# was reset in AUTOCOMMIT since it was checked out.
_PROLOGUE_KEY = "platform_db.connection_prologue"
_RESET_KEY = "platform_db.reset_in_autocommit"
_installed: weakref.WeakSet[Engine] = weakref.WeakSet()

# Statements with literals from code only: setting names and numbers (a simple-query
# message is parsed as a whole before its first statement runs, under the session's
# standard_conforming_strings, so nothing here may contain a backslash or a quote).
RESET_SESSION = "RESET ALL; RESET ROLE; CLOSE ALL"
_LIST_SETTINGS = frozenset({"search_path"})

# A Citus coordinator that passes SET LOCAL on to its workers (how the tenant reaches the
# shards, docs/SCALING.md) repeats SET TRANSACTION there as well, on each worker
# connection after a query of its own, where `[NOT] DEFERRABLE` is refused ("must be
# called before any query"): every transaction would fail. On such a connection the
# prologue leaves NOT DEFERRABLE out (the read/write mode is still set). Asked once per
# connection, when it opens.
_CITUS_KEY = "platform_db.citus_set_propagation"
CITUS_SQL = (
    "SELECT 1 WHERE pg_catalog.current_setting('citus.propagate_set_commands', true) = 'local'"
)
_NOT_DEFERRABLE = ", NOT DEFERRABLE"


def for_citus(prologue: str) -> str:
    """The prologue for a connection whose SET TRANSACTION reaches Citus workers."""
    return prologue.replace(_NOT_DEFERRABLE, "", 1)


def _psycopg_on_connect(dbapi_connection: Any, record: Any) -> None:
    autocommit = dbapi_connection.autocommit
    dbapi_connection.autocommit = True  # no transaction left open on the new connection
    try:
        record.info[_CITUS_KEY] = dbapi_connection.execute(CITUS_SQL).fetchone() is not None
    finally:
        dbapi_connection.autocommit = autocommit


def _asyncpg_on_connect(dbapi_connection: Any, record: Any) -> None:
    # One simple-query message outside any transaction; its status is "SELECT <rows>".
    status = str(dbapi_connection.run_async(lambda driver: driver.execute(CITUS_SQL)))
    record.info[_CITUS_KEY] = status == "SELECT 1"


def _for_connection(conn: Connection, prologue: str) -> str:
    return for_citus(prologue) if on_citus(conn) else prologue


def on_citus(conn: Connection) -> bool:
    """Whether `conn` is a connection to a Citus coordinator that passes SET LOCAL on to
    its workers: asked once per connection, when it opens (the package's engines) or
    here, the first time (an engine the package did not make)."""
    known = citus_known(conn)
    if known is None:
        known = remember_citus(conn, conn.exec_driver_sql(CITUS_SQL).first() is not None)
    return known


def citus_known(conn: Connection) -> bool | None:
    """`on_citus(conn)` without asking: None on a connection never asked (an async caller
    asks with CITUS_SQL itself and calls `remember_citus`)."""
    known = conn.connection.info.get(_CITUS_KEY)
    return None if known is None else bool(known)


def remember_citus(conn: Connection, answer: bool) -> bool:
    conn.connection.info[_CITUS_KEY] = answer
    return answer


def prologue_sql(*, read_only: bool, settings: Mapping[str, str] | None = None) -> str:
    """The statements that start every transaction of an engine (after its BEGIN).

    `RESET ALL` skips `role`, hence `RESET ROLE` (back to the login, or to a role given
    at connection start); `CLOSE ALL` closes cursors an earlier transaction left open
    `WITH HOLD` (with their rows, and their temporary files). The transaction's modes
    were fixed at BEGIN from the session's defaults, which an earlier request may have
    changed: they are set again before any query.
    """
    mode = "READ ONLY" if read_only else "READ WRITE"
    # First: the modes may only be set before any statement that takes a snapshot
    # (CLOSE ALL does).
    statements = [f"SET TRANSACTION {mode}, NOT DEFERRABLE", RESET_SESSION]
    for name, value in (settings or {}).items():
        if not name.replace("_", "").isalpha():
            raise ValueError(f"not a setting name: {name!r}")
        if name in _LIST_SETTINGS:
            # A quoted string would be one element: write the list as PostgreSQL reads it.
            if any(c in value for c in "'\\;"):
                raise ValueError(f"unexpected characters in {name} = {value!r}")
            statements.append(f"SET LOCAL {name} = {value}")
        else:
            statements.append(f"SET LOCAL {name} = {quote_literal(value)}")
    return "; ".join(statements)


def _driver_autocommit(conn: Connection) -> bool:
    return bool(getattr(conn.connection.dbapi_connection, "autocommit", False))


def run_simple(conn: Connection, sql: str) -> None:
    """Run `sql` (several statements, no parameters) on `conn`'s driver connection as one
    simple-query message: never a prepared statement, and no SQLAlchemy statement cache."""
    driver = conn.connection.driver_connection
    if as_tenant_connection(driver) is not None or _is_asyncpg(driver):
        conn.connection.dbapi_connection.run_async(  # type: ignore[union-attr]
            lambda d: d.execute(sql)
        )
    else:
        driver.execute(sql, prepare=False)  # type: ignore[union-attr]


def _is_asyncpg(driver: Any) -> bool:
    return type(driver).__module__.startswith("asyncpg")


def install(engine: Engine | AsyncEngine, prologue: str) -> None:
    """Start every transaction of `engine` with `prologue` (see the module docstring)."""
    sync_engine = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
    _installed.add(sync_engine)
    if isinstance(engine, AsyncEngine):
        _install_async(sync_engine, prologue)
        return
    event.listen(sync_engine, "connect", _psycopg_on_connect)

    @event.listens_for(sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if _driver_autocommit(conn):
            conn.info.pop(_PENDING, None)
            run_simple(conn, RESET_SESSION)
            return
        conn.info[_PENDING] = _for_connection(conn, prologue)

    @event.listens_for(sync_engine, "before_cursor_execute")
    def _flush(conn: Connection, *_: Any) -> None:
        # On the connection, not the statement's cursor (which may be a server-side one).
        pending = conn.info.pop(_PENDING, None)
        if pending is not None:
            try:
                run_simple(conn, pending)
            except psycopg.Error as exc:
                # As SQLAlchemy raises the driver's errors (2.0 would let this one through
                # unwrapped from an event listener).
                raise sa_exc.DBAPIError.instance(
                    pending, None, exc, psycopg.Error, dialect=conn.dialect
                ) from exc

    def _forget(conn: Connection) -> None:
        # A connection lost inside the transaction is invalidated: its `info` would try to
        # reconnect and raise PendingRollbackError in place of the error that ended it.
        if not conn.invalidated:
            conn.info.pop(_PENDING, None)

    event.listen(sync_engine, "commit", _forget)
    event.listen(sync_engine, "rollback", _forget)


def _install_async(sync_engine: Engine, prologue: str) -> None:
    """The prologue of an asyncpg engine, with no listener on the engine itself.

    Any engine-level listener makes SQLAlchemy join the engine's events to every
    Connection and look each event up again per connection: measured at 7% of the
    client's instructions per request of the benchmark (docs/PERFORMANCE.md). So each
    connection learns its prologue once, when the pool opens it, and its BEGIN carries
    it from then on (TenantConnection.prologue); a connection in AUTOCOMMIT, which sends
    no BEGIN, is reset before its first statement after each checkout, through the
    dialect's execute events (which cost no such lookup).
    """

    def _on_connect(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        _asyncpg_on_connect(dbapi_connection, record)
        own = for_citus(prologue) if record.info.get(_CITUS_KEY) else prologue
        record.info[_PROLOGUE_KEY] = own
        driver = as_tenant_connection(record.driver_connection)
        if driver is not None:
            driver.prologue = own

    event.listen(sync_engine, "connect", _on_connect)
    event.listen(sync_engine, "do_execute", _reset_autocommit)
    event.listen(sync_engine, "do_executemany", _reset_autocommit)
    event.listen(sync_engine, "do_execute_no_params", _reset_autocommit_no_params)
    event.listen(sync_engine.pool, "checkin", _forget_reset)


def _reset_autocommit(cursor: Any, statement: str, parameters: Any, context: Any) -> None:
    _reset_autocommit_no_params(cursor, statement, context)


def _reset_autocommit_no_params(cursor: Any, statement: str, context: Any) -> None:
    conn: Connection = context.root_connection
    if not _driver_autocommit(conn):
        return
    info = pooled_info(conn)
    if info is None or _RESET_KEY in info:
        return
    info[_RESET_KEY] = True
    run_simple(conn, RESET_SESSION)


def pooled_info(conn: Connection) -> dict[Any, Any] | None:
    """The pooled connection's `info` of `conn`; None for the connection SQLAlchemy
    makes to read the server's version when its engine first connects (it has none,
    and nothing of a request runs on it)."""
    try:
        return conn.info
    except NotImplementedError:
        return None


def _forget_reset(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
    record.info.pop(_RESET_KEY, None)


def installed(conn: Connection) -> bool:
    """Whether `conn`'s engine starts its transactions with a prologue."""
    return conn.engine in _installed


def take_pending(conn: Connection) -> str | None:
    """The prologue a transaction has not sent yet (the caller sends it now): psycopg's,
    or that of an asyncpg connection that cannot carry it with BEGIN (not a
    TenantConnection)."""
    pending: str | None = conn.info.pop(_PENDING, None)
    if pending is None and as_tenant_connection(conn.connection.driver_connection) is None:
        pending = conn.info.get(_PROLOGUE_KEY)
    return pending


__all__ = [
    "CITUS_SQL",
    "RESET_SESSION",
    "citus_known",
    "for_citus",
    "install",
    "installed",
    "on_citus",
    "pooled_info",
    "prologue_sql",
    "remember_citus",
    "run_simple",
    "take_pending",
]
