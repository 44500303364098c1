"""Full-text search on the largest tenant: the package's search against the plans it must
match, for rare and frequent terms (part of `platform-db bench`'s EXPLAIN step).

Each term runs, interleaved `repeats` times, as

- `package`: the package's statement (platform_db.session.search.search_pages_query: the
  search function, then the pages by key under RLS), as the platform_app login with the
  tenant set;
- `rls_plain`: the same search as one statement over `pages` under RLS (what the package
  ran before the search function; `@@` cannot use the GIN index beneath the policy);
- `superuser`: that statement as a superuser with `tenant_id = '...'` written out (the
  plan the function's query gets: the GIN index ANDed with the tenant's index);
- `top_candidates` (frequent terms only, an experiment): rank only the first 5 x limit
  matches the index returns instead of all of them; faster, but is the order right?

Times are the median wall time of executing the statement and reading its rows, on the
same connection, values inlined (psycopg prepares a statement after five executions, so
every variant runs prepared after the first few), plus the server's own Execution Time
from EXPLAIN ANALYZE of one run. Terms come from the tenant's own published pages:
`rare` the two lexemes in the fewest pages (at least one), `absent` a lexeme other tenants have and this one
does not, `frequent` the lexemes in most of its pages (alone and two together).
"""

from __future__ import annotations

import statistics
import time
import uuid
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import Engine
from sqlalchemy.engine import URL

from platform_db.bench.seed import conninfo
from platform_db.models import Page
from platform_db.session import seal
from platform_db.session.search import search_pages_direct_query, search_pages_query

LIMIT = 20
CANDIDATES = 5 * LIMIT


def _render(engine: Engine, stmt: Any, conn: psycopg.Connection[Any]) -> str:
    compiled = stmt.compile(dialect=engine.dialect)
    return psycopg.ClientCursor(conn).mogrify(str(compiled), compiled.params).strip()


def _largest_tenant(admin: psycopg.Connection[Any]) -> tuple[uuid.UUID, int]:
    row = admin.execute(
        "SELECT tenant_id, count(*) FROM pages WHERE status = 'published' "
        "GROUP BY tenant_id ORDER BY 2 DESC, 1 LIMIT 1"
    ).fetchone()
    if row is None:
        raise ValueError("no published pages to search")
    return row[0], int(row[1])


def pick_terms(admin: psycopg.Connection[Any], tenant: uuid.UUID) -> dict[str, list[str]]:
    """Words whose stem occurs in few, none or most of the tenant's published pages."""
    stat = (
        "SELECT word, ndoc FROM ts_stat(format("
        "'SELECT search_vector FROM pages WHERE tenant_id = %%L AND status = ''published''', "
        "%s::text)) WHERE word ~ '^[a-z]{4,}$'"
    )
    words = admin.execute(stat + " ORDER BY ndoc DESC, word", (str(tenant),)).fetchall()
    by_count = {str(w): int(n) for w, n in words}
    frequent = [w for w, _ in words[:2]]
    # The fewest pages first: a handful at most, as few as the tenant's vocabulary has.
    rare = [w for w, n in sorted(words, key=lambda x: (x[1], x[0])) if n >= 1][:2]
    absent_row = admin.execute(
        "SELECT word FROM ts_stat('SELECT search_vector FROM pages WHERE status = ''published''') "
        "WHERE word ~ '^[a-z]{5,}$' AND ndoc BETWEEN 20 AND 2000 ORDER BY ndoc DESC, word LIMIT 200"
    ).fetchall()
    absent = [str(r[0]) for r in absent_row if str(r[0]) not in by_count][:1]
    terms = {"rare": rare, "absent": absent, "frequent": frequent}
    if len(frequent) == 2:
        terms["frequent"] = [*frequent, f"{frequent[0]} {frequent[1]}"]
    return terms


def _time(conn: psycopg.Connection[Any], statement: str) -> tuple[float, list[Any]]:
    start = time.perf_counter()
    rows = conn.execute(statement).fetchall()
    return (time.perf_counter() - start) * 1000.0, rows


def _server_ms(conn: psycopg.Connection[Any], statement: str) -> float | None:
    lines = [
        str(r[0]) for r in conn.execute("EXPLAIN (ANALYZE, TIMING OFF, SUMMARY ON) " + statement)
    ]
    total = 0.0
    for line in lines:
        for label in ("Planning Time:", "Execution Time:"):
            if line.strip().startswith(label):
                total += float(line.split(":")[1].split()[0])
    return round(total, 3) if total else None


