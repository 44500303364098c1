"""Benchmark: what the audit trigger costs on writes. `platform-db bench-audit`.

Creates a scratch database on the server of DATABASE_URL (a superuser: it creates a
database and a login), migrates it, and times the same writes to `leads` as a
platform_app login with the tenant set (so RLS is paid in both columns), once with the
audit trigger and once with it disabled, in many short alternating rounds; the median
µs per row of each side is reported, so a change in the machine's load during the run
does not favour one side. The
scratch database and login are dropped at the end. Not a test: it reports numbers.
"""

from __future__ import annotations

import secrets
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, TextIO

import psycopg
from sqlalchemy import create_engine
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

from platform_db.session import seal
from platform_db.testing.scratch import temporary_app_login, temporary_database


@dataclass(frozen=True, slots=True)
class Result:
    workload: str
    rows: int
    plain_us_per_row: float
    audited_us_per_row: float

    @property
    def overhead_us(self) -> float:
        return self.audited_us_per_row - self.plain_us_per_row

    @property
    def overhead_pct(self) -> float:
        return 100 * self.overhead_us / self.plain_us_per_row

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {
            "overhead_us_per_row": round(self.overhead_us, 1),
            "overhead_pct": round(self.overhead_pct, 1),
        }


def _conninfo(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


@contextmanager
def _scratch(server: URL) -> Iterator[tuple[URL, URL]]:
    """A migrated scratch database and a platform_app login: (superuser URL, app URL)."""
    with temporary_database(server, migrate=True, prefix="pdb_bench_audit") as url:
        admin = create_engine(url, poolclass=NullPool)
        try:
            with temporary_app_login(admin, url, prefix="pdb_bench_app") as app_url:
                yield url, app_url
        finally:
            admin.dispose()


Workload = Callable[[psycopg.Connection[Any], uuid.UUID, int], None]


def _begin(cur: psycopg.Cursor[Any], tenant: uuid.UUID, user: uuid.UUID) -> None:
    cur.execute(seal.tenant_sql_for(cur.connection.info.backend_pid, str(tenant), str(user)))


def _insert_one_per_transaction(conn: psycopg.Connection[Any], tenant: uuid.UUID, n: int) -> None:
    user = uuid.uuid4()
    with conn.cursor() as cur:
        for i in range(n):
            with conn.transaction():
                _begin(cur, tenant, user)
                cur.execute(
                    "INSERT INTO leads (tenant_id, email, company, source) VALUES (%s, %s, %s, 'bench')",
                    (tenant, f"lead{i}-{secrets.token_hex(3)}@bench.example.com", "Bench Ltd"),
                )


def _insert_batches_of_100(conn: psycopg.Connection[Any], tenant: uuid.UUID, n: int) -> None:
    user = uuid.uuid4()
    with conn.cursor() as cur:
        for start in range(0, n, 100):
            with conn.transaction():
                _begin(cur, tenant, user)
                cur.executemany(
                    "INSERT INTO leads (tenant_id, email, company, source) VALUES (%s, %s, %s, 'bench')",
                    [
                        (
                            tenant,
                            f"b{start + i}-{secrets.token_hex(3)}@bench.example.com",
                            "Bench Ltd",
                        )
                        for i in range(min(100, n - start))
                    ],
                )


def _ids(conn: psycopg.Connection[Any], tenant: uuid.UUID, n: int) -> list[uuid.UUID]:
    with conn.cursor() as cur, conn.transaction():
        _begin(cur, tenant, uuid.uuid4())
        cur.execute("SELECT id FROM leads ORDER BY id LIMIT %s", (n,))
        return [r[0] for r in cur.fetchall()]


def _update_one_per_transaction(conn: psycopg.Connection[Any], tenant: uuid.UUID, n: int) -> None:
    user = uuid.uuid4()
    ids = _ids(conn, tenant, n)
    with conn.cursor() as cur:
        for i, lead in enumerate(ids):
            with conn.transaction():
                _begin(cur, tenant, user)
                cur.execute("UPDATE leads SET score = %s WHERE id = %s", (i % 100, lead))


def _delete_one_per_transaction(conn: psycopg.Connection[Any], tenant: uuid.UUID, n: int) -> None:
    user = uuid.uuid4()
    ids = _ids(conn, tenant, n)
    with conn.cursor() as cur:
        for lead in ids:
            with conn.transaction():
                _begin(cur, tenant, user)
                cur.execute("DELETE FROM leads WHERE id = %s", (lead,))


def _bulk_insert_select(conn: psycopg.Connection[Any], tenant: uuid.UUID, n: int) -> None:
    with conn.cursor() as cur, conn.transaction():
        _begin(cur, tenant, uuid.uuid4())
        cur.execute(
            "INSERT INTO leads (tenant_id, email, company, source) "
            "SELECT %s, 'bulk' || g || '-' || %s || '@bench.example.com', 'Bench Ltd', 'bench' "
            "FROM generate_series(1, %s) g",
            (tenant, secrets.token_hex(3), n),
        )


def _bulk_update(conn: psycopg.Connection[Any], tenant: uuid.UUID, n: int) -> None:
    with conn.cursor() as cur, conn.transaction():
        _begin(cur, tenant, uuid.uuid4())
        cur.execute(
            "UPDATE leads SET score = (score + 1) %% 100, company = company || '.' "
            "WHERE id IN (SELECT id FROM leads ORDER BY id LIMIT %s)",
            (n,),
        )


# (name, function, rows as a multiple of --rows). Inserts run first so updates and
# deletes have rows to work on.
WORKLOADS: tuple[tuple[str, Workload, int], ...] = (
    ("INSERT, 1 row per transaction", _insert_one_per_transaction, 1),
    ("INSERT, 100 rows per transaction", _insert_batches_of_100, 1),
    ("INSERT ... SELECT, one statement", _bulk_insert_select, 4),
    ("UPDATE 1 column, 1 row per transaction", _update_one_per_transaction, 1),
    ("UPDATE 2 columns, one statement", _bulk_update, 4),
    ("DELETE, 1 row per transaction", _delete_one_per_transaction, 1),
)


def run(
    server: URL, *, rows: int = 2000, rounds: int = 20, out: TextIO | None = None
) -> dict[str, Any]:
    say = (lambda m: out.write(m + "\n")) if out is not None else (lambda _m: None)
    results: list[Result] = []
    with (
        _scratch(server) as (admin_url, app_url),
        psycopg.connect(_conninfo(admin_url), autocommit=True) as admin,
    ):
        tenant = uuid.uuid4()
        admin.execute(
            "INSERT INTO tenants (id, name, subdomain) VALUES (%s, 'Bench', %s)",
            (tenant, f"bench-{tenant.hex[:12]}"),
        )
        server_version = str(admin.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]

        def trigger(enabled: bool) -> None:
            admin.execute(
                f"ALTER TABLE leads {'ENABLE' if enabled else 'DISABLE'} TRIGGER audit_row_change"
            )

        with psycopg.connect(_conninfo(app_url)) as app:
            for name, workload, factor in WORKLOADS:
                chunk = max(rows * factor // rounds, 1)
                timings: dict[bool, list[float]] = {True: [], False: []}
                admin.execute("VACUUM ANALYZE leads")
                # Many short rounds, alternating which side goes first: a change in the
                # machine's load during the run hits both sides alike.
                for r in range(rounds):
                    for audited in (True, False) if r % 2 == 0 else (False, True):
                        trigger(audited)
                        if workload in (_update_one_per_transaction, _delete_one_per_transaction):
                            _insert_batches_of_100(app, tenant, chunk)  # rows to work on
                        started = time.perf_counter()
                        workload(app, tenant, chunk)
                        timings[audited].append((time.perf_counter() - started) / chunk * 1e6)
                trigger(True)
                result = Result(
                    name,
                    chunk * rounds,
                    round(statistics.median(timings[False]), 1),
                    round(statistics.median(timings[True]), 1),
                )
                results.append(result)
                say(
                    f"{name:<40} {chunk * rounds:>6} rows  {result.plain_us_per_row:8.1f} us/row "
                    f"plain  {result.audited_us_per_row:8.1f} us/row audited  "
                    f"+{result.overhead_us:.1f} us (+{result.overhead_pct:.0f}%)"
                )
        sizes = admin.execute(
            "SELECT (SELECT count(*) FROM audit_log), "
            "(SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree('audit_log'))"
        ).fetchone()
        audit_rows, audit_bytes = (int(sizes[0]), int(sizes[1] or 0)) if sizes else (0, 0)
    return {
        "server_version": server_version,
        "rows": rows,
        "rounds": rounds,
        "results": [r.as_dict() for r in results],
        "audit_rows": audit_rows,
        "audit_bytes_per_row": round(audit_bytes / max(audit_rows, 1), 1),
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "| workload | rows | without audit (µs/row) | with audit (µs/row) | overhead (µs/row) | overhead |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['workload']} | {r['rows']} | {r['plain_us_per_row']} | {r['audited_us_per_row']} "
            f"| {r['overhead_us_per_row']} | {r['overhead_pct']}% |"
        )
    return "\n".join(lines)


__all__ = ["WORKLOADS", "Result", "markdown", "run"]
