"""Guardrail evaluation: window statistics in, a :class:`Trip` out (pure, no I/O).

A guardrail trips when, over its window and with at least ``min_samples`` samples:

- the success ratio is below ``min_success_ratio``;
- the p95 latency is above ``max_p95_ms``;
- the p95 latency is above ``max_p95_ratio_to_baseline`` times the p95 measured before the run.

    window = ProbeWindow(30.0)
    window.add(Sample(at=time.monotonic(), success=True, duration=0.012, reason="success"))
    trip = evaluate(guardrail, window.stats(time.monotonic()), baseline_p95=0.010)
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agent.experiments.checks import CheckSummary
from agent.experiments.extension import Guardrail

__all__ = ["ProbeWindow", "Sample", "Trip", "WindowStats", "evaluate", "quantile"]


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # monotonic seconds
    success: bool
    duration: float
    reason: str


@dataclass(frozen=True, slots=True)
class WindowStats:
    count: int
    success_ratio: float | None
    p95_seconds: float | None
    last_reason: str | None

    @classmethod
    def from_summary(cls, summary: CheckSummary) -> WindowStats:
        return cls(summary.count, summary.success_ratio, summary.p95_seconds, summary.last_reason)

    def to_json(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "success_ratio": self.success_ratio,
            "p95_seconds": self.p95_seconds,
            "last_reason": self.last_reason,
        }


def quantile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank quantile (``q`` in 0..1); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


class ProbeWindow:
    """The samples of one guardrail probe over a sliding time window."""

    def __init__(self, window_seconds: float) -> None:
        self._window = window_seconds
        self._samples: deque[Sample] = deque()

    def add(self, sample: Sample) -> None:
        self._samples.append(sample)

    def stats(self, now: float) -> WindowStats:
        while self._samples and self._samples[0].at < now - self._window:
            self._samples.popleft()
        samples = list(self._samples)
        if not samples:
            return WindowStats(0, None, None, None)
        ok = sum(1 for s in samples if s.success)
        return WindowStats(
            count=len(samples),
            success_ratio=ok / len(samples),
            p95_seconds=quantile([s.duration for s in samples], 0.95),
            last_reason=samples[-1].reason,
        )


@dataclass(frozen=True, slots=True)
class Trip:
    """A guardrail fired: which one, on which condition, with which values."""

    guardrail: str
    source: str
    condition: str
    threshold: float
    observed: float
    window_seconds: float
    stats: WindowStats
    baseline_p95_seconds: float | None = None

    def describe(self) -> str:
        return (
            f"guardrail {self.guardrail!r} ({self.source}): {self.condition} "
            f"observed {self.observed:g}, limit {self.threshold:g} "
            f"over {self.window_seconds:g}s ({self.stats.count} samples)"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "guardrail",
            "guardrail": self.guardrail,
            "source": self.source,
            "condition": self.condition,
            "threshold": self.threshold,
            "observed": self.observed,
            "window_seconds": self.window_seconds,
            "stats": self.stats.to_json(),
            "baseline_p95_seconds": self.baseline_p95_seconds,
            "message": self.describe(),
        }


def evaluate(g: Guardrail, stats: WindowStats, baseline_p95: float | None = None) -> Trip | None:
    """The first condition of ``g`` that ``stats`` violates, or None."""
    if stats.count < g.min_samples:
        return None

    def trip(condition: str, threshold: float, observed: float) -> Trip:
        return Trip(g.name, g.source, condition, threshold, observed, g.window, stats, baseline_p95)

    if (
        g.min_success_ratio is not None
        and stats.success_ratio is not None
        and stats.success_ratio < g.min_success_ratio
    ):
        return trip("min_success_ratio", g.min_success_ratio, stats.success_ratio)
    p95_ms = None if stats.p95_seconds is None else stats.p95_seconds * 1000.0
    if g.max_p95_ms is not None and p95_ms is not None and p95_ms > g.max_p95_ms:
        return trip("max_p95_ms", g.max_p95_ms, p95_ms)
    if (
        g.max_p95_ratio_to_baseline is not None
        and baseline_p95 is not None
        and baseline_p95 > 0
        and stats.p95_seconds is not None
    ):
        ratio = stats.p95_seconds / baseline_p95
        if ratio > g.max_p95_ratio_to_baseline:
            return trip("max_p95_ratio_to_baseline", g.max_p95_ratio_to_baseline, ratio)
    return None
