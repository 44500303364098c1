"""`platform-db tenant-key`: the keys of the tenant seal (platform_db.ddl.seal).

    create [ID]            a new key, stored, printed once as PLATFORM_DB_TENANT_KEY=...
    add                    store the key in PLATFORM_DB_TENANT_KEY (generated elsewhere)
    list                   ids, fingerprints, validity; enforcement
    fingerprint            the fingerprint of PLATFORM_DB_TENANT_KEY and whether it is known
    rotate [ID] --grace D  a new key; every other key stays valid for D (default 24h)
    retire ID              delete a key (its seals stop verifying at once)
    enforce [--off]        refuse (or again take) unsealed tenants
    unbound [--off]        take (or refuse) seals not bound to a backend (PgBouncer)
    sync                   copy the keys and settings to the Citus workers again

Every change is one transaction on the database, then the same rows on the Citus
workers, if any. Rotation without a failed request: `rotate`, deploy the services with
the new key (old and new both verify meanwhile), `retire` the old one.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from sqlalchemy import Engine, text

from platform_db.ddl.seal import KEYS_TABLE
from platform_db.session import seal
from platform_db.session.seal import TenantKey, TenantKeyError

_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: str) -> dt.timedelta:
    match = _DURATION.match(value.strip())
    if not match:
        raise TenantKeyError(f"a duration is a number and s, m, h or d (e.g. 24h), got {value!r}")
    return dt.timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


def _next_id(conn: Any) -> str:
    ids = set(conn.execute(text(f"SELECT key_id FROM {KEYS_TABLE}")).scalars())
    n = 1
    while f"k{n}" in ids:
        n += 1
    return f"k{n}"


def _state(conn: Any) -> seal.SealState:
    state = seal.read_state(conn)
    if state is None:
        raise TenantKeyError(
            "this database has no tenant seal yet: run `platform-db upgrade` (or alembic "
            "upgrade head) first"
        )
    return state


def _new_key(conn: Any, key_id: str | None, grace: str | None) -> list[str]:
    lines = []
    new = TenantKey.generate(key_id or _next_id(conn))
    if grace is not None:  # rotate
        until = dt.datetime.now(dt.UTC) + parse_duration(grace)
        conn.execute(
            text(
                f"UPDATE {KEYS_TABLE} SET valid_until = :until "
                "WHERE valid_until IS NULL OR valid_until > :until"
            ),
            {"until": until},
        )
        lines.append(f"other keys valid until {until.isoformat(timespec='seconds')}")
    seal.add_key(conn, new)
    lines.append(
        f"key {new.key_id} (fingerprint {new.fingerprint}) stored; give the services "
        "(shown once, keep it secret):"
    )
    lines.append(f"{seal.ENV_VAR}={new.encode()}")
    return lines


def _add(conn: Any) -> list[str]:
    key = seal.key_from_env()
    if key is None:
        raise TenantKeyError(f"{seal.ENV_VAR} is not set: the key to add")
    seal.add_key(conn, key)
    return [f"key {key.key_id} (fingerprint {key.fingerprint}) stored"]


def _retire(conn: Any, state: seal.SealState, key_id: str | None) -> list[str]:
    if not key_id:
        raise TenantKeyError("retire needs the key's id (platform-db tenant-key list)")
    gone = conn.execute(text(f"DELETE FROM {KEYS_TABLE} WHERE key_id = :id"), {"id": key_id})
    if not gone.rowcount:
        raise TenantKeyError(f"no tenant key {key_id!r} (platform-db tenant-key list)")
    lines = [f"key {key_id} retired: its seals no longer verify"]
    if state.enforced and len(state.keys) == 1:
        lines.append(
            "warning: no key is left and seals are enforced: no tenant session sees any "
            "row until a key is added"
        )
    return lines


def _change(
    conn: Any, state: seal.SealState, action: str, *, key_id: str | None, off: bool, grace: str
) -> list[str]:
    if action in ("create", "rotate"):
        return _new_key(conn, key_id, grace if action == "rotate" else None)
    if action == "add":
        return _add(conn)
    if action == "retire":
        return _retire(conn, state, key_id)
    if action == "enforce":
        seal.set_enforced(conn, not off)
        return ["unsealed tenants are " + ("taken again" if off else "refused")]
    if action == "unbound":
        seal.set_enforced(conn, state.enforced, unbound_seals=not off)
        return ["seals not bound to a backend are " + ("refused" if off else "taken")]
    if action == "sync":
        return []  # run() copies to the workers after every change
    raise TenantKeyError(f"unknown action {action!r}")


def _report(state: seal.SealState) -> list[str]:
    lines = [
        f"sealing {'enforced' if state.enforced else 'NOT enforced'}; seals not bound to a "
        f"backend {'taken' if state.unbound_seals else 'refused'}"
    ]
    for key_id, fingerprint, until in state.keys:
        valid = "valid" if until is None else f"valid until {until.isoformat(timespec='seconds')}"
        lines.append(f"  {key_id}  {fingerprint}  {valid}")
    if not state.keys:
        lines.append("  no keys (platform-db tenant-key create)")
    return lines


def _fingerprint(state: seal.SealState) -> str:
    key = seal.key_from_env()
    if key is None:
        raise TenantKeyError(f"{seal.ENV_VAR} is not set")
    known = any(k == key.key_id and fp == key.fingerprint for k, fp, _ in state.keys)
    return f"{key.key_id} {key.fingerprint} " + (
        "known to the database" if known else "NOT known to the database"
    )


def run(
    engine: Engine, action: str, *, key_id: str | None = None, off: bool = False, grace: str = "24h"
) -> list[str]:
    """Do `action`; the lines to print. Raises TenantKeyError with a one-line reason."""
    lines: list[str] = []
    reading = action in ("list", "fingerprint")
    with engine.begin() as conn:
        state = _state(conn)
        if not reading:
            lines += _change(conn, state, action, key_id=key_id, off=off, grace=grace)
            state = _state(conn)
    if not reading:
        with engine.begin() as conn:
            workers = seal.sync_workers(conn)
        if workers:
            lines.append(f"copied to {workers} Citus workers")
    if action == "fingerprint":
        lines.append(_fingerprint(state))
    if action != "create":
        lines += _report(state)
    return lines


__all__ = ["parse_duration", "run"]
