"""Cron expressions: parsing, and the next fire time after a given moment.

Five fields, ``minute hour day-of-month month day-of-week``, or six with a ``second`` field first
(``*/2 * * * * *`` fires every two seconds). Each field takes ``*``, ``*/n``, a value, a range
``a-b``, a stepped range ``a-b/n`` or ``a/n`` (from ``a`` to the end), and comma-separated lists
of these. Months and days of the week may be named (``jan``..``dec``, ``sun``..``sat``; day 0 and
7 are both Sunday). ``@yearly`` (``@annually``), ``@monthly``, ``@weekly``, ``@daily``
(``@midnight``) and ``@hourly`` stand for their usual five fields.

As in every cron since Vixie cron: when both day-of-month and day-of-week are restricted (neither
starts with ``*``), a day matches if either matches; ``0 0 1 * mon`` fires on the 1st of each
month and on every Monday.

Times are wall-clock times in the schedule's time zone (``zoneinfo``, UTC by default). When the
clocks go back, a wall time that happens twice fires once (the first time); when they go forward,
a wall time that does not exist is read with the offset before the change (2:30 becomes 3:30 when
2:00 jumps to 3:00), and an instant fires once even when two wall times land on it.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

EXAMPLE = "e.g. '*/5 * * * *' (every 5 minutes) or '*/2 * * * * *' (every 2 seconds)"

ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

_MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_MONTHS = {name: i + 1 for i, name in enumerate(_MONTH_NAMES)}
_DAYS = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}

# (name, lowest, highest, names) of each field, seconds first.
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("second", 0, 59, {}),
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day-of-month", 1, 31, {}),
    ("month", 1, 12, _MONTHS),
    ("day-of-week", 0, 7, _DAYS),
)

# Far enough to meet any possible date (29 February on a given weekday recurs within 28 years).
_SEARCH_YEARS = 30


@dataclass(frozen=True)
class Cron:
    """A parsed cron expression (see :func:`parse`)."""

    expression: str
    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]  # of the month, 1-31
    months: frozenset[int]  # 1-12
    weekdays: frozenset[int]  # 0-6, Sunday is 0
    days_restricted: bool  # the day-of-month field does not start with '*'
    weekdays_restricted: bool  # the day-of-week field does not start with '*'

    def day_matches(self, day: datetime) -> bool:
        """Whether ``day`` (its date) is a day this expression fires on."""
        in_days = day.day in self.days
        in_weekdays = (day.weekday() + 1) % 7 in self.weekdays
        if self.days_restricted and self.weekdays_restricted:
            return in_days or in_weekdays
        return in_days and in_weekdays

    def next_after(self, moment: datetime, tz: ZoneInfo | None = None) -> datetime:
        """The first fire time strictly after ``moment`` (an aware datetime), as an aware
        datetime in ``tz`` (UTC by default)."""
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise ValueError(f"next_after({moment!r}): pass a timezone-aware datetime")
        zone = tz or ZoneInfo("UTC")
        # Instants are compared in UTC: Python compares two datetimes of one zone by wall time.
        after = moment.astimezone(UTC)
        # Search on the wall clock of the zone, whole seconds, starting after `moment`.
        wall = after.astimezone(zone).replace(tzinfo=None, microsecond=0) + timedelta(seconds=1)
        while True:
            found = self._next_wall(wall, after.year + _SEARCH_YEARS)
            # A wall time the clocks skipped is read with the offset before the change (2:30
            # becomes 3:30); one that happens twice (clocks going back) is taken the first time:
            # seen from its second occurrence it is already past, so the search goes on.
            fire = found.replace(tzinfo=zone).astimezone(UTC)
            if fire > after:
                return fire.astimezone(zone)
            wall = found + timedelta(seconds=1)

    def _next_wall(self, wall: datetime, until_year: int) -> datetime:
        """The first naive wall time at or after ``wall`` that matches every field."""
        while wall.year <= until_year:
            if wall.month not in self.months:
                wall = _first_of_next_month(wall)
            elif not self.day_matches(wall):
                wall = wall.replace(hour=0, minute=0, second=0) + timedelta(days=1)
            elif wall.hour not in self.hours:
                wall = wall.replace(minute=0, second=0) + timedelta(hours=1)
            elif wall.minute not in self.minutes:
                wall = wall.replace(second=0) + timedelta(minutes=1)
            elif wall.second not in self.seconds:
                wall += timedelta(seconds=1)
            else:
                return wall
        raise ValueError(f"cron {self.expression!r} never fires: no date matches it; {EXAMPLE}")


def _first_of_next_month(wall: datetime) -> datetime:
    year, month = (wall.year + 1, 1) if wall.month == 12 else (wall.year, wall.month + 1)
    return datetime(year, month, 1)


def parse(expression: str) -> Cron:
    """Parse a cron expression; raises ``ValueError`` with one line saying what is wrong."""
    if not isinstance(expression, str):
        raise ValueError(f"cron={expression!r} is not valid: pass a string, {EXAMPLE}")
    text = " ".join(expression.lower().split())
    if text.startswith("@"):
        if text not in ALIASES:
            known = ", ".join(ALIASES)
            raise ValueError(f"cron {expression!r}: unknown shorthand; use one of {known}")
        text = ALIASES[text]
    parts = text.split(" ")
    if len(parts) == 5:
        parts = ["0", *parts]
    elif len(parts) != 6:
        raise ValueError(
            f"cron {expression!r} has {len(parts) if text else 0} fields: give 5 (minute hour "
            f"day-of-month month day-of-week) or 6 (seconds first), {EXAMPLE}"
        )
    sets = [
        _parse_field(expression, part, *spec) for part, spec in zip(parts, _FIELDS, strict=True)
    ]
    weekdays = frozenset(d % 7 for d in sets[5])  # 7 is Sunday too
    cron = Cron(
        expression=expression,
        seconds=sets[0],
        minutes=sets[1],
        hours=sets[2],
        days=sets[3],
        months=sets[4],
        weekdays=weekdays,
        days_restricted=not parts[3].startswith("*"),
        weekdays_restricted=not parts[5].startswith("*"),
    )
    _check_possible(cron)
    return cron


def _parse_field(
    expression: str, field: str, name: str, low: int, high: int, names: dict[str, int]
) -> frozenset[int]:
    values: set[int] = set()
    for item in field.split(","):
        base, slash, step_text = item.partition("/")
        step = 1
        if slash:
            step = _number(expression, name, step_text, names={}, what="step")
            if step < 1:
                raise ValueError(
                    f"cron {expression!r}: the {name} step must be 1 or more; {EXAMPLE}"
                )
        if base == "*":
            first, last = low, high
        elif "-" in base:
            start, _, end = base.partition("-")
            first = _number(expression, name, start, names)
            last = _number(expression, name, end, names)
        else:
            first = _number(expression, name, base, names)
            last = high if slash else first  # 'a/n' runs from a to the end of the range
        for value in (first, last):
            if not low <= value <= high:
                raise ValueError(
                    f"cron {expression!r}: {name} value {value} is out of range {low}-{high}; "
                    f"{EXAMPLE}"
                )
        if first > last:
            raise ValueError(
                f"cron {expression!r}: {name} range {base} runs backwards; write it low-high, "
                f"{EXAMPLE}"
            )
        values.update(range(first, last + 1, step))
    return frozenset(values)


def _number(
    expression: str, name: str, text: str, names: dict[str, int], what: str = "value"
) -> int:
    if text in names:
        return names[text]
    if text.isdigit():
        return int(text)
    hint = f" (or a name: {', '.join(names)})" if names else ""
    raise ValueError(
        f"cron {expression!r}: {name} {what} {text!r} is not a number{hint}; {EXAMPLE}"
    )


def _check_possible(cron: Cron) -> None:
    """Refuse days of the month that no chosen month has (``0 0 30 feb *``)."""
    if cron.weekdays_restricted and cron.days_restricted:
        return  # any matching weekday will do
    longest = max(29 if m == 2 else calendar.monthrange(2001, m)[1] for m in cron.months)
    if min(cron.days) > longest:
        raise ValueError(
            f"cron {cron.expression!r} never fires: no chosen month has day {min(cron.days)}; "
            f"{EXAMPLE}"
        )


def zone(name: str) -> ZoneInfo:
    """The IANA time zone called ``name``; ``ValueError`` in one line when there is none."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ValueError(
            f"timezone {name!r} is not known: pass an IANA name such as 'UTC' or 'Europe/Paris'"
        ) from None


def next_fire(expression: str | Cron, after: datetime, timezone: str = "UTC") -> datetime:
    """The first fire time of ``expression`` strictly after the aware datetime ``after``, on the
    wall clock of ``timezone``; returned as an aware datetime in that zone."""
    cron = parse(expression) if isinstance(expression, str) else expression
    return cron.next_after(after, zone(timezone))


def iso_utc(moment: datetime) -> str:
    """A fire time as the ISO 8601 UTC text used in idempotency keys: ``2024-05-01T12:00:00Z``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# What a schedule does with ticks missed while no worker ran (docs/scheduling.md).
CATCH_UP = ("all", "latest", "none")
DEFAULT_CATCH_UP = "latest"


def check_catch_up(catch_up: str) -> str:
    """Refuse an unknown catch-up policy in one line."""
    if catch_up not in CATCH_UP:
        raise ValueError(
            f"catch_up={catch_up!r} is not valid: pass 'latest' (one run for the ticks missed, "
            "the default), 'all' (one run per tick missed) or 'none'"
        )
    return catch_up
