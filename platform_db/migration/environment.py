"""What an Alembic `env.py` does with platform-db: the package's, and a service's.

A service that adds tables beside the package's keeps its own revisions, in its own
versions directory and its own version table (Alembic's "several environments, one
version table each"), and its env.py is a few lines::

    from alembic import context
    from platform_db.migration.environment import run_service_migrations

    import my_service.models  # noqa: F401 - the service's models, on platform_db's Base
    from platform_db.models import metadata

    run_service_migrations(context, target_metadata=metadata, version_table="my_service_version")

Its `alembic upgrade head` first brings the package's schema to the installed
platform-db's head (as `platform-db upgrade` would), then runs the service's revisions:
one command deploys both, in order, and a later platform-db release is applied the same
way. Every other command (downgrade, check, revision --autogenerate) leaves the package
alone, and refuses to run while the package's schema is behind the installed package.

Both environments, the package's own (`run_package_migrations`) and a service's:

- compares only what this environment owns: the package its tables and everything in
  schema `platform`; a service the tables its models add. Neither ever proposes
  dropping or altering the other's tables, partitions (present or retired), foreign-key
  clones on partitions, or the version table;
- gives the environment's `TenantMixin` models what a tenant table gets (RLS, FORCE, the
  policy, grants, the audit trigger) and reports their drift (platform_db.migration.
  autogenerate);
- writes no empty revision, and freezes what a new one runs into it;
- runs alone: the migration transaction first takes the migration lock, a
  transaction-level advisory lock with a fixed key (platform_db.migration.locking), before
  Alembic reads or creates the version table, so a concurrent deploy of the same database
  waits and then finds nothing to do; an upgrade first creates the cluster's missing group
  roles in a transaction of its own that tolerates another database creating them;
- refuses a downgrade that would drop tables holding rows unless told `destroy_data`
  (platform_db.migration.downgrade_guard), naming the tables and their row counts;
- runs under the migration lock_timeout, in one transaction, and hands what the run
  created to platform_owner;
- on a database with the citus extension, runs in Citus' sequential mode and creates a
  new tenant table distributed, co-located with the others (platform_db.migration.citus);
- takes the URL from DATABASE_URL, or the caller's connection from
  `config.attributes["connection"]` (platform_db.migration.runner passes one).

`context` is what env.py imports as `from alembic import context`.

docs/SERVICES.md walks through a service end to end.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from logging.config import fileConfig
from typing import Any

from alembic.operations import MigrationScript
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, MetaData, create_engine, pool, text

from platform_db.ddl.security import claim_ownership_sql
from platform_db.migration.autogenerate import SCOPE_OPTION, Scope, prepare_revision
from platform_db.migration.citus import CITUS_OPTION, SEQUENTIAL_SQL, has_citus
from platform_db.migration.downgrade_guard import DowngradeGuard, destroy_data_requested
from platform_db.migration.locking import (
    ensure_roles,
    offline_lock_statements,
    take_migration_lock,
)
from platform_db.migration.operations import migration_lock_timeout
from platform_db.session.settings import (
    SYNC_DRIVER,
    ConfigurationError,
    Settings,
    database_url_from_env,
    with_driver,
)

log = logging.getLogger("alembic.runtime.platform_db")

# Partitions detached by retirement stay as tables of their own; a partition still
# attached is found in the catalog.
_RETIRED_PARTITION = re.compile(r"^(form_submissions|audit_log)_(\d{4}_\d{2}|default)$")


@dataclass(frozen=True, slots=True)
class _Filters:
    """Alembic's include_name / include_object for one environment's scope."""

    scope: Scope
    partitions: frozenset[str]

    def include_name(self, name: str | None, type_: str, parent_names: Any) -> bool:
        if type_ != "table" or name is None:
            return True
        return (
            name in self.scope.tables
            and name not in self.partitions
            and not _RETIRED_PARTITION.match(name)
        )

    def include_object(
        self, obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
    ) -> bool:
        if type_ == "table":
            return name in self.scope.tables
        # A foreign key to a partitioned table shows up once more per partition in the
        # catalog (internal clones); only the one on the parent is compared.
        if type_ == "foreign_key_constraint" and reflected:
            return obj.referred_table.name not in self.partitions
        return True


def _partitions(connection: Connection) -> frozenset[str]:
    rows = connection.execute(
        text(
            "SELECT c.relname FROM pg_catalog.pg_class c "
            "WHERE c.relispartition AND c.relnamespace = 'public'::regnamespace"
        )
    )
    return frozenset(r[0] for r in rows)


def _process_revision_directives(context: Any) -> Any:
    def process(
        ctx: MigrationContext,
        revision: str | Iterable[str | None] | Iterable[str],
        directives: list[MigrationScript],
    ) -> None:
        # An autogenerate that found nothing writes no empty revision; one that found
        # something freezes the entities it runs into the revision.
        if getattr(context.config.cmd_opts, "autogenerate", False) and directives:
            script = directives[0]
            if script.upgrade_ops is not None and script.upgrade_ops.is_empty():
                directives[:] = []
                return
        prepare_revision(ctx, revision, directives)

    return process


def _ownership_sql(scope: Scope) -> str:
    from platform_db.migration.runner import managed_relations  # noqa: PLC0415

    # The package's relations (a service's upgrade may have migrated them first) and
    # this environment's own.
    return claim_ownership_sql(sorted({*managed_relations(), *scope.tables}))


def _version_table(version_table: str | None) -> dict[str, Any]:
    return {} if version_table is None else {"version_table": version_table}


def _run_offline(context: Any, metadata: MetaData, scope: Scope, version_table: str | None) -> None:
    url = database_url_from_env()
    timeout = migration_lock_timeout()
    context.configure(
        url=with_driver(url, SYNC_DRIVER).render_as_string(hide_password=False)
        if url
        else "postgresql+psycopg://",
        target_metadata=metadata,
        literal_binds=True,
        # "named" keeps % signs (format(), RAISE) as they are in the emitted script.
        dialect_opts={"paramstyle": "named"},
        compare_type=True,
        **_version_table(version_table),
        **{SCOPE_OPTION: scope},
    )
    with context.begin_transaction():
        # The migration lock first (waited for under its own bound), then the lock_timeout.
        for statement in offline_lock_statements(timeout):
            context.execute(statement)
        context.run_migrations()
        context.execute(_ownership_sql(scope))


def _command(context: Any) -> str | None:
    """The alembic command being run (`upgrade`, `check`, ...), when known."""
    cmd = getattr(context.config.cmd_opts, "cmd", None)
    if cmd:
        return str(getattr(cmd[0], "__name__", ""))
    command = context.config.attributes.get("platform_db_command")
    return str(command) if command else None


def _package_first(context: Any, connection: Connection) -> None:
    """Bring the package's schema to the installed platform-db's head before a service's
    upgrade; refuse any other command while it is behind."""
    from platform_db.migration import runner  # noqa: PLC0415

    callers_transaction = connection.in_transaction()
    current = set(MigrationContext.configure(connection).get_current_heads())
    heads = set(ScriptDirectory.from_config(runner.alembic_config()).get_heads())
    if not callers_transaction:
        connection.rollback()
    if current == heads:
        return
    at = ", ".join(sorted(current)) or "nothing (never migrated)"
    if _command(context) != "upgrade":
        raise CommandError(
            f"platform-db's schema is at {at}; the installed platform-db needs "
            f"{', '.join(sorted(heads))}: run `alembic upgrade head` (it upgrades "
            "platform-db's schema first) or `platform-db upgrade`"
        )
    log.info("Upgrading platform-db's schema from %s to %s first", at, ", ".join(sorted(heads)))
    # The package's run is an Alembic environment of its own; leaving, it takes away the
    # module-level `context` that env.py is running in (alembic.context proxies one
    # EnvironmentContext at a time, held in its `_proxy`): put this one back.
    outer = getattr(context, "_proxy", None)
    try:
        runner.upgrade(connection)
    finally:
        if outer is not None:
            outer.__enter__()
    if not callers_transaction and connection.in_transaction():
        connection.commit()


def _run_online(
    context: Any,
    connection: Connection,
    metadata: MetaData,
    scope: Scope,
    version_table: str | None,
) -> None:
    command = _command(context)
    if not scope.package:
        _package_first(context, connection)
    elif command in (None, "upgrade"):
        # The roles are the cluster's: another database may be creating them right now,
        # which this database's migration lock does not prevent.
        ensure_roles(connection)
    callers_transaction = connection.in_transaction()
    filters = _Filters(scope, _partitions(connection))
    citus = has_citus(connection)
    if not callers_transaction:
        # End the transaction the catalog read began, so that Alembic begins (and owns)
        # the migration's: an autocommit block (CREATE INDEX CONCURRENTLY) needs that.
        connection.rollback()
    # Which tables hold rows is looked at only for a downgrade (or a command run without
    # saying which it is); the guard then checks after each reverted revision.
    guard = (
        DowngradeGuard(
            connection,
            destroy_data=destroy_data_requested(context),
            target=str(context.get_revision_argument() or "base"),
        )
        if command in (None, "downgrade")
        else None
    )
    context.configure(
        connection=connection,
        target_metadata=metadata,
        compare_type=True,
        include_name=filters.include_name,
        include_object=filters.include_object,
        process_revision_directives=_process_revision_directives(context),
        on_version_apply=[guard] if guard is not None else [],
        **_version_table(version_table),
        **{SCOPE_OPTION: scope, CITUS_OPTION: citus},
    )
    with context.begin_transaction():
        # One migration of this database at a time, decided before Alembic reads (or
        # creates) the version table: a second deploy waits here, then finds nothing to do.
        take_migration_lock(connection)
        # A deploy must never queue behind a long-running lock and stall the
        # application's queries behind it: give up after this long, and retry.
        connection.execute(
            text("SELECT set_config('lock_timeout', :t, true)"), {"t": migration_lock_timeout()}
        )
        if citus:
            # A distributed database (platform_db.migration.citus): one connection per
            # worker for the whole run, triggers allowed on shards, new tenant tables
            # created distributed.
            connection.execute(text(SEQUENTIAL_SQL))
        if command in ("upgrade", "downgrade"):
            # What the run starts from, seen under the lock (the CLI reports from it).
            context.config.attributes["platform_db_heads_before"] = tuple(
                context.get_context().get_current_heads()
            )
        if guard is not None:
            guard.start()
        context.run_migrations()
        connection.execute(text(_ownership_sql(scope)))


def _run(context: Any, metadata: MetaData, scope: Scope, version_table: str | None = None) -> None:
    config = context.config
    # The alembic command line logs what it does and what autogenerate detects
    # (alembic.ini's [loggers]); code that runs the revisions keeps its own logging.
    if config.cmd_opts is not None and config.config_file_name is not None:
        fileConfig(config.config_file_name, disable_existing_loggers=False)
    if context.is_offline_mode():
        # A script cannot look at the package's schema: `platform-db upgrade --sql` first.
        _run_offline(context, metadata, scope, version_table)
        return
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_online(context, connection, metadata, scope, version_table)
        return
    url = database_url_from_env()
    if url is None:
        raise SystemExit(
            "DATABASE_URL is not set: point it at the database to migrate, "
            "for example postgresql://postgres@127.0.0.1:5432/platform"
        )
    # Named, so that a deploy waiting for the migration lock can say who holds it; and
    # bounded like every connection of the package (POSTGRES_CONNECT_TIMEOUT, validated
    # with the other settings: a bad value stops here with one line).
    try:
        connect_ms = Settings.from_env().main.connect_timeout_ms
    except ConfigurationError as exc:
        raise SystemExit(f"platform-db: {exc}") from None
    connect_args: dict[str, Any] = {"connect_timeout": max(2, -(-connect_ms // 1000))}
    if "application_name" not in url.query:
        connect_args["application_name"] = "platform-db:migrate"
    engine = create_engine(
        with_driver(url, SYNC_DRIVER), poolclass=pool.NullPool, connect_args=connect_args
    )
    try:
        with engine.connect() as conn:
            _run_online(context, conn, metadata, scope, version_table)
            conn.commit()
    finally:
        engine.dispose()


def run_package_migrations(context: Any) -> None:
    """platform-db's own env.py: the package's models and schema `platform`. (Its
    metadata holds what this process defined on platform_db's Base: the package's
    models, and a new one a contributor is adding; never a service's, whose models are
    not imported here, so a service's tables in the same database are left alone.)"""
    from platform_db.models import metadata  # noqa: PLC0415

    _run(context, metadata, Scope(tables=frozenset(metadata.tables), package=True))


def run_service_migrations(context: Any, *, target_metadata: MetaData, version_table: str) -> None:
    """A service's env.py: the tables its models add to `target_metadata` (usually
    platform_db.models.metadata, since the service's models use platform_db's Base so
    that they can reference the package's tables), and nothing of the package's.

    `version_table`: the service's own version table (say `<service>_alembic_version`),
    never the package's `alembic_version`: each history has its own.
    """
    from platform_db.models import PACKAGE_TABLES  # noqa: PLC0415

    if version_table == "alembic_version":
        raise ValueError(
            "a service keeps its own version table: alembic_version is platform-db's; "
            "pass version_table='<service>_alembic_version'"
        )
    own = frozenset(target_metadata.tables) - PACKAGE_TABLES - {version_table}
    _run(context, target_metadata, Scope(tables=own, package=False), version_table)


__all__ = ["run_package_migrations", "run_service_migrations"]
