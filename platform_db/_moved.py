"""Import paths of modules that moved in 0.1 (issue 12), kept working with a warning.

`from platform_db.database import Database` still works and warns once:
DeprecationWarning: platform_db.database moved to platform_db.session.database. The old
name is the same module object as the new one, so isinstance checks and monkeypatching
see one module.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType

MOVED: dict[str, str] = {
    "platform_db.settings": "platform_db.session.settings",
    "platform_db.engines": "platform_db.session.engines",
    "platform_db.pools": "platform_db.session.pools",
    "platform_db.database": "platform_db.session.database",
    "platform_db.tenancy": "platform_db.session.tenancy",
    "platform_db.begin": "platform_db.session.asyncpg_connection",
    "platform_db.query": "platform_db.session.query",
    "platform_db.search": "platform_db.session.search",
    "platform_db.migrations": "platform_db.migration.runner",
    "platform_db.migration_ops": "platform_db.migration.operations",
    "platform_db.autogen": "platform_db.migration.autogenerate",
    "platform_db.migration_lint": "platform_db.migration.lint",
    "platform_db.ops": "platform_db.maintenance",
    "platform_db.scratch": "platform_db.testing.scratch",
    "platform_db.audit_bench": "platform_db.bench.audit",
    "platform_db.sample": "platform_db.demo.sample",
    "platform_db.embedded": "platform_db.demo.embedded",
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new = MOVED[spec.name]
        warnings.warn(
            f"{spec.name} moved to {new}; the old name will go in 0.2",
            DeprecationWarning,
            stacklevel=2,
        )
        return importlib.import_module(new)

    def exec_module(self, module: ModuleType) -> None:
        # The module is the new one, already executed; keep its own name and spec.
        return None


def install() -> None:
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.append(_Alias())
