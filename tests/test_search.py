"""Full-text search through `platform.search_pages`: the GIN index under RLS, closed to
other tenants, the same results as the plain statement.

The corpus: 24 tenants x 40 pages (most published), a word every page has, words some
have, and a word of each tenant's own in two of its pages; analysed, so that plans are
realistic. Every check runs as the app login (a member of platform_app only) with the
tenant set by the real session hook, except where the catalog is read.
"""

from __future__ import annotations

import random
import re
import secrets
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import Connection, Engine, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from platform_db.ddl import definitions
from platform_db.ddl.search import MAX_SEARCH_ROWS
from platform_db.ddl.security import claim_ownership_sql
from platform_db.migration.autogenerate import compare_entities
from platform_db.models import Page, metadata
from platform_db.session.search import (
    search_pages,
    search_pages_async,
    search_pages_direct_query,
    search_pages_query,
)
from platform_db.session.tenancy import TenantSession, tenant_async_sessionmaker
from tests.isolation_helpers import (
    INSUFFICIENT_PRIVILEGE,
    delete_tenants,
    expect_db_error,
    sealed_tenant_sql,
)

TENANTS = 24
PAGES = 40
# One tenant much larger than the others, as the seed's largest: for a handful of pages
# the planner rightly reads the tenant's index and matches each page instead.
LARGE = 1200
SIGNATURE = "platform.search_pages(tsquery, integer, boolean)"
WORDS = (
    "garden",
    "pruning",
    "compost",
    "tomato",
    "harvest",
    "soil",
    "seedling",
    "orchard",
    "irrigation",
    "greenhouse",
    "mulch",
    "perennial",
    "lawn",
    "hedge",
    "bulb",
    "fertilizer",
    "trellis",
    "shade",
    "drought",
    "pollinator",
)


class Corpus:
    def __init__(self, tenants: list[uuid.UUID], own_word: dict[uuid.UUID, str]) -> None:
        self.tenants = tenants
        self.own_word = own_word


@pytest.fixture(scope="module")
def corpus(engine: Engine) -> Iterator[Corpus]:
    rng = random.Random(18)  # noqa: S311 - test data
    sfx = secrets.token_hex(4)
    tenants: list[uuid.UUID] = []
    own: dict[uuid.UUID, str] = {}
    with engine.begin() as conn:
        for i in range(TENANTS):
            tid = conn.scalar(
                text("INSERT INTO tenants (name, subdomain) VALUES (:n, :s) RETURNING id"),
                {"n": f"Search {i}", "s": f"search-{sfx}-{i}"},
            )
            assert isinstance(tid, uuid.UUID)
            tenants.append(tid)
            own[tid] = f"zq{sfx}{i:02d}x"
            rows = []
            for j in range(LARGE if i == 9 else PAGES):
                words = rng.sample(WORDS, 6)
                if j in (3, 17):
                    words.append(own[tid])
                rows.append(
                    {
                        "t": tid,
                        "slug": f"p-{j}",
                        "title": f"Onboarding guide {j} {words[0]}",
                        "content": "onboarding " + " ".join(words * 3),
                        "status": "draft" if j % 10 == 9 else "published",
                        "pub": j % 10 != 9,
                    }
                )
            conn.execute(
                text(
                    "INSERT INTO pages (tenant_id, slug, title, content, status, published_at) "
                    "VALUES (:t, :slug, :title, :content, :status, "
                    "CASE WHEN :pub THEN now() END)"
                ),
                rows,
            )
    # VACUUM too: it moves GIN's pending list (fast update) into the index proper, as
    # autovacuum does on a live server; a long pending list makes any GIN scan look dear.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM (ANALYZE) pages"))
    yield Corpus(tenants, own)
    delete_tenants(engine, tenants)


def _pairs(rows: Any) -> list[tuple[uuid.UUID, float]]:
    return [(page.id, round(float(rank), 6)) for page, rank in rows]


