"""Each of the seed's indexes serves the query it exists for (EXPLAIN on realistic data).

A database of this module's own is loaded with a few hundred tenants with skewed row
counts (two large tenants, the rest small) and VACUUM ANALYZEd, as a live database is.
Queries carry an explicit tenant filter because they run as the superuser;
tests/test_isolation.py checks the plans under RLS.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

from tests.conftest import temporary_database

BULK = """
INSERT INTO tenants (name, subdomain, custom_domain, industry_module)
SELECT 'Tenant ' || g, 'bulk-' || g,
       CASE WHEN g % 3 = 0 THEN 'www.bulk' || g || '.example.com' END,
       'module_' || (g % 40)
FROM generate_series(1, 400) AS g;

INSERT INTO users (tenant_id, email, first_name, last_name, role, is_active)
SELECT t.id, 'user' || g || '@' || t.subdomain || '.example.com', 'First' || g, 'Last' || g,
       (ARRAY['owner', 'admin', 'editor', 'viewer'])[1 + g % 4], g % 10 <> 0
FROM tenants t CROSS JOIN generate_series(1, 25) AS g
WHERE t.subdomain LIKE 'bulk-%';

INSERT INTO pages (tenant_id, slug, title, content, status, published_at)
SELECT t.id, 'page-' || g, 'Page ' || g || ' about ' || (ARRAY['gardens', 'roofs', 'taxes', 'boats'])[1 + g % 4]
           || CASE WHEN g = 7 AND t.subdomain = 'bulk-7' THEN ' and zeppelins' ELSE '' END,
       repeat('Lorem ipsum dolor sit amet ' || g || ' ', 20),
       CASE WHEN g % 3 = 0 THEN 'draft' ELSE 'published' END,
       CASE WHEN g % 3 = 0 THEN NULL ELSE now() - g * interval '1 day' END
FROM tenants t CROSS JOIN generate_series(1, 15) AS g
WHERE t.subdomain LIKE 'bulk-%';

INSERT INTO forms (tenant_id, name, slug)
SELECT t.id, 'Form ' || g, 'form-' || g
FROM tenants t CROSS JOIN generate_series(1, 3) AS g
WHERE t.subdomain LIKE 'bulk-%';

INSERT INTO leads (tenant_id, email, status, converted_at, created_at)
SELECT t.id, 'lead' || g || '@example.org',
       (ARRAY['new', 'contacted', 'qualified', 'converted', 'lost'])[1 + g % 5],
       CASE WHEN g % 5 = 3 THEN now() END,
       now() - (g % 700) * interval '1 day'
FROM tenants t
CROSS JOIN LATERAL generate_series(1, CASE WHEN t.subdomain IN ('bulk-7', 'bulk-8') THEN 5000 ELSE 40 END) AS g
WHERE t.subdomain LIKE 'bulk-%';

INSERT INTO form_submissions (tenant_id, form_id, created_at, data)
SELECT f.tenant_id, f.id, now() - (g % 90) * interval '1 day', jsonb_build_object('n', g)
FROM forms f CROSS JOIN generate_series(1, 30) AS g;
"""


@pytest.fixture(scope="module")
def bulk(server_url: URL) -> Iterator[tuple[Connection, uuid.UUID]]:
    with temporary_database(server_url, migrate=True) as url:
        engine = create_engine(url, poolclass=NullPool)
        with engine.begin() as conn:
            for statement in BULK.split(";\n"):
                if statement.strip():
                    conn.execute(text(statement))
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            # Sets the visibility map (index-only scans) and the statistics; ANALYZE of a
            # partitioned parent samples its partitions too.
            conn.execute(text("VACUUM ANALYZE"))
            conn.execute(text("ANALYZE form_submissions"))
            tenant = conn.scalar(text("SELECT id FROM tenants WHERE subdomain = 'bulk-7'"))
            assert isinstance(tenant, uuid.UUID)
            yield conn, tenant
        engine.dispose()


def _plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _plan_nodes(child)


def explain(conn: Connection, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    doc = conn.execute(text(f"EXPLAIN (FORMAT JSON) {sql}"), params).scalar_one()
    return list(_plan_nodes(doc[0]["Plan"]))


def _index_family(conn: Connection, index: str) -> set[str]:
    """The index and, for a partitioned index, its partitions' indexes."""
    return {index} | set(
        conn.scalars(
            text("SELECT relid::regclass::text FROM pg_partition_tree(CAST(:i AS regclass))"),
            {"i": index},
        )
    )


