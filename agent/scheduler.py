"""The scheduler: runs every check on its own fixed cadence, and owns its timeout.

- **Cadence.** A check with interval P runs at wall-clock slots ``k*P + offset``, where
  ``offset`` is a hash of the check name and the node, on a 10 ms grid. Checks (and the
  same check on different nodes) do not probe in lock-step, and a restarted agent keeps its
  slots. After the first slot, slots advance on the monotonic clock (``loop.time()``).
  The grid lets the checks due at one instant share one wake-up of the event loop: each
  wake-up of an idle loop costs tens of microseconds of CPU, and 10,000 checks at 10 s
  would otherwise wake it 1,000 times a second.
- **No overlap.** A slot that comes while the previous run of the same check is still going
  is skipped and counted (``skipped``), never queued.
- **Concurrency cap.** At most ``max_concurrency`` probes run at once. A run due while
  every slot is taken waits in a FIFO queue (no task yet, nothing to cancel) and starts
  when a slot frees; it is late, and that wait is part of its measured lateness. Taking and
  freeing a slot is O(1), whatever the length of the queue.
- **Lateness.** ``start - planned`` for every run, kept as a histogram, and the event loop's
  own lag is sampled separately, so agent starvation is never mistaken for target latency.
- **Isolation.** A probe that raises (a bug) is logged and recorded as ``internal_error``;
  the other checks go on.

Timers are ``loop.call_at`` handles, not one sleeping task per check, so 10,000 checks
cost 10,000 timer entries. Run tasks belong to a TaskGroup inside :meth:`Scheduler.run`;
on shutdown the timers stop and the queue empties before the TaskGroup cancels the runs.

    scheduler = Scheduler(runner, node="n1", max_concurrency=512)
    scheduler.update(specs)
    await scheduler.run()          # until cancelled
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from agent.stats import DURATION_BUCKETS, LATENESS_BUCKETS, Histogram, Window
from probes.modules import Module
from probes.result import ProbeResult, Reason, Recorder

__all__ = [
    "SLOT_GRID",
    "CheckRuntime",
    "CheckSpec",
    "ConcurrencyCap",
    "LoopLagMonitor",
    "Runner",
    "Scheduler",
    "slot_offset",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: how far back the per-check window of recent runs reaches (for live summaries)
WINDOW_HORIZON = 600.0
WINDOW_MAX_RUNS = 256
#: slot offsets are multiples of this (seconds): checks due together share a loop wake-up
SLOT_GRID = 0.01


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
    """Deterministic offset in ``[0, interval)``, on the ``SLOT_GRID``, from name and node."""
    digest = hashlib.blake2b(f"{name}\0{node}".encode(), digest_size=8).digest()
    spread = (int.from_bytes(digest, "big") % 1_000_000) / 1_000_000 * interval
    return (spread // SLOT_GRID) * SLOT_GRID


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


class ConcurrencyCap(Generic[T]):
    """At most ``limit`` holders at once; the others wait in FIFO order. Every call is O(1).

    A waiter is a plain item, not a task parked on a future: there is nothing to cancel, and
    nothing to scan (Python 3.11's ``asyncio.Semaphore.acquire`` walks all its waiters, so at
    saturation each acquire cost O(waiters)). A slot freed while items wait passes straight
    to the oldest, so a free slot implies an empty queue and ``try_take`` cannot overtake.

        cap = ConcurrencyCap[str](2)
        if cap.try_take(): ...          # run now; later, nxt = cap.leave()
        else: cap.wait("item")          # leave() hands this item a slot, in order
    """

    __slots__ = ("_free", "_waiting")

    def __init__(self, limit: int) -> None:
        self._free = limit
        self._waiting: deque[T] = deque()

    def try_take(self) -> bool:
        """Take a free slot, if there is one."""
        if self._free:
            self._free -= 1
            return True
        return False

    def wait(self, item: T) -> None:
        """Queue ``item`` for the next slot that is freed (after ``try_take`` failed)."""
        self._waiting.append(item)

    def leave(self) -> T | None:
        """Give a slot back: the oldest waiting item now holds it and is returned, or None."""
        if self._waiting:
            return self._waiting.popleft()
        self._free += 1
        return None

    def clear(self) -> list[T]:
        """Drop every waiting item (none held a slot) and return them."""
        dropped = list(self._waiting)
        self._waiting.clear()
        return dropped


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
        self._checks: dict[str, CheckRuntime] = {}
        self._tg: asyncio.TaskGroup | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # runs due while every slot was taken wait here with their planned start
        self._cap = ConcurrencyCap[tuple[CheckRuntime, float]](max_concurrency)
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
        fresh: list[CheckRuntime] = []
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
            fresh.append(rt)
            added += 1
        if self._loop is not None:
            self._arm_first(fresh)
        return added, removed, kept

    def checks(self) -> Iterable[CheckRuntime]:
        return self._checks.values()

    def get(self, name: str) -> CheckRuntime | None:
        return self._checks.get(name)

    # --- running --------------------------------------------------------------------

    async def run(self) -> None:
        """Run until cancelled; then stop every timer and in-flight run before returning."""
        self._loop = asyncio.get_running_loop()
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                self._arm_first(self._checks.values())
                self.running = True
                try:
                    await asyncio.Future()  # parked until cancelled
                finally:
                    # before the TaskGroup cancels and awaits the runs: no timer may fire
                    # into it, and no queued run may start when a cancelled one frees a slot
                    self._stop()
        finally:
            self.running = False
            self._loop = None

    def _stop(self) -> None:
        self._tg = None
        for rt in self._checks.values():
            if rt.handle is not None:
                rt.handle.cancel()
                rt.handle = None
        for rt, _ in self._cap.clear():
            rt.running = False

    def _arm_first(self, checks: Iterable[CheckRuntime]) -> None:
        """Arm each check for its next wall-clock slot, mapped onto the monotonic clock.

        One reading of both clocks for the whole batch: checks on the same grid point get
        the same due time, so their timers fire in one wake-up of the loop.
        """
        assert self._loop is not None
        now_wall, now_loop = time.time(), self._loop.time()
        for rt in checks:
            period = rt.spec.interval
            next_wall = ((now_wall - rt.offset) // period + 1) * period + rt.offset
            self._arm(rt, now_loop + (next_wall - now_wall))

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
        if self._cap.try_take():
            self._start(rt, due)
        else:
            self._cap.wait((rt, due))

    def _start(self, rt: CheckRuntime, due: float) -> None:
        assert self._tg is not None
        self._tg.create_task(self._execute(rt, due), name=f"check:{rt.spec.name}")

    def _release(self) -> None:
        """Free a run slot: it passes straight to the oldest queued run of a live check."""
        while (queued := self._cap.leave()) is not None:
            rt, due = queued
            if not rt.removed:
                self._start(rt, due)
                return
            rt.running = False  # removed while it waited: the slot goes on to the next

    async def _execute(self, rt: CheckRuntime, due: float) -> None:
        assert self._loop is not None
        loop = self._loop
        try:
            lateness = max(0.0, loop.time() - due)
            self.lateness.observe(lateness)
            self.runs_started += 1
            result = await self._run_guarded(rt.spec)
            if not rt.removed:
                _log_transition(rt, result)
                rt.record(result, lateness, loop.time())
        finally:
            rt.running = False
            self._release()

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
