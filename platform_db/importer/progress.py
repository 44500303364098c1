"""A progress bar with rate and ETA, on stderr, for long imports.

On a terminal it redraws one line at most five times a second; elsewhere (a log file,
CI) it prints a plain line every ten seconds, so logs stay readable.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}"


class Progress:
    """Bytes of a file read and documents seen; `update()` is cheap to call per document."""

    WIDTH = 24

    def __init__(self, label: str, total_bytes: int, *, out: TextIO | None = None) -> None:
        self.label = label
        self.total = max(total_bytes, 1)
        self.out = out if out is not None else sys.stderr
        self.tty = self.out.isatty()
        self.start = time.monotonic()
        self.interval = 0.2 if self.tty else 10.0
        self.last = self.start
        self.docs = 0
        self.done_bytes = 0
        self.shown = False

    def update(self, done_bytes: int, docs: int) -> None:
        self.docs = docs
        self.done_bytes = done_bytes
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self._draw(now)

    def status(self, message: str) -> None:
        """A phase after reading (checking, moving, verifying)."""
        self._end_line()
        self.out.write(f"platform-db: {self.label}: {message}\n")
        self.out.flush()

    def finish(self) -> None:
        self._draw(time.monotonic(), final=True)
        self._end_line()

    def _end_line(self) -> None:
        if self.tty and self.shown:
            self.out.write("\n")
            self.shown = False

    def _draw(self, now: float, *, final: bool = False) -> None:
        elapsed = max(now - self.start, 1e-6)
        fraction = 1.0 if final else min(self.done_bytes / self.total, 1.0)
        rate = self.docs / elapsed
        byte_rate = self.done_bytes / elapsed
        eta = (self.total - self.done_bytes) / byte_rate if byte_rate > 0 and not final else 0.0
        filled = int(fraction * self.WIDTH)
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        text = (
            f"{self.label} [{bar}] {fraction:4.0%} {_size(self.done_bytes)}/{_size(self.total)} "
            f"{self.docs:,} docs {rate:,.0f} docs/s "
            + (f"in {_clock(elapsed)}" if final else f"ETA {_clock(eta)}")
        )
        if self.tty:
            self.out.write("\r" + text + "\x1b[K")
            self.shown = True
        else:
            self.out.write("platform-db: " + text + "\n")
        self.out.flush()


class NoProgress(Progress):
    def __init__(self) -> None:
        super().__init__("", 1)

    def update(self, done_bytes: int, docs: int) -> None:
        return None

    def status(self, message: str) -> None:
        return None

    def finish(self) -> None:
        return None
