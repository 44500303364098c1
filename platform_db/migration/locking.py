"""Migrations of one database run one at a time; the cluster's roles are created safely.

The migration lock is a transaction-level advisory lock with a fixed key,
`MIGRATION_LOCK_KEY` (8100956982295360109, the bytes of "platform" read as a big-endian
bigint). The environment (platform_db.migration.environment) takes it at the start of the
migration transaction, before Alembic reads or creates the version table, so a second
`upgrade` of the same database waits for the first to commit and then finds nothing to
do. A service's environment takes the same key: every migration of a database, the
package's and the services', runs alone. The key is per database (advisory locks are),
and nothing else in platform-db uses it.

Waiting is bounded by `PLATFORM_DB_MIGRATION_LOCK_WAIT` (default `10min`). The wait polls
`pg_try_advisory_xact_lock` rather than blocking in `pg_advisory_xact_lock`: a blocked
statement keeps a snapshot open, and a `CREATE INDEX CONCURRENTLY` of the migration that
holds the lock would wait for that snapshot (a deadlock); between polls the waiting
transaction holds no snapshot.

The three group roles are cluster-wide, so the lock of one database does not serialise
their creation: `ensure_roles` creates the missing ones, each in a savepoint that
tolerates a concurrent creator (the duplicate is caught and the role taken as created),
before the migration transaction begins. The baseline revision then finds them present.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence

import sqlalchemy as sa
from alembic.util import CommandError
from sqlalchemy import Connection, text

log = logging.getLogger("alembic.runtime.platform_db")

MIGRATION_LOCK_KEY = int.from_bytes(b"platform", "big")  # 8100956982295360109
LOCK_WAIT_VARIABLE = "PLATFORM_DB_MIGRATION_LOCK_WAIT"
DEFAULT_LOCK_WAIT = "10min"

# The group roles of docs/DESIGN.md, as the baseline revision (e5f7a9b1d407) creates them:
# NOLOGIN, BYPASSRLS for platform_admin only, and this comment (its downgrade drops only
# roles that carry it).
PLATFORM_ROLES: tuple[tuple[str, bool], ...] = (
    ("platform_owner", False),
    ("platform_app", False),
    ("platform_admin", True),
)
ROLE_COMMENT = "created by platform-db"

_DURATION = re.compile(r"^(\d+)(ms|s|min)?$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "min": 60.0, None: 0.001}  # bare number: ms
_ROLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
# unique_violation (pg_authid's index, when the other creator commits while we wait) and
# duplicate_object (when it committed before our CREATE ROLE began).
_DUPLICATE = {"23505", "42710"}


class MigrationLockTimeout(CommandError):
    """Another migration of this database held the lock for longer than the wait."""


def migration_lock_wait() -> str:
    """How long a migration waits for another one of the same database to finish:
    PLATFORM_DB_MIGRATION_LOCK_WAIT, like `10min`, `30s`, `500ms`; `0` does not wait."""
    value = os.environ.get(LOCK_WAIT_VARIABLE, DEFAULT_LOCK_WAIT).strip()
    if not _DURATION.match(value):
        raise CommandError(
            f"{LOCK_WAIT_VARIABLE} must look like 10min, 30s or 500ms, not {value!r}"
        )
    return value


def _seconds(duration: str) -> float:
    match = _DURATION.match(duration)
    if match is None:
        raise ValueError(f"not a duration: {duration!r}")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def _holder(connection: Connection) -> str:
    """Who holds the migration lock, for the messages."""
    row = connection.execute(
        text(
            "SELECT a.pid, a.application_name, a.xact_start "
            "FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_stat_activity a USING (pid) "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
            "AND l.database = (SELECT oid FROM pg_catalog.pg_database "
            "                  WHERE datname = pg_catalog.current_database()) "
            "AND l.classid::bigint = :hi AND l.objid::bigint = :lo LIMIT 1"
        ),
        {"hi": MIGRATION_LOCK_KEY >> 32, "lo": MIGRATION_LOCK_KEY & 0xFFFFFFFF},
    ).first()
    if row is None:
        return "its holder just finished"
    since = (
        f", in its transaction since {row.xact_start:%Y-%m-%d %H:%M:%S %Z}"
        if row.xact_start
        else ""
    )
    return f"pid {row.pid}, application_name {row.application_name or '-'!r}{since}"


def take_migration_lock(connection: Connection, *, wait: str | None = None) -> None:
    """Take the migration lock in the connection's current transaction, waiting up to
    `wait` (default PLATFORM_DB_MIGRATION_LOCK_WAIT) for another migration to finish.

    Re-entrant: a session that holds it (the package's upgrade run by a service's
    environment on the same connection) gets it again at once.
    """
    limit = _seconds(wait if wait is not None else migration_lock_wait())
    deadline = time.monotonic() + limit
    delay = 0.05
    announced = False
    try_lock = text("SELECT pg_catalog.pg_try_advisory_xact_lock(:key)")
    while not connection.scalar(try_lock, {"key": MIGRATION_LOCK_KEY}):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise MigrationLockTimeout(
                f"another migration of this database is running ({_holder(connection)}); "
                f"gave up after waiting {wait or migration_lock_wait()} "
                f"({LOCK_WAIT_VARIABLE}): retry when it has finished"
            )
        if not announced:
            log.warning(
                "another migration of this database is running (%s): waiting for it",
                _holder(connection),
            )
            announced = True
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, 1.0)
    if announced:
        log.warning("the other migration finished: going on")


def offline_lock_statements(lock_timeout: str) -> list[str]:
    """What an offline script (`--sql`) runs first in its transaction: the same lock,
    waited for up to PLATFORM_DB_MIGRATION_LOCK_WAIT, then the migration's lock_timeout."""
    wait = migration_lock_wait()
    return [
        f"SET LOCAL lock_timeout = '{wait}'",
        f"SELECT pg_catalog.pg_advisory_xact_lock({MIGRATION_LOCK_KEY})",
        f"SET LOCAL lock_timeout = '{lock_timeout}'",
    ]


