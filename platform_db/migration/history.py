"""Revisions are history: what each one runs is fingerprinted, and must never change.

A database that a revision has already migrated will never run it again, so changing a
revision's SQL changes nothing there and something else on the next fresh database: the
two drift apart silently. `revision_sql()` renders exactly what one revision runs (its
`upgrade()` or `downgrade()`, offline, without env.py's prologue and epilogue), and
`alembic/fingerprints.json` holds a SHA-256 of each; tests/test_revision_history.py
fails when one differs.

    python -m platform_db.migration.history           # check (what the test does)
    python -m platform_db.migration.history --record  # add fingerprints of new revisions

`--record` never overwrites a fingerprint: a change to a landed revision is answered by a
new revision, not by a new fingerprint. Works for any Alembic directory (`--config`), so
a service can guard its own history the same way.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from alembic.config import Config
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from platform_db.migration import runner

FINGERPRINTS = "fingerprints.json"


def revision_sql(script: ScriptDirectory, revision: str, direction: str = "upgrade") -> str:
    """The SQL one revision's upgrade() (or downgrade()) runs, rendered offline."""
    buffer = io.StringIO()
    context = MigrationContext.configure(
        dialect_name="postgresql",
        # As env.py's offline mode: "named" keeps % signs as they are.
        dialect_opts={"paramstyle": "named"},
        opts={
            "as_sql": True,
            "output_buffer": buffer,
            "literal_binds": True,
            "script": script,
            "transactional_ddl": False,
        },
    )
    found = script.get_revision(revision)
    if found is None:
        raise ValueError(f"no revision {revision!r}")
    with Operations.context(context):
        getattr(found.module, direction)()
    return buffer.getvalue()


def fingerprint(script: ScriptDirectory, revision: str) -> str:
    digest = hashlib.sha256()
    for direction in ("upgrade", "downgrade"):
        digest.update(f"-- {direction}\n".encode())
        digest.update(revision_sql(script, revision, direction).encode())
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class Report:
    changed: list[str]
    unrecorded: list[str]
    vanished: list[str]

    @property
    def ok(self) -> bool:
        return not (self.changed or self.unrecorded or self.vanished)

    def message(self) -> str:
        lines = []
        for rev in self.changed:
            lines.append(
                f"revision {rev} no longer runs the SQL it ran when it landed: "
                "revisions are history, write a new revision instead "
                "(change the definition in platform_db/ddl/ and run "
                "`alembic revision --autogenerate`), and put this one back as it was"
            )
        for rev in self.vanished:
            lines.append(f"revision {rev} was removed: a deployed database may be at it")
        for rev in self.unrecorded:
            lines.append(
                f"revision {rev} has no fingerprint yet: run "
                "`python -m platform_db.migration.history --record` and commit "
                f"{FINGERPRINTS} with it"
            )
        return "\n".join(lines)


def _path(script: ScriptDirectory) -> Path:
    return Path(script.dir) / FINGERPRINTS


def recorded(script: ScriptDirectory) -> dict[str, str]:
    path = _path(script)
    return dict(json.loads(path.read_text())) if path.is_file() else {}


def check(script: ScriptDirectory) -> Report:
    """Compare every revision with its recorded fingerprint."""
    known = recorded(script)
    changed, unrecorded = [], []
    present = []
    for rev in script.walk_revisions():
        present.append(rev.revision)
        want = known.get(rev.revision)
        if want is None:
            unrecorded.append(rev.revision)
        elif want != fingerprint(script, rev.revision):
            changed.append(rev.revision)
    vanished = sorted(set(known) - set(present))
    return Report(changed, unrecorded, vanished)


def record(script: ScriptDirectory) -> list[str]:
    """Add the fingerprints of revisions that have none; never change a recorded one."""
    known = recorded(script)
    added = []
    for rev in script.walk_revisions():
        if rev.revision not in known:
            known[rev.revision] = fingerprint(script, rev.revision)
            added.append(rev.revision)
    _path(script).write_text(json.dumps(dict(sorted(known.items())), indent=2) + "\n")
    return added


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m platform_db.migration.history")
    parser.add_argument("--config", help="alembic.ini of the history to guard (default: ours)")
    parser.add_argument("--record", action="store_true", help="add missing fingerprints")
    args = parser.parse_args(argv)
    cfg = Config(args.config) if args.config else runner.alembic_config()
    script = ScriptDirectory.from_config(cfg)
    if args.record:
        added = record(script)
        sys.stdout.write(f"recorded {len(added)} new fingerprint(s): {', '.join(added)}\n")
    report = check(script)
    if not report.ok:
        sys.stderr.write(report.message() + "\n")
        return 1
    sys.stdout.write("revision history: every revision runs what it ran when it landed\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
