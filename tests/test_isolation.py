"""Adversarial tenant-isolation tests, run as the app login (a member of platform_app only).

Every attack runs with tenant A set by the real session hook and targets tenant B's
committed rows. Each assertion is exact on both sides: rows crossing the boundary == 0
AND the attacker's own rows are all visible (so a policy that hides everything, or a
test that looks at the wrong table, fails too). After write attacks, B's rows are
compared, as the superuser, with a digest taken before the attack.
"""

from __future__ import annotations

import secrets
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, cast

import psycopg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import Connection, Engine, TextClause, create_engine, event, select, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from platform_db.models import Lead, Page
from platform_db.session.engines import make_engine
from platform_db.session.settings import SYNC_DRIVER, with_driver
from platform_db.session.tenancy import TenantError, TenantSession, scope_statements
from tests.isolation_helpers import (
    FAR_PAST,
    FEATURE_NOT_SUPPORTED,
    FOREIGN_KEY_VIOLATION,
    INSUFFICIENT_PRIVILEGE,
    PARTITIONED_TABLES,
    SEEDED_ROWS,
    TENANT_TABLES,
    SeededTenant,
    app_may,
    delete_tenants,
    expect_db_error,
    fingerprint,
    is_distributed,
    logical_name,
    sqlstate,
    tenant_connection,
    visible_tenant_ids,
    write_refusal,
)

RLS_VIOLATION = "row-level security"


def _raw(conn: Connection) -> psycopg.Connection[Any]:
    """The psycopg connection under a SQLAlchemy connection (same transaction)."""
    return cast("psycopg.Connection[Any]", conn.connection.driver_connection)


def _uid() -> str:
    return secrets.token_hex(4)


# ---------------------------------------------------------------------------------------
# Set-up sanity: the data the attacks aim at really exists where it should.
# ---------------------------------------------------------------------------------------


def test_seeded_rows_exist_for_both_tenants_and_span_partitions(
    engine: Engine, a: SeededTenant, b: SeededTenant
) -> None:
    # Every tenant table of the registry has rows of both tenants, as many as seeded.
    assert set(SEEDED_ROWS) == set(TENANT_TABLES), "seed_rows must fill every tenant table"
    for tenant in (a, b):
        fp = fingerprint(engine, tenant.tenant_id)
        assert {t: fp[t][0] for t in TENANT_TABLES} == {t: tenant.count(t) for t in TENANT_TABLES}
        assert {t: tenant.count(t) for t in TENANT_TABLES} == SEEDED_ROWS
    with engine.connect() as conn:
        parts = {
            logical_name(r[0])
            for r in conn.execute(
                text("SELECT tableoid::regclass::text FROM form_submissions WHERE tenant_id = :t"),
                {"t": b.tenant_id},
            )
        }
    assert "form_submissions_default" in parts
    assert len(parts - {"form_submissions_default"}) == 2, parts


def test_app_login_is_plain_platform_app_member(app_engine: Engine) -> None:
    with app_engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT r.rolsuper, r.rolbypassrls, "
                "pg_has_role(current_user, 'platform_app', 'MEMBER'), "
                "pg_has_role(current_user, 'platform_owner', 'MEMBER'), "
                "pg_has_role(current_user, 'platform_admin', 'MEMBER') "
                "FROM pg_roles r WHERE r.rolname = current_user"
            )
        ).one()
    assert tuple(row) == (False, False, True, False, False)


# ---------------------------------------------------------------------------------------
# 1. Reads
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("table", TENANT_TABLES)
def test_select_other_tenant_by_id(
    app_engine: Engine, a: SeededTenant, b: SeededTenant, table: str
) -> None:
    with tenant_connection(app_engine, a.tenant_id) as conn:
        q = text(f"SELECT count(*) FROM {table} WHERE id = ANY(:ids)")
        assert conn.scalar(q, {"ids": list(b.ids[table])}) == 0
        assert conn.scalar(q, {"ids": list(a.ids[table])}) == a.count(table)
        q2 = text(f"SELECT count(*) FROM {table} WHERE tenant_id = :t")
        assert conn.scalar(q2, {"t": b.tenant_id}) == 0
        assert conn.scalar(q2, {"t": a.tenant_id}) == a.count(table)


@pytest.mark.parametrize("table", TENANT_TABLES)
def test_unfiltered_scan_and_count_see_only_own_rows(
    engine: Engine, app_engine: Engine, a: SeededTenant, table: str
) -> None:
    with engine.connect() as conn:
        total = conn.scalar(text(f"SELECT count(*) FROM {table}"))
    assert isinstance(total, int)
    assert total > a.count(table), "positive control: other tenants' rows exist"
    with tenant_connection(app_engine, a.tenant_id) as conn:
        seen = visible_tenant_ids(conn, table)
        assert set(seen) == {a.tenant_id}
        assert len(seen) == a.count(table)
        assert conn.scalar(text(f"SELECT count(*) FROM {table}")) == a.count(table)


def test_joins_and_subqueries_see_only_own_rows(
    app_engine: Engine, a: SeededTenant, b: SeededTenant
) -> None:
    if is_distributed(app_engine):
        # Citus refuses a join that does not match tenant_id on both sides (it would
        # need to move rows between nodes): nothing at all comes back, which is the
        # boundary holding. The same joins with the tenant in them are answered.
        for sql in (
            "SELECT p.tenant_id, u.tenant_id FROM pages p "
            "JOIN users u ON u.id = p.author_id OR u.id = ANY(:bu)",
            "SELECT count(*) FROM form_submissions s "
            "WHERE EXISTS (SELECT 1 FROM leads l WHERE l.id = s.lead_id)",
        ):
            with (
                tenant_connection(app_engine, a.tenant_id) as conn,
                pytest.raises(DBAPIError, match=r"complex joins|repartition"),
            ):
                conn.execute(text(sql), {"bu": list(b.ids["users"])})
        with tenant_connection(app_engine, a.tenant_id) as conn:
            rows = conn.execute(
                text(
                    "SELECT p.tenant_id, u.tenant_id FROM pages p JOIN users u "
                    "ON u.tenant_id = p.tenant_id AND (u.id = p.author_id OR u.id = ANY(:bu))"
                ),
                {"bu": list(b.ids["users"])},
            ).all()
            assert {(r[0], r[1]) for r in rows} == {(a.tenant_id, a.tenant_id)}
            n = conn.scalar(
                text(
                    "SELECT count(*) FROM form_submissions s WHERE EXISTS (SELECT 1 FROM "
                    "leads l WHERE l.tenant_id = s.tenant_id AND l.id = s.lead_id)"
                )
            )
            assert n == a.count("form_submissions")
        return
    with tenant_connection(app_engine, a.tenant_id) as conn:
        # A join without the tenant in its condition: still only A's pairs.
        rows = conn.execute(
            text(
                "SELECT p.tenant_id, u.tenant_id FROM pages p "
                "JOIN users u ON u.id = p.author_id OR u.id = ANY(:bu)"
            ),
            {"bu": list(b.ids["users"])},
        ).all()
        assert len(rows) == a.count("pages")
        assert {(r[0], r[1]) for r in rows} == {(a.tenant_id, a.tenant_id)}
        n = conn.scalar(
            text(
                "SELECT count(*) FROM form_submissions s "
                "WHERE EXISTS (SELECT 1 FROM leads l WHERE l.id = s.lead_id)"
            )
        )
        assert n == a.count("form_submissions")


