"""Plain-text tables for the CLI (no dependency, aligned columns)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TextIO


def write_table(
    out: TextIO, header: Sequence[str], rows: Sequence[Sequence[object]], *, indent: str = "  "
) -> None:
    """Left-align the first column and text, right-align numbers."""
    cells = [[str(c) for c in header], *[["" if c is None else str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    numeric = [
        all(isinstance(r[i], int | float) or r[i] is None for r in rows) and bool(rows)
        for i in range(len(header))
    ]
    for n, row in enumerate(cells):
        parts = [
            c.rjust(w) if numeric[i] and i > 0 else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        out.write(indent + "  ".join(parts).rstrip() + "\n")
        if n == 0:
            out.write(indent + "  ".join("-" * w for w in widths) + "\n")
