"""Counters of the agent's experiment runs, and the plain snapshot that agent.metrics renders.

Labels stay low-cardinality: runs are counted by experiment TITLE (never by run id), and
after :data:`MAX_EXPERIMENTS` distinct titles further ones are counted as ``_other``.

    tally = ExperimentTally()
    tally.finished("pod kill", "completed", False, 12.5, time.time())
    snapshot = tally.snapshot(running=False)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from agent.stats import Histogram

__all__ = ["DURATION_BUCKETS", "MAX_EXPERIMENTS", "ExperimentStats", "ExperimentTally"]

#: run duration buckets (seconds): a quick check to a long game day
DURATION_BUCKETS = (1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
#: distinct experiment titles kept as label values; the rest count as "_other"
MAX_EXPERIMENTS = 100
OTHER = "_other"


@dataclass(frozen=True, slots=True)
class ExperimentStats:
    """A snapshot, safe to read while runs go on."""

    running: int = 0
    runs: dict[tuple[str, str, bool], int] = field(default_factory=dict)
    durations: dict[str, Histogram] = field(default_factory=dict)
    last_run: dict[str, float] = field(default_factory=dict)
    guardrail_trips: dict[tuple[str, str], int] = field(default_factory=dict)
    schedule_skipped: dict[str, int] = field(default_factory=dict)
    schedule_errors: dict[str, int] = field(default_factory=dict)
    reconciled: int = 0


class ExperimentTally:
    """The service's running totals (owned by one event loop; no locking)."""

    def __init__(self) -> None:
        self._runs: dict[tuple[str, str, bool], int] = {}
        self._durations: dict[str, Histogram] = {}
        self._last_run: dict[str, float] = {}
        self._trips: dict[tuple[str, str], int] = {}
        self._skipped: dict[str, int] = {}
        self._errors: dict[str, int] = {}
        self._titles: set[str] = set()
        self.reconciled = 0

    def label(self, title: str) -> str:
        """The label value for ``title`` (``_other`` once the cap is reached)."""
        title = title or "untitled"
        if title in self._titles:
            return title
        if len(self._titles) >= MAX_EXPERIMENTS:
            return OTHER
        self._titles.add(title)
        return title

    def finished(
        self, title: str, status: str, deviated: bool, duration: float, ended_at: float
    ) -> None:
        exp = self.label(title)
        key = (exp, status, deviated)
        self._runs[key] = self._runs.get(key, 0) + 1
        hist = self._durations.get(exp)
        if hist is None:
            hist = self._durations[exp] = Histogram(DURATION_BUCKETS)
        hist.observe(duration)
        self._last_run[exp] = ended_at

    def tripped(self, title: str, guardrail: str) -> None:
        key = (self.label(title), guardrail)
        self._trips[key] = self._trips.get(key, 0) + 1

    def schedule_declared(self, name: str) -> None:
        """Make the schedule's series exist at 0 before its first skip."""
        self._skipped.setdefault(name, 0)
        self._errors.setdefault(name, 0)

    def skipped(self, schedule: str) -> None:
        self._skipped[schedule] = self._skipped.get(schedule, 0) + 1

    def schedule_failed(self, schedule: str) -> None:
        self._errors[schedule] = self._errors.get(schedule, 0) + 1

    def snapshot(self, *, running: bool) -> ExperimentStats:
        return ExperimentStats(
            running=1 if running else 0,
            runs=dict(self._runs),
            durations=copy.deepcopy(self._durations),
            last_run=dict(self._last_run),
            guardrail_trips=dict(self._trips),
            schedule_skipped=dict(self._skipped),
            schedule_errors=dict(self._errors),
            reconciled=self.reconciled,
        )
