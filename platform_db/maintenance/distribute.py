"""`platform-db distribute`: turn a migrated database into a Citus-distributed one.

Run on the coordinator, as a superuser, once the database is at head. In one
transaction (all or nothing), re-runnable (what is done already is reported and
skipped; a table added by a later revision is distributed by the next run):

1. `tenants` becomes a reference table (a copy on every node);
2. every tenant table (a table of `public` with `tenant_id` and the `tenant_isolation`
   policy, a service's too) becomes a hash-distributed table on `tenant_id`, all in one
   co-location group: a tenant's rows of every table live on the same node, so joins and
   foreign keys between them stay on one node. Partitioned tables (form_submissions,
   audit_log) are distributed with their partitions;
3. the foreign keys between tenant tables, which Citus can only create between
   co-located distributed tables, are dropped before and added back after, exactly as
   they were (the leads <-> form_submissions pair is a cycle: no order would do);
4. the database-level settings the application, later revisions and pg_cron need:
   `citus.propagate_set_commands = 'local'` (the tenant travels as `SET LOCAL`, and
   only that reaches the workers) and `citus.enable_unsafe_triggers = on` (the audit
   trigger, the append-only guard and the reference-clearing trigger run on the shards;
   new partitions inherit them);
5. `platform_admin` may log in (it stays without a password): the dashboards' refresh
   runs as the materialized views' owner, and Citus connects to the workers as it;
6. the partition functions run once, to prove they work on the distributed tables.

The transaction runs with `citus.multi_shard_modify_mode = 'sequential'` (DDL on
distributed tables in a transaction that already touched them would otherwise open
several connections per worker and deadlock on itself) and under the migration lock:
no migration runs while the tables move. After the commit, a check connects to the
workers as platform_admin, as the refresh will.

Distributing copies a table's rows into its shards while holding its lock: on a database
that already holds data, run it in a maintenance window (docs/SCALING.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, text

from platform_db.ddl.security import ADMIN_ROLE, OWNER_ROLE, ident
from platform_db.maintenance.citus import citus_state, refresh_login_problem
from platform_db.migration.operations import migration_lock_timeout
from platform_db.session import seal

Progress = Callable[[str], None]

# Where a tenant table's rows go: the one co-location group, anchored on this table
# when it exists (every deployment has it), else on the first tenant table by name.
ANCHOR = "public.users"
REFERENCE_TABLES = ("public.tenants",)
DATABASE_SETTINGS: tuple[tuple[str, str], ...] = (
    ("citus.propagate_set_commands", "local"),
    ("citus.enable_unsafe_triggers", "on"),
)
# Only for the transaction that distributes (see the module docstring).
_TRANSACTION_SETTINGS = (
    "SET LOCAL citus.multi_shard_modify_mode = 'sequential'",
    "SET LOCAL citus.enable_unsafe_triggers = on",
    # tenants becomes a reference table while the tenant tables that reference it are
    # still local: without this Citus would turn them into Citus-managed local tables.
    "SET LOCAL citus.enable_local_reference_table_foreign_keys = off",
)


class DistributeError(RuntimeError):
    """The database cannot be distributed as it is: the message says what to do."""


@dataclass(slots=True)
class DistributeReport:
    database: str
    workers: list[str]
    steps: list[tuple[str, str]] = field(default_factory=list)  # (what, outcome)
    changed: bool = False
    refresh_login: str | None = None  # a problem left for the operator, if any

    def as_dict(self) -> dict[str, Any]:
        return {
            "database": self.database,
            "workers": self.workers,
            "steps": [{"step": s, "outcome": o} for s, o in self.steps],
            "changed": self.changed,
            "refresh_login_problem": self.refresh_login,
        }


_CANDIDATES_SQL = """
SELECT pg_catalog.format('%I.%I', 'public', c.relname) AS name,
       d.partmethod,
       CASE WHEN d.partmethod = 'h'
            THEN pg_catalog.column_to_column_name(c.oid, d.partkey) END AS column_name,
       d.colocationid
