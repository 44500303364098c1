"""import-mongo against the real server: what lands, where, once; what is rejected and why.

Each test starts from empty tables in a migrated database of this module's own; dumps
come from the sample generator (which returns what a correct import must produce) or
are written by hand for the one thing a test is about.
"""

from __future__ import annotations

import datetime as dt
import gzip
import io
import json
import os
import re
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId, json_util
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

from platform_db.importer import (
    ImportOptions,
    ImportReport,
    ImportSetupError,
    Mode,
    default_mapping,
    run_import,
)
from platform_db.importer.ids import object_id_from_uuid, uuid_from_object_id
from platform_db.importer.sampledump import SampleManifest, generate
from tests.conftest import temporary_database

TABLES = {
    "tenants": "tenants",
    "users": "users",
    "pages": "pages",
    "forms": "forms",
    "form-submissions": "form_submissions",
    "leads": "leads",
}


@pytest.fixture(scope="module")
def import_url(server_url: URL, database_url: URL) -> Iterator[URL]:
    del database_url  # keeps the cluster roles in use while this database comes and goes
    with temporary_database(server_url, migrate=True) as url:
        yield url


@pytest.fixture(scope="module")
def import_engine(import_url: URL) -> Iterator[Engine]:
    engine = create_engine(import_url, poolclass=NullPool)
    yield engine
    engine.dispose()


@pytest.fixture
def empty(import_engine: Engine) -> Engine:
    """The module's database with no rows in any table (partitions stay)."""
    with import_engine.begin() as conn:
        conn.execute(text("TRUNCATE tenants CASCADE"))
    return import_engine


def run(url: URL, directory: Path, mode: Mode = Mode.IMPORT, **kw: Any) -> ImportReport:
    return run_import(
        url,
        ImportOptions(
            directory=directory,
            mapping=kw.pop("mapping", default_mapping()),
            mode=mode,
            rejects_path=kw.pop(
                "rejects_path", directory.parent / f"{directory.name}-rejects.jsonl"
            ),
            **kw,
        ),
    )


def rejects(report: ImportReport) -> list[dict[str, Any]]:
    assert report.rejects_file is not None
    path = Path(report.rejects_file)
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def rows_per_tenant(engine: Engine, table: str) -> Counter[str]:
    column = "id" if table == "tenants" else "tenant_id"
    with engine.connect() as conn:
        found = conn.execute(text(f"SELECT {column}, count(*) FROM {table} GROUP BY 1"))
        return Counter({str(object_id_from_uuid(t)): n for t, n in found})


