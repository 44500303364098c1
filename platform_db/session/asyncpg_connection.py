"""Send the transaction's prologue together with BEGIN: one round trip (asyncpg).

With asyncpg, SQLAlchemy starts a transaction lazily, just before the first statement,
by sending `BEGIN` on its own; the tenant hook then ran its setting as a second round
trip, and only then came the query. Sending both in one message made the benchmark's
requests 8.5% faster, with less CPU on both sides (docs/PERFORMANCE.md).

`TenantConnection` is an asyncpg connection class (`connect(connection_class=...)`; the
package's async engines use it) that sends more statements in the same simple-query
message as each `BEGIN`: first its `prologue`, which makes every transaction start as on
a fresh connection (platform_db.session.fresh sets it once, when the pool opens the
connection), then what the tenant hook queued for the next BEGIN (platform_db.session.tenancy):

    BEGIN ISOLATION LEVEL READ COMMITTED; RESET ALL; SET TRANSACTION READ WRITE;
    SET LOCAL app.current_tenant_id = '<uuid>'; SET LOCAL app.current_user_id = ''

PostgreSQL runs them in order within one message, so everything is in place before any
statement of the transaction, and `SET LOCAL` ends with the transaction. A simple-query
message is never a prepared statement, so no earlier request can redefine it.

Safety rules, all enforced here or by the hooks:

* only a statement whose text starts with `BEGIN` carries them (never a SAVEPOINT, never
  a statement with parameters);
* the hooks defer only when the connection is not in a transaction yet; otherwise they
  run their statements on their own;
* deferred statements that no BEGIN picked up are dropped when the session's transaction
  ends and when the connection goes back to the pool, so they can never reach a later
  transaction of another session.
"""

from __future__ import annotations

from typing import Any, cast

import asyncpg


def quote_literal(value: str) -> str:
    """A PostgreSQL string literal (standard_conforming_strings is on since 9.1)."""
    if "\x00" in value:
        raise ValueError("a PostgreSQL string cannot contain NUL")
    return "'" + value.replace("'", "''") + "'"


class TenantConnection(asyncpg.Connection):  # type: ignore[misc]  # asyncpg ships no types
    """An asyncpg connection that can send statements with the next BEGIN."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._with_begin: list[str] = []
        # What every BEGIN of this connection carries first (the engine's transaction
        # prologue, platform_db.session.fresh), set once when the pool opens it.
        self.prologue: str | None = None

    def send_with_next_begin(self, statement: str) -> None:
        """Send `statement` in the same message as the next BEGIN, after any queued earlier."""
        if self.is_in_transaction():
            raise RuntimeError("the connection is already in a transaction")
        self._with_begin.append(statement.rstrip().rstrip(";"))

    def discard_pending(self) -> bool:
        """Forget what no BEGIN picked up; True if there was something."""
        had = bool(self._with_begin)
        self._with_begin = []
        return had

    @property
    def pending(self) -> str | None:
        """What the next BEGIN will carry after the prologue, or None."""
        return "; ".join(self._with_begin) if self._with_begin else None

    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str:
        if (
            (self.prologue or self._with_begin)
            and not args
            and query.lstrip()[:5].upper() == "BEGIN"
        ):
            parts = [query.rstrip().rstrip(";")]
            if self.prologue:
                parts.append(self.prologue)
            parts += self._with_begin
            self._with_begin = []
            query = "; ".join(parts)
        result: str = await super().execute(query, *args, timeout=timeout)
        return result


def as_tenant_connection(driver: object) -> TenantConnection | None:
    """`driver` if it is a TenantConnection, else None.

    Not isinstance(): asyncpg's Connection metaclass answers isinstance() for every
    asyncpg connection, whatever its class.
    """
    if issubclass(type(driver), TenantConnection):
        return cast(TenantConnection, driver)
    return None


__all__ = ["TenantConnection", "as_tenant_connection", "quote_literal"]
