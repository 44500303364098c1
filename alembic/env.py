"""Alembic environment of platform-db.

The URL comes from the caller's connection (config.attributes["connection"], as the
tests and the CLI pass it), else from DATABASE_URL. Every run ends by handing ownership
of what it created to platform_owner.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from logging.config import fileConfig
from typing import Any, Literal

from alembic import context
from alembic.operations import MigrationScript
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, create_engine, pool, text

from platform_db.ddl.security import claim_ownership_sql
from platform_db.migration.autogenerate import prepare_revision  # also registers the comparator
from platform_db.migration.operations import migration_lock_timeout
from platform_db.migration.runner import managed_relations
from platform_db.models import metadata
from platform_db.session.settings import SYNC_DRIVER, database_url_from_env, with_driver

config = context.config
target_metadata = metadata

# The alembic command line logs what it does and what autogenerate detects (alembic.ini's
# [loggers]); code that runs the revisions (platform_db.migration.runner) keeps its own.
if config.cmd_opts is not None and config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

# Partitions detached by retirement stay as tables of their own.
RETIRED_PARTITION = re.compile(r"^(form_submissions|audit_log)_(\d{4}_\d{2}|default)$")

# A deploy must never queue behind a long-running lock and stall the application's
# queries behind it: give up after this long instead, and retry the deploy.
LOCK_TIMEOUT = migration_lock_timeout()


def _partition_children(connection: Connection) -> set[str]:
    rows = connection.execute(
        text(
            "SELECT c.relname FROM pg_catalog.pg_class c "
            "WHERE c.relispartition AND c.relnamespace = 'public'::regnamespace"
        )
    )
    return {r[0] for r in rows}


def _include_name_factory(
    skip_tables: set[str],
) -> Any:
    def include_name(
        name: str | None,
        type_: Literal[
            "schema",
            "table",
            "column",
            "index",
            "unique_constraint",
            "foreign_key_constraint",
        ],
        parent_names: dict[str, str | None],
    ) -> bool:
        # Partitions are managed by platform.ensure_form_submission_partitions(), not by
        # the models, and a partition retired by platform.retire_form_submission_partitions()
        # stays as a table of its own: autogenerate must never propose dropping either.
        if type_ != "table" or name is None:
            return True
        return name not in skip_tables and not RETIRED_PARTITION.match(name)

    return include_name


def _include_object_factory(skip_tables: set[str]) -> Any:
    def include_object(
        obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
    ) -> bool:
        # A foreign key to a partitioned table shows up once more per partition in the
        # catalog (internal clones); only the one on the parent is ours to compare.
        if type_ == "foreign_key_constraint" and reflected:
            return obj.referred_table.name not in skip_tables
        return True

    return include_object


def _process_revision_directives(
    ctx: MigrationContext,
    revision: str | Iterable[str | None] | Iterable[str],
    directives: list[MigrationScript],
) -> None:
    # An autogenerate that found nothing writes no empty revision; one that found
    # something freezes the entities it runs into the revision (platform_db.migration).
    if getattr(config.cmd_opts, "autogenerate", False) and directives:
        script = directives[0]
        if script.upgrade_ops is not None and script.upgrade_ops.is_empty():
            directives[:] = []
            return
    prepare_revision(ctx, revision, directives)


def run_migrations_offline() -> None:
    url = database_url_from_env()
    context.configure(
        url=with_driver(url, SYNC_DRIVER).render_as_string(hide_password=False)
        if url
        else "postgresql+psycopg://",
        target_metadata=target_metadata,
        literal_binds=True,
        # "named" keeps % signs (format(), RAISE) as they are in the emitted script.
        dialect_opts={"paramstyle": "named"},
        compare_type=True,
    )
    with context.begin_transaction():
        context.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        context.run_migrations()
        context.execute(claim_ownership_sql(managed_relations()))


def _run(connection: Connection) -> None:
    callers_transaction = connection.in_transaction()
    partitions = _partition_children(connection)
    if not callers_transaction:
        # End the transaction the catalog read began, so that Alembic begins (and owns)
        # the migration's: an autocommit block (CREATE INDEX CONCURRENTLY) needs that.
        connection.rollback()
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        include_name=_include_name_factory(partitions),
        include_object=_include_object_factory(partitions),
        process_revision_directives=_process_revision_directives,
    )
    with context.begin_transaction():
        connection.execute(text("SELECT set_config('lock_timeout', :t, true)"), {"t": LOCK_TIMEOUT})
        context.run_migrations()
        connection.execute(text(claim_ownership_sql(managed_relations())))


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = database_url_from_env()
    if url is None:
        raise SystemExit(
            "DATABASE_URL is not set: point it at the database to migrate, "
            "for example postgresql://postgres@127.0.0.1:5432/platform"
        )
    engine = create_engine(with_driver(url, SYNC_DRIVER), poolclass=pool.NullPool)
    with engine.connect() as conn:
        _run(conn)
        conn.commit()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
