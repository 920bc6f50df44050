"""Five-field cron expressions (minute hour day-of-month month day-of-week), in UTC.

The grammar is Vixie cron's, the one Kubernetes CronJobs use:

- ``*``, a number, a range ``a-b``, a step ``*/n``, ``a-b/n`` or ``a/n`` (from ``a`` to the
  end of the field), and comma-separated lists of those;
- month names ``jan``..``dec`` and day names ``sun``..``sat`` (any case), in ranges too;
- day-of-week ``0`` and ``7`` are both Sunday;
- when both day-of-month and day-of-week are restricted (neither starts with ``*``), a day
  matches if EITHER matches (``0 10 1 * mon``: the 1st of the month, and every Monday);
- macros: ``@yearly`` (``@annually``), ``@monthly``, ``@weekly``, ``@daily`` (``@midnight``),
  ``@hourly``.

Times are UTC, always: a DaemonSet's pods usually run in UTC anyway, and UTC has no
daylight-saving gaps or repeats, so a schedule never fires twice or not at all.
Expressions that can never fire (``0 0 30 feb *``) are refused.

    expr = CronExpression.parse("0 10 * * mon-fri")
    expr.next_after(datetime(2024, 5, 17, 10, 0, tzinfo=UTC))  # Mon 2024-05-20 10:00 UTC
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

__all__ = ["CronExpression"]

_MONTHS = {name.lower(): i for i, name in enumerate(calendar.month_abbr) if name}
_DAYS = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}
_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
#: days each month can have (February: 29 in leap years)
_MAX_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
#: how far ahead next_after searches; every valid expression fires within 8 years
_HORIZON = timedelta(days=366 * 8)


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    low: int
    high: int
    names: dict[str, int] | None = None


_FIELDS = (
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day of month", 1, 31),
    _Field("month", 1, 12, _MONTHS),
    _Field("day of week", 0, 7, _DAYS),
)


def _value(text: str, field: _Field, expr: str) -> int:
    if field.names is not None and text.lower() in field.names:
        return field.names[text.lower()]
    if not text.isdigit():
        hint = ""
        if field.names is not None:
            hint = f" or a name ({', '.join(field.names)})"
        raise ValueError(f"cron {expr!r}: {field.name} value {text!r} is not a number{hint}")
    n = int(text)
    if not field.low <= n <= field.high:
        raise ValueError(
            f"cron {expr!r}: {field.name} value {n} is out of range {field.low}-{field.high}"
        )
    return n


def _parse_field(text: str, field: _Field, expr: str) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        if not part:
            raise ValueError(f"cron {expr!r}: empty list item in the {field.name} field")
        base, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise ValueError(
                    f"cron {expr!r}: {field.name} step {step_text!r} must be a positive number"
                )
            step = int(step_text)
        if base == "*":
            low, high = field.low, field.high
        elif "-" in base:
            a, _, b = base.partition("-")
            low, high = _value(a, field, expr), _value(b, field, expr)
            if low > high:
                raise ValueError(f"cron {expr!r}: {field.name} range {base!r} goes backwards")
        else:
            low = _value(base, field, expr)
            high = field.high if slash else low
        values.update(range(low, high + 1, step))
    if field.names is _DAYS and 7 in values:  # 7 is Sunday too
        values.discard(7)
        values.add(0)
    return frozenset(values)


@dataclass(frozen=True, slots=True)
class CronExpression:
    """A parsed cron expression; :meth:`next_after` gives its next fire time (UTC)."""

    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    day_or: bool  # both day fields restricted: either may match

    @classmethod
    def parse(cls, text: str) -> CronExpression:
        """Parse ``text``; raise ``ValueError`` with a message that names the bad part."""
        expr = text.strip()
        fields = _MACROS.get(expr.lower(), expr).split()
        if len(fields) != 5:
            raise ValueError(
                f"cron {text!r}: expected 5 fields (minute hour day-of-month month "
                f"day-of-week) or a macro ({', '.join(_MACROS)}), got {len(fields)}"
            )
        sets = [_parse_field(f, spec, text) for f, spec in zip(fields, _FIELDS, strict=True)]
        parsed = cls(
            text=expr,
            minutes=sets[0],
            hours=sets[1],
            days=sets[2],
            months=sets[3],
            weekdays=sets[4],
            day_or=not fields[2].startswith("*") and not fields[4].startswith("*"),
        )
        if not parsed.day_or and not any(
            d <= _MAX_DAYS[m - 1] for m in parsed.months for d in parsed.days
        ):
            raise ValueError(f"cron {text!r}: never fires (no such day in the chosen months)")
        return parsed

    def __str__(self) -> str:
        return self.text

    def _day_matches(self, day: datetime) -> bool:
        dom = day.day in self.days
        dow = (day.weekday() + 1) % 7 in self.weekdays  # Python: Monday = 0
        return (dom or dow) if self.day_or else (dom and dow)

    def next_after(self, after: datetime) -> datetime:
        """The first matching minute strictly after ``after`` (an aware datetime), in UTC."""
        if after.tzinfo is None:
            raise ValueError("next_after needs an aware datetime")
        t = after.astimezone(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
        limit = t + _HORIZON
        while t < limit:
            if t.month not in self.months:
                year, month = (t.year + 1, 1) if t.month == 12 else (t.year, t.month + 1)
                t = t.replace(year=year, month=month, day=1, hour=0, minute=0)
                continue
            if not self._day_matches(t):
                t = t.replace(hour=0, minute=0) + timedelta(days=1)
                continue
            if t.hour not in self.hours:
                t = t.replace(minute=0) + timedelta(hours=1)
                continue
            if t.minute not in self.minutes:
                t += timedelta(minutes=1)
                continue
            return t
        raise ValueError(f"cron {self.text!r}: no fire time within {_HORIZON.days} days")
