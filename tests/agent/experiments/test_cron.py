"""The cron parser, the cron table and the schedule loop (with an injected clock)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from agent.config import ConfigError, parse_config
from agent.experiments.cron import CronExpression
from agent.experiments.schedule import CronTable, ScheduleLoop
from agent.experiments.settings import ScheduleSettings


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# (expression, after, next fire)
NEXT = [
    ("* * * * *", "2024-05-17 10:00:30", "2024-05-17 10:01"),
    ("*/15 * * * *", "2024-05-17 10:00", "2024-05-17 10:15"),
    ("*/15 * * * *", "2024-05-17 10:50", "2024-05-17 11:00"),
    ("5 * * * *", "2024-05-17 10:05", "2024-05-17 11:05"),
    ("0 10 * * mon-fri", "2024-05-17 10:00", "2024-05-20 10:00"),  # Fri -> Mon
    ("0 10 * * MON-FRI", "2024-05-18 09:00", "2024-05-20 10:00"),  # Sat -> Mon
    ("30 2 * * 0", "2024-05-17 00:00", "2024-05-19 02:30"),  # Sunday as 0
    ("30 2 * * 7", "2024-05-17 00:00", "2024-05-19 02:30"),  # Sunday as 7
    ("0 0 1 jan *", "2024-05-17 00:00", "2025-01-01 00:00"),
    ("0 0 29 2 *", "2024-03-01 00:00", "2028-02-29 00:00"),  # leap day
    ("0 12 1,15 * *", "2024-05-02 00:00", "2024-05-15 12:00"),
    ("0 9-17/4 * * *", "2024-05-17 13:30", "2024-05-17 17:00"),
    ("10/20 * * * *", "2024-05-17 10:31", "2024-05-17 10:50"),
    ("0 0 31 * *", "2024-04-01 00:00", "2024-05-31 00:00"),  # April has no 31st
    ("0 0 13 * fri", "2024-05-17 00:00", "2024-05-24 00:00"),  # the 13th OR a Friday
    ("@hourly", "2024-05-17 10:59", "2024-05-17 11:00"),
    ("@daily", "2024-12-31 23:59", "2025-01-01 00:00"),
    ("@weekly", "2024-05-17 00:00", "2024-05-19 00:00"),
    ("@monthly", "2024-05-17 00:00", "2024-06-01 00:00"),
    ("@yearly", "2024-05-17 00:00", "2025-01-01 00:00"),
]


@pytest.mark.parametrize(("expr", "after", "expected"), NEXT, ids=[n[0] for n in NEXT])
def test_next_fire(expr: str, after: str, expected: str) -> None:
    assert CronExpression.parse(expr).next_after(at(after)) == at(expected)


def test_next_fire_of_an_aware_non_utc_time_is_utc() -> None:
    paris = datetime(2024, 5, 17, 12, 0, tzinfo=ZoneInfo("Europe/Paris"))
    assert CronExpression.parse("0 11 * * *").next_after(paris) == at(
        "2024-05-17 11:00"
    )  # 12:00 CEST is 10:00 UTC


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("* * * *", "expected 5 fields"),
        ("* * * * * *", "expected 5 fields"),
        ("", "expected 5 fields"),
        ("60 * * * *", "minute value 60 is out of range 0-59"),
        ("* 24 * * *", "hour value 24 is out of range 0-23"),
        ("* * 0 * *", "day of month value 0 is out of range 1-31"),
        ("* * * 13 *", "month value 13 is out of range 1-12"),
        ("* * * * 8", "day of week value 8 is out of range 0-7"),
        ("*/0 * * * *", "minute step '0' must be a positive number"),
        ("*/x * * * *", "minute step 'x' must be a positive number"),
        ("5-1 * * * *", "minute range '5-1' goes backwards"),
        ("1,,2 * * * *", "empty list item in the minute field"),
        ("* * * foo *", "month value 'foo' is not a number or a name (jan,"),
        ("* * * * funday", "day of week value 'funday' is not a number or a name (sun,"),
        ("a * * * *", "minute value 'a' is not a number"),
        ("0 0 30 feb *", "never fires"),
        ("0 0 31 4,6,9,11 *", "never fires"),
        ("@often", "expected 5 fields"),
    ],
)
def test_bad_expressions_say_what_is_wrong(expr: str, message: str) -> None:
    with pytest.raises(ValueError, match="cron") as info:
        CronExpression.parse(expr)
    assert message in str(info.value)


def test_naive_datetime_is_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        CronExpression.parse("* * * * *").next_after(datetime(2024, 1, 1))


def test_config_reports_a_bad_cron_with_file_and_line() -> None:
    text = """
experiments:
  dir: exps
  schedules:
    - name: nightly
      experiment: pod-kill
      cron: "0 25 * * *"
"""
    with pytest.raises(ConfigError) as info:
        parse_config(text, "agent.yaml", {})
    assert info.value.errors == [
        "agent.yaml:7: experiments.schedules[0].cron: "
        "cron '0 25 * * *': hour value 25 is out of range 0-23"
    ]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "  schedules:\n    - {name: a, experiment: x, cron: '@daily'}\n",
            "experiment 'x' is a name, but experiments.dir is not set",
        ),
        (
            "  dir: e\n  schedules:\n    - {name: a, experiment: x, cron: '@daily'}\n"
            "    - {name: a, experiment: y, cron: '@daily'}\n",
            "duplicate schedule name 'a'",
        ),
        (
            "  dir: e\n  schedules:\n    - {name: a, experiment: x, cron: '@daily', "
            "concurrency_policy: allow}\n",
            "'allow' is not allowed (expected 'forbid' or 'replace')",
        ),
        ("  allowed_modules: ['os; rm']\n", "is not a python module name"),
        ("  rollback_grace: 0s\n", "rollback_grace must be greater than 0"),
        ("  colour: red\n", "unknown key 'colour'"),
        (
            "  guardrails:\n    - {name: g, check: home}\n",
            "a guardrail needs a condition",
        ),
    ],
)
def test_experiment_settings_errors(body: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("experiments:\n" + body, "agent.yaml", {})
    assert any(message in e and e.startswith("agent.yaml:") for e in info.value.errors), (
        info.value.errors
    )


def test_experiment_settings_defaults_and_values() -> None:
    config, _ = parse_config(
        """
