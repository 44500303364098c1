"""The README's Python examples run, in order, as a platform_app login on the test database."""

from __future__ import annotations

import ast
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, text
from sqlalchemy.engine import URL

from platform_db.models import Lead, LeadStatus, Page, TenantDashboard
from platform_db.testing.plugin import TwoTenants, two_tenants

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"^```python\n(.*?)^```$", re.DOTALL | re.MULTILINE)


def _seed(conn: Connection, tenant_id: uuid.UUID) -> None:
    conn.execute(
        text(
            "INSERT INTO leads (tenant_id, email, company, score, status, converted_at, "
            "attributes, created_at) "
            "SELECT :t, 'lead' || g || '@example.org', "
            "CASE WHEN g % 3 = 0 THEN NULL ELSE 'Company ' || g % 2 END, g * 9, "
            "(ARRAY['new','contacted','converted'])[1 + g % 3], "
            "CASE WHEN g % 3 = 2 THEN now() END, "
            "CASE WHEN g % 2 = 0 THEN '{\"plan\": \"pro\"}' ELSE '{}' END::jsonb, "
            "now() - g * interval '1 day' FROM generate_series(1, 7) g"
        ),
        {"t": tenant_id},
    )
    conn.execute(
        text(
            "INSERT INTO pages (tenant_id, slug, title, content, status, published_at) VALUES "
            "(:t, 'onboarding', 'Onboarding guide', 'Our onboarding guide, step by step.', "
            "'published', now()), "
            "(:t, 'pricing', 'Pricing', 'What it costs.', 'published', now())"
        ),
        {"t": tenant_id},
    )


@pytest.fixture
def seeded(engine: Engine) -> Iterator[TwoTenants]:
    with two_tenants(engine, [_seed]) as pair:
        with engine.begin() as conn:
            conn.execute(text("SELECT * FROM platform.refresh_performance_views()"))
        yield pair


def _blocks() -> list[str]:
    return [m.group(1) for m in FENCE.finditer(README.read_text(encoding="utf-8"))]


def test_readme_has_the_examples() -> None:
    code = "\n".join(_blocks())
    for name in (
        "db.async_session",
        "find_many_async",
        "next_cursor",
        "QueryError",
        "search_pages(",
        "search_pages_async",
        "TenantDashboard",
        "tenant_context",
    ):
        assert name in code, name


async def test_readme_examples_run_as_the_app_login(
    seeded: TwoTenants, app_login: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", app_login.render_as_string(hide_password=False))
    monkeypatch.setenv("POSTGRES_POOL_MIN", "1")
    monkeypatch.setenv("POSTGRES_POOL_MAX", "2")
    user = uuid.uuid4()
    ns: dict[str, Any] = {"request_tenant_id": seeded.a, "request_user_id": user}
    try:
        for i, block in enumerate(_blocks()):
            code = compile(
                block,
                f"README.md python block {i + 1}",
                "exec",
                flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
            )
            result = eval(code, ns)  # noqa: S307 - the README's own examples
            if result is not None:
                await result
    finally:
        if "db" in ns:
            await ns["db"].dispose_async()
            ns["db"].dispose()

    # What the examples computed is this tenant's, and right.
    def mine(rows: list[Lead] | list[Page]) -> bool:
        return bool(rows) and all(row.tenant_id == seeded.a for row in rows)

    assert mine(ns["first"].items)
    assert mine(ns["second"].items)
    assert not {lead.id for lead in ns["first"].items} & {lead.id for lead in ns["second"].items}
    assert mine(ns["pro"].items)
    assert all(lead.attributes == {"plan": "pro"} for lead in ns["pro"].items)
    assert "attributes supports only" in ns["error"]
    assert mine(ns["leads"])
    assert len(ns["leads"]) == 6  # 5 seeded open + the README's new one
    assert [page.slug for page, _ in ns["hits"]] == ["onboarding"]
    dashboard: TenantDashboard = ns["dashboard"]
    assert dashboard.tenant_id == seeded.a
    assert dashboard.leads_total == 7
    assert ns["lead"].status is LeadStatus.CONTACTED
    assert mine(ns["newest"].items)
