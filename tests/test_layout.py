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


REMOVED = [
    ("platform_db.migration_ops", name, "create_entity")
    for name in (
        "create_policy",
        "drop_policy",
        "set_table_privileges",
        "set_row_level_security",
        "create_materialized_view",
        "drop_materialized_view",
        "replace_materialized_view",
        "create_audit_trigger",
        "drop_audit_trigger",
        "protect_partitions",
    )
] + [
    ("platform_db.autogen", name, "compare_entities")
    for name in ("compare_tenant_tables", "compare_materialized_views")
]


@pytest.mark.parametrize(("module", "name", "instead"), REMOVED)
def test_a_removed_name_says_what_replaces_it(module: str, name: str, instead: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old = importlib.import_module(module)
    with pytest.raises(ImportError) as info:
        exec(f"from {module} import {name}", {})  # noqa: S102
    message = str(info.value)
    assert name in message, message
    assert instead in message, message
    assert "\n" not in message
    with pytest.raises(ImportError):
        getattr(old, name)


@pytest.mark.parametrize(
    "module", ["platform_db.migration.operations", "platform_db.migration.autogenerate"]
)
def test_any_other_missing_name_is_a_plain_attribute_error(module: str) -> None:
    found = importlib.import_module(module)
    assert not hasattr(found, "no_such_name")
    with pytest.raises(AttributeError, match="no_such_name"):
        found.no_such_name  # noqa: B018


def test_maintenance_names_of_the_old_ops_module_are_still_there() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ops = importlib.import_module("platform_db.ops")
    from platform_db.maintenance import health, routine  # noqa: PLC0415

    assert ops.check_settings is health.check_settings
    assert ops.Progress is routine.Progress
