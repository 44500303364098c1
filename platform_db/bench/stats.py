"""Server-side counters over a run: buffer cache hits and index scans, from pg_stat_*.

Counters are read before and after a phase and subtracted, for the benchmark's database
only (other databases of the server do not count). Backends report their counters when a
transaction ends, at most once a second while busy: the harness closes its connections
and waits a moment before the second snapshot.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from typing import Any

import psycopg

# Tables and indexes of every user schema (public's tables and partitions, platform's
# materialized views): where the workload's reads go.
_SNAPSHOT_SQL = """
SELECT
  (SELECT coalesce(sum(heap_blks_hit + coalesce(idx_blks_hit, 0)
                       + coalesce(toast_blks_hit, 0) + coalesce(tidx_blks_hit, 0)), 0)
   FROM pg_statio_user_tables) AS hits,
  (SELECT coalesce(sum(heap_blks_read + coalesce(idx_blks_read, 0)
                       + coalesce(toast_blks_read, 0) + coalesce(tidx_blks_read, 0)), 0)
   FROM pg_statio_user_tables) AS reads,
  (SELECT coalesce(sum(seq_scan), 0) FROM pg_stat_user_tables) AS seq_scan,
  (SELECT coalesce(sum(idx_scan), 0) FROM pg_stat_user_tables) AS idx_scan,
  d.xact_commit, d.xact_rollback, d.blks_hit AS db_hits, d.blks_read AS db_reads,
  d.tup_returned, d.tup_fetched, d.tup_inserted, d.tup_updated
FROM pg_stat_database d
WHERE d.datname = current_database()
"""

_SEQ_SCANS_SQL = """
SELECT schemaname || '.' || relname, seq_scan, coalesce(idx_scan, 0)
FROM pg_stat_user_tables
"""


@dataclass(frozen=True, slots=True)
class Snapshot:
    at: float
    hits: int
    reads: int
    seq_scan: int
    idx_scan: int
    xact_commit: int
    xact_rollback: int
    db_hits: int
    db_reads: int
    tup_returned: int
    tup_fetched: int
    tup_inserted: int
    tup_updated: int
    per_table: dict[str, tuple[int, int]]


def snapshot(conn: psycopg.Connection[Any]) -> Snapshot:
    """The counters now (in a transaction of its own: stats are cached per transaction)."""
    conn.execute("SELECT pg_stat_clear_snapshot()")
    row = conn.execute(_SNAPSHOT_SQL).fetchone()
    assert row is not None
    tables = {name: (int(s), int(i)) for name, s, i in conn.execute(_SEQ_SCANS_SQL)}
    (hits, reads, seq, idx, commits, rollbacks, db_hits, db_reads, ret, fetched, ins, upd) = (
        int(v) for v in row
    )
    return Snapshot(
        at=time.time(),
        hits=hits,
        reads=reads,
        seq_scan=seq,
        idx_scan=idx,
        xact_commit=commits,
        xact_rollback=rollbacks,
        db_hits=db_hits,
        db_reads=db_reads,
        tup_returned=ret,
        tup_fetched=fetched,
        tup_inserted=ins,
        tup_updated=upd,
        per_table=tables,
    )


@dataclass(frozen=True, slots=True)
class ServerDelta:
    """What the server did between two snapshots."""

    seconds: float
    cache_hit_ratio: float | None
    blocks_hit: int
    blocks_read: int
    index_scan_share: float | None
    index_scans: int
    seq_scans: int
    seq_scans_by_table: dict[str, int]
    commits: int
    rollbacks: int
    database_cache_hit_ratio: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def delta(before: Snapshot, after: Snapshot) -> ServerDelta:
    hits, reads = after.hits - before.hits, after.reads - before.reads
    idx, seq = after.idx_scan - before.idx_scan, after.seq_scan - before.seq_scan
    dbh, dbr = after.db_hits - before.db_hits, after.db_reads - before.db_reads
    seq_by_table = {
        name: after.per_table[name][0] - before.per_table.get(name, (0, 0))[0]
        for name in after.per_table
        if after.per_table[name][0] - before.per_table.get(name, (0, 0))[0] > 0
    }
    return ServerDelta(
        seconds=round(after.at - before.at, 3),
        cache_hit_ratio=round(hits / (hits + reads), 5) if hits + reads else None,
        blocks_hit=hits,
        blocks_read=reads,
        index_scan_share=round(idx / (idx + seq), 5) if idx + seq else None,
        index_scans=idx,
        seq_scans=seq,
        seq_scans_by_table=dict(sorted(seq_by_table.items(), key=lambda kv: -kv[1])[:10]),
        commits=after.xact_commit - before.xact_commit,
        rollbacks=after.xact_rollback - before.xact_rollback,
        database_cache_hit_ratio=round(dbh / (dbh + dbr), 5) if dbh + dbr else None,
    )


def load_average() -> tuple[float, float, float] | None:
    try:
        return os.getloadavg()
    except OSError:
        return None


def machine() -> dict[str, Any]:
    """CPU count and memory of this machine (where client and server both run)."""
    mem_gib: float | None = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
                    break
    except OSError:
        mem_gib = None
    model = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        model = None
    return {"cpus": os.cpu_count(), "cpu_model": model, "memory_gib": mem_gib}


def server_settings(conn: psycopg.Connection[Any]) -> dict[str, str]:
    names = [
        "server_version",
        "shared_buffers",
        "effective_cache_size",
        "work_mem",
        "max_connections",
        "random_page_cost",
        "synchronous_commit",
        "max_wal_size",
        "jit",
    ]
    rows = conn.execute(
        "SELECT name, current_setting(name) FROM pg_settings WHERE name = ANY(%s)", (names,)
    ).fetchall()
    out = {str(k): str(v) for k, v in rows}
    size = conn.execute("SELECT pg_size_pretty(pg_database_size(current_database()))").fetchone()
    out["database_size"] = str(size[0]) if size else "?"
    return out


# --- CPU: the server's backends, the client processes, the whole machine -----------------
# Client and server share this machine (the harness runs on loopback only), so /proc holds
# both: CPU per request on each side says where the time of a request goes.

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def backend_pids(
    conn: psycopg.Connection[Any], *, application_like: str, user: str | None = None
) -> list[int]:
    """Pids of this database's backends whose application_name matches (LIKE)."""
    rows = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name LIKE %s AND (%s::text IS NULL OR usename = %s) "
        "AND pid <> pg_backend_pid()",
        (application_like, user, user),
    ).fetchall()
    return [int(r[0]) for r in rows]


