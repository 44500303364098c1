"""What platform-db needs to know about a Citus cluster: is it one, and how is it doing.

`citus_state()` answers the first question for the migration environment, `distribute`,
`doctor` and `maintain`. The rest is what `doctor` reports on a distributed database,
where the coordinator holds only empty shell tables and the statistics live on the
workers' shards:

- `shard_statistics()`: index usage and dead rows gathered from every shard on every
  worker (`run_command_on_workers`), summed per table and index of the coordinator;
- `placement()`: shards, bytes and tenants per node;
- `largest_tenants()`: the largest tenants (from the dashboards' materialized view, so
  no table is scanned) and the node that holds each;
- `refresh_login_problem()`: whether the dashboards' refresh can reach every worker (it
  connects as the materialized views' owner, platform_admin, which must be able to log
  in on every worker; docs/SCALING.md).

Every query here is read-only and runs on the coordinator with a superuser or
platform_admin login (doctor's).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

from platform_db.ddl.security import ADMIN_ROLE

# The role whose connections the dashboards' refresh opens to the workers.
REFRESH_ROLE = ADMIN_ROLE


@dataclass(frozen=True, slots=True)
class CitusState:
    """`installed`: the extension exists in this database; `coordinator`: this node is
    the coordinator (group 0); `distributed`: `tenants` is a reference table here."""

    installed: bool
    version: str | None = None
    coordinator: bool = False
    distributed: bool = False


def citus_state(conn: Connection) -> CitusState:
    version = conn.scalar(text("SELECT extversion FROM pg_extension WHERE extname = 'citus'"))
    if version is None:
        return CitusState(installed=False)
    # Group 0 is the coordinator's (also before any node was added, when
    # citus_is_coordinator() still says false); a worker has its own group.
    coordinator = conn.scalar(text("SELECT groupid FROM pg_catalog.pg_dist_local_group")) == 0
    distributed = bool(
        conn.scalar(
            text(
                "SELECT EXISTS (SELECT FROM pg_catalog.pg_dist_partition "
                "WHERE logicalrelid = pg_catalog.to_regclass('public.tenants'))"
            )
        )
    )
    return CitusState(True, str(version), coordinator, distributed)


def _on_workers(conn: Connection, sql: str) -> list[tuple[str, int, Any]]:
    """Run a query returning one JSON value on every worker: (node, port, parsed value).

    A worker that fails raises RuntimeError naming it and its error.
    """
    rows = conn.execute(
        text(
            "SELECT nodename, nodeport, success, result "
            "FROM pg_catalog.run_command_on_workers(:sql) ORDER BY nodename, nodeport"
        ),
        {"sql": sql},
    ).all()
    found = []
    for node, port, success, result in rows:
        if not success:
            raise RuntimeError(f"worker {node}:{port} failed: {result}")
        found.append((str(node), int(port), json.loads(result) if result else None))
    return found


# Per shard (relation or index) on a worker: the shard id is the name's numeric suffix.
_SHARD_TABLES_SQL = r"""SELECT coalesce(json_agg(t), '[]') FROM (
    SELECT substring(s.relname from '_(\d+)$')::bigint AS shard,
           s.seq_scan, coalesce(s.idx_scan, 0) AS idx_scan, s.n_live_tup AS live,
           s.n_dead_tup AS dead, pg_catalog.pg_total_relation_size(s.relid) AS bytes,
           greatest(s.last_vacuum, s.last_autovacuum) AS last_vacuum
    FROM pg_catalog.pg_stat_user_tables s
    WHERE s.schemaname = 'public' AND s.relname ~ '_\d+$') t"""

_SHARD_INDEXES_SQL = r"""SELECT coalesce(json_agg(t), '[]') FROM (
    SELECT substring(s.relname from '_(\d+)$')::bigint AS shard, s.indexrelname AS index,
           s.idx_scan, pg_catalog.pg_relation_size(s.indexrelid) AS bytes
    FROM pg_catalog.pg_stat_user_indexes s
    WHERE s.schemaname = 'public' AND s.relname ~ '_\d+$') t"""

# Every index of the coordinator's tables in public, with the index (and table) at the
# top of its partition tree and whether that one is unique: a partition's index is
# reported as its parent's, as platform.index_usage_stats does on one server.
_INDEXES_SQL = """
SELECT t.relname AS table_name, i.relname AS index_name,
       r.relname AS root_index, rt.relname AS root_table, ri.indisunique AS is_unique