# ---------------------------------------------------------------------------------------
# 1. Writes
# ---------------------------------------------------------------------------------------

INSERT_SQL = {
    "users": "INSERT INTO users (tenant_id, email) VALUES (:t, :email)",
    "pages": "INSERT INTO pages (tenant_id, slug, title) VALUES (:t, :slug, 'x')",
    "forms": "INSERT INTO forms (tenant_id, name, slug) VALUES (:t, 'x', :slug)",
    "leads": "INSERT INTO leads (tenant_id, email) VALUES (:t, :email)",
    "form_submissions": "INSERT INTO form_submissions (tenant_id, form_id) VALUES (:t, :form)",
    # Read-only for platform_app (the audit trigger writes it): every write is refused.
    "audit_log": "INSERT INTO audit_log "
    "(tenant_id, table_name, row_key, action, db_user, transaction_id) "
    "VALUES (:t, 'leads', '{}', 'INSERT', current_user, 0)",
}
UPDATE_COLUMN = {
    "users": "first_name",
    "pages": "title",
    "forms": "name",
    "leads": "company",
    "form_submissions": "user_agent",
    "audit_log": "table_name",
}


SEARCH_CALL = text(
    "SELECT id FROM platform.search_pages(websearch_to_tsquery('english', :q), 1000, false)"
)


def test_search_function_finds_only_own_pages(
    engine: Engine, app_engine: Engine, a: SeededTenant, b: SeededTenant
) -> None:
    # Both tenants' pages say 'secret body'; the function runs without RLS (it must, to
    # use the GIN index), so it is the function that keeps B's pages out.
    with engine.connect() as conn:
        everyone = conn.execute(
            text("SELECT tenant_id FROM pages WHERE search_vector @@ to_tsquery('secret')")
        ).scalars()
        assert {a.tenant_id, b.tenant_id} <= set(everyone), "positive control"
    with tenant_connection(app_engine, a.tenant_id) as conn:
        found = set(conn.execute(SEARCH_CALL, {"q": "secret"}).scalars())
        assert found == set(a.ids["pages"])
        assert not found & set(b.ids["pages"])
        # A query of every word, including B's own label: still only A's pages.
        found = set(conn.execute(SEARCH_CALL, {"q": "secret or page or b or a"}).scalars())
        assert found == set(a.ids["pages"])
    with tenant_connection(app_engine, None) as conn:
        assert conn.execute(SEARCH_CALL, {"q": "secret"}).all() == []


def _insert_params(target: SeededTenant) -> dict[str, Any]:
    """Parameters that make the insert valid in every respect but the tenant."""
    uid = _uid()
    return {
        "t": target.tenant_id,
        "email": f"x{uid}@x.example.com",
        "slug": f"s-{uid}",
        "form": target.first("forms"),
    }


@pytest.mark.parametrize("table", TENANT_TABLES)
def test_insert_for_other_tenant_is_refused(
    engine: Engine, app_engine: Engine, a: SeededTenant, b: SeededTenant, table: str
) -> None:
    before = fingerprint(engine, b.tenant_id)
    refusal = write_refusal(table, "INSERT")
    for returning in ("", " RETURNING *"):
        with (
            tenant_connection(app_engine, a.tenant_id) as conn,
            expect_db_error(INSUFFICIENT_PRIVILEGE, refusal),
        ):
            conn.execute(text(INSERT_SQL[table] + returning), _insert_params(b))
    # Positive control: the same statement for the own tenant works, where platform_app
    # may insert at all; into a read-only table it is refused for the own tenant too.
    with tenant_connection(app_engine, a.tenant_id) as conn:
        own = text(INSERT_SQL[table] + " RETURNING tenant_id")
        if app_may(table, "INSERT"):
            assert conn.execute(own, _insert_params(a)).scalar_one() == a.tenant_id
        else:
            with expect_db_error(INSUFFICIENT_PRIVILEGE, refusal):
                conn.execute(own, _insert_params(a))
    assert fingerprint(engine, b.tenant_id) == before


def _assert_each_refused(
    app_engine: Engine,
    tenant: SeededTenant,
    table: str,
    privilege: str,
    statements: list[tuple[TextClause, dict[str, Any]]],
) -> None:
    """A table platform_app may not write (audit_log): each statement, in a transaction
    of its own as `tenant`, is refused outright for want of `privilege`."""
    for stmt, params in statements:
        with (
            tenant_connection(app_engine, tenant.tenant_id) as conn,
            expect_db_error(INSUFFICIENT_PRIVILEGE, write_refusal(table, privilege)),
        ):
            conn.execute(stmt, params)


@pytest.mark.parametrize("table", TENANT_TABLES)
def test_update_of_other_tenant_rows_affects_nothing(
    engine: Engine, app_engine: Engine, a: SeededTenant, b: SeededTenant, table: str
) -> None:
    before = fingerprint(engine, b.tenant_id)
    col = UPDATE_COLUMN[table]
    by_tenant = text(f"UPDATE {table} SET {col} = 'pwned' WHERE tenant_id = :t RETURNING id")
    by_id = text(f"UPDATE {table} SET {col} = 'pwned' WHERE id = ANY(:ids)")
    unfiltered = text(f"UPDATE {table} SET {col} = {col} RETURNING tenant_id")
    if not app_may(table, "UPDATE"):
        _assert_each_refused(
            app_engine,
            a,
            table,
            "UPDATE",
            [
                (by_tenant, {"t": b.tenant_id}),
                (by_id, {"ids": list(b.ids[table])}),
                (unfiltered, {}),
            ],
        )
        assert fingerprint(engine, b.tenant_id) == before
        return
    with tenant_connection(app_engine, a.tenant_id, commit=True) as conn:
        res = conn.execute(by_tenant, {"t": b.tenant_id})
        assert res.all() == []
        res = conn.execute(by_id, {"ids": list(b.ids[table])})
        assert res.rowcount == 0
        # An unfiltered no-op update touches exactly the own rows.
        returned = conn.execute(unfiltered).scalars().all()
        assert set(returned) == {a.tenant_id}
        assert len(returned) == a.count(table)
    assert fingerprint(engine, b.tenant_id) == before


@pytest.mark.parametrize("table", TENANT_TABLES)
def test_moving_own_row_to_other_tenant_is_refused(
    engine: Engine, app_engine: Engine, a: SeededTenant, b: SeededTenant, table: str
) -> None:
    before_a = fingerprint(engine, a.tenant_id)
    # Citus refuses to change the distribution column before the policy is asked.
    refusal = (
        (FEATURE_NOT_SUPPORTED, "modifying the partition value")
        if is_distributed(engine)
        else (INSUFFICIENT_PRIVILEGE, write_refusal(table, "UPDATE"))
    )
    with (
        tenant_connection(app_engine, a.tenant_id) as conn,
        expect_db_error(*refusal),
    ):
        conn.execute(
            text(f"UPDATE {table} SET tenant_id = :b WHERE id = :id RETURNING *"),
            {"b": b.tenant_id, "id": a.first(table)},
        )
    assert fingerprint(engine, a.tenant_id) == before_a