def process_cpu(pids: list[int]) -> dict[int, float]:
    """CPU seconds (user + system) used so far by each pid that still exists."""
    out: dict[int, float] = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[pid] = (int(fields[11]) + int(fields[12])) / _TICK
    return out


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return 0.0, 0.0
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    total = sum(values[:8])
    return (total - idle) / _TICK, total / _TICK


def disk_io() -> tuple[int, int]:
    """(bytes read, bytes written) by the machine's disks since boot (/proc/diskstats).

    Whole block devices only (those in /sys/block), without RAM-backed and loop devices.
    """
    try:
        disks = {d for d in os.listdir("/sys/block") if not d.startswith(("ram", "zram", "loop"))}
        read = written = 0
        with open("/proc/diskstats") as f:
            for line in f:
                parts = line.split()
                if parts[2] in disks:
                    read += int(parts[5]) * 512
                    written += int(parts[9]) * 512
    except (OSError, IndexError, ValueError):
        return 0, 0
    return read, written


@dataclass(slots=True)
class CpuProbe:
    """CPU used between `start()` and `stop()` by a set of backends and by the machine."""

    pids: list[int]
    at: float = 0.0
    backends: dict[int, float] | None = None
    machine: tuple[float, float] = (0.0, 0.0)
    disk: tuple[int, int] = (0, 0)

    def start(self) -> None:
        self.at = time.monotonic()
        self.backends = process_cpu(self.pids)
        self.machine = machine_cpu()
        self.disk = disk_io()

    def stop(self) -> dict[str, Any]:
        seconds = time.monotonic() - self.at
        now = process_cpu(self.pids)
        before = self.backends or {}
        server = sum(now[p] - before[p] for p in now if p in before)
        busy0, total0 = self.machine
        busy1, total1 = machine_cpu()
        read1, written1 = disk_io()
        return {
            "disk_read_mib": round((read1 - self.disk[0]) / 2**20, 1),
            "disk_written_mib": round((written1 - self.disk[1]) / 2**20, 1),
            "seconds": round(seconds, 2),
            "server_backends": len(before),
            "server_cpu_s": round(server, 2),
            "machine_busy": round((busy1 - busy0) / (total1 - total0), 4)
            if total1 > total0
            else None,
        }
