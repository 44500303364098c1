"""Making the standbys of the replica tests, skipping or failing where one cannot be made.

A standby (platform_db.testing.standby) needs PostgreSQL server binaries of the test
server's version on this machine and a replication line in the server's pg_hba.conf.
Where either is missing the replica tests are skipped with the reason, unless
PLATFORM_DB_REQUIRE_REPLICA=1 (CI: .ci/run sets it), which turns the skip into a failure,
as PLATFORM_DB_REQUIRE_PGBOUNCER does for the PgBouncer tests.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import NoReturn

import pytest
from sqlalchemy.engine import URL

from platform_db.session.database import Database
from platform_db.testing.standby import (
    Binaries,
    Standby,
    StandbyUnavailable,
    describe_server,
    find_binaries,
    streaming_standby,
)

REQUIRE_REPLICA = "PLATFORM_DB_REQUIRE_REPLICA"


def unavailable(reason: str) -> NoReturn:
    if os.environ.get(REQUIRE_REPLICA) == "1":
        pytest.fail(f"{reason}; {REQUIRE_REPLICA}=1 requires a standby", pytrace=False)
    pytest.skip(f"no standby can be made here: {reason}")


@contextlib.contextmanager
def standby_or_skip(primary: URL) -> Iterator[Standby]:
    """A streaming standby of the test server, or a skip (a failure in CI) saying why."""
    with contextlib.ExitStack() as stack:
        try:
            standby = stack.enter_context(streaming_standby(primary))
        except StandbyUnavailable as exc:
            unavailable(str(exc))
        yield standby


def binaries_or_skip(server: URL) -> Binaries:
    """Server binaries of the test server's version (for a private primary), or a skip."""
    try:
        major = int(describe_server(server)["major"])
    except Exception as exc:  # any reason is a reason to skip here
        unavailable(f"cannot examine the test server: {exc}")
    found = find_binaries(major)
    if found is None:
        unavailable(f"no PostgreSQL {major} server binaries on this machine")
    return found


def replica_database(primary_app_url: URL, replica_url: URL, **env: str | int) -> Database:
    """A Database of the app login whose analytics pool reads from `replica_url`.

    Small pools; `env` adds or overrides POSTGRES_* variables (values as given).
    """
    settings: Mapping[str, str] = {
        "DATABASE_URL": primary_app_url.render_as_string(hide_password=False),
        "POSTGRES_REPLICA_URL": replica_url.render_as_string(hide_password=False),
        "POSTGRES_POOL_MIN": "1",
        "POSTGRES_POOL_MAX": "4",
        "POSTGRES_ANALYTICS_POOL_MIN": "1",
        "POSTGRES_ANALYTICS_POOL_MAX": "4",
        "POSTGRES_CONNECT_TIMEOUT": "2000",
        "POSTGRES_ANALYTICS_CONNECT_TIMEOUT": "2000",
        **{k: str(v) for k, v in env.items()},
    }
    return Database.from_env(settings)


def on_replica_url(standby: Standby, app_login: URL) -> URL:
    """The app login's URL on the standby (same login and password: the catalog is the
    primary's)."""
    return app_login.set(host="127.0.0.1", port=standby.port, query={})
