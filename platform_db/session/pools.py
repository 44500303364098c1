"""Queue pools that time every checkout and fail clearly when exhausted."""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.pool import AsyncAdaptedQueuePool, ConnectionPoolEntry, QueuePool


class PoolExhaustedError(sa_exc.TimeoutError):
    """No connection came free within the pool's acquire timeout."""


@dataclass(frozen=True, slots=True)
class AcquireStats:
    """Connection acquisition times of one pool, in milliseconds, over recent checkouts."""

    pool: str
    checkouts: int
    timeouts: int
    p50_ms: float | None
    p95_ms: float | None
    max_ms: float | None
    size: int
    checked_out: int


class _Recorder:
    def __init__(self, keep: int = 4096) -> None:
        self._samples: deque[float] = deque(maxlen=keep)
        self._lock = threading.Lock()
        self.checkouts = 0
        self.timeouts = 0

    def record(self, seconds: float) -> None:
        with self._lock:
            self._samples.append(seconds * 1000.0)
            self.checkouts += 1

    def timed_out(self) -> None:
        with self._lock:
            self.timeouts += 1

    def snapshot(self) -> list[float]:
        with self._lock:
            return sorted(self._samples)


class _TimedMixin:
    label: str = "pool"
    _recorder: _Recorder

    def _timed_get(self, get: Any) -> ConnectionPoolEntry:
        if not hasattr(self, "_recorder"):
            self._recorder = _Recorder()
        start = time.perf_counter()
        try:
            entry: ConnectionPoolEntry = get()
        except sa_exc.TimeoutError as exc:
            self._recorder.timed_out()
            pool: Any = self
            raise PoolExhaustedError(
                f"pool {self.label!r} is exhausted: all {pool.size() + max(pool.overflow(), 0)} "
                f"connections are in use and none came free within {pool._timeout:g} s. "
                "Raise the pool's maximum, shorten transactions, or look for sessions that are "
                "never closed."
            ) from exc
        self._recorder.record(time.perf_counter() - start)
        return entry

    def _do_get(self) -> ConnectionPoolEntry:
        return self._timed_get(super()._do_get)  # type: ignore[misc]

    def recreate(self) -> QueuePool:
        new: QueuePool = super().recreate()  # type: ignore[misc]
        new.label = self.label  # type: ignore[attr-defined]
        return new

    def reset_acquire_stats(self, *, keep: int = 4096) -> None:
        """Forget the checkouts recorded so far; keep the times of up to `keep` from now on.

        A benchmark calls this when its warm-up ends, so the numbers cover exactly the
        measured window.
        """
        self._recorder = _Recorder(keep)

    def acquire_times_ms(self) -> list[float]:
        """The recorded checkout times (ms), sorted: the most recent `keep` of them."""
        if not hasattr(self, "_recorder"):
            self._recorder = _Recorder()
        return self._recorder.snapshot()

    def acquire_stats(self) -> AcquireStats:
        if not hasattr(self, "_recorder"):
            self._recorder = _Recorder()
        samples = self._recorder.snapshot()
        pool: Any = self

        def pct(q: float) -> float | None:
            if not samples:
                return None
            if len(samples) == 1:
                return samples[0]
            return statistics.quantiles(samples, n=100, method="inclusive")[int(q) - 1]

        return AcquireStats(
            pool=self.label,
            checkouts=self._recorder.checkouts,
            timeouts=self._recorder.timeouts,
            p50_ms=pct(50),
            p95_ms=pct(95),
            max_ms=samples[-1] if samples else None,
            size=pool.size(),
            checked_out=pool.checkedout(),
        )


class TimedQueuePool(_TimedMixin, QueuePool):
    """QueuePool for sync engines (psycopg 3)."""


class TimedAsyncQueuePool(_TimedMixin, AsyncAdaptedQueuePool):
    """AsyncAdaptedQueuePool for async engines (asyncpg)."""