@pytest.mark.parametrize("table", TENANT_TABLES)
def test_delete_of_other_tenant_rows_affects_nothing(
    engine: Engine, app_engine: Engine, a: SeededTenant, b: SeededTenant, table: str
) -> None:
    before = fingerprint(engine, b.tenant_id)
    by_tenant = text(f"DELETE FROM {table} WHERE tenant_id = :t RETURNING *")
    by_id = text(f"DELETE FROM {table} WHERE id = ANY(:ids)")
    if not app_may(table, "DELETE"):
        _assert_each_refused(
            app_engine,
            a,
            table,
            "DELETE",
            [(by_tenant, {"t": b.tenant_id}), (by_id, {"ids": list(b.ids[table])})],
        )
        assert fingerprint(engine, b.tenant_id) == before
        return
    with tenant_connection(app_engine, a.tenant_id, commit=True) as conn:
        res = conn.execute(by_tenant, {"t": b.tenant_id})
        assert res.all() == []
        res = conn.execute(by_id, {"ids": list(b.ids[table])})
        assert res.rowcount == 0
    assert fingerprint(engine, b.tenant_id) == before


# forms is left out: A's own submissions reference A's form (NO ACTION), so an
# unfiltered delete of forms fails on A's rows before B could matter.
@pytest.mark.parametrize("table", [t for t in TENANT_TABLES if t != "forms"])
def test_unfiltered_delete_removes_only_own_rows(
    app_engine: Engine, a: SeededTenant, table: str
) -> None:
    delete = text(f"DELETE FROM {table} RETURNING tenant_id")
    with tenant_connection(app_engine, a.tenant_id) as conn:  # rolled back
        if not app_may(table, "DELETE"):
            with expect_db_error(INSUFFICIENT_PRIVILEGE, write_refusal(table, "DELETE")):
                conn.execute(delete)
            return
        returned = conn.execute(delete).scalars().all()
        assert set(returned) == {a.tenant_id}
        assert len(returned) == a.count(table)


UPSERT_SQL = {
    "users": "INSERT INTO users (tenant_id, id, email) VALUES (:t, :id, :email) "
    "ON CONFLICT (tenant_id, id) DO {action} RETURNING tenant_id, id",
    "pages": "INSERT INTO pages (tenant_id, id, slug, title) VALUES (:t, :id, :slug, 'x') "
    "ON CONFLICT (tenant_id, id) DO {action} RETURNING tenant_id, id",
    "forms": "INSERT INTO forms (tenant_id, id, name, slug) VALUES (:t, :id, 'x', :slug) "
    "ON CONFLICT (tenant_id, id) DO {action} RETURNING tenant_id, id",
    "leads": "INSERT INTO leads (tenant_id, id, email) VALUES (:t, :id, :email) "
    "ON CONFLICT (tenant_id, id) DO {action} RETURNING tenant_id, id",
    "form_submissions": "INSERT INTO form_submissions (tenant_id, id, created_at, form_id) "
    "VALUES (:t, :id, :at, :form) "
    "ON CONFLICT (tenant_id, id, created_at) DO {action} RETURNING tenant_id, id",
    "audit_log": "INSERT INTO audit_log (tenant_id, id, changed_at, table_name, row_key, "
    "action, db_user, transaction_id) OVERRIDING SYSTEM VALUE "
    "VALUES (:t, :id, :at, 'leads', '{{}}', 'INSERT', current_user, 0) "
    "ON CONFLICT (tenant_id, changed_at, id) DO {action} RETURNING tenant_id, id",
}


@pytest.mark.parametrize("table", TENANT_TABLES)
def test_upsert_hitting_other_tenant_key_is_refused(
    engine: Engine, app_engine: Engine, a: SeededTenant, b: SeededTenant, table: str
) -> None:
    before = fingerprint(engine, b.tenant_id)
    # B's real key: id, and for a partitioned table the time it is partitioned by.
    at = b.times[table][0] if table in b.times else None
    params = _insert_params(b) | {"id": b.first(table), "at": at}
    do_update = f"UPDATE SET {UPDATE_COLUMN[table]} = 'pwned'"
    refusal = write_refusal(table, "INSERT")
    for action in (do_update, "NOTHING"):
        # The proposed row is checked against the policy before any conflict is
        # looked for, so neither the update nor the existence of B's key gets through.
        with (
            tenant_connection(app_engine, a.tenant_id) as conn,
            expect_db_error(INSUFFICIENT_PRIVILEGE, refusal),
        ):
            conn.execute(text(UPSERT_SQL[table].format(action=action)), params)
    # The same key under A's own tenant does not conflict with B's row: a new A row
    # (where platform_app may insert at all; a read-only table refuses it too).
    own = params | {"t": a.tenant_id, "form": a.first("forms")}
    with tenant_connection(app_engine, a.tenant_id) as conn:
        upsert = text(UPSERT_SQL[table].format(action=do_update))
        if app_may(table, "INSERT"):
            got = conn.execute(upsert, own).all()
            assert [tuple(r) for r in got] == [(a.tenant_id, b.first(table))]
        else:
            with expect_db_error(INSUFFICIENT_PRIVILEGE, refusal):
                conn.execute(upsert, own)
    assert fingerprint(engine, b.tenant_id) == before


def test_upsert_on_other_tenant_unique_email_is_refused(
    engine: Engine, app_engine: Engine, a: SeededTenant, b: SeededTenant
) -> None:
    before = fingerprint(engine, b.tenant_id)
    with (
        tenant_connection(app_engine, a.tenant_id) as conn,
        expect_db_error(INSUFFICIENT_PRIVILEGE, RLS_VIOLATION),
    ):
        conn.execute(
            text(
                "INSERT INTO users (tenant_id, email) VALUES (:t, :e) "
                "ON CONFLICT (tenant_id, email) DO UPDATE SET role = 'owner' RETURNING id"
            ),
            {"t": b.tenant_id, "e": b.user_emails[0]},
        )
    assert fingerprint(engine, b.tenant_id) == before


# ---------------------------------------------------------------------------------------
# 1. COPY
# ---------------------------------------------------------------------------------------


def _copy_out(conn: Connection, sql: str) -> list[tuple[Any, ...]]:
    with _raw(conn).cursor() as cur, cur.copy(sql) as copy:
        return list(copy.rows())