FROM pg_catalog.pg_class c
LEFT JOIN pg_catalog.pg_dist_partition d ON d.logicalrelid = c.oid
WHERE c.relnamespace = 'public'::regnamespace
  AND c.relkind IN ('r', 'p')
  AND NOT c.relispartition
  AND EXISTS (SELECT FROM pg_catalog.pg_attribute a
              WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped)
  AND EXISTS (SELECT FROM pg_catalog.pg_policy p
              WHERE p.polrelid = c.oid AND p.polname = 'tenant_isolation')
ORDER BY c.relname
"""

# Foreign keys (on parents only: partitions' clones follow) that touch a tenant table.
_FOREIGN_KEYS_SQL = """
SELECT con.conname,
       pg_catalog.format('%I.%I', rn.nspname, r.relname) AS tbl,
       pg_catalog.format('%I.%I', fn.nspname, f.relname) AS referenced,
       pg_catalog.pg_get_constraintdef(con.oid) AS definition
FROM pg_catalog.pg_constraint con
JOIN pg_catalog.pg_class r ON r.oid = con.conrelid
JOIN pg_catalog.pg_namespace rn ON rn.oid = r.relnamespace
JOIN pg_catalog.pg_class f ON f.oid = con.confrelid
JOIN pg_catalog.pg_namespace fn ON fn.oid = f.relnamespace
WHERE con.contype = 'f' AND con.conparentid = 0
  AND (con.conrelid = ANY (CAST(:tables AS regclass[]))
       OR con.confrelid = ANY (CAST(:tables AS regclass[])))
