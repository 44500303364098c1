"""Optional references between tenant tables: deleting the referenced row clears them.

They were `ON DELETE SET NULL (col)` foreign keys; Citus refuses that action on keys
that include the distribution column, so the keys are plain and a BEFORE DELETE trigger
(platform_db.ddl.references) clears the references. The behaviour must not change.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import IntegrityError

from platform_db.ddl.references import OPTIONAL_REFERENCES
from platform_db.models import metadata
from tests.factories import new_form, new_tenant
from tests.isolation_helpers import tenant_connection


def _graph(conn: Connection, tenant: uuid.UUID) -> dict[str, uuid.UUID]:
    """A user authoring a page, a form with a lead, a submission of that lead, and the
    lead pointing back at the submission: every optional reference set."""
    ids: dict[str, uuid.UUID] = {"tenant": tenant}
    ids["user"] = conn.scalar(
        text("INSERT INTO users (tenant_id, email) VALUES (:t, 'a@example.com') RETURNING id"),
        {"t": tenant},
    )
    ids["page"] = conn.scalar(
        text(
            "INSERT INTO pages (tenant_id, slug, title, author_id) "
            "VALUES (:t, 'p', 'P', :u) RETURNING id"
        ),
        {"t": tenant, "u": ids["user"]},
    )
    ids["form"] = new_form(conn, tenant)
    ids["lead"] = conn.scalar(
        text(
            "INSERT INTO leads (tenant_id, email, form_id) "
            "VALUES (:t, 'l@example.com', :f) RETURNING id"
        ),
        {"t": tenant, "f": ids["form"]},
    )
    ids["submission"] = conn.scalar(
        text(
            "INSERT INTO form_submissions (tenant_id, form_id, lead_id) "
            "VALUES (:t, :f, :l) RETURNING id"
        ),
        {"t": tenant, "f": ids["form"], "l": ids["lead"]},
    )
    conn.execute(
        text(
            "UPDATE leads SET (source_submission_id, source_submission_created_at) = "
            "(SELECT id, created_at FROM form_submissions WHERE tenant_id = :t AND id = :s) "
            "WHERE tenant_id = :t AND id = :l"
        ),
        {"t": tenant, "s": ids["submission"], "l": ids["lead"]},
    )
    return ids


def _references(conn: Connection, ids: dict[str, uuid.UUID]) -> dict[str, object]:
    row = conn.execute(
        text(
            "SELECT (SELECT author_id FROM pages WHERE tenant_id = :t AND id = :p) AS author,"
            " (SELECT form_id FROM leads WHERE tenant_id = :t AND id = :l) AS form,"
            " (SELECT source_submission_id FROM leads WHERE tenant_id = :t AND id = :l) AS src,"
            " (SELECT source_submission_created_at FROM leads "
            "  WHERE tenant_id = :t AND id = :l) AS src_at,"
            " (SELECT lead_id FROM form_submissions WHERE tenant_id = :t AND id = :s) AS lead,"
            " (SELECT count(*) FROM pages WHERE tenant_id = :t) AS pages,"
            " (SELECT count(*) FROM leads WHERE tenant_id = :t) AS leads,"
            " (SELECT count(*) FROM form_submissions WHERE tenant_id = :t) AS submissions"
        ),
        {"t": ids["tenant"], "p": ids["page"], "l": ids["lead"], "s": ids["submission"]},
    ).one()
    return dict(row._mapping)


def test_each_deletion_clears_only_its_reference(connection: Connection) -> None:
    ids = _graph(connection, new_tenant(connection))
    before = _references(connection, ids)
    assert None not in before.values()

    connection.execute(text("DELETE FROM users WHERE id = :u"), {"u": ids["user"]})
    assert _references(connection, ids) == {**before, "author": None}

    connection.execute(text("DELETE FROM form_submissions WHERE id = :s"), {"s": ids["submission"]})
    after_submission = {**before, "author": None, "src": None, "src_at": None, "lead": None}
    after_submission["submissions"] = 0
    assert _references(connection, ids) == after_submission

    connection.execute(text("DELETE FROM forms WHERE id = :f"), {"f": ids["form"]})
    assert _references(connection, ids) == {**after_submission, "form": None}


def test_deleting_a_lead_clears_its_submissions_lead(connection: Connection) -> None:
    ids = _graph(connection, new_tenant(connection))
    connection.execute(
        text("UPDATE leads SET source_submission_id = NULL, source_submission_created_at = NULL")
    )
    connection.execute(text("DELETE FROM leads WHERE id = :l"), {"l": ids["lead"]})
    assert _references(connection, ids)["lead"] is None
    assert _references(connection, ids)["submissions"] == 1


def test_a_reference_to_a_missing_or_foreign_row_is_still_refused(connection: Connection) -> None:
    a, b = new_tenant(connection), new_tenant(connection)
    form_b = new_form(connection, b)
    with (
        pytest.raises(IntegrityError, match="fk_leads_tenant_id_form_id_forms"),
        connection.begin_nested(),
    ):
        connection.execute(
            text("INSERT INTO leads (tenant_id, email, form_id) VALUES (:a, 'x@e.com', :f)"),
            {"a": a, "f": form_b},
        )
    with (
        pytest.raises(IntegrityError, match="fk_pages_tenant_id_author_id_users"),
        connection.begin_nested(),
    ):
        connection.execute(
            text("INSERT INTO pages (tenant_id, slug, title, author_id) VALUES (:a, 'q', 'Q', :u)"),
            {"a": a, "u": uuid.uuid4()},
        )


@pytest.fixture
def committed_graph(engine: Engine) -> Iterator[dict[str, uuid.UUID]]:
    with engine.begin() as conn:
        ids = _graph(conn, new_tenant(conn))
    try:
        yield ids
    finally:
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM tenants WHERE id = :t"), {"t": ids["tenant"]})


def test_a_tenant_session_clears_its_references_and_the_trail_records_it(
    engine: Engine, app_engine: Engine, committed_graph: dict[str, uuid.UUID]
) -> None:
    ids = committed_graph
    with tenant_connection(app_engine, ids["tenant"], commit=True) as conn:
        conn.execute(text("DELETE FROM users WHERE id = :u"), {"u": ids["user"]})
    with engine.connect() as conn:
        assert _references(conn, ids)["author"] is None
        change = conn.execute(
            text(
                "SELECT action, old_values, new_values FROM audit_log "
                "WHERE tenant_id = :t AND table_name = 'pages' ORDER BY changed_at DESC, id DESC "
                "LIMIT 1"
            ),
            {"t": ids["tenant"]},
        ).one()
    assert change.action == "UPDATE"
    assert change.old_values == {"author_id": str(ids["user"])}
    assert change.new_values == {"author_id": None}


def test_no_foreign_key_of_the_models_uses_set_null_and_every_optional_one_is_cleared() -> None:
    optional = set()
    for table in metadata.tables.values():
        for fk in table.foreign_key_constraints:
            assert fk.ondelete in (None, "CASCADE"), (table.name, fk.name, fk.ondelete)
            own = [c.name for c in fk.columns if c.name != "tenant_id"]
            if fk.referred_table.name != "tenants" and all(table.columns[c].nullable for c in own):
                optional.add((table.name, tuple(own), fk.referred_table.name))
    assert optional == {(r.table, r.columns, r.referenced) for r in OPTIONAL_REFERENCES}
