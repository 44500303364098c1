"""Prepared statements that a later request cannot redefine.

Drivers keep prepared statements on a connection and reuse them by name across
transactions: psycopg names them `_pg3_0`, `_pg3_1`, ... after five uses, asyncpg (through
SQLAlchemy) `__asyncpg_stmt_1__`, .... A request tricked into running
`DEALLOCATE _pg3_0; PREPARE _pg3_0 AS ...` on a pooled connection then ran its own SQL
in every later request that used the name: it captured their parameters, replaced their
results, or set the tenant. What the package's engines do instead:

* psycopg never prepares (`prepare_threshold=None`): each statement is an unnamed one,
  sent with its parameters in the same round trip. This is the synchronous path (tools,
  scripts, migrations); the request path of the benchmark is asyncpg.
* asyncpg's own statement cache is off (`statement_cache_size=0`: its internal queries,
  such as type introspection, use the unnamed statement), and the statements SQLAlchemy
  caches get random names (`secret_statement_name`, 122 random bits), which a request
  cannot guess. It could read them from `pg_prepared_statements`, so the revision revokes
  that view and its function from PUBLIC (platform_db.ddl.security). When the database
  still lets a login that RLS filters read them (the revision needs a superuser to
  revoke; a managed service may not allow it), its connections fall back to unnamed
  statements with no cache (`note_statement_names`): safe, at one extra round trip per
  statement, and a warning says so once.
* A request that deallocates the names it cannot see (`DEALLOCATE ALL`, `DISCARD ALL`)
  makes the next statement on that connection fail with "prepared statement ... does not
  exist": the error is treated as a lost connection, so the pool replaces the connection
  (platform_db.session.errors) and the request can be retried.
* Behind PgBouncer (transaction mode) nothing is cached and every statement gets a fresh
  random name (platform_db.session.engines).
* The tenant setting and the transaction prologue are never prepared statements: they
  are simple-query messages (platform_db.session.fresh).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import ConnectionPoolEntry

log = logging.getLogger(__name__)

# A row when the current role serves tenant requests (RLS filters it) and can list the
# session's prepared statements, so learn their names; none otherwise. A login RLS does
# not filter never serves tenant requests (platform_db.session.rls_bypass), so no
# request's SQL runs on its connections. Run as a simple-query message: its status line
# ("SELECT <rows>") is the answer, which works behind PgBouncer in transaction mode too.
NAMES_VISIBLE_SQL = (
    "SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = current_user "
    "AND NOT (rolsuper OR rolbypassrls) AND pg_catalog.has_function_privilege("
    "'pg_catalog.pg_prepared_statement()', 'EXECUTE')"
)
_INFO_KEY = "platform_db.statement_names_visible"
_warned: list[bool] = []  # warn once per process


def secret_statement_name() -> str:
    """A prepared statement name nobody else can guess."""
    return f"__pdb_{uuid.uuid4().hex}__"


def _unnamed() -> str:
    return ""


def _on_connect(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
    status = dbapi_connection.run_async(lambda driver: driver.execute(NAMES_VISIBLE_SQL))
    verb, _, rows = str(status).partition(" ")
    visible = not (verb == "SELECT" and rows == "0")
    record.info[_INFO_KEY] = visible
    if not visible:
        return
    # The statement names could be read and redefined by a request: use the unnamed
    # statement only, prepared and executed back to back, never cached.
    dbapi_connection._prepared_statement_cache = None
    dbapi_connection._prepared_statement_name_func = _unnamed
    if not _warned:
        _warned.append(True)
        log.warning(
            "this login can read pg_prepared_statements, so a request could learn and "
            "redefine the names of cached prepared statements: using unnamed statements "
            "(one more round trip per statement); run the platform-db revisions as a "
            "superuser to revoke it (docs/SECURITY.md)"
        )


def note_statement_names(engine: AsyncEngine) -> None:
    """Fall back to unnamed statements on connections whose login can read their names."""
    event.listen(engine.sync_engine, "connect", _on_connect)


def statement_names_visible(record_info: dict[str, Any]) -> bool | None:
    """What the connect check found for a connection (None: not checked)."""
    value: bool | None = record_info.get(_INFO_KEY)
    return value


__all__ = [
    "NAMES_VISIBLE_SQL",
    "note_statement_names",
    "secret_statement_name",
    "statement_names_visible",
]
