"""Cron schedules of experiments: when each fires, and the loop that fires them.

:class:`CronTable` is pure: given the time, it says which schedules are due and moves each
to its next fire time. Fires missed while the agent was busy or its clock jumped collapse
into ONE fire, as a Kubernetes CronJob with a starting deadline does. :class:`ScheduleLoop`
sleeps until the next fire time (at most ``max_sleep`` at a time, so a wall-clock jump is
noticed) and hands due schedules to ``fire``; the clock and the sleep are injectable so the
logic is tested without waiting for minutes to pass.

    loop = ScheduleLoop(settings.schedules, fire=service.fire_schedule)
    await loop.run()                 # until cancelled; loop.update(...) on config reload
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from agent.experiments.cron import CronExpression
from agent.experiments.settings import ScheduleSettings

__all__ = ["CronTable", "ScheduleLoop", "utc_now"]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class _Entry:
    settings: ScheduleSettings
    expression: CronExpression
    next_at: datetime


class CronTable:
    """The enabled schedules and their next fire times."""

    def __init__(self, schedules: Sequence[ScheduleSettings], now: datetime) -> None:
        self._entries: dict[str, _Entry] = {}
        self.update(schedules, now)

    def update(self, schedules: Sequence[ScheduleSettings], now: datetime) -> None:
        """Replace the schedules; an unchanged one (same name and cron) keeps its next fire."""
        entries: dict[str, _Entry] = {}
        for s in schedules:
            if not s.enabled:
                continue
            old = self._entries.get(s.name)
            if old is not None and old.settings.cron == s.cron:
                entries[s.name] = _Entry(s, old.expression, old.next_at)
            else:
                expr = s.expression()
                entries[s.name] = _Entry(s, expr, expr.next_after(now))
        self._entries = entries

    def next_fire(self) -> datetime | None:
        return min((e.next_at for e in self._entries.values()), default=None)

    def next_fires(self) -> dict[str, datetime]:
        return {name: e.next_at for name, e in self._entries.items()}

    def due(self, now: datetime) -> list[ScheduleSettings]:
        """The schedules due at ``now`` (in name order); each moves to its next fire."""
        out = []
        for name in sorted(self._entries):
            entry = self._entries[name]
            if entry.next_at <= now:
                out.append(entry.settings)
                entry.next_at = entry.expression.next_after(now)
        return out


class ScheduleLoop:
    """Fires due schedules until cancelled."""

    def __init__(
        self,
        schedules: Sequence[ScheduleSettings],
        fire: Callable[[ScheduleSettings], None],
        *,
        now: Callable[[], datetime] = utc_now,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        max_sleep: float = 60.0,
    ) -> None:
        self._now = now
        self._sleep = sleep
        self._fire = fire
        self.max_sleep = max_sleep
        self.table = CronTable(schedules, now())
        self._wake = asyncio.Event()

    def update(self, schedules: Sequence[ScheduleSettings]) -> None:
        self.table.update(schedules, self._now())
        self._wake.set()

    async def run(self) -> None:
        while True:
            now = self._now()
            for schedule in self.table.due(now):
                self._fire(schedule)
            nxt = self.table.next_fire()
            delay = self.max_sleep
            if nxt is not None:
                delay = min(max((nxt - now).total_seconds(), 0.0), self.max_sleep)
            self._wake.clear()
            sleeper = asyncio.ensure_future(self._sleep(delay))
            waker = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (sleeper, waker):
                    task.cancel()
                await asyncio.gather(sleeper, waker, return_exceptions=True)