def snapshot(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every imported row, with its xmin (the transaction that last wrote it)."""
    out = {}
    with engine.connect() as conn:
        for table in TABLES.values():
            cols = (
                "xmin::text, *"
                if table != "pages"
                else "xmin::text, tenant_id, id, slug, title, content, excerpt, status, published_at, author_id, meta, created_at, updated_at"
            )
            out[table] = sorted(
                tuple(str(v) for v in r) for r in conn.execute(text(f"SELECT {cols} FROM {table}"))
            )
    return out


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> SampleManifest:
    return generate(tmp_path_factory.mktemp("dump") / "sample", documents=1500, tenants=3, seed=7)


def test_every_good_document_lands_once_in_its_tenant(
    empty: Engine, import_url: URL, sample: SampleManifest
) -> None:
    report = run(import_url, sample.directory)
    assert report.balanced, report.as_dict()
    for collection, table in TABLES.items():
        assert rows_per_tenant(empty, table) == sample.good[collection], collection
    # Every bad document is in the rejects file, at its line and item, with its reason.
    found = {(r["file"], r["line"], r["item"]): r for r in rejects(report)}
    assert len(found) == len(sample.bad) == report.rejected
    for bad in sample.bad:
        entry = found[(bad.file, bad.line, bad.item)]
        assert bad.reason in entry["reason"], entry
        assert entry["document"]  # the text, to fix and import again
        assert entry["tenant"] == bad.tenant
    # Historical submissions sit in their own months, none in the default partition.
    with empty.connect() as conn:
        by_partition: dict[str, int] = dict(
            conn.execute(
                text("SELECT tableoid::regclass::text, count(*) FROM form_submissions GROUP BY 1")
            ).all()
        )
    assert "form_submissions_default" not in by_partition
    assert {p.removeprefix("form_submissions_") for p in by_partition} == sample.months
    assert len(sample.months) > 12


def test_reimport_is_a_no_op_and_a_changed_document_updates_its_row(
    empty: Engine, import_url: URL, sample: SampleManifest, tmp_path: Path
) -> None:
    run(import_url, sample.directory)
    before = snapshot(empty)
    again = run(import_url, sample.directory)
    assert again.balanced
    assert sum(c.total.inserted + c.total.updated for c in again.collections) == 0
    assert snapshot(empty) == before  # not one row rewritten (same xmin everywhere)

    # A newer dump: one page edited, one submission's createdAt corrected. Nothing else moves.
    changed = tmp_path / "changed"
    changed.mkdir()
    for f in sample.directory.iterdir():
        (changed / f.name).write_bytes(f.read_bytes())
    lines = (changed / "pages.json").read_text().splitlines()
    page = json_util.loads(lines[1])
    page["title"] = "Edited in MongoDB"
    lines[1] = json_util.dumps(page)
    (changed / "pages.json").write_text("\n".join(lines) + "\n")
    third = run(import_url, changed)
    assert third.balanced
    pages = next(c for c in third.collections if c.table == "pages")
    assert (pages.total.inserted, pages.total.updated) == (0, 1)
    with empty.connect() as conn:
        title = conn.scalar(
            text("SELECT title FROM pages WHERE id = :id"), {"id": uuid_from_object_id(page["_id"])}
        )
    assert title == "Edited in MongoDB"
    assert sum(rows_per_tenant(empty, "pages").values()) == sample.good_rows("pages")


def test_both_file_forms_and_both_json_modes_give_identical_rows(
    empty: Engine, import_url: URL, tmp_path: Path
) -> None:
    contents = []
    for form, mode in (("lines", "relaxed"), ("array", "canonical"), ("mixed", "mixed")):
        directory = tmp_path / f"{form}-{mode}"
        generate(directory, documents=400, tenants=2, seed=11, form=form, mode=mode)
        if form == "array":  # and gzip, for one of them
            raw = directory / "pages.json"
            (directory / "pages.json.gz").write_bytes(gzip.compress(raw.read_bytes()))
            raw.unlink()
        with empty.begin() as conn:
            conn.execute(text("TRUNCATE tenants CASCADE"))
        report = run(import_url, directory)
        assert report.balanced
        contents.append(snapshot(empty))
    strip = [{t: [r[1:] for r in rows] for t, rows in c.items()} for c in contents]  # drop xmin
    assert strip[0] == strip[1] == strip[2]
    assert all(strip[0][t] for t in TABLES.values())


def write_lines(path: Path, docs: list[dict[str, Any] | str]) -> None:
    path.write_text("".join((d if isinstance(d, str) else json_util.dumps(d)) + "\n" for d in docs))


def test_a_document_cannot_reach_another_tenants_data(
    empty: Engine, import_url: URL, tmp_path: Path
) -> None:
    a, b = ObjectId(), ObjectId()
    form_a, form_b, user_a = ObjectId(), ObjectId(), ObjectId()
    when = dt.datetime(2024, 2, 3, tzinfo=dt.UTC)
    d = tmp_path / "cross"
    d.mkdir()
    write_lines(
        d / "tenants.json",
        [{"_id": a, "name": "A", "slug": "a"}, {"_id": b, "name": "B", "slug": "b"}],
    )
    write_lines(d / "users.json", [{"_id": user_a, "email": "u@a.example", "tenant": a}])
    write_lines(
        d / "forms.json",
        [{"_id": form_a, "tenant": a, "title": "F"}, {"_id": form_b, "tenant": b, "title": "F"}],
    )
    write_lines(
        d / "form-submissions.json",
        [
            {"_id": ObjectId(), "tenant": a, "form": form_a, "createdAt": when},  # fine
            {"_id": ObjectId(), "tenant": a, "form": form_b, "createdAt": when},  # B's form
            {"_id": ObjectId(), "tenant": b, "form": form_a, "createdAt": when},  # A's form
            {"_id": ObjectId(), "tenant": ObjectId(), "form": form_a, "createdAt": when},
        ],
    )
    write_lines(
        d / "pages.json",
        [{"_id": ObjectId(), "tenant": b, "title": "P", "slug": "p", "author": user_a}],
    )
    report = run(import_url, d)
    assert report.balanced
    found = sorted(
        (r["collection"], r["tenant"], r["reason"].split(":")[0]) for r in rejects(report)
    )
    assert ("pages", str(b), "cross-tenant reference") in found  # B's page, A's author
    assert ("form-submissions", str(a), "cross-tenant reference") in found
    assert ("form-submissions", str(b), "cross-tenant reference") in found
    kinds = Counter(r["reason"].split(":")[0] for r in rejects(report))
    assert kinds == {"cross-tenant reference": 3, "tenant does not exist in tenants": 1}
    with empty.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM form_submissions")).scalar() == 1
        assert (
            conn.execute(
                text("SELECT count(*) FROM form_submissions WHERE tenant_id = :b"),
                {"b": uuid_from_object_id(b)},
            ).scalar()
            == 0
        )
        assert conn.execute(text("SELECT count(*) FROM pages")).scalar() == 0


def test_verification_catches_a_dropped_row(
    empty: Engine, import_url: URL, sample: SampleManifest, tmp_path: Path
) -> None:
    # A trigger silently swallows one lead during the move: the import itself notices.
    with empty.begin() as conn:
        conn.execute(
            text(
                """
                CREATE FUNCTION swallow_one() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    IF NEW.email = 'lead3.0@mail.example' THEN RETURN NULL; END IF;
                    RETURN NEW;
                END $$;
                CREATE TRIGGER swallow_one BEFORE INSERT ON leads
                    FOR EACH ROW EXECUTE FUNCTION swallow_one();
                """
            )
        )
    try:
        report = run(import_url, sample.directory)
    finally:
        with empty.begin() as conn:
            conn.execute(text("DROP TRIGGER swallow_one ON leads; DROP FUNCTION swallow_one()"))
    leads = next(c for c in report.collections if c.table == "leads")
    assert not report.balanced
    assert not leads.balanced
    assert leads.total.present == leads.total.accepted - 1
    assert leads.total.source_checksum != leads.total.target_checksum
    assert all(c.balanced for c in report.collections if c.table != "leads")

    # Later, a row goes missing in the database: --verify (the CLI) says so, exit 1.
    run(import_url, sample.directory)
    assert run(import_url, sample.directory, Mode.VERIFY).balanced
    with empty.begin() as conn:
        conn.execute(
            text(
                "DELETE FROM form_submissions WHERE (tenant_id, id) = "
                "(SELECT tenant_id, id FROM form_submissions ORDER BY created_at LIMIT 1)"
            )
        )
    result = cli(
        import_url,
        str(sample.directory),
        "--verify",
        "--json",
        "--quiet",
        "--rejects",
        str(tmp_path / "rejects.jsonl"),
    )
    assert result.returncode == 1, result.stderr
    data = json.loads(result.stdout)
    subs = next(c for c in data["collections"] if c["table"] == "form_submissions")
    assert not subs["balanced"]
    assert subs["total"]["in_table"] == subs["total"]["accepted"] - 1
    assert [c["collection"] for c in data["collections"] if not c["balanced"]] == [
        "form-submissions"
    ]


def test_dry_run_writes_nothing(empty: Engine, import_url: URL, sample: SampleManifest) -> None:
    report = run(import_url, sample.directory, Mode.DRY_RUN)
    assert report.balanced
    assert report.rejected == len(sample.bad)
    subs = next(c for c in report.collections if c.table == "form_submissions")
    assert subs.total.accepted == sample.good_rows("form-submissions")
    for table in TABLES.values():
        assert sum(rows_per_tenant(empty, table).values()) == 0, table


def _as_text(report: ImportReport) -> str:
    out = io.StringIO()
    report.write_text(out)
    return out.getvalue()


def test_the_report_says_what_was_written(
    empty: Engine, import_url: URL, sample: SampleManifest
) -> None:
    # Issue 19: a dry run showed its references as `0/624`, as if all were lost, and a
    # re-import that changed nothing reported every row as written.
    dry = run(import_url, sample.directory, Mode.DRY_RUN)
    dry_text = _as_text(dry)
    assert not re.search(r"\b0/[1-9]", dry_text), dry_text
    assert "nothing written (dry run)" in dry_text
    leads = next(c for c in dry.as_dict()["collections"] if c["table"] == "leads")
    assert leads["total"]["references"]
    assert all(r["found"] is None for r in leads["total"]["references"].values())
    assert leads["total"]["written"] is None

    first = run(import_url, sample.directory)
    rows = sum(c.total.accepted for c in first.collections)
    first_text = _as_text(first)
    assert f"wrote {rows} rows ({rows} new, 0 updated)" in first_text, first_text
    again = run(import_url, sample.directory)
    again_text = _as_text(again)
    assert "wrote nothing: every row was in the table as in the dump" in again_text, again_text
    totals = [c["total"] for c in again.as_dict()["collections"]]
    assert all(t["written"] == 0 and t["in_table"] == t["accepted"] for t in totals)


def test_a_collection_lands_whole_or_not_at_all(
    empty: Engine, import_url: URL, sample: SampleManifest
) -> None:
    # A constraint the importer does not know about fails the move half-way.
    with empty.begin() as conn:
        conn.execute(
            text("ALTER TABLE pages ADD CONSTRAINT no_guide CHECK (title NOT LIKE '%Guide%')")
        )
    try:
        report = run(import_url, sample.directory)
    finally:
        with empty.begin() as conn:
            conn.execute(text("ALTER TABLE pages DROP CONSTRAINT no_guide"))
    pages = next(c for c in report.collections if c.table == "pages")
    assert pages.error is not None
    assert "no_guide" in pages.error
    assert not report.balanced
    assert sum(rows_per_tenant(empty, "pages").values()) == 0  # nothing of it
    assert sum(rows_per_tenant(empty, "users").values()) == sample.good_rows("users")  # before it
    later = [c for c in report.collections if c.table in ("forms", "leads")]
    assert all(c.skipped and "pages failed" in c.skipped for c in later)
    assert run(import_url, sample.directory).balanced  # fixed: run again


def test_needs_a_role_that_bypasses_rls(empty: Engine, import_url: URL, tmp_path: Path) -> None:
    name = f"pdb_importer_{uuid.uuid4().hex[:8]}"
    with empty.begin() as conn:
        conn.execute(text(f"CREATE ROLE {name} LOGIN IN ROLE platform_admin"))
    try:
        d = tmp_path / "tenants-only"
        d.mkdir()
        write_lines(d / "tenants.json", [{"_id": ObjectId(), "name": "T", "slug": "t"}])
        login = import_url.set(username=name)
        with pytest.raises(ImportSetupError, match="BYPASSRLS is not inherited"):
            run(login, d)
        assert run(login, d, role="platform_admin").balanced
    finally:
        with empty.begin() as conn:
            conn.execute(text(f"DROP OWNED BY {name}; DROP ROLE {name}"))


def cli(url: URL, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": url.render_as_string(hide_password=False)}
    return subprocess.run(
        [sys.executable, "-m", "platform_db.cli", "import-mongo", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def test_cli_exit_status_table_and_mapping_file(
    empty: Engine, import_url: URL, tmp_path: Path
) -> None:
    tenant = ObjectId()
    d = tmp_path / "custom"
    d.mkdir()
    write_lines(d / "sites.json", [{"_id": tenant, "title": "Site", "host": "site"}])
    write_lines(
        d / "posts.json",
        [
            {
                "_id": ObjectId(),
                "site": tenant,
                "headline": "Hello",
                "path": "hello",
                "state": "live",
            },
            '{"_id": {"$oid": "' + str(ObjectId()) + '"}, "site": ',
        ],
    )
    mapping = tmp_path / "mapping.toml"
    mapping.write_text(
        """
        defaults = false
        [collections.sites]
        table = "tenants"
        fields = { name = "title", subdomain = "host" }
        [collections.posts]
        table = "pages"
        fields = { tenant_id = "site", title = "headline", slug = "path", status = "state" }
        values.status = { live = "published" }
        """
    )
    rejects_file = tmp_path / "rejects.jsonl"
    result = cli(import_url, str(d), "--mapping", str(mapping), "--rejects", str(rejects_file))
    assert result.returncode == 3, result.stdout + result.stderr  # balanced, with a reject
    assert "balanced" in result.stdout
    assert "posts" in result.stdout
    assert "platform-db: posts" in result.stderr  # progress
    [reject] = [json.loads(x) for x in rejects_file.read_text().splitlines()]
    assert (reject["file"], reject["line"], reject["reason"][:12]) == (
        "posts.json",
        2,
        "invalid JSON",
    )
    with empty.connect() as conn:
        assert conn.execute(text("SELECT status, title FROM pages")).one() == ("published", "Hello")

    bad = cli(import_url, str(d), "--mapping", str(tmp_path / "missing.toml"))
    assert bad.returncode == 2
    assert "cannot read the mapping file" in bad.stderr
    shown = cli(import_url, "--show-mapping")
    assert (
        json.loads(shown.stdout)["collections"]["form-submissions"]["table"] == "form_submissions"
    )


def test_sql_expressions_in_the_docs_match_the_python_ids(import_engine: Engine) -> None:
    oid = str(ObjectId())
    with import_engine.connect() as conn:
        u = conn.scalar(
            text(
                "SELECT (substr(o, 1, 12) || '8' || substr(o, 13, 3) || '8' || substr(o, 16, 9)"
                " || '6f6964')::uuid FROM (SELECT CAST(:o AS text) AS o) x"
            ),
            {"o": oid},
        )
        back = conn.scalar(
            text(
                "SELECT substr(h, 1, 12) || substr(h, 14, 3) || substr(h, 18, 9)"
                " FROM (SELECT replace(CAST(:u AS uuid)::text, '-', '') AS h) x"
            ),
            {"u": u},
        )
    assert u == uuid_from_object_id(oid)
    assert back == oid
