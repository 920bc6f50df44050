"""Scheduler: cadence offsets, no overlap, the concurrency cap, isolation, and diffing.

The runner here is a fake (the scheduler is what is under test); probes are tested
against real servers elsewhere. Every wait is bounded; nothing asserts a wall-clock window.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import pytest

from agent.scheduler import SLOT_GRID, CheckSpec, ConcurrencyCap, Runner, Scheduler, slot_offset
from probes.modules import Module
from probes.result import ProbeResult, Reason, Recorder
from tests.waiting import until

HTTP = Module.model_validate({"prober": "http"})


def spec(name: str, interval: float = 0.1, timeout: float = 0.1) -> CheckSpec:
    return CheckSpec(
        name=name,
        module_name="web",
        module=HTTP,
        target=f"http://{name}/",
        interval=interval,
        timeout=timeout,
    )


def ok(target: str) -> ProbeResult:
    return Recorder("http").finish(target, Reason.SUCCESS, "", 0.001, time.time())


@contextlib.asynccontextmanager
async def running(scheduler: Scheduler) -> AsyncIterator[Scheduler]:
    task = asyncio.create_task(scheduler.run())
    try:
        await until(lambda: scheduler.running)
        yield scheduler
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_offset_is_deterministic_spread_and_on_the_grid() -> None:
    assert slot_offset("a", "n1", 10) == slot_offset("a", "n1", 10)
    offsets = {slot_offset(f"check-{i}", "n1", 60) for i in range(200)}
    assert all(0 <= o < 60 for o in offsets)
    assert len(offsets) > 190  # not in lock-step
    assert slot_offset("a", "n1", 10) != slot_offset("a", "n2", 10)  # nodes differ too
    # on the grid, so that checks due at one instant share a wake-up of the loop
    assert all(round(o / SLOT_GRID) * SLOT_GRID == pytest.approx(o) for o in offsets)
    assert all(0 <= slot_offset(f"check-{i}", "n1", 0.1) < 0.1 for i in range(50))


async def test_runs_repeat_and_record_results() -> None:
    runs: list[str] = []

    async def runner(s: CheckSpec) -> ProbeResult:
        runs.append(s.name)
        return ok(s.target)

    sched = Scheduler(runner, node="n1")
    sched.update([spec("a"), spec("b")])
    async with running(sched):
        await until(lambda: runs.count("a") >= 3 and runs.count("b") >= 3)
    rt = sched.get("a")
    assert rt is not None and rt.last is not None and rt.last.success
    assert rt.runs[Reason.SUCCESS] >= 3
    assert rt.durations.count >= 3
    assert sched.lateness.count >= 6


async def test_runs_of_one_check_never_overlap() -> None:
    release = asyncio.Event()
    active = 0
    max_active = 0
    started = 0

    async def runner(s: CheckSpec) -> ProbeResult:
        nonlocal active, max_active, started
        active += 1
        started += 1
        max_active = max(max_active, active)
        try:
            await release.wait()
        finally:
            active -= 1
        return ok(s.target)

    sched = Scheduler(runner, node="n1")
    sched.update([spec("slow", interval=0.1)])
    async with running(sched):
        rt = sched.get("slow")
        assert rt is not None
        await until(lambda: rt.skipped >= 3)
        release.set()
        await until(lambda: rt.last is not None)
    assert max_active == 1
    assert started >= 1


async def test_concurrency_cap_is_respected() -> None:
    gate = asyncio.Event()
    active = 0
    max_active = 0

    async def runner(s: CheckSpec) -> ProbeResult:
        nonlocal active, max_active
        active += 1
        max_active = max(max_active, active)
        try:
            await gate.wait()
        finally:
            active -= 1
        return ok(s.target)

    sched = Scheduler(runner, node="n1", max_concurrency=3)
    sched.update([spec(f"c{i}") for i in range(10)])
    async with running(sched):
        await until(lambda: active == 3 and sum(rt.running for rt in sched.checks()) == 10)
        gate.set()
        await until(lambda: all(rt.last is not None for rt in sched.checks()))
    assert max_active == 3


def test_concurrency_cap_hands_freed_slots_to_waiters_in_order() -> None:
    cap = ConcurrencyCap[str](2)
    assert cap.try_take() and cap.try_take()
    assert not cap.try_take()
    for item in ("a", "b", "c"):
        cap.wait(item)
    assert cap.leave() == "a"  # the freed slot passes to the oldest waiter...
    assert not cap.try_take()  # ...so nothing arriving now overtakes the queue
    assert cap.leave() == "b"
    assert cap.clear() == ["c"]  # dropped waiters never held a slot
    assert cap.leave() is None and cap.leave() is None  # both slots are free again
    assert cap.try_take() and cap.try_take() and not cap.try_take()


def gated_runner() -> tuple[asyncio.Event, list[str], Runner]:
    """A runner that notes each check it starts and holds it until the gate opens."""
    gate = asyncio.Event()
    started: list[str] = []

    async def runner(s: CheckSpec) -> ProbeResult:
        started.append(s.name)
        await gate.wait()
        return ok(s.target)

    return gate, started, runner


async def test_a_run_waiting_for_the_cap_counts_as_late() -> None:
    gate, started, runner = gated_runner()
    sched = Scheduler(runner, node="n1", max_concurrency=1)
    sched.update([spec("a"), spec("b")])
    async with running(sched):
        await until(lambda: len(started) == 1 and all(rt.running for rt in sched.checks()))
        waiting = sched.get("b" if started[0] == "a" else "a")
        assert waiting is not None
        await until(lambda: waiting.skipped >= 1)  # its next slot came: it waited >= interval
        gate.set()
        await until(lambda: waiting.last is not None)
    assert started[1] == waiting.spec.name
    assert waiting.last_lateness >= waiting.spec.interval


async def test_a_removed_check_gives_up_its_place_in_the_queue() -> None:
    gate, started, runner = gated_runner()
    specs = [spec("a"), spec("b"), spec("c")]
    sched = Scheduler(runner, node="n1", max_concurrency=1)
    sched.update(specs)
    async with running(sched):
        await until(lambda: len(started) == 1 and all(rt.running for rt in sched.checks()))
        gone, kept = [s for s in specs if s.name != started[0]]
        gone_rt = sched.get(gone.name)
        assert gone_rt is not None
        sched.update([s for s in specs if s is not gone])
        gate.set()
        kept_rt = sched.get(kept.name)
        assert kept_rt is not None
        await until(lambda: kept_rt.last is not None)
        assert gone.name not in started
        assert not gone_rt.running


async def test_stopping_with_queued_runs_is_clean(caplog: pytest.LogCaptureFixture) -> None:
    """Timers stop and the queue empties before the TaskGroup winds the runs down."""
    started: list[str] = []

    async def runner(s: CheckSpec) -> ProbeResult:
        started.append(s.name)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await asyncio.sleep(0.3)  # a slow clean-up: slots come and go meanwhile
            raise
        raise AssertionError("unreachable")

    sched = Scheduler(runner, node="n1", max_concurrency=1)
    sched.update([spec("a"), spec("b"), spec("c")])
    async with running(sched):
        await until(lambda: len(started) == 1 and all(rt.running for rt in sched.checks()))
    assert len(started) == 1  # the queued runs never started
    assert not any(rt.running or rt.handle is not None for rt in sched.checks())
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_broken_probe_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    async def runner(s: CheckSpec) -> ProbeResult:
        if s.name == "broken":
            raise KeyError("a bug")
        return ok(s.target)

    sched = Scheduler(runner, node="n1")
    sched.update([spec("broken"), spec("fine")])
    async with running(sched):
        broken, fine = sched.get("broken"), sched.get("fine")
        assert broken is not None and fine is not None
        await until(
            lambda: (
                broken.runs.get(Reason.INTERNAL_ERROR, 0) >= 2
                and fine.runs.get(Reason.SUCCESS, 0) >= 2
            )
        )
    assert broken.last is not None and "KeyError" in broken.last.detail
    assert "probe raised" in caplog.text


async def test_update_diffs_checks() -> None:
    seen: list[str] = []

    async def runner(s: CheckSpec) -> ProbeResult:
        seen.append(s.name)
        return ok(s.target)

    sched = Scheduler(runner, node="n1")
    sched.update([spec("keep"), spec("drop"), spec("change")])
    async with running(sched):
        await until(lambda: {"keep", "drop", "change"} <= set(seen))
        kept = sched.get("keep")
        assert kept is not None
        runs_before = kept.runs[Reason.SUCCESS]
        added, removed, still = sched.update(
            [spec("keep"), spec("change", interval=0.2), spec("new")]
        )
        assert (added, removed, still) == (2, 2, 1)
        assert sched.get("drop") is None
        assert sched.get("keep") is kept  # same state object: counters carry on
        seen.clear()
        await until(lambda: {"keep", "new", "change"} <= set(seen))
        assert "drop" not in seen
        assert kept.runs[Reason.SUCCESS] > runs_before


async def test_stop_cancels_in_flight_runs() -> None:
    cancelled = asyncio.Event()
    started = asyncio.Event()

    async def runner(s: CheckSpec) -> ProbeResult:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        raise AssertionError("unreachable")

    sched = Scheduler(runner, node="n1")
    sched.update([spec("hang")])
    async with running(sched):
        async with asyncio.timeout(5):
            await started.wait()
    assert cancelled.is_set()
    rt = sched.get("hang")
    assert rt is not None and rt.handle is None
