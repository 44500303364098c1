"""Whether the login of a connection bypasses row-level security, found once per connection.

Superusers and roles with BYPASSRLS are not filtered by RLS: a tenant session on such a
login would see and change every tenant's rows while looking scoped to one. The tenant
hook (platform_db.session.tenancy) refuses that unless the caller opts in, and it needs
the answer at the start of every tenant transaction, so the answer is kept in the pool's
per-connection `info` (it lives as long as the DBAPI connection and is cleared when the
pool replaces it):

* the package's engines (make_engine / make_async_engine) ask when they open a
  connection, with one statement outside any transaction (`note_on_connect`): no tenant
  transaction waits for it, and asyncpg still sends the tenant setting with BEGIN;
* on any other engine the hook asks on the first tenant transaction of each connection
  (`bypasses_rls`), inside that transaction.

Either way it is one query per physical connection, none per transaction.

Owning a table is not a way around RLS here: every tenant table (and partition) of the
package is FORCE ROW LEVEL SECURITY, so the owner and members of platform_owner are
filtered like anyone. SUPERUSER and BYPASSRLS are attributes of the role itself, not
inherited through membership, so the flags of `current_user` are the whole answer. What
is cached is the answer for the role the connection had when it was asked: a
session-level `SET ROLE` issued later on the same connection is not seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, event, text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import ConnectionPoolEntry

_INFO_KEY = "platform_db.bypasses_rls"

# One row when the current role is not filtered by RLS, none when it is. A row count is
# what asyncpg reports for a simple-protocol execute(), so one text serves both drivers.
BYPASS_SQL = (
    "SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = current_user AND (rolsuper OR rolbypassrls)"
)
_DESCRIBE = text(
    "SELECT current_user, rolsuper, rolbypassrls FROM pg_catalog.pg_roles "
    "WHERE rolname = current_user"
)


@dataclass(frozen=True, slots=True)
class LoginAttributes:
    """The current role of a connection and why RLS does not filter it."""

    login: str
    superuser: bool
    bypassrls: bool

    @property
    def reason(self) -> str:
        """The role attributes that exempt it from RLS: "SUPERUSER", "BYPASSRLS" or both."""
        reasons = [("SUPERUSER", self.superuser), ("BYPASSRLS", self.bypassrls)]
        return ", ".join(name for name, applies in reasons if applies)


def _psycopg_on_connect(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
    # Autocommit for this one statement, so that no transaction is left open on the new
    # connection; psycopg switches the mode on the client only, as the connection is idle.
    autocommit = dbapi_connection.autocommit
    dbapi_connection.autocommit = True
    try:
        row = dbapi_connection.execute(BYPASS_SQL).fetchone()
    finally:
        dbapi_connection.autocommit = autocommit
    record.info[_INFO_KEY] = row is not None


def _asyncpg_on_connect(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
    # execute() without arguments is one simple-query message outside any transaction
    # (safe behind PgBouncer in transaction mode); its status is "SELECT <rows>".
    status = dbapi_connection.run_async(lambda driver: driver.execute(BYPASS_SQL))
    verb, _, rows = str(status).partition(" ")
    if verb == "SELECT" and rows.isdigit():
        record.info[_INFO_KEY] = int(rows) > 0
    # Anything else: left to the first tenant transaction (bypasses_rls) to ask.


def note_on_connect(engine: Engine | AsyncEngine) -> None:
    """Record, as each new connection of `engine` opens, whether its login bypasses RLS."""
    if isinstance(engine, AsyncEngine):
        event.listen(engine.sync_engine, "connect", _asyncpg_on_connect)
    else:
        event.listen(engine, "connect", _psycopg_on_connect)


def bypasses_rls(connection: Connection) -> bool:
    """Whether RLS does not filter `connection`'s login: cached, else asked once here."""
    cached: bool | None = connection.info.get(_INFO_KEY)
    if cached is None:
        cached = connection.execute(text(BYPASS_SQL)).first() is not None
        connection.info[_INFO_KEY] = cached
    return cached


def describe_login(connection: Connection) -> LoginAttributes:
    """The current role of `connection` and its SUPERUSER / BYPASSRLS flags."""
    login, superuser, bypassrls = connection.execute(_DESCRIBE).one()
    return LoginAttributes(str(login), bool(superuser), bool(bypassrls))


__all__ = ["BYPASS_SQL", "LoginAttributes", "bypasses_rls", "describe_login", "note_on_connect"]