@pytest.mark.parametrize("table", TENANT_TABLES)
def test_copy_to_stdout_returns_only_own_rows(
    app_engine: Engine, a: SeededTenant, table: str
) -> None:
    with tenant_connection(app_engine, a.tenant_id) as conn:
        rows = _copy_out(conn, f"COPY (SELECT tenant_id FROM {table}) TO STDOUT")
        assert [r[0] for r in rows] == [str(a.tenant_id)] * a.count(table)
        rows = _copy_out(conn, f"COPY {table} (tenant_id, id) TO STDOUT")
        # Under RLS, `COPY table TO` runs as `SELECT ... FROM ONLY table`: for a
        # partitioned table (form_submissions, audit_log) that is the empty parent
        # (PostgreSQL behaviour; without RLS it would be "cannot copy from partitioned
        # table"). Nothing leaks.
        own = [] if table in PARTITIONED_TABLES else sorted(str(i) for i in a.ids[table])
        assert sorted(r[1] for r in rows) == own
        assert {r[0] for r in rows} <= {str(a.tenant_id)}
        if is_distributed(app_engine):
            # Citus writes a generated column (pages.search_vector) into `COPY table TO`
            # under RLS, which the typed row reader refuses: count the lines instead.
            with _raw(conn).cursor() as cur, cur.copy(f"COPY {table} TO STDOUT") as copy:
                data = b"".join(bytes(chunk) for chunk in copy)
            assert data.count(b"\n") == len(own)
            return
        rows = _copy_out(conn, f"COPY {table} TO STDOUT")
        assert len(rows) == len(own)


@pytest.mark.parametrize("table", TENANT_TABLES)
def test_copy_from_stdin_is_refused(
    engine: Engine, app_engine: Engine, a: SeededTenant, b: SeededTenant, table: str
) -> None:
    before = fingerprint(engine, b.tenant_id)
    # COPY FROM is refused under RLS altogether; a read-only table refuses it earlier,
    # for want of INSERT.
    state, match = (
        (FEATURE_NOT_SUPPORTED, "COPY FROM not supported with row-level")
        if app_may(table, "INSERT")
        else (INSUFFICIENT_PRIVILEGE, write_refusal(table, "INSERT"))
    )
    for target in (a, b):
        with (
            tenant_connection(app_engine, a.tenant_id) as conn,
            expect_db_error(state, match),
            _raw(conn).cursor() as cur,
            cur.copy(f"COPY {table} (tenant_id) FROM STDIN") as copy,
        ):
            copy.write_row((str(target.tenant_id),))
    assert fingerprint(engine, b.tenant_id) == before


# ---------------------------------------------------------------------------------------
# 1. TRUNCATE, references, partitions, functions, DDL, roles
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("table", TENANT_TABLES)
def test_truncate_is_denied(
    engine: Engine, app_engine: Engine, a: SeededTenant, b: SeededTenant, table: str
) -> None:
    before = fingerprint(engine, b.tenant_id)
    # On Citus the refusal may name a partition that the cascade reaches first.
    named = "" if is_distributed(engine) else f" {table}"
    for stmt in (f"TRUNCATE {table}", f"TRUNCATE {table} CASCADE"):
        with (
            tenant_connection(app_engine, a.tenant_id) as conn,
            expect_db_error(INSUFFICIENT_PRIVILEGE, f"permission denied for table{named}"),
        ):
            conn.execute(text(stmt))
    assert fingerprint(engine, b.tenant_id) == before


REFERENCE_ATTACKS: dict[str, tuple[str, Callable[[SeededTenant, SeededTenant], dict[str, Any]]]] = {
    "page-author->B-user": (
        "INSERT INTO pages (tenant_id, slug, title, author_id) VALUES (:t, :slug, 'x', :ref)",
        lambda a, b: {"t": a.tenant_id, "slug": f"r-{_uid()}", "ref": b.first("users")},
    ),
    "lead-form->B-form": (
        "INSERT INTO leads (tenant_id, email, form_id) VALUES (:t, 'r@x.example.com', :ref)",
        lambda a, b: {"t": a.tenant_id, "ref": b.first("forms")},
    ),
    "submission-form->B-form": (
        "INSERT INTO form_submissions (tenant_id, form_id) VALUES (:t, :ref)",
        lambda a, b: {"t": a.tenant_id, "ref": b.first("forms")},
    ),
    "submission-lead->B-lead": (
        "INSERT INTO form_submissions (tenant_id, form_id, lead_id) VALUES (:t, :form, :ref)",
        lambda a, b: {"t": a.tenant_id, "form": a.first("forms"), "ref": b.first("leads")},
    ),
    "lead-source->B-submission": (
        "INSERT INTO leads (tenant_id, email, source_submission_id, "
        "source_submission_created_at) VALUES (:t, 'r@x.example.com', :ref, :at)",
        lambda a, b: {
            "t": a.tenant_id,
            "ref": b.submission_keys[0][0],
            "at": b.submission_keys[0][1],
        },
    ),
    "update-page-author->B-user": (
        "UPDATE pages SET author_id = :ref WHERE id = :id",
        lambda a, b: {"id": a.first("pages"), "ref": b.first("users")},
    ),
    "update-lead-form->B-form": (
        "UPDATE leads SET form_id = :ref WHERE id = :id",
        lambda a, b: {"id": a.first("leads"), "ref": b.first("forms")},
    ),
}


@pytest.mark.parametrize("attack", sorted(REFERENCE_ATTACKS))
def test_composite_foreign_keys_refuse_other_tenant_targets(
    engine: Engine, app_engine: Engine, a: SeededTenant, b: SeededTenant, attack: str
) -> None:
    sql, params = REFERENCE_ATTACKS[attack]
    before = (fingerprint(engine, a.tenant_id), fingerprint(engine, b.tenant_id))
    with (
        tenant_connection(app_engine, a.tenant_id) as conn,
        expect_db_error(FOREIGN_KEY_VIOLATION, "is not present in table"),
    ):
        conn.execute(text(sql), params(a, b))
    assert (fingerprint(engine, a.tenant_id), fingerprint(engine, b.tenant_id)) == before


