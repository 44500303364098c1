"""The tenant of a session, applied to every transaction by an `after_begin` hook.

Each new transaction runs, on the connection it uses, before any of the caller's
statements,

    SET LOCAL app.current_tenant_id = '<uuid>'; SET LOCAL app.current_user_id = '<uuid or empty>'

so the setting lives exactly as long as the transaction: it cannot ride a pooled
connection (or a PgBouncer server connection in transaction mode) into another request.
It is a simple-query message, never a prepared statement that an earlier request on the
connection could have redefined, and Citus propagates `SET LOCAL` to its workers. On the
package's engines it travels with the transaction's prologue (platform_db.session.fresh,
which resets whatever session state an earlier request left), and with asyncpg in the
same message as BEGIN (platform_db.session.asyncpg_connection). Row-level security does
the filtering; nothing here adds WHERE clauses.

The tenant comes from the session (``TenantSession(tenant_id=...)``, or a session made by
``tenant_sessionmaker``/``tenant_async_sessionmaker``) or, for frameworks that set it
once per request, from ``tenant_context()``. Without a tenant the hook still runs and
sets the empty string, so a session sees no tenant rows and can write none.

Refused, with a TenantError, before any of the caller's statements run:

* a tenant transaction on a login that RLS does not filter (a superuser, or a role with
  BYPASSRLS) - it would see and change every tenant's rows - unless the session was made
  with ``allow_rls_bypass=True`` (platform-wide scripts): `RowLevelSecurityBypassError`.
  Whether a login bypasses RLS is found once per connection
  (platform_db.session.rls_bypass), not per transaction. Sessions without a tenant are
  platform-wide by definition and not checked;
* a TenantSession on a connection in AUTOCOMMIT: there is no transaction for the
  setting to live in, so the statements would run with whatever the session held;
* a statement - ORM, Core, `text()`, or through `Session.connection()` - after the tenant
  changed inside an open transaction (`TenantChangeError`).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import uuid
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, event
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.engine.interfaces import CoreExecuteOptionsParameter
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import ORMExecuteState, Session, SessionTransaction, sessionmaker

from platform_db.models.base import is_tenant_owned
from platform_db.session import fresh, seal
from platform_db.session.asyncpg_connection import (
    TenantConnection,
    as_tenant_connection,
)
from platform_db.session.rls_bypass import bypasses_rls, describe_login

_INFO_KEY = "platform_db.tenant"
_APPLIED_KEY = "platform_db.applied_tenant"
_DEFERRED_KEY = "platform_db.deferred_on"
_REFUSED_KEY = "platform_db.refused"
# The scope the session's identity map was filled under.
_MAP_SCOPE_KEY = "platform_db.map_scope"
# The `info` of the connections of the session's transaction (it names the session).
_CONNECTIONS_KEY = "platform_db.connections"
# In a connection's info: the session whose transaction it serves (a weak reference).
_OWNER_KEY = "platform_db.tenant_session"
_UNSET = object()
_guarded_dialects: weakref.WeakSet[Dialect] = weakref.WeakSet()


class TenantError(RuntimeError):
    """Base class of the tenancy errors."""


class InvalidTenantIdError(TenantError, ValueError):
    """A tenant or user id is not a UUID."""


class TenantChangeError(TenantError):
    """The tenant was changed while a transaction was open."""


class TenantMismatchError(TenantError):
    """The session and the ambient tenant context disagree, or a row names another tenant."""


class RowLevelSecurityBypassError(TenantError):
    """A tenant session on a login that RLS does not filter (superuser or BYPASSRLS).

    Such a session would see and change every tenant's rows, whatever tenant it names.
    Use a login that is only a member of platform_app, or make the session with
    `allow_rls_bypass=True` for deliberate platform-wide work.
    """

    def __init__(self, login: str, reason: str, tenant_id: uuid.UUID) -> None:
        self.login = login
        self.reason = reason
        self.tenant_id = tenant_id
        super().__init__(
            f"tenant session for {tenant_id} refused: login {login!r} bypasses row-level "
            f"security ({reason}), so it would see and change every tenant's rows, not only "
            "this tenant's; connect as a login that is only a member of platform_app, or "
            "pass allow_rls_bypass=True (Database, TenantSession, tenant_sessionmaker) for "
            "platform-wide work"
        )


def canonical_uuid(value: object, *, what: str = "tenant id") -> uuid.UUID:
    """Parse a tenant or user id, refusing anything that is not a UUID.

    Accepts a `uuid.UUID` or its text form (any case, with or without braces); returns a
    UUID whose `str()` is the canonical lower-case form the database compares with.
    """
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str):
        try:
            return uuid.UUID(value.strip())
        except ValueError:
            pass
    raise InvalidTenantIdError(f"{what} must be a UUID, got {value!r}")


@dataclass(frozen=True, slots=True)
class TenantScope:
    """The tenant (and optionally the acting user) a transaction runs for."""

    tenant_id: uuid.UUID
    user_id: uuid.UUID | None = None

    @classmethod
    def of(cls, tenant_id: object, user_id: object | None = None) -> TenantScope:
        if isinstance(tenant_id, uuid.UUID | str) and isinstance(user_id, uuid.UUID | str | None):
            return _scope_of(tenant_id, user_id)
        return cls(
            canonical_uuid(tenant_id),
            None if user_id is None else canonical_uuid(user_id, what="user id"),
        )


# A session per request parses its tenant again and again: the scope of each (tenant, user)
# given is kept, keyed by exactly what was given (typed: a UUID and its text are two
# keys with the same scope), so one tenant's scope can never answer for another.
@functools.lru_cache(maxsize=4096, typed=True)
def _scope_of(tenant_id: uuid.UUID | str, user_id: uuid.UUID | str | None) -> TenantScope:
    return TenantScope(
        canonical_uuid(tenant_id),
        None if user_id is None else canonical_uuid(user_id, what="user id"),
    )


_current_scope: contextvars.ContextVar[TenantScope | None] = contextvars.ContextVar(
    "platform_db_tenant_scope", default=None
)


@contextlib.contextmanager
def tenant_context(tenant_id: object, user_id: object | None = None) -> Iterator[TenantScope]:
    """Set the ambient tenant for the code inside (a request, a task); contextvar-backed.

    Sessions without a tenant of their own use it for every transaction they begin
    inside the block. Works across `await`, and each asyncio task sees its own value.
    """
    scope = TenantScope.of(tenant_id, user_id)
    token = _current_scope.set(scope)
    try:
        yield scope
    finally:
        _current_scope.reset(token)


def current_scope() -> TenantScope | None:
    """The ambient tenant set by `tenant_context()`, if any."""
    return _current_scope.get()


class TenantSession(Session):
    """A Session bound to one tenant (or, without one, to the ambient tenant context).

    `TenantSession(engine, tenant_id=..., user_id=...)`; change the tenant between
    transactions with `set_tenant()`. Objects of tenant-owned models added without a
    `tenant_id` get the session's tenant on flush; one that names another tenant is
    refused before any SQL runs.

    A transaction with a tenant on a login that bypasses RLS (superuser, BYPASSRLS) raises
    `RowLevelSecurityBypassError` unless `allow_rls_bypass=True`: with it, the tenant is
    still set, but nothing filters the rows.
    """

    def __init__(
        self,
        bind: Engine | Connection | None = None,
        *,
        tenant_id: object | None = None,
        user_id: object | None = None,
        allow_rls_bypass: bool = False,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("expire_on_commit", False)
        super().__init__(bind, **kwargs)
        self.allow_rls_bypass = allow_rls_bypass
        if tenant_id is not None:
            self.info[_INFO_KEY] = TenantScope.of(tenant_id, user_id)
        elif user_id is not None:
            raise TenantError("user_id needs a tenant_id")

    @property
    def tenant_scope(self) -> TenantScope | None:
        """The scope the next (or current) transaction runs for."""
        return _resolve_scope(self)

    @property
    def tenant_id(self) -> uuid.UUID | None:
        scope = self.tenant_scope
        return scope.tenant_id if scope else None

    def connection(
        self,
        bind_arguments: dict[str, Any] | None = None,
        execution_options: CoreExecuteOptionsParameter | None = None,
    ) -> Connection:
        """Session.connection(), under the same tenant checks as the session's statements.

        A transaction already open for another tenant (tenant_context changed since it
        began) raises TenantChangeError; a new one gets the tenant hook like any other,
        and AUTOCOMMIT is refused there.
        """
        _check_unchanged(self)
        return super().connection(bind_arguments, execution_options)

    def set_tenant(self, tenant_id: object | None, user_id: object | None = None) -> None:
        """Bind the session to another tenant (or to none); only between transactions."""
        if self.in_transaction():
            raise TenantChangeError(
                "cannot change the tenant inside an open transaction; commit or roll back first"
            )
        if tenant_id is None:
            self.info.pop(_INFO_KEY, None)
        else:
            self.info[_INFO_KEY] = TenantScope.of(tenant_id, user_id)
        _forget_other_scopes_objects(self)

    def _identity_lookup(self, *args: Any, **kwargs: Any) -> Any:
        # Session.get() and many-to-one lazy loads look here first, without SQL: objects
        # loaded for another tenant must not answer them.
        _check_unchanged(self)
        _forget_other_scopes_objects(self)
        return super()._identity_lookup(*args, **kwargs)


def _resolve_scope(session: Session) -> TenantScope | None:
    own: TenantScope | None = session.info.get(_INFO_KEY)
    ambient = _current_scope.get()
    if own is not None and ambient is not None and own.tenant_id != ambient.tenant_id:
        raise TenantMismatchError(
            f"session is bound to tenant {own.tenant_id} but runs inside "
            f"tenant_context({ambient.tenant_id})"
        )
    return own or ambient


def _forget_other_scopes_objects(session: Session) -> None:
    """Detach the objects the identity map holds for another scope than the current one.

    With expire_on_commit=False a committed object stays in the map, and Session.get()
    answers from the map without SQL, so neither RLS nor the tenant checks would see it:
    after set_tenant() or under another tenant_context(), those objects are expunged
    (they stay readable where the caller holds them, detached). Pending objects are not
    in the map and are left alone.
    """
    mapped = session.info.get(_MAP_SCOPE_KEY, _UNSET)
    now = _resolve_scope(session)
    if mapped is _UNSET or mapped == now:
        session.info[_MAP_SCOPE_KEY] = now
        return
    if not session.in_transaction():
        for obj in list(session.identity_map.values()):
            session.expunge(obj)
        session.info[_MAP_SCOPE_KEY] = now


def scope_sql(tenant: str, user: str) -> str:
    """The statements that set the tenant and user of the current transaction, unsealed.

    `tenant` and `user` are canonical UUID text or empty (TenantScope makes them): the
    literals can hold neither a quote nor a backslash, whatever standard_conforming_strings
    the session was left with.
    """
    return seal.unsealed_sql(tenant, user)


def scope_statements(connection: Connection, tenant: str, user: str) -> str:
    """What sets the tenant and user of the transaction on `connection`: sealed when its
    engine has a tenant key (platform_db.session.seal), else `scope_sql`."""
    return _sealed_or_not(connection, seal.sealing_of(connection.engine), tenant, user)


def _sealed_or_not(
    connection: Connection, sealing: seal.Sealing | None, tenant: str, user: str
) -> str:
    if sealing is None:
        return scope_sql(tenant, user)
    return seal.sealed_sql(connection, sealing, tenant, user, citus=fresh.on_citus(connection))


@functools.lru_cache(maxsize=4096)
def _scope_statements(scope: TenantScope | None) -> str:
    """`scope_sql` of a scope, made once per scope (equal scopes: same tenant and user)."""
    if scope is None:
        return scope_sql("", "")
    return scope_sql(str(scope.tenant_id), str(scope.user_id) if scope.user_id else "")


class AutocommitTenantSessionError(TenantError):
    """A TenantSession was given a connection in AUTOCOMMIT."""

    def __init__(self) -> None:
        super().__init__(
            "a TenantSession cannot run in AUTOCOMMIT: the tenant lives in the transaction "
            "(SET LOCAL), and without one the statements would run with whatever the "
            "connection's session held; use a normal transaction, or a plain Connection "
            "for work that needs AUTOCOMMIT (VACUUM, CREATE INDEX CONCURRENTLY)"
        )


def _deferrable(connection: Connection) -> TenantConnection | None:
    """The asyncpg connection under `connection` if the setting can ride its BEGIN."""
    driver = as_tenant_connection(connection.connection.driver_connection)
    if driver is not None and not driver.is_in_transaction():
        return driver
    return None


def _refuse_rls_bypass(session: Session, connection: Connection, scope: TenantScope) -> None:
    """Raise if RLS would not filter this tenant transaction (one dict lookup when cached)."""
    if getattr(session, "allow_rls_bypass", False) or not bypasses_rls(connection):
        return
    login = describe_login(connection)
    _refuse(session, RowLevelSecurityBypassError(login.login, login.reason, scope.tenant_id))


def _refuse(session: Session, error: TenantError) -> None:
    # The transaction stays open on the session until the caller rolls back; any further
    # statement in it raises again (_check_unchanged) rather than run.
    session.info[_REFUSED_KEY] = error
    raise error


@event.listens_for(TenantSession, "after_begin")
def _apply_tenant(
    session: Session, transaction: SessionTransaction, connection: Connection
) -> None:
    if getattr(connection.connection.dbapi_connection, "autocommit", False):
        _refuse(session, AutocommitTenantSessionError())
    scope = _resolve_scope(session)
    if scope is not None:
        _refuse_rls_bypass(session, connection, scope)
    sealing = seal.sealing_of(connection.engine)
    if sealing is None:
        statements = _scope_statements(scope)  # cached per (tenant, user)
    else:
        tenant = str(scope.tenant_id) if scope else ""
        user = str(scope.user_id) if scope and scope.user_id else ""
        statements = _sealed_or_not(connection, sealing, tenant, user)
    driver = _deferrable(connection)
    if driver is not None:
        # Nothing has reached the server yet: the setting goes out with the BEGIN that
        # the first statement of the transaction sends, after the engine's prologue
        # (platform_db.session.asyncpg_connection, platform_db.session.fresh).
        if not fresh.installed(connection):
            driver.send_with_next_begin(fresh.RESET_SESSION)
        driver.send_with_next_begin(statements)
        session.info.setdefault(_DEFERRED_KEY, []).append(driver)
    elif fresh.installed(connection):
        prologue = fresh.take_pending(connection)
        fresh.run_simple(connection, f"{prologue}; {statements}" if prologue else statements)
    else:
        # An engine the package did not make: reset what an earlier request may have
        # left (its transaction is open, so RESET ALL is undone with a rollback), then
        # the setting, each statement on its own (any driver).
        for statement in f"{fresh.RESET_SESSION}; {statements}".split("; "):
            connection.exec_driver_sql(statement)
    session.info[_APPLIED_KEY] = scope
    if session.info.get(_MAP_SCOPE_KEY, _UNSET) != scope:
        if _MAP_SCOPE_KEY in session.info:
            for obj in list(session.identity_map.values()):
                session.expunge(obj)
        session.info[_MAP_SCOPE_KEY] = scope
    _guard_statements(session, connection)


def _guard_statements(session: Session, connection: Connection) -> None:
    """Check the tenant before every statement on `connection` while `session`'s
    transaction uses it, including statements run on a Connection the caller took from
    Session.connection() earlier (one dictionary lookup per statement)."""
    dialect = connection.dialect
    if dialect not in _guarded_dialects:
        _guarded_dialects.add(dialect)
        # The dialect's execute events, not the engine's before_cursor_execute: a
        # listener on the engine makes every Connection look up the engine's events
        # again (platform_db.session.fresh._install_async).
        event.listen(dialect, "do_execute", _check_owner_of)
        event.listen(dialect, "do_executemany", _check_owner_of)
        event.listen(dialect, "do_execute_no_params", _check_owner_no_params)
    info = connection.info  # the pooled connection's: it outlives this Connection object
    info[_OWNER_KEY] = weakref.ref(session)
    session.info.setdefault(_CONNECTIONS_KEY, []).append(info)


def _check_owner_of(cursor: Any, statement: str, parameters: Any, context: Any) -> None:
    _check_owner(context.root_connection)


def _check_owner_no_params(cursor: Any, statement: str, context: Any) -> None:
    _check_owner(context.root_connection)


def _check_owner(conn: Connection) -> None:
    info = fresh.pooled_info(conn)
    ref = info.get(_OWNER_KEY) if info is not None else None
    owner = ref() if ref is not None else None
    if owner is not None:
        _check_unchanged(owner)


def _check_unchanged(session: Session) -> None:
    if not session.in_transaction():
        return
    refused = session.info.get(_REFUSED_KEY)
    if refused is not None:
        raise refused
    if _APPLIED_KEY not in session.info:
        return
    applied = session.info[_APPLIED_KEY]
    now = _resolve_scope(session)
    if now != applied:
        raise TenantChangeError(
            "the tenant changed inside an open transaction "
            f"(began as {applied.tenant_id if applied else None}, "
            f"now {now.tenant_id if now else None}); commit or roll back first"
        )


@event.listens_for(TenantSession, "after_transaction_end")
def _forget_tenant(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:
        session.info.pop(_APPLIED_KEY, None)
        session.info.pop(_REFUSED_KEY, None)
        for info in session.info.pop(_CONNECTIONS_KEY, ()):
            ref = info.get(_OWNER_KEY)
            if ref is not None and ref() is session:
                del info[_OWNER_KEY]
        # A transaction that ran no statement sent no BEGIN: drop what waited for it.
        for driver in session.info.pop(_DEFERRED_KEY, ()):
            driver.discard_pending()


@event.listens_for(TenantSession, "do_orm_execute")
def _guard_execute(state: ORMExecuteState) -> None:
    _check_unchanged(state.session)


@event.listens_for(TenantSession, "before_flush")
def _fill_tenant(session: Session, flush_context: Any, instances: Any) -> None:
    _check_unchanged(session)
    scope = _resolve_scope(session)
    for obj in session.new:
        if not is_tenant_owned(type(obj)):
            continue
        if obj.tenant_id is None:
            if scope is None:
                raise TenantError(
                    f"cannot add {type(obj).__name__} without a tenant: "
                    "give the session a tenant_id or use tenant_context()"
                )
            obj.tenant_id = scope.tenant_id
        elif scope is not None and canonical_uuid(obj.tenant_id) != scope.tenant_id:
            raise TenantMismatchError(
                f"{type(obj).__name__} belongs to tenant {obj.tenant_id}, "
                f"but the session's tenant is {scope.tenant_id}"
            )


def tenant_sessionmaker(
    engine: Engine, *, allow_rls_bypass: bool = False, **kwargs: Any
) -> sessionmaker[TenantSession]:
    """A sessionmaker of TenantSessions: `factory(tenant_id=...)`.

    `allow_rls_bypass=True` lets its tenant sessions run on a login that RLS does not
    filter (platform-wide scripts); see TenantSession.
    """
    kwargs.setdefault("expire_on_commit", False)
    return sessionmaker(engine, class_=TenantSession, allow_rls_bypass=allow_rls_bypass, **kwargs)


def tenant_async_sessionmaker(
    engine: AsyncEngine, *, allow_rls_bypass: bool = False, **kwargs: Any
) -> async_sessionmaker[AsyncSession]:
    """An async_sessionmaker whose sessions run the tenant hook: `factory(tenant_id=...)`.

    The keyword arguments of a call (`tenant_id`, `user_id`, `allow_rls_bypass`) reach
    the underlying TenantSession.
    """
    kwargs.setdefault("expire_on_commit", False)
    return async_sessionmaker(
        engine,
        sync_session_class=TenantSession,
        allow_rls_bypass=allow_rls_bypass,
        **kwargs,
    )


def set_async_tenant(
    session: AsyncSession, tenant_id: object | None, user_id: object | None = None
) -> None:
    """`TenantSession.set_tenant` for an AsyncSession made by tenant_async_sessionmaker."""
    sync = session.sync_session
    if not isinstance(sync, TenantSession):
        raise TypeError("this AsyncSession was not made with sync_session_class=TenantSession")
    sync.set_tenant(tenant_id, user_id)


__all__ = [
    "AutocommitTenantSessionError",
    "InvalidTenantIdError",
    "RowLevelSecurityBypassError",
    "TenantChangeError",
    "TenantError",
    "TenantMismatchError",
    "TenantScope",
    "TenantSession",
    "canonical_uuid",
    "current_scope",
    "set_async_tenant",
    "tenant_async_sessionmaker",
    "tenant_context",
    "tenant_sessionmaker",
]