def _top_candidates_sql(tenant: uuid.UUID, text: str) -> sql.Composed:
    return sql.SQL(
        "WITH q AS (SELECT websearch_to_tsquery('english', {text}) AS q), "
        "candidates AS MATERIALIZED (SELECT p.id, p.search_vector FROM pages p, q "
        "WHERE p.tenant_id = {tenant} AND p.status = 'published' AND p.search_vector @@ q.q "
        "LIMIT {n}) "
        "SELECT c.id, ts_rank_cd(c.search_vector, q.q) AS rank FROM candidates c, q "
        "ORDER BY rank DESC, c.id LIMIT {limit}"
    ).format(
        text=sql.Literal(text),
        tenant=sql.Literal(str(tenant)),
        n=sql.Literal(CANDIDATES),
        limit=sql.Literal(LIMIT),
    )


def search_comparison(
    super_engine: Engine, super_url: URL, app_url: URL, *, repeats: int = 25
) -> dict[str, Any]:
    """The comparison above, for the tenant with the most published pages."""
    with psycopg.connect(conninfo(super_url), autocommit=True) as admin:
        tenant, pages = _largest_tenant(admin)
        terms = pick_terms(admin, tenant)
    out: dict[str, Any] = {
        "tenant": str(tenant),
        "published_pages": pages,
        "limit": LIMIT,
        "repeats": repeats,
        "terms": {},
    }
    with (
        psycopg.connect(conninfo(super_url)) as sup,
        psycopg.connect(conninfo(app_url)) as app,
    ):
        # One transaction for all of it (rolled back at the end): the tenant as the hook
        # sets it, sealed for this connection (platform_db.session.seal).
        app.execute(seal.tenant_sql_for(app.info.backend_pid, str(uuid.UUID(str(tenant)))))
        for kind, words in terms.items():
            for text in words:
                statements = {
                    "package": (
                        app,
                        _render(super_engine, search_pages_query(text, limit=LIMIT), app),
                    ),
                    "rls_plain": (
                        app,
                        _render(super_engine, search_pages_direct_query(text, limit=LIMIT), app),
                    ),
                    "superuser": (
                        sup,
                        _render(
                            super_engine,
                            search_pages_direct_query(text, limit=LIMIT).where(
                                Page.tenant_id == tenant
                            ),
                            sup,
                        ),
                    ),
                }
                if kind == "frequent":
                    statements["top_candidates"] = (
                        sup,
                        _top_candidates_sql(tenant, text).as_string(sup),
                    )
                out["terms"][text] = _measure(kind, statements, repeats)
                out["terms"][text]["matches"] = _matches(sup, tenant, text)
        app.rollback()
        sup.rollback()
    return out


def _measure(
    kind: str, statements: dict[str, tuple[psycopg.Connection[Any], str]], repeats: int
) -> dict[str, Any]:
    times: dict[str, list[float]] = {name: [] for name in statements}
    results: dict[str, list[Any]] = {}
    for _ in range(repeats):
        for name, (conn, statement) in statements.items():
            ms, rows = _time(conn, statement)
            times[name].append(ms)
            results[name] = rows
    exact = [(r[1], round(float(r[-1]), 6)) for r in results["superuser"]]
    row: dict[str, Any] = {"kind": kind, "variants": {}}
    for name, (conn, statement) in statements.items():
        found = results[name]
        if name == "top_candidates":
            mine = [(r[0], round(float(r[1]), 6)) for r in found]
        else:
            mine = [(r[1], round(float(r[-1]), 6)) for r in found]
        row["variants"][name] = {
            "median_ms": round(statistics.median(times[name]), 3),
            "server_ms": _server_ms(conn, statement),
            "rows": len(found),
            "same_results_as_superuser": mine == exact,
            # How many of the right first results it found at all (order aside).
            "share_of_right_results": round(len(set(mine) & set(exact)) / len(exact), 3)
            if exact
            else None,
        }
    su = row["variants"]["superuser"]["median_ms"]
    row["package_over_superuser"] = (
        round(row["variants"]["package"]["median_ms"] / su, 3) if su else None
    )
    return row


def _matches(conn: psycopg.Connection[Any], tenant: uuid.UUID, text: str) -> int:
    row = conn.execute(
        "SELECT count(*) FROM pages WHERE tenant_id = %s AND status = 'published' "
        "AND search_vector @@ websearch_to_tsquery('english', %s)",
        (tenant, text),
    ).fetchone()
    return int(row[0]) if row else 0


__all__ = ["search_comparison"]