@pytest.mark.parametrize(
    "term",
    [
        "compost",
        "onboarding",
        "garden -tomato",
        '"onboarding guide"',
        "orchard or drought",
        "nothing",
    ],
)
@pytest.mark.parametrize("published_only", [True, False])
def test_search_returns_what_the_plain_statement_returns_in_order(
    app_engine: Engine, corpus: Corpus, term: str, published_only: bool
) -> None:
    tenant = corpus.tenants[5]
    with TenantSession(app_engine, tenant_id=tenant) as s, s.begin():
        through_function = search_pages(s, term, limit=25, published_only=published_only)
        plain = s.execute(
            search_pages_direct_query(term, limit=25, published_only=published_only)
        ).all()
    assert _pairs(through_function) == _pairs(plain)
    assert all(page.tenant_id == tenant for page, _ in through_function)
    if term == "onboarding":
        # Every page matches: a full first page, best first.
        assert len(through_function) == 25
        ranks = [rank for _, rank in through_function]
        assert ranks == sorted(ranks, reverse=True)
    if term == "nothing":
        assert through_function == []


@pytest.mark.parametrize(
    ("published_only", "statuses"), [(True, {"published"}), (False, {"published", "draft"})]
)
def test_published_only_chooses_the_pages(
    app_engine: Engine, corpus: Corpus, published_only: bool, statuses: set[str]
) -> None:
    with TenantSession(app_engine, tenant_id=corpus.tenants[4]) as s, s.begin():
        found = search_pages(s, "onboarding", limit=100, published_only=published_only)
    assert {page.status for page, _ in found} == statuses
    assert len(found) == (PAGES if not published_only else PAGES - PAGES // 10)


def test_search_pages_query_is_the_statement_search_pages_runs(
    app_engine: Engine, corpus: Corpus
) -> None:
    tenant = corpus.tenants[2]
    with TenantSession(app_engine, tenant_id=tenant) as s, s.begin():
        built = s.execute(search_pages_query("pruning mulch", limit=7)).all()
        helper = search_pages(s, "pruning mulch", limit=7)
    assert _pairs(built) == _pairs(helper)
    assert len(built) == 7
    compiled = str(search_pages_query("x").compile())
    assert "platform.search_pages(websearch_to_tsquery" in compiled
    assert "@@" not in compiled


def test_a_tenant_never_finds_another_tenants_pages(app_engine: Engine, corpus: Corpus) -> None:
    a, b = corpus.tenants[0], corpus.tenants[1]
    word_of_b = corpus.own_word[b]
    with TenantSession(app_engine, tenant_id=a) as s, s.begin():
        assert search_pages(s, word_of_b, published_only=False) == []
        assert search_pages(s, f"{word_of_b} or {corpus.own_word[a]}", published_only=False)
        found = search_pages(s, f"{word_of_b} or {corpus.own_word[a]}", published_only=False)
        assert {p.tenant_id for p, _ in found} == {a}
        assert len(found) == 2
        # The function itself, called directly: A's keys only.
        keys = s.execute(
            text(
                "SELECT id FROM platform.search_pages(websearch_to_tsquery('english', :q), 1000, false)"
            ),
            {"q": f"{word_of_b} or onboarding"},
        ).scalars()
        mine = s.execute(text("SELECT id FROM pages")).scalars().all()
        assert set(keys) == set(mine)
    with TenantSession(app_engine, tenant_id=b) as s, s.begin():
        assert len(search_pages(s, word_of_b, published_only=False)) == 2


def test_no_tenant_finds_nothing(app_engine: Engine, corpus: Corpus) -> None:
    with TenantSession(app_engine) as s, s.begin():
        assert search_pages(s, "onboarding", limit=100, published_only=False) == []
        n = s.execute(
            text(
                "SELECT count(*) FROM platform.search_pages("
                "websearch_to_tsquery('english', 'onboarding'), 1000, false)"
            )
        ).scalar()
        assert n == 0
    assert corpus.tenants  # positive control: the same search as a tenant finds pages
    with TenantSession(app_engine, tenant_id=corpus.tenants[0]) as s, s.begin():
        assert len(search_pages(s, "onboarding", limit=100, published_only=False)) == PAGES


async def test_search_pages_async_is_the_same_search(
    app_async_engine: AsyncEngine, app_engine: Engine, corpus: Corpus
) -> None:
    tenant = corpus.tenants[7]
    factory = tenant_async_sessionmaker(app_async_engine)
    async with factory(tenant_id=tenant) as session, session.begin():
        found = await search_pages_async(session, "harvest soil", limit=15)
    with TenantSession(app_engine, tenant_id=tenant) as s, s.begin():
        expected = search_pages(s, "harvest soil", limit=15)
    assert found
    assert _pairs(found) == _pairs(expected)


def test_limits_are_checked_and_capped(app_engine: Engine, corpus: Corpus) -> None:
    for bad in (0, 101, -1, True):
        with pytest.raises(ValueError, match="limit must be between 1 and 100"):
            search_pages_query("x", limit=bad)
    with TenantSession(app_engine, tenant_id=corpus.tenants[3]) as s, s.begin():
        with pytest.raises(ValueError, match="limit"):
            search_pages(s, "onboarding", limit=500)
        rows = s.execute(
            text(
                "SELECT count(*) FROM platform.search_pages("
                "websearch_to_tsquery('english', 'onboarding'), :n, false)"
            ),
            {"n": 0},
        ).scalar()
        assert rows == 0
    assert MAX_SEARCH_ROWS == 1000


# --- the function is closed -------------------------------------------------------------


def test_the_function_runs_as_a_nologin_bypassrls_role_with_a_pinned_search_path(
    engine: Engine,
) -> None:
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT p.prosecdef, p.proconfig, r.rolname, r.rolbypassrls, r.rolcanlogin, "
                "p.provolatile, p.prorows, "
                "ARRAY(SELECT DISTINCT pg_get_userbyid(a.grantee)::text "
                "      FROM aclexplode(p.proacl) a WHERE a.privilege_type = 'EXECUTE' "
                "      ORDER BY 1) AS executors, "
                "EXISTS (SELECT FROM aclexplode(p.proacl) a WHERE a.grantee = 0) AS public "
                "FROM pg_proc p JOIN pg_roles r ON r.oid = p.proowner "
                "WHERE p.oid = CAST(:f AS regprocedure)"
            ),
            {"f": SIGNATURE},
        ).one()
    assert row.prosecdef is True
    assert row.proconfig == ["search_path=pg_catalog, pg_temp"]
    assert (row.rolname, row.rolbypassrls, row.rolcanlogin) == ("platform_admin", True, False)
    assert (row.provolatile, row.prorows) == ("s", 20)
    assert row.executors == ["platform_admin", "platform_app"]  # the owner, and the app
    assert row.public is False


