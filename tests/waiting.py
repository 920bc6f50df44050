"""Bounded waits on a condition: tests synchronise on state, never on a fixed sleep.

await until(lambda: rt.last is not None, what="the first run")
wait_until(lambda: agent.faults() == [], 30, what="the fault to go")
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

POLL = 0.02


async def until(predicate: Callable[[], object], limit: float = 10.0, what: str = "") -> None:
    """Wait until ``predicate()`` is true; fail the test after ``limit`` seconds."""
    try:
        async with asyncio.timeout(limit):
            while not predicate():
                await asyncio.sleep(POLL)
    except TimeoutError:
        raise AssertionError(f"not within {limit:g}s: {what or predicate}") from None


def wait_until(predicate: Callable[[], object], limit: float = 30.0, what: str = "") -> None:
    """The same, for code outside an event loop (subprocess-driven tests)."""
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {limit:g}s: {what or predicate}")
        time.sleep(POLL * 5)
