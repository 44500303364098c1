"""Full-text search over pages (the stored `search_vector` and its GIN index)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from platform_db.models import Page, PageStatus
from platform_db.models.page import SEARCH_CONFIG


def search_pages_query(
    text: str, *, limit: int = 20, published_only: bool = True
) -> Select[tuple[Page, Any]]:
    """Pages matching a web-style query (`"exact phrase" -excluded or`), best first.

    `websearch_to_tsquery` never raises on user input, so the text can come straight
    from a search box. Ranked by ts_rank_cd over title (weight A) and content (B).
    """
    if not 1 <= limit <= 100:
        raise ValueError(f"limit must be between 1 and 100, got {limit}")
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


def search_pages(session: Session, text: str, **kwargs: Any) -> list[tuple[Page, float]]:
    return [
        (page, float(rank)) for page, rank in session.execute(search_pages_query(text, **kwargs))
    ]


async def search_pages_async(
    session: AsyncSession, text: str, **kwargs: Any
) -> list[tuple[Page, float]]:
    result = await session.execute(search_pages_query(text, **kwargs))
    return [(page, float(rank)) for page, rank in result]
