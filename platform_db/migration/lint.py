"""Lint the SQL the revisions emit with squawk, against an allow-list that says why.

    python -m platform_db.migration.lint            # what `make lint` runs

Each revision's offline SQL (`alembic upgrade <down>:<rev> --sql`) is written to a file
of its own and linted with squawk (PyPI `squawk-cli`, in the dev extra). Every
violation must be accepted by an entry of `squawk-allow.toml` that names the rule, the
revision (or `*`), optionally a fragment of the offending statement, and a reason.
Anything else fails the lint, and so does an entry that no longer matches anything (an
exemption must not outlive its reason).
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.script import ScriptDirectory

from platform_db.migration import runner as migrations

DEFAULT_ALLOW_LIST = Path(__file__).resolve().parents[2] / "squawk-allow.toml"
PG_VERSION = "15"


@dataclass(frozen=True, slots=True)
class Violation:
    revision: str
    rule: str
    line: int
    statement: str
    message: str

    def __str__(self) -> str:
        first = self.statement.strip().splitlines()[0] if self.statement.strip() else ""
        return f"{self.revision}:{self.line}: {self.rule}: {self.message}\n    {first}"


@dataclass(frozen=True, slots=True)
class Allowance:
    rule: str
    revision: str
    reason: str
    statement: str | None = None

    def matches(self, v: Violation) -> bool:
        return (
            self.rule == v.rule
            and self.revision in ("*", v.revision)
            and (self.statement is None or self.statement in v.statement)
        )


def load_allow_list(path: Path) -> list[Allowance]:
    data = tomllib.loads(path.read_text())
    out = []
    for i, entry in enumerate(data.get("allow", []), start=1):
        reason = str(entry.get("reason", "")).strip()
        if not reason or not entry.get("rule") or not entry.get("revision"):
            raise ValueError(f"{path.name}: entry {i} needs rule, revision and a reason")
        out.append(
            Allowance(
                rule=str(entry["rule"]),
                revision=str(entry["revision"]),
                reason=reason,
                statement=entry.get("statement"),
            )
        )
    return out


def revision_sql() -> dict[str, str]:
    """The offline SQL of each revision, base to head, keyed by revision id."""
    script = ScriptDirectory.from_config(migrations.alembic_config())
    out: dict[str, str] = {}
    for rev in reversed(list(script.walk_revisions())):
        down = rev.down_revision if isinstance(rev.down_revision, str) else None
        cfg = migrations.alembic_config()
        buffer = io.StringIO()
        cfg.output_buffer = buffer
        command.upgrade(cfg, f"{down or 'base'}:{rev.revision}", sql=True)
        out[rev.revision] = buffer.getvalue()
    return out


def _statement_at(sql: str, line: int) -> str:
    """The statement that contains 1-based `line` (Alembic ends each with a semicolon and
    a blank line)."""
    first = 1
    for chunk in sql.split(";\n\n"):
        last = first + chunk.count("\n")
        if first <= line <= last:
            return chunk.strip()
        first = last + 2
    return ""


def squawk(sql_by_revision: dict[str, str], squawk_bin: str | None = None) -> list[Violation]:
    """Run squawk over each revision's SQL; every violation it reports."""
    binary = squawk_bin or shutil.which("squawk") or str(Path(sys.executable).parent / "squawk")
    if not Path(binary).exists() and shutil.which(binary) is None:
        raise FileNotFoundError("squawk not found: pip install 'platform-db[dev]' (squawk-cli)")
    with tempfile.TemporaryDirectory(prefix="pdb-squawk-") as tmp:
        files = {}
        for revision, sql in sql_by_revision.items():
            path = Path(tmp) / f"{revision}.sql"
            path.write_text(sql)
            files[str(path)] = revision
        result = subprocess.run(  # noqa: S603 - our own binary and files
            [binary, f"--pg-version={PG_VERSION}", "--reporter=json", *files],
            capture_output=True,
            text=True,
            check=False,
        )
    if result.returncode not in (0, 1) or not result.stdout.strip().startswith("["):
        raise RuntimeError(f"squawk failed ({result.returncode}): {result.stderr.strip()}")
    violations = []
    for item in json.loads(result.stdout):
        revision = files[item["file"]]
        violations.append(
            Violation(
                revision=revision,
                rule=item["rule_name"],
                line=int(item["line"]) + 1,  # squawk counts from 0
                statement=_statement_at(sql_by_revision[revision], int(item["line"]) + 1),
                message=item["message"],
            )
        )
    return violations


def judge(
    violations: Sequence[Violation], allow: Sequence[Allowance]
) -> tuple[list[Violation], list[Allowance]]:
    """(violations no entry accepts, entries that accept nothing)."""
    used: set[int] = set()
    refused = []
    for v in violations:
        hits = [i for i, a in enumerate(allow) if a.matches(v)]
        if hits:
            used.update(hits)
        else:
            refused.append(v)
    stale = [a for i, a in enumerate(allow) if i not in used]
    return refused, stale


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--allow-list", type=Path, default=DEFAULT_ALLOW_LIST)
    args = parser.parse_args(argv)
    allow = load_allow_list(args.allow_list)
    violations = squawk(revision_sql())
    refused, stale = judge(violations, allow)
    out = sys.stdout
    for v in refused:
        out.write(f"squawk: {v}\n")
    for a in stale:
        out.write(
            f"squawk-allow: stale entry (matches nothing): rule={a.rule} revision={a.revision}"
            f"{' statement=' + repr(a.statement) if a.statement else ''}\n"
        )
    accepted = len(violations) - len(refused)
    out.write(
        f"migration lint: {len(violations)} squawk findings, {accepted} accepted with a reason, "
        f"{len(refused)} refused, {len(stale)} stale exemptions\n"
    )
    return 1 if refused or stale else 0


if __name__ == "__main__":
    sys.exit(main())
