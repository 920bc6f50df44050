"""The scheduler: runs every check on its own fixed cadence, and owns its timeout.

- **Cadence.** A check with interval P runs at wall-clock slots ``k*P + offset``, where
  ``offset`` is a hash of the check name and the node. Checks (and the same check on
  different nodes) do not probe in lock-step, and a restarted agent keeps its slots.
  After the first slot, slots advance on the monotonic clock (``loop.time()``).
- **No overlap.** A slot that comes while the previous run of the same check is still going
  is skipped and counted (``skipped``), never queued.
- **Concurrency cap.** At most ``max_concurrency`` probes run at once; a run waiting for a
  slot is late, and that wait is part of its measured lateness.
- **Lateness.** ``start - planned`` for every run, kept as a histogram, and the event loop's
  own lag is sampled separately, so agent starvation is never mistaken for target latency.
- **Isolation.** A probe that raises (a bug) is logged and recorded as ``internal_error``;
  the other checks go on.

Timers are ``loop.call_at`` handles, not one sleeping task per check, so 10,000 checks
cost 10,000 timer entries. Run tasks belong to a TaskGroup inside :meth:`Scheduler.run`.

    scheduler = Scheduler(runner, node="n1", max_concurrency=512)
    scheduler.update(specs)
    await scheduler.run()          # until cancelled
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field

from agent.stats import DURATION_BUCKETS, LATENESS_BUCKETS, Histogram, Window
from probes.modules import Module
from probes.result import ProbeResult, Reason, Recorder

__all__ = ["CheckRuntime", "CheckSpec", "LoopLagMonitor", "Runner", "Scheduler", "slot_offset"]

log = logging.getLogger(__name__)

#: how far back the per-check window of recent runs reaches (for live summaries)
WINDOW_HORIZON = 600.0
WINDOW_MAX_RUNS = 256


@dataclass(frozen=True, slots=True)
class CheckSpec:
    """Everything needed to run one check; equal specs mean an unchanged check on reload."""

    name: str
    module_name: str
    module: Module
    target: str
    interval: float
    timeout: float
    labels: tuple[tuple[str, str], ...] = ()


Runner = Callable[[CheckSpec], Awaitable[ProbeResult]]


def slot_offset(name: str, node: str, interval: float) -> float:
    """Deterministic offset in ``[0, interval)`` from the check name and the node."""
    digest = hashlib.blake2b(f"{name}\0{node}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") % 1_000_000) / 1_000_000 * interval


@dataclass(slots=True, eq=False)
class CheckRuntime:
    """The live state of one check: its last result and its counters."""

    spec: CheckSpec
    offset: float
    window: Window
    last: ProbeResult | None = None
    last_lateness: float = 0.0
    last_run_at: float = 0.0
    runs: dict[Reason, int] = field(default_factory=dict)
    durations: Histogram = field(default_factory=lambda: Histogram(DURATION_BUCKETS))
    skipped: int = 0
    running: bool = False
    due: float = 0.0
    handle: asyncio.TimerHandle | None = None
    removed: bool = False

    def record(self, result: ProbeResult, lateness: float, ended: float) -> None:
        self.last = result
        self.last_lateness = lateness
        self.last_run_at = result.started_at
        self.runs[result.reason] = self.runs.get(result.reason, 0) + 1
        self.durations.observe(result.duration_seconds)
        self.window.add(ended, result.duration_seconds, result.success)


class LoopLagMonitor:
    """Samples how late the event loop wakes a sleeper: the agent's own starvation."""

    def __init__(self, period: float = 0.25) -> None:
        self.period = period
        self.lag = Histogram(LATENESS_BUCKETS)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            planned = loop.time() + self.period
            await asyncio.sleep(self.period)
            self.lag.observe(max(0.0, loop.time() - planned))


