"""Throw-away databases and logins on a server: for the tests, the plugin and the benchmarks.

No pytest here: `platform-db bench-audit` and the import benchmark use these at run time.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from typing import TYPE_CHECKING

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

from platform_db.ddl.security import APP_ROLE, ident, scram_sha_256
from platform_db.session import seal
from platform_db.session.seal import TenantKey
from platform_db.session.settings import SYNC_DRIVER, with_driver

if TYPE_CHECKING:
    from alembic.config import Config


@contextlib.contextmanager
def temporary_database(
    server: URL,
    *,
    migrate: bool,
    prefix: str = "pdb_tmp",
    alembic_config: Config | None = None,
) -> Iterator[URL]:
    """A database of its own on `server`, optionally migrated to heads; dropped afterwards.

    Yields the superuser URL of the new database (psycopg driver), named
    ``<prefix>_<8 hex digits>`` (a plain lower-case identifier). `server` names a
    superuser on any database of that server. `alembic_config` is the history to migrate
    with, for example a service's (``runner.alembic_config(ini=...)``); default: the
    package's revisions.
    """
    name = ident(f"{prefix}_{secrets.token_hex(4)}")
    server = with_driver(server, SYNC_DRIVER)
    admin = create_engine(server, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = server.set(database=name)
        try:
            if migrate:
                _migrate(url, alembic_config)
            yield url
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def _migrate(url: URL, config: Config | None) -> None:
    from platform_db.migration import runner as migrations  # noqa: PLC0415 - loads alembic

    engine = create_engine(url, poolclass=NullPool)
    try:
        # Not inside a transaction of ours: the environment begins (and commits) its own,
        # so a revision may use an autocommit block (CREATE INDEX CONCURRENTLY), as it
        # does in a deploy.
        with engine.connect() as conn:
            migrations.upgrade(conn, "heads", config=config)
            conn.commit()
        provision_tenant_key(engine)
    finally:
        engine.dispose()


def provision_tenant_key(engine: Engine, key: TenantKey | None = None) -> TenantKey | None:
    """Store `key` (by default PLATFORM_DB_TENANT_KEY's, when set) in the database of
    `engine` (a superuser's), so the package's engines' seals verify there; the key."""
    key = key if key is not None else seal.key_from_env()
    if key is not None:
        seal.store_key(engine, key)
    return key


@contextlib.contextmanager
def temporary_app_login(admin: Engine, url: URL, *, prefix: str = "pdb_app") -> Iterator[URL]:
    """A LOGIN role that is only a member of platform_app, as a deployer makes it.

    Yields `url` with that login's name and password; the role, ``<prefix>_<8 hex
    digits>``, is dropped afterwards.
    The password goes to the server as its SCRAM verifier only.
    """
    name = ident(f"{prefix}_{secrets.token_hex(4)}")
    password = secrets.token_urlsafe(16)
    with admin.begin() as conn:
        # DDL takes no bind parameters; the name and password are generated here, and
        # exec_driver_sql because text() would read the verifier's ":" as a parameter.
        conn.exec_driver_sql(
            f"CREATE ROLE {name} LOGIN PASSWORD '{scram_sha_256(password)}' IN ROLE {APP_ROLE}"
        )
    try:
        yield url.set(username=name, password=password)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP ROLE IF EXISTS {name}"))


__all__ = ["provision_tenant_key", "temporary_app_login", "temporary_database"]
