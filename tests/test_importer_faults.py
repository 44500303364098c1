"""import-mongo on hostile or incomplete exports: nothing crashes, the report always comes.

Each test is a finding of issue 20: a document nested too deeply, a corrupt or truncated
.gz, an unwritable rejects path, an empty or incomplete export, implausible dates.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

from platform_db.importer import ImportReport, ImportSetupError
from platform_db.importer.convert import DateWindow
from platform_db.importer.documents import TOO_DEEP
from tests.conftest import temporary_database
from tests.test_importer import rejects, run, write_lines

COLLECTIONS = ("tenants", "users", "pages", "forms", "form-submissions", "leads")
WHEN = dt.datetime(2024, 2, 3, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def faults_url(server_url: URL, database_url: URL) -> Iterator[URL]:
    del database_url  # keeps the cluster roles in use while this database comes and goes
    with temporary_database(server_url, migrate=True) as url:
        yield url


@pytest.fixture(scope="module")
def faults_engine(faults_url: URL) -> Iterator[Engine]:
    engine = create_engine(faults_url, poolclass=NullPool)
    yield engine
    engine.dispose()


@pytest.fixture
def empty(faults_engine: Engine) -> Engine:
    with faults_engine.begin() as conn:
        conn.execute(text("TRUNCATE tenants CASCADE"))
    return faults_engine


def count(engine: Engine, table: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


def cli(url: URL, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": url.render_as_string(hide_password=False)}
    return subprocess.run(
        [sys.executable, "-m", "platform_db.cli", "import-mongo", "--quiet", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def complete_export(d: Path, *, submissions: list[dict[str, Any]] | None = None) -> ObjectId:
    """One document in each of the six collections (submissions as given); the tenant."""
    d.mkdir()
    tenant, form, user = ObjectId(), ObjectId(), ObjectId()
    write_lines(d / "tenants.json", [{"_id": tenant, "name": "T", "slug": "t"}])
    write_lines(d / "users.json", [{"_id": user, "email": "u@t.example", "tenant": tenant}])
    write_lines(
        d / "pages.json",
        [{"_id": ObjectId(), "tenant": tenant, "title": "P", "slug": "p", "author": user}],
    )
    write_lines(d / "forms.json", [{"_id": form, "tenant": tenant, "title": "F"}])
    write_lines(
        d / "form-submissions.json",
        [
            {"_id": ObjectId(), "tenant": tenant, "form": form, "createdAt": when}
            for when in [WHEN, *(s["createdAt"] for s in submissions or [])]
        ],
    )
    write_lines(d / "leads.json", [{"_id": ObjectId(), "tenant": tenant, "email": "l@t.example"}])
    return tenant


def deep(levels: int) -> str:
    return '{"a": ' * levels + "1" + "}" * levels


def test_a_deeply_nested_document_is_a_reject_at_its_line(
    empty: Engine, faults_url: URL, tmp_path: Path
) -> None:
    d = tmp_path / "deep"
    tenant = complete_export(d)
    lines = (d / "pages.json").read_text()
    head = '{"_id": {"$oid": "' + str(ObjectId()) + '"}, "tenant": {"$oid": "' + str(tenant)
    (d / "pages.json").write_text(
        lines + head + '"}, "title": "Q", "slug": "q", "x": ' + deep(2000) + "}\n"
    )
    report = run(faults_url, d)
    assert report.balanced, report.as_dict()
    [reject] = rejects(report)
    assert (reject["file"], reject["line"], reject["reason"]) == ("pages.json", 2, TOO_DEEP)
    assert count(empty, "pages") == 1
    # Deeper than MongoDB allows but within what json parses: still a reject.
    (d / "pages.json").write_text(
        lines + head + '"}, "title": "Q", "slug": "q", "x": ' + deep(150) + "}\n"
    )
    assert [r["reason"] for r in rejects(run(faults_url, d))] == [TOO_DEEP]


def test_a_deeply_nested_element_of_a_json_array_is_a_reject(
    empty: Engine, faults_url: URL, tmp_path: Path
) -> None:
    d = tmp_path / "deep-array"
    complete_export(d)
    tenant_doc = (d / "tenants.json").read_text().strip()
    (d / "tenants.json").write_text("[" + tenant_doc + "," + deep(3000) + "]")
    report = run(faults_url, d)
    assert report.balanced, report.as_dict()
    [reject] = rejects(report)
    assert (reject["item"], reject["reason"]) == (2, TOO_DEEP)
    assert count(empty, "tenants") == 1


@pytest.mark.parametrize("damage", ["fake", "truncated"])
def test_a_corrupt_gz_fails_its_collection_and_the_report_is_printed(
    empty: Engine, faults_url: URL, tmp_path: Path, damage: str
) -> None:
    d = tmp_path / f"gz-{damage}"
    complete_export(d)
    users = d / "users.json"
    many = "".join(
        json.dumps({"_id": {"$oid": str(ObjectId())}, "email": f"u{i}@x.example"}) + "\n"
        for i in range(5000)
    )
    packed = gzip.compress((users.read_text() + many).encode())
    (d / "users.json.gz").write_bytes(
        b"this is not gzip\n" if damage == "fake" else packed[: len(packed) // 2]
    )
    users.unlink()
    result = cli(faults_url, str(d), "--rejects", str(tmp_path / f"{damage}.jsonl"))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "users.json.gz is not a readable gzip file, or is truncated" in result.stdout
    assert "NOT BALANCED" in result.stdout  # the report, whole
    assert count(empty, "users") == 0  # nothing of the collection
    assert count(empty, "tenants") == 1  # the one before it, whole


def test_an_unreadable_file_fails_its_collection(
    empty: Engine, faults_url: URL, tmp_path: Path
) -> None:
    d = tmp_path / "unreadable"
    complete_export(d)
    (d / "forms.json").unlink()
    # A regular file that cannot be read, even by root: reading it fails with EIO.
    (d / "forms.json").symlink_to("/proc/self/mem")
    report = run(faults_url, d)
    forms = next(c for c in report.collections if c.collection == "forms")
    assert forms.error is not None
    assert "cannot read forms.json: Input/output error" in forms.error
    assert count(empty, "forms") == 0
    assert count(empty, "users") == 1  # the collections before it, whole
    assert not report.balanced


def test_an_unwritable_rejects_path_stops_the_run_before_anything_is_written(
    empty: Engine, faults_url: URL, tmp_path: Path
) -> None:
    d = tmp_path / "export"
    complete_export(d)
    missing_dir = tmp_path / "no-such-dir"
    with pytest.raises(ImportSetupError, match="cannot write the rejects file"):
        run(faults_url, d, rejects_path=missing_dir / "rejects.jsonl")
    assert not missing_dir.exists()  # not created
    assert count(empty, "tenants") == 0  # nothing written
    result = cli(faults_url, str(d), "--rejects", str(tmp_path))  # a directory
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1
    assert "cannot write the rejects file" in result.stderr
    assert count(empty, "tenants") == 0


def test_an_empty_export_is_reported_and_fails(
    empty: Engine, faults_url: URL, tmp_path: Path
) -> None:
    d = tmp_path / "empty-export"
    d.mkdir()
    for name in COLLECTIONS:
        (d / f"{name}.json").write_text("")
    result = cli(faults_url, str(d), "--rejects", str(tmp_path / "r.jsonl"))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "INCOMPLETE: the export is empty" in result.stdout
    assert "INCOMPLETE: forms: forms.json holds no documents" in result.stdout
    assert "incomplete export" in result.stderr
    partial = cli(faults_url, str(d), "--allow-partial", "--rejects", str(tmp_path / "r.jsonl"))
    assert partial.returncode == 0, partial.stdout + partial.stderr
    assert "INCOMPLETE: the export is empty" in partial.stdout  # said, not fatal


def test_a_missing_collection_file_is_reported_on_its_own_line(
    empty: Engine, faults_url: URL, tmp_path: Path
) -> None:
    d = tmp_path / "no-forms"
    complete_export(d)
    (d / "forms.json").unlink()
    result = cli(faults_url, str(d), "--json", "--rejects", str(tmp_path / "r.jsonl"))
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["complete"] is False
    [line] = [x for x in report["incomplete"] if x.startswith("forms:")]
    assert "file missing: no forms.json" in line
    assert "platform-db: import-mongo: incomplete export: forms: file missing" in result.stderr


def test_a_collection_whose_every_document_was_rejected_is_reported(
    empty: Engine, faults_url: URL, tmp_path: Path
) -> None:
    d = tmp_path / "all-rejected"
    complete_export(d)
    write_lines(d / "leads.json", ['{"broken": ', '{"_id": 1'])
    report: ImportReport = run(faults_url, d)
    assert report.balanced
    assert report.incomplete == ["leads: every one of its 2 documents was rejected"]
    text_out = cli(faults_url, str(d), "--rejects", str(tmp_path / "r.jsonl"))
    assert text_out.returncode == 1
    assert "INCOMPLETE: leads: every one of its 2 documents was rejected" in text_out.stdout


def test_implausible_dates_are_rejects_and_make_no_partitions(
    empty: Engine, faults_url: URL, tmp_path: Path
) -> None:
    d = tmp_path / "dates"
    odd = ["0001-01-01", "1969-12-31", "2200-06-01", "9999-12-31"]
    complete_export(
        d,
        submissions=[
            {"createdAt": dt.datetime.fromisoformat(f"{day}T12:00:00+00:00")} for day in odd
        ],
    )
    report = run(faults_url, d)
    assert report.balanced, report.as_dict()
    found = sorted((r["line"], r["reason"]) for r in rejects(report))
    assert [line for line, _ in found] == [2, 3, 4, 5]
    assert all("outside the plausible dates 1990-01-01 to" in reason for _, reason in found)
    assert count(empty, "form_submissions") == 1
    with empty.connect() as conn:
        parts = set(
            conn.execute(
                text(
                    "SELECT relname FROM pg_class WHERE relname ~ "
                    "'^form_submissions_(0001|1969|2200|9999)_'"
                )
            ).scalars()
        )
    assert parts == set()
    # A wider window, deliberately: 1969 is accepted then.
    wide = DateWindow(dt.datetime(1960, 1, 1, tzinfo=dt.UTC), DateWindow.default().latest)
    again = run(faults_url, d, dates=wide)
    assert len(rejects(again)) == 3
    result = cli(
        faults_url, str(d), "--earliest-date", "not-a-date", "--rejects", str(tmp_path / "r")
    )
    assert result.returncode == 2
    assert "--earliest-date must be a date" in result.stderr