class Scheduler:
    """Runs checks on their cadence. See the module docstring for the guarantees."""

    def __init__(self, runner: Runner, *, node: str, max_concurrency: int = 512) -> None:
        self._runner = runner
        self._node = node
        self._max_concurrency = max_concurrency
        self._checks: dict[str, CheckRuntime] = {}
        self._tg: asyncio.TaskGroup | None = None
        self._slots: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.lateness = Histogram(LATENESS_BUCKETS)
        self.runs_started = 0
        self.running = False

    # --- the check set --------------------------------------------------------------

    def update(self, specs: Sequence[CheckSpec]) -> tuple[int, int, int]:
        """Diff ``specs`` against the running set. Returns (added, removed, kept).

        An unchanged check keeps its state and cadence; a changed one starts afresh.
        """
        wanted = {s.name: s for s in specs}
        removed = kept = added = 0
        for name, rt in list(self._checks.items()):
            if wanted.get(name) != rt.spec:
                self._drop(rt)
                del self._checks[name]
                removed += 1
        for name, spec in wanted.items():
            if name in self._checks:
                kept += 1
                continue
            rt = CheckRuntime(
                spec=spec,
                offset=slot_offset(spec.name, self._node, spec.interval),
                window=Window(min(WINDOW_MAX_RUNS, int(WINDOW_HORIZON / spec.interval) + 1)),
            )
            self._checks[name] = rt
            added += 1
            if self._loop is not None:
                self._arm_first(rt)
        return added, removed, kept

    def checks(self) -> Iterable[CheckRuntime]:
        return self._checks.values()

    def get(self, name: str) -> CheckRuntime | None:
        return self._checks.get(name)

    # --- running --------------------------------------------------------------------

    async def run(self) -> None:
        """Run until cancelled; then stop every timer and in-flight run before returning."""
        self._loop = asyncio.get_running_loop()
        self._slots = asyncio.Semaphore(self._max_concurrency)
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                for rt in self._checks.values():
                    self._arm_first(rt)
                self.running = True
                await asyncio.Future()  # parked until cancelled
        finally:
            self.running = False
            for rt in self._checks.values():
                if rt.handle is not None:
                    rt.handle.cancel()
                    rt.handle = None
            self._tg = None
            self._loop = None

    def _arm_first(self, rt: CheckRuntime) -> None:
        assert self._loop is not None
        period = rt.spec.interval
        now_wall = time.time()
        # the next wall-clock slot k*period + offset, mapped onto the monotonic clock
        next_wall = ((now_wall - rt.offset) // period + 1) * period + rt.offset
        self._arm(rt, self._loop.time() + (next_wall - now_wall))

    def _arm(self, rt: CheckRuntime, due: float) -> None:
        assert self._loop is not None
        rt.due = due
        rt.handle = self._loop.call_at(due, self._fire, rt)

    def _fire(self, rt: CheckRuntime) -> None:
        if rt.removed or self._tg is None:
            return
        due = rt.due
        self._arm(rt, due + rt.spec.interval)
        if rt.running:
            rt.skipped += 1
            return
        rt.running = True
        self._tg.create_task(self._execute(rt, due), name=f"check:{rt.spec.name}")

    async def _execute(self, rt: CheckRuntime, due: float) -> None:
        assert self._slots is not None and self._loop is not None
        try:
            async with self._slots:
                lateness = max(0.0, self._loop.time() - due)
                self.lateness.observe(lateness)
                self.runs_started += 1
                result = await self._run_guarded(rt.spec)
                if not rt.removed:
                    _log_transition(rt, result)
                    rt.record(result, lateness, self._loop.time())
        finally:
            rt.running = False

    async def _run_guarded(self, spec: CheckSpec) -> ProbeResult:
        started_at, start = time.time(), time.perf_counter()
        try:
            return await self._runner(spec)
        except Exception as exc:  # a bug in one probe must not stop the other checks
            log.exception("check %s: probe raised; recorded as internal_error", spec.name)
            rec = Recorder(spec.module.prober)
            return rec.finish(
                spec.target,
                Reason.INTERNAL_ERROR,
                f"probe raised {type(exc).__name__}: {exc}",
                time.perf_counter() - start,
                started_at,
            )

    def _drop(self, rt: CheckRuntime) -> None:
        rt.removed = True
        if rt.handle is not None:
            rt.handle.cancel()
            rt.handle = None


def _log_transition(rt: CheckRuntime, result: ProbeResult) -> None:
    """Log when a check's outcome changes: error text goes to logs, never to labels."""
    before = rt.last.reason if rt.last is not None else None
    if before is result.reason:
        return
    if result.success:
        if before is not None:
            log.info("check %s: recovered (was %s)", rt.spec.name, before.value)
    else:
        log.warning("check %s: %s: %s", rt.spec.name, result.reason.value, result.detail)
