"""Fail unless the installed runtime dependencies are exactly the floors pyproject.toml declares.

Run by `make test-lowest` in the venv it builds with `-c .ci/lowest.txt`: it proves that
the constraints file pins every floor (none forgotten, none stale) and prints what the
tests then run against.
"""

from __future__ import annotations

import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.version import Version  # installed with pytest

ROOT = Path(__file__).resolve().parent.parent
# "name[extras]>=floor,<cap" -> name, floor
FLOOR = re.compile(r"^\s*([A-Za-z0-9._-]+)(?:\[[^\]]*\])?\s*>=\s*([0-9][^,;\s]*)")


def main() -> int:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wrong = []
    for requirement in project["dependencies"]:
        match = FLOOR.match(requirement)
        if match is None:
            wrong.append(f"{requirement}: no '>=' floor")
            continue
        name, floor = match.groups()
        installed = metadata.version(name)
        sys.stdout.write(f"  {name:<12} {installed:<10} (floor {floor})\n")
        if Version(installed) != Version(floor):
            wrong.append(f"{name}: {installed} installed, floor is {floor} (see .ci/lowest.txt)")
    for line in wrong:
        sys.stderr.write(f"check_lowest: {line}\n")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
