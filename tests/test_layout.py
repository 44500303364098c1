"""The package's layers, as a service meets them: old import paths still work (with a
warning), and importing the run-time layers never loads the tools."""

from __future__ import annotations

import importlib
import subprocess
import sys
import warnings

import pytest

from platform_db import _moved


@pytest.mark.parametrize(("old", "new"), sorted(_moved.MOVED.items()))
def test_a_moved_module_keeps_its_old_import_path_with_a_warning(old: str, new: str) -> None:
    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)
    assert any(
        issubclass(w.category, DeprecationWarning) and f"{old} moved to {new}" in str(w.message)
        for w in caught
    ), [str(w.message) for w in caught]


def test_the_run_time_layers_never_load_the_tools() -> None:
    probe = (
        "import sys\n"
        "import platform_db.session.database, platform_db.session.query, "
        "platform_db.session.search, platform_db.models, platform_db.ddl, "
        "platform_db.maintenance, platform_db.migration.operations\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[:2] in "
        "(['platform_db', 'importer'], ['platform_db', 'bench'], ['platform_db', 'cli'], "
        "['platform_db', 'demo'], ['platform_db', 'testing']) or m == 'pytest')\n"
        "print(loaded)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]", out.stdout
