"""Plain in-memory statistics the scheduler keeps: histograms and a recent-results window.

They hold numbers only; ``agent.metrics`` renders them. Both are O(1) per observation and
allocation-free after construction, because an agent may keep 10,000 of them.

    h = Histogram(DURATION_BUCKETS); h.observe(0.012)
    w = Window(capacity=64); w.add(now, 0.012, True); w.summary(now, 30.0)
"""

from __future__ import annotations

import bisect
import math
from array import array
from dataclasses import dataclass

__all__ = [
    "DURATION_BUCKETS",
    "LATENESS_BUCKETS",
    "Histogram",
    "Summary",
    "Window",
]

#: probe duration buckets (seconds): loopback to slow intercontinental
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: scheduler lateness / loop lag buckets (seconds): fine-grained at the low end
LATENESS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


class Histogram:
    """Cumulative-on-render histogram: per-bucket counts, sum and count."""

    __slots__ = ("bounds", "count", "counts", "max", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # last slot: above the highest bound
        self.sum = 0.0
        self.count = 0
        self.max = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1
        if value > self.max:
            self.max = value


@dataclass(frozen=True, slots=True)
class Summary:
    """Success ratio and latency quantiles of the runs inside a window."""

    window_seconds: float
    count: int
    success_ratio: float | None
    p50: float | None
    p95: float | None
    p99: float | None


class Window:
    """A ring of the last ``capacity`` runs: (monotonic end time, duration, success)."""

    __slots__ = ("_durations", "_next", "_ok", "_size", "_times", "capacity")

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self._times = array("d", [0.0]) * self.capacity
        self._durations = array("d", [0.0]) * self.capacity
        self._ok = bytearray(self.capacity)
        self._next = 0
        self._size = 0

    def add(self, when: float, duration: float, success: bool) -> None:
        i = self._next
        self._times[i] = when
        self._durations[i] = duration
        self._ok[i] = 1 if success else 0
        self._next = (i + 1) % self.capacity
        self._size = min(self._size + 1, self.capacity)

    def summary(self, now: float, window: float) -> Summary:
        """Runs that ended in ``[now - window, now]``. Quantiles use successful runs only."""
        since = now - window
        durations: list[float] = []
        total = ok = 0
        for i in range(self._size):
            if self._times[i] >= since:
                total += 1
                if self._ok[i]:
                    ok += 1
                    durations.append(self._durations[i])
        durations.sort()
        return Summary(
            window_seconds=window,
            count=total,
            success_ratio=(ok / total) if total else None,
            p50=_quantile(durations, 0.50),
            p95=_quantile(durations, 0.95),
            p99=_quantile(durations, 0.99),
        )


def _quantile(ordered: list[float], q: float) -> float | None:
    """Nearest-rank quantile of an ascending list."""
    if not ordered:
        return None
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]
