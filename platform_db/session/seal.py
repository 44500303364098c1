"""The tenant seal on the application's side: the key, the seal, the start-up check.

The database trusts `app.current_tenant_id` only with a seal that verifies
(platform_db.ddl.seal). A service holds the key in its environment:

    PLATFORM_DB_TENANT_KEY=<key id>:<secret, base64url>

as `platform-db tenant-key create` prints it. The package's engines read it when they
are made (`tenant_key=` overrides), and the tenant hook then sends, with every
transaction's BEGIN,

    SELECT platform.set_tenant('<tenant>', '<user>', '<key id>.<pid>.<step>.<hmac>')

where `<pid>` is the server process of the connection (0 behind PgBouncer, where the
client cannot know it) and `<step>` the current 60-second step. A seal read off one
connection is worthless on another, and after two minutes on any.

`check_tenant_key()` is the start-up check (`Database.from_env` runs it): it says, in one
line, when the database enforces seals and the service has no key, when the database does
not know the service's key (fingerprints shown, never keys), and when a seal made with it
does not verify (a wrong secret under a known id, a clock more than a minute off).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import os
import re
import secrets
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, text
from sqlalchemy.ext.asyncio import AsyncEngine

from platform_db.ddl.seal import (
    KEYS_TABLE,
    SEAL_SETTING,
    SEAL_STEP_SECONDS,
    SETTINGS_TABLE,
    TENANT_SETTING,
    USER_SETTING,
    WORKER_TABLES_SQL,
)
from platform_db.session.asyncpg_connection import as_tenant_connection, quote_literal

ENV_VAR = "PLATFORM_DB_TENANT_KEY"
_KEY_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
_PID_KEY = "platform_db.backend_pid"
_FINGERPRINT_PREFIX = b"platform-db tenant key fingerprint\x00"


class TenantKeyError(RuntimeError):
    """The tenant key is missing, malformed, unknown to the database or does not verify."""


@dataclass(frozen=True, slots=True)
class TenantKey:
    """A key of the tenant seal: an id the database knows it by, and 32 secret bytes."""

    key_id: str
    secret: bytes

    def __post_init__(self) -> None:
        if not _KEY_ID.match(self.key_id):
            raise TenantKeyError(
                f"tenant key id must be 1-32 of a-z, 0-9, '_', '-' (starting with a letter "
                f"or digit), got {self.key_id!r}"
            )
        if not 32 <= len(self.secret) <= 64:
            raise TenantKeyError(
                f"tenant key {self.key_id!r}: the secret must be 32 to 64 bytes, "
                f"got {len(self.secret)}"
            )

    def __repr__(self) -> str:  # never the secret
        return f"TenantKey({self.key_id!r}, fingerprint={self.fingerprint!r})"

    @classmethod
    def generate(cls, key_id: str) -> TenantKey:
        return cls(key_id, secrets.token_bytes(32))

    @classmethod
    def parse(cls, value: str, *, source: str = ENV_VAR) -> TenantKey:
        """`<key id>:<secret, base64url>` (what `encode()` and the CLI print)."""
        key_id, sep, encoded = value.strip().partition(":")
        if not sep or not encoded:
            raise TenantKeyError(
                f"{source} must be '<key id>:<secret>' (platform-db tenant-key create)"
            )
        try:
            secret = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        except (binascii.Error, ValueError):
            raise TenantKeyError(f"{source}: the secret is not base64url") from None
        return cls(key_id, secret)

    def encode(self) -> str:
        return f"{self.key_id}:{base64.urlsafe_b64encode(self.secret).decode().rstrip('=')}"

    @property
    def fingerprint(self) -> str:
        """16 hex digits that name the secret without revealing it."""
        return hashlib.sha256(_FINGERPRINT_PREFIX + self.secret).hexdigest()[:16]

    def pads(self) -> tuple[bytes, bytes]:
        """HMAC-SHA256's inner and outer pads (RFC 2104), what the database stores."""
        block = self.secret.ljust(64, b"\x00")
        return bytes(b ^ 0x36 for b in block), bytes(b ^ 0x5C for b in block)

    def seal(self, tenant: str, user: str, pid: int, *, now: float | None = None) -> str:
        """The seal of `tenant` and `user` (canonical UUID text or empty) for backend `pid`
        (0: any backend), valid in the 60-second step of `now` and the ones next to it."""
        step = int((time.time() if now is None else now) // SEAL_STEP_SECONDS)
        message = f"{tenant}|{user}|{pid}|{step}".encode()
        mac = hmac.new(self.secret, message, hashlib.sha256).hexdigest()
        return f"{self.key_id}.{pid}.{step}.{mac}"


def key_from_env(env: Mapping[str, str] | None = None) -> TenantKey | None:
    """The key in PLATFORM_DB_TENANT_KEY, None when unset or empty."""
    value = (os.environ if env is None else env).get(ENV_VAR, "").strip()
    return TenantKey.parse(value) if value else None


def key_from_env_or_new(key_id: str) -> TenantKey:
    """PLATFORM_DB_TENANT_KEY's key, else a new one (`key_id`) put there, so that this
    process's engines and its children seal with it (the test plugin, the benchmark)."""
    key = key_from_env()
    if key is None:
        key = TenantKey.generate(key_id)
        os.environ[ENV_VAR] = key.encode()
    return key


# --- Engines that seal ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sealing:
    key: TenantKey
    bound: bool  # seals name the connection's backend pid (not behind PgBouncer)


_sealing: weakref.WeakKeyDictionary[Engine, Sealing | None] = weakref.WeakKeyDictionary()
_from_env: dict[str, TenantKey] = {}


def install(engine: Engine | AsyncEngine, key: TenantKey | None, *, bound: bool) -> None:
    """Seal the tenant of every transaction of `engine` with `key` (None: do not seal)."""
    sync_engine = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
    _sealing[sync_engine] = None if key is None else Sealing(key, bound)


def sealing_of(engine: Engine | AsyncEngine) -> Sealing | None:
    """How `engine` seals: as `install` said (the package's engines), else, for an engine
    the package did not make, with PLATFORM_DB_TENANT_KEY, bound to the backend (for
    such an engine behind PgBouncer: `install(engine, key, bound=False)`)."""
    sync_engine = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
    if sync_engine in _sealing:
        return _sealing[sync_engine]
    value = os.environ.get(ENV_VAR, "").strip()
    if not value:
        return None
    key = _from_env.get(value)
    if key is None:
        key = _from_env[value] = TenantKey.parse(value)
    return Sealing(key, bound=True)


def backend_pid(conn: Connection) -> int:
    """The server process of `conn`, known to the driver since the connection opened."""
    info = conn.connection.info
    pid = info.get(_PID_KEY)
    if pid is None:
        driver: Any = conn.connection.driver_connection
        if as_tenant_connection(driver) is not None or type(driver).__module__.startswith(
            "asyncpg"
        ):
            pid = int(driver.get_server_pid())
        else:
            pid = int(driver.info.backend_pid)
        info[_PID_KEY] = pid
    return int(pid)


def unsealed_sql(tenant: str, user: str) -> str:
    """The tenant and user without a seal (a database that does not enforce seals)."""
    return (
        f"SET LOCAL {TENANT_SETTING} = {quote_literal(tenant)}; "
        f"SET LOCAL {USER_SETTING} = {quote_literal(user)}"
    )


def tenant_sql_for(pid: int, tenant: str, user: str = "", *, key: TenantKey | None = None) -> str:
    """What the tenant hook sends, for code that talks to a driver connection itself (the
    benchmark, tools): sealed with `key` (default: PLATFORM_DB_TENANT_KEY's) for backend
    `pid` (psycopg: `conn.info.backend_pid`; 0 behind PgBouncer), unsealed without a key."""
    key = key if key is not None else key_from_env()
    if key is None or not tenant:
        return unsealed_sql(tenant, user)
    return enter_sql(tenant, user, key.seal(tenant, user, pid))


def enter_sql(tenant: str, user: str, seal: str) -> str:
    """The tenant hook's statement when it seals (see the module docstring)."""
    return (
        f"SELECT platform.set_tenant({quote_literal(tenant)}, {quote_literal(user)}, "
        f"{quote_literal(seal)})"
    )


def citus_sql(tenant: str, user: str, seal: str) -> str:
    """The same as SET LOCAL, which a Citus coordinator passes on to its workers."""
    return (
        f"SET LOCAL {TENANT_SETTING} = {quote_literal(tenant)}; "
        f"SET LOCAL {USER_SETTING} = {quote_literal(user)}; "
        f"SET LOCAL {SEAL_SETTING} = {quote_literal(seal)}"
    )


def sealed_sql(conn: Connection, sealing: Sealing, tenant: str, user: str, *, citus: bool) -> str:
    """The statement that sets a sealed tenant on `conn` for its transaction."""
    if not tenant:
        return enter_sql("", "", "")
    pid = backend_pid(conn) if sealing.bound and not citus else 0
    step = int(time.time() // SEAL_STEP_SECONDS)
    return _sealed_statement(sealing.key, tenant, user, pid, step, citus=citus)


@functools.lru_cache(maxsize=4096)
def _sealed_statement(
    key: TenantKey, tenant: str, user: str, pid: int, step: int, *, citus: bool
) -> str:
    """The same statement for the same tenant, user, backend and step: made once (a
    connection serving one tenant's requests makes its HMAC once a minute)."""
    seal = key.seal(tenant, user, pid, now=step * SEAL_STEP_SECONDS)
    return citus_sql(tenant, user, seal) if citus else enter_sql(tenant, user, seal)


# --- Keys in the database (the CLI) and the start-up check ------------------------------


@dataclass(frozen=True, slots=True)
class SealState:
    enforced: bool
    unbound_seals: bool
    keys: tuple[tuple[str, str, Any], ...]  # (key id, fingerprint, valid until)


def read_state(conn: Connection) -> SealState | None:
    """The database's seal settings and keys; None before the revision that adds them."""
    if (
        conn.execute(text("SELECT to_regprocedure('platform.tenant_seal_state()')")).scalar()
        is None
    ):
        return None
    rows = conn.execute(text("SELECT * FROM platform.tenant_seal_state()")).all()
    if not rows:
        return None
    keys = tuple((r.key_id, r.fingerprint, r.valid_until) for r in rows if r.key_id is not None)
    return SealState(bool(rows[0].enforced), bool(rows[0].unbound_seals), keys)


def add_key(conn: Connection, key: TenantKey, *, valid_until: Any = None) -> None:
    """Store `key` (its pads) in the database; an existing id must have the same secret."""
    inner, outer = key.pads()
    found = conn.execute(
        text(f"SELECT fingerprint FROM {KEYS_TABLE} WHERE key_id = :id"), {"id": key.key_id}
    ).scalar()
    if found is not None:
        if found != key.fingerprint:
            raise TenantKeyError(
                f"tenant key {key.key_id!r} exists with another secret (fingerprint {found}, "
                f"this one {key.fingerprint}): choose another id"
            )
        return
    conn.execute(
        text(
            f"INSERT INTO {KEYS_TABLE} (key_id, fingerprint, inner_pad, outer_pad, valid_until) "
            "VALUES (:id, :fp, :inner, :outer, :until)"
        ),
        {
            "id": key.key_id,
            "fp": key.fingerprint,
            "inner": inner,
            "outer": outer,
            "until": valid_until,
        },
    )


def store_key(engine: Engine, key: TenantKey) -> bool:
    """Store `key` in the database of `engine` (its owner or a superuser) and copy the
    seal's tables to the Citus workers, if any; False before the revision that adds
    sealing (nothing to store it in). Two transactions: the workers get committed rows."""
    with engine.begin() as conn:
        if read_state(conn) is None:
            return False
        add_key(conn, key)
    with engine.begin() as conn:
        sync_workers(conn)
    return True


def set_enforced(conn: Connection, enforced: bool, *, unbound_seals: bool | None = None) -> None:
    conn.execute(text(f"UPDATE {SETTINGS_TABLE} SET enforced = :on"), {"on": enforced})
    if unbound_seals is not None:
        conn.execute(
            text(f"UPDATE {SETTINGS_TABLE} SET unbound_seals = :on"), {"on": unbound_seals}
        )


def sync_workers(conn: Connection) -> int:
    """On a Citus coordinator, make every worker's copy of the seal's tables equal to the
    coordinator's (the policies run on the workers); the number of workers. Elsewhere 0.

    Runs on each worker in a transaction of its own (run_command_on_workers): call it
    after the coordinator's change has committed, or again after a failure.
    """
    if (
        conn.execute(text("SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'citus'")).first()
        is None
    ):
        return 0
    keys = conn.execute(
        text(
            f"SELECT key_id, fingerprint, inner_pad, outer_pad, created_at, valid_until "
            f"FROM {KEYS_TABLE} ORDER BY key_id"
        )
    ).all()
    enforced, unbound = conn.execute(
        text(f"SELECT enforced, unbound_seals FROM {SETTINGS_TABLE}")
    ).one()

    def stamp(value: Any) -> str:
        return "NULL" if value is None else f"{quote_literal(value.isoformat())}::timestamptz"

    rows = ", ".join(
        f"({quote_literal(k.key_id)}, {quote_literal(k.fingerprint)}, "
        f"'\\x{bytes(k.inner_pad).hex()}'::bytea, '\\x{bytes(k.outer_pad).hex()}'::bytea, "
        f"{stamp(k.created_at)}, {stamp(k.valid_until)})"
        for k in keys
    )
    statements = [
        *WORKER_TABLES_SQL,
        f"DELETE FROM {KEYS_TABLE}",
        *([f"INSERT INTO {KEYS_TABLE} VALUES {rows}"] if rows else []),
        f"INSERT INTO {SETTINGS_TABLE} (enforced, unbound_seals) VALUES ({enforced}, {unbound}) "
        f"ON CONFLICT (singleton) DO UPDATE SET enforced = EXCLUDED.enforced, "
        "unbound_seals = EXCLUDED.unbound_seals",
    ]
    results = conn.execute(
        text("SELECT nodename, nodeport, success, result FROM run_command_on_workers(:c)"),
        {"c": "; ".join(statements)},
    ).all()
    failed = [f"{r.nodename}:{r.nodeport}: {r.result}" for r in results if not r.success]
    if failed:
        raise TenantKeyError("the seal's tables on the Citus workers: " + "; ".join(failed))
    return len(results)


def check_tenant_key(conn: Connection, key: TenantKey | None, *, bound: bool = True) -> str:
    """Raise TenantKeyError (one line) unless `key` lets this service's tenants through on
    the database of `conn`; return what was found. Runs one read-only transaction as the
    service's login."""
    state = read_state(conn)
    if state is None:
        return "tenant seal: not in this database (before revision that adds it)"
    known = ", ".join(f"{k} ({fp})" for k, fp, _ in state.keys) or "none"
    if key is None:
        if state.enforced:
            raise TenantKeyError(
                f"the database enforces sealed tenants and {ENV_VAR} is not set: set it to "
                f"the key `platform-db tenant-key create` printed (keys it knows: {known})"
            )
        return "tenant seal: not enforced, no key"
    match = [k for k, fp, _ in state.keys if k == key.key_id]
    if not match:
        raise TenantKeyError(
            f"the database does not know tenant key {key.key_id!r} (fingerprint "
            f"{key.fingerprint}); keys it knows: {known} (platform-db tenant-key list)"
        )
    fingerprint = next(fp for k, fp, _ in state.keys if k == key.key_id)
    if fingerprint != key.fingerprint:
        raise TenantKeyError(
            f"tenant key {key.key_id!r} has another secret here (fingerprint "
            f"{key.fingerprint}) than in the database ({fingerprint})"
        )
    if not state.enforced:
        return f"tenant seal: key {key.key_id} ({key.fingerprint}) known, not enforced yet"
    if not bound and not state.unbound_seals:
        raise TenantKeyError(
            "behind PgBouncer seals cannot name the server process, and the database takes "
            "no unbound seals: platform-db tenant-key unbound"
        )
    probe = "00000000-0000-0000-0000-000000000000"
    if conn.in_transaction():
        conn.rollback()  # the reads above began one
    transaction = conn.begin()
    try:
        pid = backend_pid(conn) if bound else 0
        conn.exec_driver_sql(enter_sql(probe, "", key.seal(probe, "", pid)))
        seen = conn.execute(text("SELECT platform.current_tenant_id()")).scalar()
    finally:
        transaction.rollback()
    if str(seen) != probe:
        raise TenantKeyError(
            f"a seal made with tenant key {key.key_id!r} ({key.fingerprint}) does not verify "
            "on the database: is its key retired, or this machine's clock more than a "
            "minute off the database server's?"
        )
    return f"tenant seal: key {key.key_id} ({key.fingerprint}) verifies, enforced"


__all__ = [
    "ENV_VAR",
    "SEAL_STEP_SECONDS",
    "SealState",
    "Sealing",
    "TenantKey",
    "TenantKeyError",
    "add_key",
    "backend_pid",
    "check_tenant_key",
    "enter_sql",
    "install",
    "key_from_env",
    "key_from_env_or_new",
    "read_state",
    "sealed_sql",
    "sealing_of",
    "set_enforced",
    "store_key",
    "sync_workers",
    "tenant_sql_for",
    "unsealed_sql",
]
