"""The service's history: one head, and every landed revision still runs what it ran.

`migrations/fingerprints.json` holds a fingerprint of each revision's SQL; after writing a
new revision, record it with
`python -m platform_db.migration.history --config alembic.ini --record`.
"""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config
from alembic.script import ScriptDirectory
from platform_db.migration import history

ALEMBIC_INI = Path(__file__).resolve().parents[1] / "alembic.ini"


def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(Config(str(ALEMBIC_INI)))


def test_the_history_has_one_head() -> None:
    assert len(_script().get_heads()) == 1


def test_landed_revisions_are_unchanged() -> None:
    report = history.check(_script())
    assert report.ok, report.message()