CASES: list[tuple[str, str, str]] = [
    (
        "uq_users_tenant_email",
        "SELECT first_name, last_name, role, is_active FROM users "
        "WHERE tenant_id = :t AND email = 'user3@bulk-7.example.com'",
        "Index Only Scan",
    ),
    ("ix_users_tenant_role", "SELECT id FROM users WHERE tenant_id = :t AND role = 'editor'", ""),
    (
        "ix_users_tenant_active",
        "SELECT id FROM users WHERE tenant_id = :t AND is_active = false",
        "",
    ),
    (
        "ix_users_tenant_role_active",
        "SELECT id FROM users WHERE tenant_id = :t AND role = 'admin' AND is_active",
        "",
    ),
    ("uq_pages_tenant_slug", "SELECT * FROM pages WHERE tenant_id = :t AND slug = 'page-4'", ""),
    (
        "ix_pages_search",
        "SELECT id FROM pages WHERE search_vector @@ websearch_to_tsquery('english', 'zeppelin')",
        "",
    ),
    (
        "ix_pages_tenant_published",
        "SELECT id, title FROM pages WHERE tenant_id = :t AND status = 'published' "
        "ORDER BY published_at DESC LIMIT 10",
        "",
    ),
    (
        "ix_leads_tenant_status",
        "SELECT * FROM leads WHERE tenant_id = :t AND status = 'qualified' "
        "ORDER BY created_at DESC LIMIT 20",
        "",
    ),
    (
        "ix_leads_tenant_email",
        "SELECT * FROM leads WHERE tenant_id = :t AND email = 'lead9@example.org'",
        "",
    ),
    (
        "ix_leads_tenant_funnel",
        "SELECT date_trunc('month', created_at), status, count(*), count(converted_at) "
        "FROM leads WHERE tenant_id = :t AND created_at >= now() - interval '90 days' "
        "GROUP BY 1, 2",
        "Index Only Scan",
    ),
    (
        "ix_form_submissions_tenant_form_created",
        "SELECT * FROM form_submissions WHERE tenant_id = :t "
        "AND form_id = (SELECT id FROM forms WHERE tenant_id = :t AND slug = 'form-2') "
        "AND created_at >= now() - interval '7 days'",
        "",
    ),
    (
        "ix_form_submissions_tenant_created",
        "SELECT count(*) FROM form_submissions WHERE tenant_id = :t "
        "AND created_at >= now() - interval '10 days'",
        "",
    ),
    ("uq_tenants_subdomain", "SELECT * FROM tenants WHERE subdomain = 'bulk-42'", ""),
    (
        "uq_tenants_custom_domain",
        "SELECT * FROM tenants WHERE custom_domain = 'www.bulk42.example.com'",
        "",
    ),
    ("ix_tenants_industry_module", "SELECT id FROM tenants WHERE industry_module = 'module_3'", ""),
]


@pytest.mark.parametrize(("index", "sql", "scan"), CASES, ids=[c[0] for c in CASES])
def test_index_serves_its_query(
    bulk: tuple[Connection, uuid.UUID], index: str, sql: str, scan: str
) -> None:
    conn, tenant = bulk
    nodes = explain(conn, sql, {"t": tenant})
    family = _index_family(conn, index)
    used = [n for n in nodes if n.get("Index Name") in family]
    assert used, (
        f"{index} not used; plan nodes: {[(n['Node Type'], n.get('Index Name')) for n in nodes]}"
    )
    if scan:
        assert any(n["Node Type"] == scan for n in used)


def test_date_range_prunes_partitions(bulk: tuple[Connection, uuid.UUID]) -> None:
    conn, tenant = bulk
    nodes = explain(
        conn,
        "SELECT count(*) FROM form_submissions WHERE tenant_id = :t "
        "AND created_at >= date_trunc('month', now()) AND created_at < date_trunc('month', now()) + interval '1 month'",
        {"t": tenant},
    )
    # now() is stable: pruning happens at executor start-up, visible as "Subplans Removed".
    scanned = {n.get("Relation Name") for n in nodes if n.get("Relation Name")}
    removed = sum(n.get("Subplans Removed", 0) for n in nodes)
    assert len(scanned) == 1 or removed > 0, scanned