def _partitions(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return [
            r[0]
            for r in conn.execute(
                text(
                    "SELECT relid::regclass::text FROM pg_partition_tree('form_submissions') "
                    "WHERE isleaf ORDER BY 1"
                )
            )
        ]


def test_partitions_are_not_reachable_by_name(
    engine: Engine, app_engine: Engine, a: SeededTenant
) -> None:
    parts = _partitions(engine)
    assert "form_submissions_default" in parts
    assert len(parts) >= 5  # default + this month and three ahead
    for part in parts:
        for stmt, params in (
            (f"SELECT count(*) FROM {part}", {}),
            (f"SELECT * FROM {part} WHERE created_at < :at", {"at": FAR_PAST}),
            (
                f"INSERT INTO {part} (tenant_id, form_id, created_at) VALUES (:t, :f, :at)",
                {"t": a.tenant_id, "f": a.first("forms"), "at": FAR_PAST},
            ),
            (f"UPDATE {part} SET user_agent = 'x'", {}),
            (f"DELETE FROM {part}", {}),
            (f"TRUNCATE {part}", {}),
        ):
            with (
                tenant_connection(app_engine, a.tenant_id) as conn,
                expect_db_error(INSUFFICIENT_PRIVILEGE, f"permission denied for table {part}"),
            ):
                conn.execute(text(stmt), params)
        with (
            tenant_connection(app_engine, a.tenant_id) as conn,
            expect_db_error(INSUFFICIENT_PRIVILEGE, "permission denied"),
        ):
            _copy_out(conn, f"COPY {part} TO STDOUT")


def test_privileges_of_platform_app_are_exactly_row_rights(
    engine: Engine, app_engine: Engine
) -> None:
    parts = _partitions(engine)
    privs = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
    with app_engine.connect() as conn:
        for rel in (*TENANT_TABLES, *parts):
            got = {
                p
                for p in privs
                if conn.scalar(
                    text("SELECT has_table_privilege(current_user, :r, :p)"), {"r": rel, "p": p}
                )
            }
            if rel == "audit_log":  # written by the audit trigger only
                expected = {"SELECT"}
            elif rel in TENANT_TABLES:
                expected = {"SELECT", "INSERT", "UPDATE", "DELETE"}
            else:
                expected = set()
            assert got == expected, rel
        got = {
            p
            for p in privs
            if conn.scalar(
                text("SELECT has_table_privilege(current_user, 'tenants', :p)"), {"p": p}
            )
        }
        assert got == {"SELECT"}


@pytest.mark.parametrize(
    ("function", "call"),
    [
        ("ensure_form_submission_partitions", "SELECT * FROM {}()"),
        ("ensure_form_submission_partitions", "SELECT * FROM {}(0, '2001-01-01')"),
        ("protect_partitions", "SELECT {}('form_submissions'::regclass)"),
        ("unprotect_partitions", "SELECT {}('form_submissions'::regclass)"),
    ],
)
def test_maintenance_functions_are_denied(
    app_engine: Engine, a: SeededTenant, function: str, call: str
) -> None:
    with (
        tenant_connection(app_engine, a.tenant_id) as conn,
        expect_db_error(INSUFFICIENT_PRIVILEGE, f"permission denied for function {function}"),
    ):
        conn.execute(text(call.format(f"platform.{function}")))


DENIED_STATEMENTS: dict[str, tuple[str, str]] = {
    "create-table-public": ("CREATE TABLE public.iso_evil (x int)", "permission denied for schema"),
    "create-table-platform": (
        "CREATE TABLE platform.iso_evil (x int)",
        "permission denied for schema",
    ),
    "create-view-public": (
        "CREATE VIEW public.iso_evil AS SELECT * FROM leads",
        "permission denied for schema",
    ),
    "replace-policy-function": (
        "CREATE OR REPLACE FUNCTION platform.current_tenant_id() RETURNS uuid "
        "LANGUAGE sql STABLE RETURN NULL::uuid",
        "",
    ),
    "disable-rls": ("ALTER TABLE users DISABLE ROW LEVEL SECURITY", "must be owner"),
    "no-force-rls": ("ALTER TABLE leads NO FORCE ROW LEVEL SECURITY", "must be owner"),
    "drop-policy": ("DROP POLICY tenant_isolation ON leads", "must be owner"),
    "create-policy": ("CREATE POLICY iso_evil ON leads USING (true)", "must be owner"),
    "alter-policy": ("ALTER POLICY tenant_isolation ON leads USING (true)", "must be owner"),
    "drop-table": ("DROP TABLE pages", "must be owner"),
    "create-index": ("CREATE INDEX iso_evil ON leads (email)", "must be owner"),
    "detach-default-partition": (
        "ALTER TABLE form_submissions DETACH PARTITION form_submissions_default",
        "must be owner",
    ),
    "create-trigger": (
        "CREATE TRIGGER iso_evil BEFORE INSERT ON leads "
        "FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger()",
        "permission denied for table leads",
    ),
    "replace-search-function": (
        "CREATE OR REPLACE FUNCTION platform.search_pages(query tsquery, max_rows integer "
        "DEFAULT 20, published_only boolean DEFAULT true) RETURNS TABLE (id uuid, rank real) "
        "LANGUAGE sql AS $$ SELECT id, 1::real FROM public.pages $$",
        "permission denied for schema platform",
    ),
    "search-function-as-invoker": (
        "ALTER FUNCTION platform.search_pages(tsquery, integer, boolean) SECURITY INVOKER",
        "must be owner of function platform.search_pages",
    ),
    "set-role-owner": ("SET ROLE platform_owner", "permission denied to set role"),
    "set-role-admin": ("SET ROLE platform_admin", "permission denied to set role"),
    "set-session-authorization": ("SET SESSION AUTHORIZATION postgres", "permission denied"),
    "grant-admin-to-self": ("GRANT platform_admin TO CURRENT_USER", ""),
    "alter-self-bypassrls": ("ALTER ROLE CURRENT_USER BYPASSRLS", ""),
    "write-tenants": ("UPDATE tenants SET name = 'pwned'", "permission denied for table tenants"),
    "insert-tenants": (
        "INSERT INTO tenants (name, subdomain) VALUES ('x', 'iso-evil')",
        "permission denied for table tenants",
    ),
}


@pytest.mark.parametrize("name", sorted(DENIED_STATEMENTS))
def test_ddl_and_privilege_escalation_are_denied(
    app_engine: Engine, a: SeededTenant, name: str
) -> None:
    stmt, match = DENIED_STATEMENTS[name]
    with (
        tenant_connection(app_engine, a.tenant_id) as conn,
        expect_db_error(INSUFFICIENT_PRIVILEGE, match),
    ):
        conn.execute(text(stmt))


def test_row_security_off_errors_instead_of_bypassing(app_engine: Engine, a: SeededTenant) -> None:
    with (
        tenant_connection(app_engine, a.tenant_id) as conn,
        expect_db_error(INSUFFICIENT_PRIVILEGE, "row-level security"),
    ):
        conn.execute(text("SET LOCAL row_security = off"))
        conn.execute(text("SELECT count(*) FROM leads"))


def test_leaky_function_in_where_sees_only_own_rows(
    engine: Engine, app_engine: Engine, a: SeededTenant, b: SeededTenant
) -> None:
    """A cheap, non-leakproof function in WHERE must not run on rows the policy hides.

    The app login can create no function itself (no CREATE on any schema, no TEMPORARY
    on the database: tests/test_pooled_connection_attacks.py); the superuser makes the
    spy here, as a service's own function could be: if the planner ran it before the
    policy, B's emails would be recorded.
    """
    probe = f"leak_probe_{secrets.token_hex(4)}"
    login = app_engine.url.username
    with engine.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {probe}"))
        conn.execute(text(f"CREATE TABLE {probe}.seen (v text)"))
        conn.execute(
            text(
                f"CREATE FUNCTION {probe}.spy(v text) RETURNS boolean LANGUAGE plpgsql "
                f"COST 0.0000001 AS $$ BEGIN INSERT INTO {probe}.seen VALUES (v); "
                "RETURN true; END $$"
            )
        )
        conn.execute(text(f'GRANT USAGE ON SCHEMA {probe} TO "{login}"'))
        conn.execute(text(f'GRANT INSERT, SELECT ON {probe}.seen TO "{login}"'))
    distributed = is_distributed(engine)
    if distributed:
        # On Citus the spy runs on the workers, next to the shards: it records there.
        with engine.begin() as conn:
            conn.execute(
                text("SELECT run_command_on_workers(:sql)"),
                {
                    "sql": f"CREATE TABLE {probe}.seen (v text); "
                    f'GRANT INSERT, SELECT ON {probe}.seen TO "{login}"'
                },
            )
    try:
        # On Citus the workers' records are read from other connections: commit them (the
        # transaction only reads tenant rows).
        with tenant_connection(app_engine, a.tenant_id, commit=distributed) as conn:
            n = conn.scalar(
                text(f"SELECT count(*) FROM leads WHERE {probe}.spy(email) AND tenant_id = :b"),
                {"b": b.tenant_id},
            )
            assert n == 0
            n = conn.scalar(text(f"SELECT count(*) FROM leads WHERE {probe}.spy(email)"))
            assert n == a.count("leads")
            seen = sorted(r[0] for r in conn.execute(text(f"SELECT v FROM {probe}.seen")))
        if distributed:
            with engine.connect() as conn:
                for (found,) in conn.execute(
                    text("SELECT result FROM run_command_on_workers(:sql)"),
                    {"sql": f"SELECT coalesce(string_agg(v, ','), '') FROM {probe}.seen"},
                ):
                    seen = sorted([*seen, *(v for v in str(found).split(",") if v)])
        assert seen == sorted(a.lead_emails)
    finally:
        with engine.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {probe} CASCADE"))


def test_set_config_is_refused_and_set_local_no_longer_switches_the_tenant(
    app_engine: Engine, a: SeededTenant, b: SeededTenant
) -> None:
    # set_config() is revoked from PUBLIC, so SQL injected into an expression (a WHERE
    # clause, a LATERAL subquery) cannot change the tenant in the middle of a statement.
    # A whole statement, `SET LOCAL app.current_tenant_id`, has no privilege to revoke:
    # it changes the setting, but without the seal of that tenant (platform_db.ddl.seal)
    # the policies see no tenant at all: level (c) of docs/SECURITY.md.
    with tenant_connection(app_engine, a.tenant_id) as conn:
        conn.execute(text("SAVEPOINT s"))
        with expect_db_error(INSUFFICIENT_PRIVILEGE, "permission denied for function set_config"):
            conn.execute(
                text("SELECT set_config('app.current_tenant_id', :b, true)"),
                {"b": str(b.tenant_id)},
            )
        conn.execute(text("ROLLBACK TO SAVEPOINT s"))
        assert set(visible_tenant_ids(conn, "leads")) == {a.tenant_id}
        conn.execute(text(f"SET LOCAL app.current_tenant_id = '{b.tenant_id}'"))
        assert visible_tenant_ids(conn, "leads") == []


# ---------------------------------------------------------------------------------------
# 2. No tenant set
# ---------------------------------------------------------------------------------------


def _counts(conn: Connection) -> dict[str, int]:
    return {t: int(conn.scalar(text(f"SELECT count(*) FROM {t}")) or 0) for t in TENANT_TABLES}


def _assert_writes_refused(conn: Connection, a: SeededTenant) -> None:
    for table in TENANT_TABLES:
        conn.execute(text("SAVEPOINT w"))
        with expect_db_error(INSUFFICIENT_PRIVILEGE, write_refusal(table, "INSERT")):
            conn.execute(text(INSERT_SQL[table]), _insert_params(a))
        conn.execute(text("ROLLBACK TO SAVEPOINT w"))


ZERO = dict.fromkeys(TENANT_TABLES, 0)


def test_fresh_connection_without_tenant_sees_nothing_and_writes_nothing(
    app_login: URL, a: SeededTenant
) -> None:
    eng = create_engine(with_driver(app_login, SYNC_DRIVER), poolclass=NullPool)
    try:
        with eng.connect() as conn:
            pid = conn.scalar(text("SELECT pg_backend_pid()"))
            # Never set on this connection: missing_ok gives NULL, and no cast error.
            assert (
                conn.scalar(text("SELECT current_setting('app.current_tenant_id', true)")) is None
            )
            assert conn.scalar(text("SELECT platform.current_tenant_id()")) is None
            assert _counts(conn) == ZERO
            _assert_writes_refused(conn, a)
            conn.rollback()

            with conn.begin():
                conn.exec_driver_sql(scope_statements(conn, str(a.tenant_id), ""))
                assert _counts(conn) == {t: a.count(t) for t in TENANT_TABLES}

            # Next transaction, same server session: the setting was transaction-local.
            assert conn.scalar(text("SELECT pg_backend_pid()")) == pid
            assert conn.scalar(text("SELECT current_setting('app.current_tenant_id', true)")) == ""
            assert conn.scalar(text("SELECT platform.current_tenant_id()")) is None
            assert _counts(conn) == ZERO
            _assert_writes_refused(conn, a)
            conn.rollback()

            # Same after a transaction that set a tenant and rolled back.
            with conn.begin() as trans:
                conn.exec_driver_sql(scope_statements(conn, str(a.tenant_id), ""))
                trans.rollback()
            assert conn.scalar(text("SELECT pg_backend_pid()")) == pid
            assert _counts(conn) == ZERO
    finally:
        eng.dispose()


def test_tenant_session_without_tenant_sees_nothing(app_engine: Engine, a: SeededTenant) -> None:
    with TenantSession(app_engine) as session:
        assert session.tenant_id is None
        conn = session.connection()
        assert conn.scalar(text("SELECT current_setting('app.current_tenant_id', true)")) == ""
        assert _counts(conn) == ZERO
        assert session.scalars(select(Lead)).all() == []
        assert session.scalars(select(Page)).all() == []
        _assert_writes_refused(conn, a)


def test_orm_insert_without_any_tenant_is_refused(app_engine: Engine, a: SeededTenant) -> None:
    statements: list[str] = []

    def record(*args: Any) -> None:
        statements.append(str(args[2]))

    event.listen(app_engine, "before_cursor_execute", record)
    try:
        with TenantSession(app_engine) as session:
            session.add(Lead(email="orphan@x.example.com"))
            with pytest.raises(TenantError, match="without a tenant"):
                session.flush()
        assert not any("INSERT" in s for s in statements)
        # With an explicit tenant_id the hook lets it through (no session tenant to
        # compare with): the database refuses it.
        with TenantSession(app_engine) as session:
            session.add(Lead(tenant_id=a.tenant_id, email="orphan@x.example.com"))
            with expect_db_error(INSUFFICIENT_PRIVILEGE, RLS_VIOLATION):
                session.flush()
    finally:
        event.remove(app_engine, "before_cursor_execute", record)


# ---------------------------------------------------------------------------------------
# 3. One pooled connection reused across tenants
# ---------------------------------------------------------------------------------------


def test_single_pooled_connection_alternating_tenants(
    app_login: URL, a: SeededTenant, b: SeededTenant
) -> None:
    eng = make_engine(app_login, pool_size=1, max_overflow=0, pool_timeout=5)
    try:
        pids: set[int] = set()
        sequence: list[SeededTenant | None] = [a, b, None, a, None, b, b, a, None]
        for owner in sequence:
            tenant_id = owner.tenant_id if owner else None
            with TenantSession(eng, tenant_id=tenant_id) as session:
                conn = session.connection()
                pid = conn.scalar(text("SELECT pg_backend_pid()"))
                assert isinstance(pid, int)
                pids.add(pid)
                for table in TENANT_TABLES:
                    seen = visible_tenant_ids(conn, table)
                    if owner is None:
                        assert seen == [], table
                    else:
                        assert set(seen) == {owner.tenant_id}, table
                        assert len(seen) == owner.count(table), table
                session.commit()
            # Outside any tenant session, the same connection carries nothing over.
            with eng.connect() as plain:
                assert plain.scalar(text("SELECT pg_backend_pid()")) == pid
                assert plain.scalar(
                    text("SELECT current_setting('app.current_tenant_id', true)")
                ) in ("", None)
                assert _counts(plain) == ZERO
        assert len(pids) == 1
    finally:
        eng.dispose()


def test_failed_transaction_leaves_nothing_on_the_pooled_connection(
    app_login: URL, a: SeededTenant, b: SeededTenant
) -> None:
    eng = make_engine(app_login, pool_size=1, max_overflow=0, pool_timeout=5)
    try:
        with TenantSession(eng, tenant_id=a.tenant_id) as session:
            pid = session.scalar(text("SELECT pg_backend_pid()"))
            with expect_db_error(INSUFFICIENT_PRIVILEGE, RLS_VIOLATION):
                session.execute(text(INSERT_SQL["leads"]), _insert_params(b))
            session.rollback()
        with TenantSession(eng) as session:
            assert session.scalar(text("SELECT pg_backend_pid()")) == pid
            assert _counts(session.connection()) == ZERO
        with TenantSession(eng, tenant_id=b.tenant_id) as session:
            assert session.scalar(text("SELECT pg_backend_pid()")) == pid
            assert set(visible_tenant_ids(session.connection(), "leads")) == {b.tenant_id}
    finally:
        eng.dispose()


# ---------------------------------------------------------------------------------------
# 4. EXPLAIN under RLS: the policy function is inlined and tenant indexes are used
# ---------------------------------------------------------------------------------------

BULK_TENANTS = 20
BULK_ROWS = 100


@pytest.fixture(scope="module")
def bulk(engine: Engine) -> Iterator[list[uuid.UUID]]:
    """20 tenants x 100 users and 100 leads, analysed, so plans are realistic."""
    sfx = _uid()
    with engine.begin() as conn:
        ids = list(
            conn.execute(
                text(
                    "INSERT INTO tenants (name, subdomain) "
                    "SELECT 'Bulk ' || g, 'iso-bulk-' || :sfx || '-' || g "
                    "FROM generate_series(1, :n) g RETURNING id"
                ),
                {"sfx": sfx, "n": BULK_TENANTS},
            ).scalars()
        )
        conn.execute(
            text(
                "INSERT INTO leads (tenant_id, email, status, created_at) "
                "SELECT t.id, 'lead' || g || '@bulk.example.com', "
                "(ARRAY['new', 'contacted', 'qualified', 'lost'])[1 + g % 4], "
                "now() - g * interval '1 hour' "
                "FROM unnest(CAST(:ids AS uuid[])) t(id), generate_series(1, :n) g"
            ),
            {"ids": ids, "n": BULK_ROWS},
        )
        conn.execute(
            text(
                "INSERT INTO users (tenant_id, email) "
                "SELECT t.id, 'user' || g || '@bulk.example.com' "
                "FROM unnest(CAST(:ids AS uuid[])) t(id), generate_series(1, :n) g"
            ),
            {"ids": ids, "n": BULK_ROWS},
        )
    with engine.connect() as conn:
        conn.execute(text("ANALYZE users"))
        conn.execute(text("ANALYZE leads"))
        conn.commit()
    yield ids
    delete_tenants(engine, ids)


def _plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from _plan_nodes(child)


def _explain(conn: Connection, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    doc = conn.scalar(text(f"EXPLAIN (FORMAT JSON) {sql}"), params)
    assert isinstance(doc, list)
    return list(_plan_nodes(doc[0]["Plan"]))


def _index_nodes(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [n for n in nodes if "Index Name" in n]


def test_explain_user_by_email_uses_tenant_email_index(
    app_engine: Engine, bulk: list[uuid.UUID]
) -> None:
    if is_distributed(app_engine):
        pytest.skip(
            "on Citus the coordinator plans a Custom Scan over the shards; tests/test_citus.py "
            "checks that each request reads one shard"
        )
    with tenant_connection(app_engine, bulk[3]) as conn:
        nodes = _explain(
            conn, "SELECT * FROM users WHERE email = :e", {"e": "user7@bulk.example.com"}
        )
        assert not any(n["Node Type"] == "Seq Scan" for n in nodes), nodes
        idx = _index_nodes(nodes)
        assert [n["Index Name"] for n in idx] == ["uq_users_tenant_email"], nodes
        cond = idx[0]["Index Cond"]
        # The policy's tenant predicate is an index condition: the verifying function
        # (platform_db.ddl.seal), evaluated once for the scan.
        assert "tenant_id = platform.current_tenant_id()" in cond, cond
        # And the query really returns the one row.
        assert conn.execute(
            text("SELECT tenant_id FROM users WHERE email = :e"), {"e": "user7@bulk.example.com"}
        ).scalars().all() == [bulk[3]]


def test_explain_leads_by_status_uses_tenant_status_index(
    app_engine: Engine, bulk: list[uuid.UUID]
) -> None:
    if is_distributed(app_engine):
        pytest.skip(
            "on Citus the coordinator plans a Custom Scan over the shards; tests/test_citus.py "
            "checks that each request reads one shard"
        )
    with tenant_connection(app_engine, bulk[5]) as conn:
        nodes = _explain(conn, "SELECT * FROM leads WHERE status = 'new'", {})
        assert not any(n["Node Type"] == "Seq Scan" for n in nodes), nodes
        idx = _index_nodes(nodes)
        assert [n["Index Name"] for n in idx] == ["ix_leads_tenant_status"], nodes
        assert "tenant_id" in idx[0]["Index Cond"]
        assert "tenant_id = platform.current_tenant_id()" in idx[0]["Index Cond"]
        n = conn.scalar(text("SELECT count(*) FROM leads WHERE status = 'new'"))
        assert n == BULK_ROWS // 4


def test_pg_stats_does_not_leak_other_tenants_values(
    engine: Engine, app_engine: Engine, bulk: list[uuid.UUID]
) -> None:
    if is_distributed(engine):
        pytest.skip(
            "on Citus the statistics are the shards', on the workers, which a platform_app "
            "login does not reach; the coordinator's pg_stats holds none to leak"
        )
    q = text(
        "SELECT count(*) FROM pg_stats WHERE schemaname = 'public' "
        "AND tablename IN ('users', 'leads')"
    )
    with engine.connect() as conn:
        assert (conn.scalar(q) or 0) > 0, "positive control: the tables are analysed"
    with tenant_connection(app_engine, bulk[0]) as conn:
        assert conn.scalar(q) == 0


# ---------------------------------------------------------------------------------------
# 5. Property-based: random operations by random tenants never cross the boundary
# ---------------------------------------------------------------------------------------

KINDS = ("leads", "pages")


def test_random_operations_never_cross_tenants(engine: Engine, app_engine: Engine) -> None:
    stats: Counter[str] = Counter()

    class TenantOps(RuleBasedStateMachine):
        """A model of every tenant's leads and pages, checked against the database.

        The model maps tenant -> kind -> {id: value} (leads.score, pages.title). Each
        operation runs as the app login in a TenantSession of one tenant and may aim at
        any tenant's row; the expected outcome follows from the model alone.
        """

        def __init__(self) -> None:
            super().__init__()
            ids = []
            with engine.begin() as conn:
                for i in range(3):
                    tid = uuid.uuid4()
                    conn.execute(
                        text("INSERT INTO tenants (id, name, subdomain) VALUES (:i, 'P', :s)"),
                        {"i": tid, "s": f"iso-prop-{_uid()}-{i}"},
                    )
                    ids.append(tid)
            self.tenants: list[uuid.UUID] = ids
            self.model: dict[uuid.UUID, dict[str, dict[uuid.UUID, int]]] = {
                t: {k: {} for k in KINDS} for t in ids
            }

        def teardown(self) -> None:
            delete_tenants(engine, self.tenants)

        @initialize()
        def one_row_each(self) -> None:
            # Every tenant starts with a lead and a page, so operations aimed at another
            # tenant always have a real row to aim at.
            for actor in range(3):
                for kind in KINDS:
                    self.insert_own(actor, kind, 50)

        def _pick(self, actor: int, victim: int, kind: str, pick: int) -> uuid.UUID:
            rows = sorted(self.model[self.tenants[victim]][kind])
            if rows and actor != victim:
                stats["aimed at another tenant's existing row"] += 1
            return rows[pick % len(rows)] if rows else uuid.uuid4()

        @rule(actor=st.integers(0, 2), kind=st.sampled_from(KINDS), value=st.integers(0, 100))
        def insert_own(self, actor: int, kind: str, value: int) -> None:
            tid = self.tenants[actor]
            with TenantSession(app_engine, tenant_id=tid) as s:
                obj: Lead | Page
                if kind == "leads":
                    obj = Lead(email=f"p{_uid()}@prop.example.com", score=value)
                else:
                    obj = Page(slug=f"p-{_uid()}", title=str(value))
                s.add(obj)
                s.commit()
                assert obj.tenant_id == tid
                self.model[tid][kind][obj.id] = value

        @rule(actor=st.integers(0, 2), victim=st.integers(0, 2), kind=st.sampled_from(KINDS))
        def insert_for(self, actor: int, victim: int, kind: str) -> None:
            tid, other = self.tenants[actor], self.tenants[victim]
            new_id = uuid.uuid4()
            sql = (
                "INSERT INTO leads (tenant_id, id, email, score) VALUES (:t, :id, :e, 1)"
                if kind == "leads"
                else "INSERT INTO pages (tenant_id, id, slug, title) VALUES (:t, :id, :e, '1')"
            )
            params = {"t": other, "id": new_id, "e": f"p{_uid()}@prop.example.com"}
            if kind == "pages":
                params["e"] = f"p-{_uid()}"
            with TenantSession(app_engine, tenant_id=tid) as s:
                if actor == victim:
                    s.execute(text(sql), params)
                    s.commit()
                    self.model[tid][kind][new_id] = 1
                else:
                    with expect_db_error(INSUFFICIENT_PRIVILEGE, RLS_VIOLATION):
                        s.execute(text(sql), params)
                    stats["insert for another tenant refused"] += 1

        @rule(
            actor=st.integers(0, 2),
            victim=st.integers(0, 2),
            kind=st.sampled_from(KINDS),
            pick=st.integers(0, 1000),
            value=st.integers(0, 100),
        )
        def update(self, actor: int, victim: int, kind: str, pick: int, value: int) -> None:
            tid = self.tenants[actor]
            row = self._pick(actor, victim, kind, pick)
            col, val = ("score", value) if kind == "leads" else ("title", str(value))
            with TenantSession(app_engine, tenant_id=tid) as s:
                got = (
                    s.execute(
                        text(f"UPDATE {kind} SET {col} = :v WHERE id = :id RETURNING tenant_id"),
                        {"v": val, "id": row},
                    )
                    .scalars()
                    .all()
                )
                s.commit()
            if row in self.model[tid][kind]:
                assert got == [tid]
                self.model[tid][kind][row] = value
            else:
                assert got == []

        @rule(
            actor=st.integers(0, 2),
            victim=st.integers(0, 2),
            kind=st.sampled_from(KINDS),
            pick=st.integers(0, 1000),
        )
        def delete(self, actor: int, victim: int, kind: str, pick: int) -> None:
            tid = self.tenants[actor]
            row = self._pick(actor, victim, kind, pick)
            with TenantSession(app_engine, tenant_id=tid) as s:
                got = (
                    s.execute(
                        text(f"DELETE FROM {kind} WHERE id = :id RETURNING tenant_id"), {"id": row}
                    )
                    .scalars()
                    .all()
                )
                s.commit()
            if row in self.model[tid][kind]:
                assert got == [tid]
                del self.model[tid][kind][row]
            else:
                assert got == []

        @rule(actor=st.integers(0, 3), kind=st.sampled_from(KINDS))
        def select_all(self, actor: int, kind: str) -> None:
            tid = self.tenants[actor] if actor < 3 else None  # 3: no tenant
            col = "score" if kind == "leads" else "title"
            with TenantSession(app_engine, tenant_id=tid) as s:
                rows = s.execute(text(f"SELECT tenant_id, id, {col} FROM {kind}")).all()
            if tid is None:
                assert rows == []
                return
            assert {r[0] for r in rows} <= {tid}
            assert {r[1]: int(r[2]) for r in rows} == self.model[tid][kind]

        @invariant()
        def database_matches_model(self) -> None:
            with engine.connect() as conn:
                for kind in KINDS:
                    col = "score" if kind == "leads" else "title"
                    rows = conn.execute(
                        text(f"SELECT tenant_id, id, {col} FROM {kind} WHERE tenant_id = ANY(:ts)"),
                        {"ts": self.tenants},
                    ).all()
                    actual: dict[uuid.UUID, dict[uuid.UUID, int]] = {t: {} for t in self.tenants}
                    for t, i, v in rows:
                        actual[t][i] = int(v)
                    assert actual == {t: self.model[t][kind] for t in self.tenants}

    run_state_machine_as_test(
        TenantOps,
        settings=settings(
            max_examples=25,
            stateful_step_count=15,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
    # The run really attacked: cross-tenant writes were attempted and refused.
    assert stats["aimed at another tenant's existing row"] > 0, stats
    assert stats["insert for another tenant refused"] > 0, stats


def test_sqlstate_helper_sees_driver_codes(app_engine: Engine, a: SeededTenant) -> None:
    """The helper every refusal check relies on must report real codes (not None)."""
    with (
        tenant_connection(app_engine, a.tenant_id) as conn,
        pytest.raises(DBAPIError, match="division by zero") as info,
    ):
        conn.execute(text("SELECT 1/0"))
    assert sqlstate(info.value) == "22012"