FROM pg_catalog.pg_index x
JOIN pg_catalog.pg_class i ON i.oid = x.indexrelid
JOIN pg_catalog.pg_class t ON t.oid = x.indrelid
JOIN pg_catalog.pg_class r
  ON r.oid = coalesce(pg_catalog.pg_partition_root(x.indexrelid), x.indexrelid)
JOIN pg_catalog.pg_index ri ON ri.indexrelid = r.oid
JOIN pg_catalog.pg_class rt ON rt.oid = ri.indrelid
WHERE t.relnamespace = 'public'::regnamespace
"""


def _shard_index_owner(shard_index: str, shard: int, candidates: dict[str, Any]) -> Any | None:
    """The coordinator's index a shard's index belongs to: Citus names it
    `<index>_<shard id>`, and where that would pass 63 bytes it cuts the index name and
    puts 8 hex digits of a hash before the shard id."""
    base = shard_index.removesuffix(f"_{shard}")
    if base in candidates:
        return candidates[base]
    if len(base) > 9 and base[-9] == "_":
        prefix = base[:-9]
        found = [v for k, v in candidates.items() if k.startswith(prefix)]
        if len(found) == 1:
            return found[0]
    return None


@dataclass(slots=True)
class ShardStatistics:
    """Index usage and table statistics summed over every shard of each table."""

    tables: list[dict[str, Any]]
    indexes: list[dict[str, Any]]

    @property
    def usage(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for index in self.indexes:
            counts[index["usage"]] = counts.get(index["usage"], 0) + 1
        return counts


def _shard_tables(conn: Connection) -> dict[int, str]:
    """Shard id -> the coordinator's table it belongs to (partitions by their own name)."""
    rows = conn.execute(
        text(
            "SELECT s.shardid, c.relname FROM pg_catalog.pg_dist_shard s "
            "JOIN pg_catalog.pg_class c ON c.oid = s.logicalrelid "
            "WHERE c.relnamespace = 'public'::regnamespace"
        )
    ).all()
    return {int(shard): str(table) for shard, table in rows}


def shard_statistics(conn: Connection) -> ShardStatistics:
    """Statistics of the shards on every worker, per table and per index."""
    owners = _shard_tables(conn)
    tables: dict[str, dict[str, Any]] = {}
    for _node, _port, rows in _on_workers(conn, _SHARD_TABLES_SQL):
        for row in rows:
            table = owners.get(int(row["shard"]))
            if table is None:
                continue  # a shard of another database object, or one being moved
            t = tables.setdefault(
                table,
                {
                    "table": table,
                    "shards": 0,
                    "live_rows": 0,
                    "dead_rows": 0,
                    "seq_scan": 0,
                    "idx_scan": 0,
                    "bytes": 0,
                    "last_vacuum": None,
                },
            )
            t["shards"] += 1
            t["live_rows"] += int(row["live"])
            t["dead_rows"] += int(row["dead"])
            t["seq_scan"] += int(row["seq_scan"])
            t["idx_scan"] += int(row["idx_scan"])
            t["bytes"] += int(row["bytes"])
            vacuumed = row["last_vacuum"]
            if vacuumed is not None and (t["last_vacuum"] is None or vacuumed < t["last_vacuum"]):
                t["last_vacuum"] = vacuumed  # the oldest over the shards
    for t in tables.values():
        total = t["live_rows"] + t["dead_rows"]
        t["dead_ratio"] = round(t["dead_rows"] / total, 4) if total else 0.0
    by_table: dict[str, dict[str, Any]] = {}
    for row in conn.execute(text(_INDEXES_SQL)):
        by_table.setdefault(str(row.table_name), {})[str(row.index_name)] = row
    indexes: dict[tuple[str, str], dict[str, Any]] = {}
    for _node, _port, rows in _on_workers(conn, _SHARD_INDEXES_SQL):
        for row in rows:
            shard = int(row["shard"])
            table = owners.get(shard)
            owner = _shard_index_owner(str(row["index"]), shard, by_table.get(table or "", {}))
            if owner is None:
                continue
            i = indexes.setdefault(
                (owner.root_table, owner.root_index),
                {
                    "index": owner.root_index,
                    "table": owner.root_table,
                    "is_unique": bool(owner.is_unique),
                    "idx_scan": 0,
                    "bytes": 0,
                },
            )
            i["idx_scan"] += int(row["idx_scan"])
            i["bytes"] += int(row["bytes"])
    for i in indexes.values():
        scans = i["idx_scan"]
        i["usage"] = "UNUSED" if scans == 0 else "LOW_USAGE" if scans < 100 else "HIGH_USAGE"
    return ShardStatistics(
        tables=sorted(tables.values(), key=lambda t: t["table"]),
        indexes=sorted(indexes.values(), key=lambda i: (i["table"], i["index"])),
    )