@pytest.mark.parametrize(
    "statement",
    [
        "CREATE OR REPLACE FUNCTION platform.search_pages(query tsquery, max_rows integer "
        "DEFAULT 20, published_only boolean DEFAULT true) RETURNS TABLE (id uuid, rank real) "
        "LANGUAGE sql AS $$ SELECT id, 1::real FROM public.pages $$",
        f"ALTER FUNCTION {SIGNATURE} SECURITY INVOKER",
        f"ALTER FUNCTION {SIGNATURE} RESET search_path",
        f"ALTER FUNCTION {SIGNATURE} OWNER TO CURRENT_USER",
    ],
)
def test_the_app_login_cannot_change_the_function(
    app_engine: Engine, corpus: Corpus, statement: str
) -> None:
    with TenantSession(app_engine, tenant_id=corpus.tenants[0]) as s, s.begin():
        conn = s.connection()
        with expect_db_error(INSUFFICIENT_PRIVILEGE, ""):
            conn.execute(text(statement))


# --- the plan: the GIN index, for the current tenant ------------------------------------


def _nested_plans(
    database_url: URL, login: str, statement: str, params: dict[str, Any], tenant: uuid.UUID
) -> list[str]:
    """Every plan PostgreSQL runs for `statement` (nested ones too), as `login`.

    auto_explain is loaded by the superuser, which then becomes the app login for the
    rest of the session (SET SESSION AUTHORIZATION): the statement and the search
    function's own query run exactly as the login runs them, under its RLS.
    """
    notices: list[str] = []
    conninfo = database_url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        for setting in (
            "LOAD 'auto_explain'",
            "SET auto_explain.log_min_duration = 0",
            "SET auto_explain.log_nested_statements = on",
            "SET auto_explain.log_level = notice",
            "SET auto_explain.log_analyze = on",
            "SET auto_explain.log_timing = off",
        ):
            conn.execute(setting)
        conn.execute(sql.SQL("SET SESSION AUTHORIZATION {}").format(sql.Identifier(login)))
        row = conn.execute(
            "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
        assert row == (False, False)
        with conn.transaction():
            conn.execute(sealed_tenant_sql(tenant, pid=conn.info.backend_pid))
            notices.clear()
            conn.execute(statement, params).fetchall()
    # Not the seal's own lookup inside platform.current_tenant_id() (platform_db.ddl.seal).
    return [n for n in notices if "tenant_seal_settings" not in n]


def _compiled(engine: Engine, stmt: Any) -> tuple[str, dict[str, Any]]:
    compiled = stmt.compile(dialect=engine.dialect)
    return str(compiled), dict(compiled.params)


def test_explain_as_the_app_login_shows_the_gin_index_for_the_current_tenant(
    database_url: URL, app_login: URL, app_engine: Engine, corpus: Corpus
) -> None:
    tenant = corpus.tenants[9]
    rare = corpus.own_word[tenant]
    statement, params = _compiled(app_engine, search_pages_query(rare, limit=20))
    assert app_login.username
    plans = _nested_plans(database_url, app_login.username, statement, params, tenant)
    inner = [p for p in plans if "FROM public.pages AS t" in p]
    outer = [p for p in plans if "platform.search_pages(" in p and p not in inner]
    assert len(inner) == 1, plans
    assert len(outer) == 1, plans
    plan = inner[0]
    # The match is an index condition on the GIN index ...
    assert "Bitmap Index Scan on ix_pages_search" in plan, plan
    assert "Index Cond: (search_vector @@ " in plan, plan
    # ... of the same scan that keeps the current tenant's rows only.
    scan = plan[plan.index("Bitmap Heap Scan on pages t") :]
    # (a custom plan shows the tenant's id, a generic one the variable's parameter)
    assert re.search(rf"tenant_id = ('{tenant}'::uuid|\$\d+)", scan), plan
    assert "(actual rows=2 loops=1)" in plan.split("Bitmap Heap Scan on pages t")[1], plan
    # The statement itself reads the found pages back by key, under the policy.
    assert "Function Scan on search_pages" in outer[0], outer[0]
    assert "Index Scan using pk_pages on pages" in outer[0], outer[0]
    assert "platform.current_tenant_id()" in outer[0], outer[0]


def test_beneath_the_policy_the_plain_statement_cannot_use_the_gin_index(
    database_url: URL, app_login: URL, app_engine: Engine, corpus: Corpus
) -> None:
    # Why the function exists: the same search as one statement under RLS. Were `@@`
    # ever usable beneath the policy, this would fail, and the function could go.
    tenant = corpus.tenants[9]
    statement, params = _compiled(
        app_engine, search_pages_direct_query(corpus.own_word[tenant], limit=20)
    )
    assert app_login.username
    plans = _nested_plans(database_url, app_login.username, statement, params, tenant)
    assert len(plans) == 1, plans
    assert "ix_pages_search" not in plans[0], plans[0]
    assert "search_vector @@" in plans[0]


# --- the catalog: drift and ownership ---------------------------------------------------


def _search_ops(conn: Connection) -> list[tuple[Any, ...]]:
    ops = compare_entities(conn, definitions(metadata))
    return [o.to_diff_tuple() for o in ops]


def test_alembic_check_holds_the_search_function(connection: Connection) -> None:
    assert _search_ops(connection) == []
    connection.execute(text(f"ALTER FUNCTION {SIGNATURE} OWNER TO platform_owner"))
    found = _search_ops(connection)
    assert len(found) == 1, found
    assert found[0][:2] == ("replace_function", "platform.search_pages")
    assert "owned by platform_owner, should be platform_admin" in found[0][2]


def test_a_function_handed_to_platform_admin_without_a_definition_is_drift(
    connection: Connection,
) -> None:
    connection.execute(text("ALTER FUNCTION platform.current_user_id() OWNER TO platform_admin"))
    found = _search_ops(connection)
    assert [f[:2] for f in found] == [("replace_function", "platform.current_user_id")]
    assert "bypasses row-level security" in found[0][2]


def test_the_ownership_hand_over_leaves_the_search_function_to_platform_admin(
    connection: Connection,
) -> None:
    connection.execute(text("ALTER FUNCTION platform.current_user_id() OWNER TO CURRENT_USER"))
    connection.execute(text(claim_ownership_sql(["pages"])))
    owners: dict[str, str] = dict(
        connection.execute(
            text(
                "SELECT proname, pg_get_userbyid(proowner) FROM pg_proc "
                "WHERE proname IN ('search_pages', 'current_user_id')"
            )
        ).all()
    )
    assert owners == {"search_pages": "platform_admin", "current_user_id": "platform_owner"}


def test_the_page_model_declares_its_search() -> None:
    search = getattr(Page, "__tenant_search__", None)
    assert search is not None
    assert search.function == "platform.search_pages"
    assert search.vector == "search_vector"
