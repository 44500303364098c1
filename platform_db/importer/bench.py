"""Throughput of import-mongo against plain COPY of the same rows (a benchmark, not a test).

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \\
        python -m platform_db.importer.bench --documents 100000 --tenants 5

1. writes a sample dump (platform_db.importer.sampledump) to a temporary directory;
2. creates a scratch database on DATABASE_URL's server (a superuser is needed: it
   creates and drops the database), migrates it;
3. imports the dump (timed, with its phases), then imports it again (the no-op case);
4. copies the imported rows out (COPY TO, in memory), empties the tables, and loads the
   same rows with plain `COPY ... FROM STDIN` into the same tables (timed) — the upper
   bound for any loader: no parsing, no checks, no staging;
5. prints both rates and their ratio, and drops the scratch database.

The partitions the import created stay for the COPY run, so both load the same tables.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy.engine import URL

from platform_db.importer.load import Mode
from platform_db.importer.mapping import default_mapping
from platform_db.importer.report import ImportReport
from platform_db.importer.run import ImportOptions, conninfo, run_import
from platform_db.importer.sampledump import generate
from platform_db.session.settings import ConfigurationError, database_url_from_env
from platform_db.testing.scratch import temporary_database

TABLES = ("tenants", "users", "pages", "forms", "form_submissions", "leads")


def _copy_baseline(url: URL) -> tuple[float, int, int]:
    """Seconds, rows and bytes of plain COPY FROM of the rows the import wrote."""
    with psycopg.connect(conninfo(url), autocommit=True) as conn:
        data: dict[str, tuple[list[str], bytes]] = {}
        rows = 0
        for table in TABLES:
            columns = [
                r[0]
                for r in conn.execute(
                    "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass "
                    "AND attnum > 0 AND NOT attisdropped AND attgenerated = '' ORDER BY attnum",
                    [f"public.{table}"],
                )
            ]
            buf = bytearray()
            cols = sql.SQL(", ").join(map(sql.Identifier, columns))
            with conn.cursor().copy(
                sql.SQL("COPY (SELECT {} FROM {}) TO STDOUT").format(cols, sql.Identifier(table))
            ) as copy:
                for chunk in copy:
                    buf += chunk
            data[table] = (columns, bytes(buf))
            rows += bytes(buf).count(b"\n")
        conn.execute("TRUNCATE tenants CASCADE")
        conn.execute("CHECKPOINT")
        started = time.perf_counter()
        with conn.transaction():
            for table in TABLES:
                columns, payload = data[table]
                cols = sql.SQL(", ").join(map(sql.Identifier, columns))
                with conn.cursor().copy(
                    sql.SQL("COPY {} ({}) FROM STDIN").format(sql.Identifier(table), cols)
                ) as copy:
                    for i in range(0, len(payload), 1 << 20):
                        copy.write(payload[i : i + (1 << 20)])
        seconds = time.perf_counter() - started
    return seconds, rows, sum(len(p) for _, p in data.values())


def _import(url: URL, directory: Path) -> tuple[float, ImportReport]:
    started = time.perf_counter()
    report = run_import(
        url,
        ImportOptions(
            directory=directory,
            mapping=default_mapping(),
            mode=Mode.IMPORT,
            rejects_path=directory.parent / "rejects.jsonl",
        ),
    )
    return time.perf_counter() - started, report


def run_benchmark(server: URL, *, documents: int, tenants: int, seed: int) -> dict[str, Any]:
    with temporary_database(server, migrate=True, prefix="platform_import_bench") as url:
        with tempfile.TemporaryDirectory(prefix="pdb-import-bench-") as tmp:
            directory = Path(tmp) / "dump"
            manifest = generate(directory, documents=documents, tenants=tenants, seed=seed)
            size = sum(f.stat().st_size for f in directory.iterdir())
            with psycopg.connect(conninfo(url), autocommit=True) as conn:
                conn.execute("CHECKPOINT")
            first_s, first = _import(url, directory)
            again_s, again = _import(url, directory)
        written = sum(c.total.present for c in first.collections)
        copy_s, copy_rows, copy_bytes = _copy_baseline(url)
    return {
        "documents": manifest.documents,
        "dump_bytes": size,
        "rows_written": written,
        "rejected": first.rejected,
        "balanced": first.balanced and again.balanced,
        "import_seconds": round(first_s, 2),
        "import_docs_per_s": round(manifest.documents / first_s),
        "import_rows_per_s": round(written / first_s),
        "reimport_seconds": round(again_s, 2),
        "copy_seconds": round(copy_s, 2),
        "copy_rows": copy_rows,
        "copy_bytes": copy_bytes,
        "copy_rows_per_s": round(copy_rows / copy_s),
        "ratio_to_copy": round((written / first_s) / (copy_rows / copy_s), 3),
        "phases": {
            c.collection: {
                "documents": c.documents,
                **{k: round(v, 2) for k, v in c.phases.items()},
            }
            for c in first.collections
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m platform_db.importer.bench",
        description="import-mongo throughput against plain COPY of the same rows "
        "(DATABASE_URL: a superuser URL of the server to use; a scratch database is made).",
    )
    parser.add_argument("--documents", type=int, default=100_000)
    parser.add_argument("--tenants", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        server = database_url_from_env()
    except ConfigurationError as exc:
        print(f"platform-db bench: {exc}", file=sys.stderr)  # noqa: T201
        return 2
    if server is None:
        print("platform-db bench: set DATABASE_URL to a superuser URL", file=sys.stderr)  # noqa: T201
        return 2
    result = run_benchmark(server, documents=args.documents, tenants=args.tenants, seed=args.seed)
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    out = sys.stdout
    out.write(
        f"| documents | dump | rows written | import | import rows/s | re-import | "
        f"plain COPY | COPY rows/s | import / COPY |\n|---|---|---|---|---|---|---|---|---|\n"
        f"| {result['documents']:,} | {result['dump_bytes'] / 2**20:.1f} MiB | "
        f"{result['rows_written']:,} | {result['import_seconds']} s | "
        f"{result['import_rows_per_s']:,} | {result['reimport_seconds']} s | "
        f"{result['copy_seconds']} s | {result['copy_rows_per_s']:,} | "
        f"{result['ratio_to_copy']:.2f} |\n\nphases (s): " + json.dumps(result["phases"]) + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