_PLACEMENT_SQL = """
SELECT n.nodename || ':' || n.nodeport AS node,
       count(DISTINCT s.shardid) AS shards,
       coalesce(sum(s.shard_size), 0)::bigint AS bytes
FROM pg_catalog.pg_dist_node n
LEFT JOIN pg_catalog.citus_shards s ON s.nodename = n.nodename AND s.nodeport = n.nodeport
     AND s.citus_table_type = 'distributed'
WHERE n.noderole = 'primary' AND n.isactive
GROUP BY n.nodename, n.nodeport, n.groupid
ORDER BY n.groupid
"""

# The node of a tenant: the placement of its shard of `users` (every tenant table is
# co-located with it, so that node holds all of the tenant's rows).
_TENANT_NODE_SQL = """
SELECT t.tenant_id, n.nodename || ':' || n.nodeport AS node
FROM unnest(CAST(:tenants AS uuid[])) AS t(tenant_id)
JOIN pg_catalog.pg_dist_placement p
  ON p.shardid = pg_catalog.get_shard_id_for_distribution_column('public.users', t.tenant_id)
JOIN pg_catalog.pg_dist_node n ON n.groupid = p.groupid AND n.noderole = 'primary'
"""


def placement(conn: Connection) -> list[dict[str, Any]]:
    """Per node of the cluster: its shards of distributed tables and their bytes, with
    its share of the bytes (skew shows as one node far above 1 / nodes)."""
    rows = [dict(r._mapping) for r in conn.execute(text(_PLACEMENT_SQL))]
    total = sum(int(r["bytes"]) for r in rows) or 1
    for r in rows:
        r["share"] = round(int(r["bytes"]) / total, 4)
    return rows


def largest_tenants(conn: Connection, *, limit: int = 10) -> list[dict[str, Any]]:
    """The largest tenants by rows, from platform.tenant_performance_summary (as of its
    last refresh; nothing is scanned), with the node that holds each."""
    rows = [
        dict(r._mapping)
        for r in conn.execute(
            text(
                "SELECT tenant_id, subdomain, users_total + pages_total + forms_total "
                "+ leads_total + submissions_total AS rows "
                "FROM platform.tenant_performance_summary ORDER BY rows DESC, subdomain "
                "LIMIT :n"
            ),
            {"n": limit},
        )
    ]
    if not rows:
        return rows
    nodes: dict[Any, str] = dict(
        conn.execute(text(_TENANT_NODE_SQL), {"tenants": [r["tenant_id"] for r in rows]}).all()
    )
    total = conn.scalar(
        text(
            "SELECT sum(users_total + pages_total + forms_total + leads_total "
            "+ submissions_total) FROM platform.tenant_performance_summary"
        )
    )
    for r in rows:
        r["node"] = nodes.get(r["tenant_id"])
        r["share"] = round(int(r["rows"]) / int(total), 4) if total else 0.0
    return rows


def tenants_per_node(conn: Connection) -> dict[str, dict[str, int]]:
    """Tenants and their rows (as of the dashboards' last refresh) per node."""
    rows = conn.execute(
        text(
            "SELECT tenant_id, users_total + pages_total + forms_total + leads_total "
            "+ submissions_total FROM platform.tenant_performance_summary"
        )
    ).all()
    if not rows:
        return {}
    nodes: dict[Any, str] = dict(
        conn.execute(text(_TENANT_NODE_SQL), {"tenants": [r[0] for r in rows]}).all()
    )
    found: dict[str, dict[str, int]] = {}
    for tenant, count in rows:
        node = nodes.get(tenant)
        if node is None:
            continue
        entry = found.setdefault(node, {"tenants": 0, "rows": 0})
        entry["tenants"] += 1
        entry["rows"] += int(count)
    return found