ORDER BY 2, 1
"""


def _say(progress: Progress | None) -> Progress:
    return progress or (lambda _message: None)


def preflight(conn: Connection) -> list[str]:
    """Refuse, saying what to do, unless this is a migrated Citus coordinator with
    workers; returns the workers as host:port."""
    database = str(conn.scalar(text("SELECT current_database()")))
    state = citus_state(conn)
    if not state.installed:
        available = conn.scalar(
            text("SELECT EXISTS (SELECT FROM pg_available_extensions WHERE name = 'citus')")
        )
        how = (
            "CREATE EXTENSION citus in this database on the coordinator and on every worker"
            if available
            else "install Citus on the coordinator and every worker, add citus to "
            "shared_preload_libraries, restart, then CREATE EXTENSION citus in this "
            "database on every node"
        )
        raise DistributeError(
            f"the citus extension is not installed in database {database}: {how} (docs/SCALING.md)"
        )
    if not state.coordinator:
        raise DistributeError(
            f"this node is a Citus worker, not the coordinator: run distribute with "
            f"DATABASE_URL pointing at the coordinator's database {database}"
        )
    if not conn.scalar(text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")):
        raise DistributeError(
            "distribute needs a superuser (it creates distributed tables, changes "
            "database settings and the platform_admin role)"
        )
    workers = [
        f"{host}:{port}"
        for host, port in conn.execute(
            text(
                "SELECT nodename, nodeport FROM pg_catalog.pg_dist_node "
                "WHERE groupid <> 0 AND noderole = 'primary' AND isactive "
                "AND shouldhaveshards ORDER BY nodename, nodeport"
            )
        )
    ]
    if not workers:
        raise DistributeError(
            f"database {database} has no worker nodes: on each worker create the database "
            "and CREATE EXTENSION citus, then here SELECT citus_add_node('<host>', <port>) "
            "for each (and SELECT citus_set_coordinator_host('<this host>', <port>)); "
            "distribute needs at least one worker that may hold shards"
        )
    failed = [
        f"{host}:{port}: {result}"
        for host, port, success, result in conn.execute(
            text(
                "SELECT nodename, nodeport, success, result FROM "
                "pg_catalog.run_command_on_workers("
                "$$SELECT extversion FROM pg_extension WHERE extname = 'citus'$$)"
            )
        )
        if not success or not result
    ]
    if failed:
        raise DistributeError(
            "these workers cannot be used (unreachable, no such database, or no citus "
            "extension in it): " + "; ".join(failed)
        )
    _require_head(conn, database)
    return workers


def _require_head(conn: Connection, database: str) -> None:
    from alembic.runtime.migration import MigrationContext  # noqa: PLC0415
    from alembic.script import ScriptDirectory  # noqa: PLC0415

    from platform_db.migration import runner  # noqa: PLC0415

    if conn.scalar(text("SELECT to_regclass('public.alembic_version') IS NULL")):
        raise DistributeError(
            f"database {database} has not been migrated: run `platform-db upgrade` first"
        )
    current = set(MigrationContext.configure(conn).get_current_heads())
    heads = set(ScriptDirectory.from_config(runner.alembic_config()).get_heads())
    if current != heads:
        raise DistributeError(
            f"database {database} is at {', '.join(sorted(current)) or 'no revision'}, "
            f"not at head {', '.join(sorted(heads))}: run `platform-db upgrade` first"
        )


def distribute(
    engine: Engine, *, shard_count: int | None = None, progress: Progress | None = None
) -> DistributeReport:
    """Distribute the database of `engine` (a superuser on the coordinator); see the
    module docstring. Raises DistributeError, before changing anything, when it cannot."""
    if shard_count is not None and not 1 <= shard_count <= 64000:
        raise ValueError(f"shard_count must be between 1 and 64000, got {shard_count}")
    say = _say(progress)
    with engine.connect() as conn:
        workers = preflight(conn)
        database = str(conn.scalar(text("SELECT current_database()")))
        conn.rollback()
    report = DistributeReport(database, workers)
    say(f"distributing {database} over {len(workers)} workers: {', '.join(workers)}")

    def step(what: str, outcome: str, *, changed: bool) -> None:
        report.steps.append((what, outcome))
        report.changed = report.changed or changed
        say(f"{what}: {outcome}")

    from platform_db.migration.locking import take_migration_lock  # noqa: PLC0415

    with engine.begin() as conn:
        take_migration_lock(conn)
        conn.execute(
            text("SELECT set_config('lock_timeout', :t, true)"), {"t": migration_lock_timeout()}
        )
        for statement in _TRANSACTION_SETTINGS:
            conn.execute(text(statement))
        _reference_tables(conn, step)
        _tenant_tables(conn, step, shard_count=shard_count)
        _database_settings(conn, step, database)
        _refresh_role(conn, step)
        _partitions(conn, step)
        _unbound_seals(conn, step)
        _statement_texts(conn, step)
    if report.changed:
        say("committed")
    with engine.begin() as conn:
        workers_synced = seal.sync_workers(conn)
    if workers_synced:
        step("tenant seal keys and settings", f"copied to {workers_synced} workers", changed=False)
    with engine.connect() as conn:
        report.refresh_login = refresh_login_problem(conn)
        conn.rollback()
    if report.refresh_login is None:
        step(f"{ADMIN_ROLE} reaches every worker (dashboards' refresh)", "ok", changed=False)
    else:
        step(
            f"{ADMIN_ROLE} reaches every worker (dashboards' refresh)",
            f"NO: {report.refresh_login}",
            changed=False,
        )
    return report


Step = Callable[..., None]


def _reference_tables(conn: Connection, step: Step) -> None:
    for table in REFERENCE_TABLES:
        method = conn.scalar(
            text(
                "SELECT partmethod FROM pg_catalog.pg_dist_partition "
                "WHERE logicalrelid = CAST(:t AS regclass)"
            ),
            {"t": table},
        )
        if method is None:
            conn.execute(text("SELECT create_reference_table(CAST(:t AS regclass))"), {"t": table})
            step(f"{table}", "reference table created (a copy on every node)", changed=True)
        elif method == "n":
            step(f"{table}", "already a reference table", changed=False)
        else:
            raise DistributeError(
                f"{table} is distributed, not a reference table: undistribute it "
                f"(SELECT undistribute_table('{table}')) and run distribute again"
            )


def _check_distributed(done: list[dict[str, Any]]) -> None:
    """Tables distributed already must be hash-distributed on tenant_id, in one group."""
    for r in done:
        if r["partmethod"] != "h" or r["column_name"] != "tenant_id":
            raise DistributeError(
                f"{r['name']} is distributed by something other than a hash of tenant_id: "
                f"undistribute it (SELECT undistribute_table('{r['name']}')) and run "
                "distribute again"
            )
    if len({r["colocationid"] for r in done}) > 1:
        raise DistributeError(
            "the distributed tenant tables are not all co-located ("
            + ", ".join(f"{r['name']}: group {r['colocationid']}" for r in done)
            + "): SELECT alter_distributed_table('<table>', colocate_with => 'public.users') "
            "for the odd ones out"
        )


def _foreign_keys_in_the_way(
    conn: Connection, names: set[str], todo: list[str]
) -> list[dict[str, Any]]:
    """The foreign keys between tenant tables that involve a table still to distribute."""
    found = []
    for fk in conn.execute(text(_FOREIGN_KEYS_SQL), {"tables": sorted(names)}):
        fk_ = dict(fk._mapping)
        if fk_["referenced"] in REFERENCE_TABLES:
            continue  # to a reference table: Citus keeps it as it is
        if fk_["tbl"] not in names or fk_["referenced"] not in names:
            other = fk_["tbl"] if fk_["tbl"] not in names else fk_["referenced"]
            raise DistributeError(
                f"foreign key {fk_['conname']} of {fk_['tbl']} links a tenant table with "
                f"{other}, which is neither tenants nor a tenant table: Citus cannot keep it "
                "(make that table a tenant table or a reference table first)"
            )
        if fk_["tbl"] in todo or fk_["referenced"] in todo:
            found.append(fk_)
    return found


def _distribute_one(conn: Connection, table: str, anchor: str, shard_count: int | None) -> int:
    if table == anchor:
        conn.execute(
            text(
                "SELECT create_distributed_table(CAST(:t AS regclass), 'tenant_id', "
                "colocate_with => 'none', shard_count => :n)"
            ),
            {"t": table, "n": shard_count or _default_shard_count(conn)},
        )
    else:
        conn.execute(
            text(
                "SELECT create_distributed_table(CAST(:t AS regclass), 'tenant_id', "
                "colocate_with => :anchor)"
            ),
            {"t": table, "anchor": anchor},
        )
    return int(
        conn.scalar(
            text("SELECT count(*) FROM pg_dist_shard WHERE logicalrelid = CAST(:t AS regclass)"),
            {"t": table},
        )
        or 0
    )


def _tenant_tables(conn: Connection, step: Step, *, shard_count: int | None) -> None:
    rows = [dict(r._mapping) for r in conn.execute(text(_CANDIDATES_SQL))]
    if not rows:
        raise DistributeError("no tenant tables found in schema public: is the database migrated?")
    done = [r for r in rows if r["partmethod"] is not None]
    _check_distributed(done)
    for r in done:
        step(r["name"], "already distributed by tenant_id", changed=False)
    todo = [str(r["name"]) for r in rows if r["partmethod"] is None]
    if not todo:
        return
    aside = _foreign_keys_in_the_way(conn, {str(r["name"]) for r in rows}, todo)
    for fk in aside:
        conn.execute(text(f"ALTER TABLE {fk['tbl']} DROP CONSTRAINT {ident(fk['conname'])}"))
    if aside:
        step("foreign keys between tenant tables", f"{len(aside)} set aside", changed=True)
    anchor = str(done[0]["name"]) if done else (ANCHOR if ANCHOR in todo else todo[0])
    for table in sorted(todo, key=lambda t: t != anchor):  # the anchor first
        shards = _distribute_one(conn, table, anchor, shard_count)
        step(
            table,
            f"distributed by tenant_id, {shards} shards, co-located with {anchor}",
            changed=True,
        )
    for fk in aside:
        conn.execute(
            text(
                f"ALTER TABLE {fk['tbl']} ADD CONSTRAINT {ident(fk['conname'])} {fk['definition']}"
            )
        )
    if aside:
        step(
            "foreign keys between tenant tables",
            f"{len(aside)} added back: " + ", ".join(fk["conname"] for fk in aside),
            changed=True,
        )


def _default_shard_count(conn: Connection) -> int:
    return int(conn.scalar(text("SELECT current_setting('citus.shard_count')::int")) or 32)


def _database_settings(conn: Connection, step: Step, database: str) -> None:
    current: dict[str, str] = dict(
        conn.execute(
            text(
                "SELECT split_part(s, '=', 1), substr(s, strpos(s, '=') + 1) "
                "FROM pg_catalog.pg_db_role_setting r, unnest(r.setconfig) s "
                "WHERE r.setdatabase = (SELECT oid FROM pg_database "
                "WHERE datname = current_database()) AND r.setrole = 0"
            )
        ).all()
    )
    for name, value in DATABASE_SETTINGS:
        if current.get(name) == value:
            step(f"ALTER DATABASE SET {name}", f"already {value}", changed=False)
            continue
        conn.execute(text(f"ALTER DATABASE \"{ident(database)}\" SET {name} = '{value}'"))
        step(f"ALTER DATABASE SET {name}", f"{value} (new sessions)", changed=True)


def _refresh_role(conn: Connection, step: Step) -> None:
    can = conn.scalar(
        text("SELECT rolcanlogin FROM pg_roles WHERE rolname = :r"), {"r": ADMIN_ROLE}
    )
    if can:
        step(f"{ADMIN_ROLE} LOGIN", "already", changed=False)
        return
    # Propagated to every node by Citus; no password: nobody logs in with one.
    conn.execute(text(f"ALTER ROLE {ADMIN_ROLE} LOGIN"))
    step(f"{ADMIN_ROLE} LOGIN", "granted on every node (no password)", changed=True)


def _unbound_seals(conn: Connection, step: Step) -> None:
    # The policies run on the workers, in backends whose pid no client knows: seals there
    # cannot be bound to a backend (platform_db.ddl.seal).
    state = seal.read_state(conn)
    if state is None:
        return
    if state.unbound_seals:
        step("tenant seals not bound to a backend", "already taken", changed=False)
        return
    conn.execute(text("UPDATE platform.tenant_seal_settings SET unbound_seals = true"))
    step("tenant seals not bound to a backend", "taken (the workers' backends)", changed=True)


def _statement_texts(conn: Connection, step: Step) -> None:
    # On Citus the seal travels as SET LOCAL, which pg_stat_statements keeps with its text
    # (track_utility, on by default), readable by the same login; the seal names no
    # backend, so such a text would let a request seal another tenant for a few minutes.
    # Close the statistics to PUBLIC (platform_admin and platform_owner keep them). An
    # extension created after this: run distribute again (docs/SCALING.md).
    schema = conn.execute(
        text(
            "SELECT n.nspname FROM pg_catalog.pg_extension e "
            "JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace "
            "WHERE e.extname = 'pg_stat_statements'"
        )
    ).scalar()
    if schema is None:
        return
    s = ident(str(schema))
    open_to_public = conn.execute(
        text("SELECT has_table_privilege('public', :v, 'SELECT')"), {"v": f"{s}.pg_stat_statements"}
    ).scalar()
    if not open_to_public:
        step("pg_stat_statements", "closed to PUBLIC already", changed=False)
        return
    for statement in (
        f"REVOKE SELECT ON {s}.pg_stat_statements, {s}.pg_stat_statements_info FROM PUBLIC",
        f"REVOKE EXECUTE ON FUNCTION {s}.pg_stat_statements(boolean), "
        f"{s}.pg_stat_statements_info() FROM PUBLIC",
        f"GRANT SELECT ON {s}.pg_stat_statements, {s}.pg_stat_statements_info "
        f"TO {ADMIN_ROLE}, {OWNER_ROLE}",
        f"GRANT EXECUTE ON FUNCTION {s}.pg_stat_statements(boolean), "
        f"{s}.pg_stat_statements_info() TO {ADMIN_ROLE}, {OWNER_ROLE}",
    ):
        conn.execute(text(statement))
    step("pg_stat_statements", "closed to PUBLIC (seals travel as SET LOCAL)", changed=True)


def _partitions(conn: Connection, step: Step) -> None:
    for parent in ("public.form_submissions", "public.audit_log"):
        created = conn.execute(
            text(
                "SELECT count(*) FILTER (WHERE action = 'created') FROM "
                "platform.ensure_monthly_partitions(CAST(:p AS regclass))"
            ),
            {"p": parent},
        ).scalar()
        step(
            f"partitions of {parent}",
            f"{created} created" if created else "present (the partition function works)",
            changed=bool(created),
        )


__all__ = ["DistributeError", "DistributeReport", "distribute", "preflight"]