experiments:
  dir: exps
  max_age: 7d
  rollback_grace: 30s
  allow_process: true
  guardrails:
    - {name: checkout, check: checkout, window: 30s, min_success_ratio: 0.99}
  schedules:
    - {name: weekday, experiment: pod-kill, cron: "0 10 * * mon-fri", vars: {ns: staging}}
""",
        "agent.yaml",
        {},
    )
    exp = config.experiments
    assert exp.max_age == 7 * 86400
    assert exp.rollback_grace == 30
    assert exp.max_duration == 3600
    assert exp.policy().allow_process is True
    assert exp.guardrails[0].min_success_ratio == 0.99
    (s,) = exp.schedules
    assert (s.concurrency_policy, s.enabled, s.vars) == ("forbid", True, {"ns": "staging"})


def schedule(name: str, cron: str, **kw: object) -> ScheduleSettings:
    return ScheduleSettings.model_validate({"name": name, "experiment": "x", "cron": cron, **kw})


def test_cron_table_fires_due_schedules_once_and_moves_on() -> None:
    t0 = at("2024-05-17 10:00:30")
    table = CronTable(
        [
            schedule("every-minute", "* * * * *"),
            schedule("quarter", "*/15 * * * *"),
            schedule("off", "* * * * *", enabled=False),
        ],
        t0,
    )
    assert table.next_fires() == {
        "every-minute": at("2024-05-17 10:01"),
        "quarter": at("2024-05-17 10:15"),
    }
    assert table.due(at("2024-05-17 10:00:59")) == []
    assert [s.name for s in table.due(at("2024-05-17 10:01"))] == ["every-minute"]
    assert table.due(at("2024-05-17 10:01:30")) == []
    # the agent was stalled for an hour: missed fires collapse into one each
    fired = table.due(at("2024-05-17 11:00:10"))
    assert [s.name for s in fired] == ["every-minute", "quarter"]
    assert table.next_fires() == {
        "every-minute": at("2024-05-17 11:01"),
        "quarter": at("2024-05-17 11:15"),
    }


def test_cron_table_update_keeps_unchanged_schedules() -> None:
    table = CronTable([schedule("a", "*/15 * * * *")], at("2024-05-17 10:00"))
    table.update(
        [schedule("a", "*/15 * * * *", vars={"v": 1}), schedule("b", "0 * * * *")],
        at("2024-05-17 10:14"),
    )
    assert table.next_fires() == {"a": at("2024-05-17 10:15"), "b": at("2024-05-17 11:00")}
    table.update([schedule("a", "0 12 * * *")], at("2024-05-17 10:14"))
    assert table.next_fires() == {"a": at("2024-05-17 12:00")}


class FakeClock:
    """Wall time that only moves when the loop sleeps."""

    def __init__(self, start: datetime) -> None:
        self.now = start
        self.slept: list[float] = []

    def __call__(self) -> datetime:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += timedelta(seconds=seconds)
        await asyncio.sleep(0)


async def test_schedule_loop_fires_on_time_with_an_injected_clock() -> None:
    clock = FakeClock(at("2024-05-17 09:58:30"))
    fired: list[tuple[str, datetime]] = []
    enough = asyncio.Event()

    def fire(s: ScheduleSettings) -> None:
        fired.append((s.name, clock.now))
        if len(fired) >= 4:
            enough.set()

    loop = ScheduleLoop(
        [schedule("every-minute", "* * * * *"), schedule("ten", "0 10 * * *")],
        fire,
        now=clock,
        sleep=clock.sleep,
    )
    task = asyncio.create_task(loop.run())
    async with asyncio.timeout(5):
        await enough.wait()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert fired == [
        ("every-minute", at("2024-05-17 09:59")),
        ("every-minute", at("2024-05-17 10:00")),
        ("ten", at("2024-05-17 10:00")),
        ("every-minute", at("2024-05-17 10:01")),
    ]
    assert max(clock.slept) <= 60.0


async def test_schedule_loop_sleeps_at_most_max_sleep_and_wakes_on_update() -> None:
    clock = FakeClock(at("2024-05-17 09:00"))
    fired: list[tuple[str, datetime]] = []
    parked = asyncio.Event()

    async def sleep(seconds: float) -> None:
        if len(clock.slept) == 2 and not parked.is_set():
            parked.set()
            await asyncio.Event().wait()  # only an update can wake the loop from here
        await clock.sleep(seconds)

    loop = ScheduleLoop(
        [schedule("daily", "0 0 * * *")],
        lambda s: fired.append((s.name, clock.now)),
        now=clock,
        sleep=sleep,
        max_sleep=60,
    )
    task = asyncio.create_task(loop.run())
    async with asyncio.timeout(5):
        await parked.wait()
    assert clock.slept == [60.0, 60.0]  # a day away, but the clock is re-read every minute
    loop.update([schedule("soon", "* * * * *")])
    async with asyncio.timeout(5):
        while not fired:
            await asyncio.sleep(0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert fired == [("soon", at("2024-05-17 09:03"))]