@contextlib.contextmanager
def held_across_commit(
    execute: Callable[[str], object], *, online_connection: Connection | None
) -> Iterator[None]:
    """Keep the migration lock while an autocommit block commits the migration's
    transaction (CREATE INDEX CONCURRENTLY): a session-level hold of the same key is taken
    before the commit and handed back to a transaction-level one after the block.

    `execute` runs one SQL string (Alembic's `op.execute` of a text clause), so that an
    offline script gets the same statements.
    """
    lock = f"SELECT pg_catalog.pg_advisory_lock({MIGRATION_LOCK_KEY})"
    relock = f"SELECT pg_catalog.pg_advisory_xact_lock({MIGRATION_LOCK_KEY})"
    unlock = f"SELECT pg_catalog.pg_advisory_unlock({MIGRATION_LOCK_KEY})"
    execute(lock)
    try:
        yield
    except BaseException:
        if online_connection is not None:
            # Do not leave a session-level lock on a connection that goes back to a pool;
            # the error being raised is the one to report.
            with contextlib.suppress(sa.exc.DBAPIError):
                online_connection.execute(text(unlock))
        raise
    execute(relock)
    execute(unlock)


def _sqlstate(exc: sa.exc.DBAPIError) -> str | None:
    return getattr(exc.orig, "sqlstate", None)


def ensure_roles(
    connection: Connection, roles: Sequence[tuple[str, bool]] = PLATFORM_ROLES
) -> list[str]:
    """Create the missing group roles, as the baseline revision would (NOLOGIN, BYPASSRLS
    or NOBYPASSRLS, the platform-db comment), safe against another database of the
    cluster creating them at the same moment. Returns the roles this call created.

    Outside a transaction, it runs in one of its own and commits; inside the caller's, it
    uses savepoints only. Each role is created in a savepoint: a concurrent creator's
    role (unique_violation once it commits while this one waits, or duplicate_object) is
    taken as created.
    """
    for name, _ in roles:
        if not _ROLE_NAME.match(name):
            raise ValueError(f"refusing unexpected role name {name!r}")
    # The catalog read below begins a transaction (autobegin): decide before it whose
    # transaction this is.
    own = not connection.in_transaction()
    created: list[str] = []
    try:
        present = {
            r[0]
            for r in connection.execute(
                text("SELECT rolname FROM pg_catalog.pg_roles WHERE rolname = ANY(:names)"),
                {"names": [name for name, _ in roles]},
            )
        }
        missing = [(name, bypass) for name, bypass in roles if name not in present]
        if own and missing:
            # Waiting behind another creator's uncommitted role is bounded like the wait
            # for the migration lock.
            connection.execute(
                text("SELECT set_config('lock_timeout', :t, true)"), {"t": migration_lock_wait()}
            )
        for name, bypass in missing:
            try:
                with connection.begin_nested():
                    connection.exec_driver_sql(
                        f'CREATE ROLE "{name}" NOLOGIN {"BYPASSRLS" if bypass else "NOBYPASSRLS"}'
                    )
                    connection.exec_driver_sql(f"COMMENT ON ROLE \"{name}\" IS '{ROLE_COMMENT}'")
            except sa.exc.DBAPIError as exc:
                if _sqlstate(exc) not in _DUPLICATE:
                    raise
                log.info("role %s was created concurrently by another migration", name)
                continue
            created.append(name)
        if own:
            connection.commit()
    except BaseException:
        if own:
            connection.rollback()
        raise
    if created:
        log.info("created the group role(s) %s", ", ".join(created))
    return created


__all__ = [
    "DEFAULT_LOCK_WAIT",
    "LOCK_WAIT_VARIABLE",
    "MIGRATION_LOCK_KEY",
    "PLATFORM_ROLES",
    "ROLE_COMMENT",
    "MigrationLockTimeout",
    "ensure_roles",
    "migration_lock_wait",
    "offline_lock_statements",
    "take_migration_lock",
]
