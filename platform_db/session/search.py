"""Full-text search over pages (the stored `search_vector` and its GIN index).

Every search goes through `platform.search_pages(query, max_rows, published_only)`
(platform_db.ddl.search): beneath the tenant policy a plain `search_vector @@ query`
never uses the GIN index, so the function finds and ranks the current tenant's matches
with the index and returns their ids and ranks; the statement here reads those pages
back by key, under RLS like every other read. No tenant set: no rows.

On a Citus coordinator (docs/SCALING.md) the one statement cannot run: its join with
`pages` is routed to the tenant's shard, and the function, run there, would start a
distributed query from inside a shard's query, which Citus refuses. There
`search_pages`/`search_pages_async` run the function on its own first (on the
coordinator, its query routed to the tenant's shard), then read the pages by key (one
shard again): two statements, the same rows in the same order. `search_pages_query` is
the one statement, for a single server.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import (
    REAL,
    Boolean,
    Integer,
    Select,
    String,
    Uuid,
    bindparam,
    column,
    func,
    select,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import Session

from platform_db.models import Page, PageStatus
from platform_db.models.page import SEARCH_CONFIG
from platform_db.session import fresh

MAX_LIMIT = 100


def _check_limit(limit: int) -> None:
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_LIMIT}, got {limit!r}")


def _hits(text: Any, limit: Any, published_only: Any) -> Any:
    query = func.websearch_to_tsquery(SEARCH_CONFIG, text)
    return (
        func.platform.search_pages(query, limit, published_only)
        .table_valued(column("id", Uuid), column("rank", REAL))
        .alias("hits")
    )


def _search_statement(hits: Any) -> Select[tuple[Page, Any]]:
    rank = hits.c.rank.label("rank")
    return (
        select(Page, rank)
        .join_from(hits, Page, Page.id == hits.c.id)
        .order_by(hits.c.rank.desc(), Page.id)
    )


# Built once: what changes per call is bound, so a search builds no statement and
# SQLAlchemy finds its compiled form in the cache straight away.
_BOUND_HITS = _hits(
    bindparam("text", type_=String),
    bindparam("limit", type_=Integer),
    bindparam("published_only", type_=Boolean),
)
_SEARCH = _search_statement(_BOUND_HITS)
# On Citus: the function's hits, best first (it orders them), then their pages by key.
_CITUS_HITS = select(_BOUND_HITS.c.id, _BOUND_HITS.c.rank)
_CITUS_PAGES = select(Page).where(Page.id.in_(bindparam("ids", expanding=True)))


def search_pages_query(
    text: str, *, limit: int = 20, published_only: bool = True
) -> Select[tuple[Page, Any]]:
    """Pages matching a web-style query (`"exact phrase" -excluded or`), best first.

    `websearch_to_tsquery` never raises on user input, so the text can come straight
    from a search box. Ranked by ts_rank_cd over title (weight A) and content (B), ties by
    id. The matching runs in `platform.search_pages`, which uses the GIN index for the
    current tenant; the pages are then read under RLS.
    """
    _check_limit(limit)
    return _search_statement(_hits(text, limit, bool(published_only)))


def search_pages_direct_query(
    text: str, *, limit: int = 20, published_only: bool = True
) -> Select[tuple[Page, Any]]:
    """The same search as one plain statement over `pages`, without the function.

    Same rows in the same order, but beneath RLS the `@@` cannot use the GIN index: for
    a login that RLS does not filter, with an explicit `Page.tenant_id == ...` added
    (platform-wide work, the benchmark's plain-SQLAlchemy baseline), or for comparison.
    """
    _check_limit(limit)
    query = func.websearch_to_tsquery(SEARCH_CONFIG, text)
    rank = func.ts_rank_cd(Page.search_vector, query).label("rank")
    stmt = (
        select(Page, rank)
        .where(Page.search_vector.bool_op("@@")(query))
        .order_by(rank.desc(), Page.id)
        .limit(limit)
    )
    if published_only:
        stmt = stmt.where(Page.status == PageStatus.PUBLISHED)
    return stmt


def _params(text: str, limit: int, published_only: bool) -> dict[str, Any]:
    _check_limit(limit)
    return {"text": text, "limit": limit, "published_only": bool(published_only)}


async def _on_citus_async(conn: AsyncConnection) -> bool:
    known = fresh.citus_known(conn.sync_connection)  # type: ignore[arg-type]
    if known is None:
        answer = (await conn.exec_driver_sql(fresh.CITUS_SQL)).first() is not None
        known = fresh.remember_citus(conn.sync_connection, answer)  # type: ignore[arg-type]
    return known


def _in_hits_order(hits: Sequence[Any], pages: Iterable[Page]) -> list[tuple[Page, float]]:
    by_id = {page.id: page for page in pages}
    return [(by_id[hit.id], float(hit.rank)) for hit in hits if hit.id in by_id]


def search_pages(
    session: Session, text: str, *, limit: int = 20, published_only: bool = True
) -> list[tuple[Page, float]]:
    """`search_pages_query` run in `session`: (page, rank) pairs, best first."""
    params = _params(text, limit, published_only)
    if fresh.on_citus(session.connection()):
        hits = session.execute(_CITUS_HITS, params).all()
        if not hits:
            return []
        pages = session.scalars(_CITUS_PAGES, {"ids": [hit.id for hit in hits]})
        return _in_hits_order(hits, pages)
    rows = session.execute(_SEARCH, params)
    return [(page, float(rank)) for page, rank in rows]


async def search_pages_async(
    session: AsyncSession, text: str, *, limit: int = 20, published_only: bool = True
) -> list[tuple[Page, float]]:
    """`search_pages` for an AsyncSession."""
    params = _params(text, limit, published_only)
    if await _on_citus_async(await session.connection()):
        hits = (await session.execute(_CITUS_HITS, params)).all()
        if not hits:
            return []
        pages = await session.scalars(_CITUS_PAGES, {"ids": [hit.id for hit in hits]})
        return _in_hits_order(hits, pages)
    result = await session.execute(_SEARCH, params)
    return [(page, float(rank)) for page, rank in result]


__all__ = [
    "MAX_LIMIT",
    "search_pages",
    "search_pages_async",
    "search_pages_direct_query",
    "search_pages_query",
]