def worker_cache_hits(conn: Connection) -> list[dict[str, Any]]:
    """The buffer cache hit ratio of this database on each worker (kind `worker host:port`)."""
    found = []
    for node, port, value in _on_workers(
        conn,
        "SELECT json_build_object('hits', blks_hit, 'reads', blks_read) "
        "FROM pg_catalog.pg_stat_database WHERE datname = current_database()",
    ):
        hits, reads = int(value["hits"]), int(value["reads"])
        found.append(
            {
                "kind": f"worker {node}:{port}",
                "hits": hits,
                "reads": reads,
                "ratio": round(hits / (hits + reads), 4) if hits + reads else None,
            }
        )
    return found


def cluster_problems(conn: Connection) -> list[str]:
    """What keeps the cluster from working as platform-db needs: nodes that cannot reach
    each other (citus_check_cluster_node_health) and the dashboards' refresh login."""
    problems = [
        f"{a}:{ap} cannot connect to {b}:{bp}"
        for a, ap, b, bp, ok in conn.execute(
            text(
                "SELECT from_nodename, from_nodeport, to_nodename, to_nodeport, result "
                "FROM pg_catalog.citus_check_cluster_node_health()"
            )
        )
        if not ok
    ]
    inactive = [
        f"{node}:{port}"
        for node, port in conn.execute(
            text(
                "SELECT nodename, nodeport FROM pg_catalog.pg_dist_node "
                "WHERE noderole = 'primary' AND NOT isactive"
            )
        )
    ]
    if inactive:
        problems.append(f"inactive nodes: {', '.join(inactive)}")
    login = refresh_login_problem(conn)
    if login is not None:
        problems.append(login)
    return problems


def refresh_login_problem(conn: Connection) -> str | None:
    """Why the dashboards' refresh cannot reach the workers, or None when it can.

    REFRESH MATERIALIZED VIEW runs as the view's owner (platform_admin), and Citus opens
    its connections to the workers as that role: it must be allowed to log in there and
    the workers' pg_hba.conf must let the coordinator in as it. This tries exactly that
    (a read of every shard of `users` as platform_admin), in a savepoint it rolls back.
    """
    cannot_login = [
        f"{node}:{port}"
        for node, port, value in _on_workers(
            conn,
            f"SELECT to_json(coalesce((SELECT rolcanlogin FROM pg_catalog.pg_roles "
            f"WHERE rolname = '{REFRESH_ROLE}'), false))",
        )
        if not value
    ]
    if cannot_login:
        return (
            f"role {REFRESH_ROLE} may not log in on {', '.join(cannot_login)}: the dashboards' "
            f"refresh connects to the workers as it (ALTER ROLE {REFRESH_ROLE} LOGIN on the "
            "coordinator propagates; `platform-db distribute` does it)"
        )
    savepoint = conn.begin_nested()
    try:
        conn.execute(text(f"SET LOCAL ROLE {REFRESH_ROLE}"))
        conn.execute(text("SELECT count(*) FROM (SELECT 1 FROM public.users LIMIT 1) u"))
    except DBAPIError as exc:
        message = (str(exc.orig).strip().splitlines() or ["unknown error"])[0]
        return (
            f"the coordinator cannot connect to the workers as {REFRESH_ROLE}, which the "
            f"dashboards' refresh needs: {message} (allow {REFRESH_ROLE} from the "
            "coordinator in each worker's pg_hba.conf, or give it a .pgpass entry or a "
            "client certificate; docs/SCALING.md)"
        )
    finally:
        savepoint.rollback()
    return None


__all__ = [
    "REFRESH_ROLE",
    "CitusState",
    "ShardStatistics",
    "citus_state",
    "cluster_problems",
    "largest_tenants",
    "placement",
    "refresh_login_problem",
    "shard_statistics",
    "tenants_per_node",
    "worker_cache_hits",
]
