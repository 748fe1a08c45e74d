"""Cron expressions: parsing, next fire times, time zones, and one-line errors. No database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from durably.cron import iso_utc, next_fire, parse, zone

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)  # a Wednesday


def fires(expression: str, count: int, after: datetime = T0, tz: str = "UTC") -> list[datetime]:
    out = []
    for _ in range(count):
        after = next_fire(expression, after, tz)
        out.append(after)
    return out


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("*/5 * * * *", [utc(2024, 5, 1, 12, 5), utc(2024, 5, 1, 12, 10)]),
        ("*/2 * * * * *", [utc(2024, 5, 1, 12, 0, 2), utc(2024, 5, 1, 12, 0, 4)]),
        ("30 15 * * * *", [utc(2024, 5, 1, 12, 15, 30), utc(2024, 5, 1, 13, 15, 30)]),
        ("0 9-17/4 * * *", [utc(2024, 5, 1, 13), utc(2024, 5, 1, 17), utc(2024, 5, 2, 9)]),
        ("15,45 */6 * * *", [utc(2024, 5, 1, 12, 15), utc(2024, 5, 1, 12, 45)]),
        ("10/20 * * * *", [utc(2024, 5, 1, 12, 10), utc(2024, 5, 1, 12, 30)]),
        ("0 0 * jun,dec *", [utc(2024, 6, 1), utc(2024, 6, 2)]),
        ("0 8 * * mon-fri", [utc(2024, 5, 2, 8), utc(2024, 5, 3, 8), utc(2024, 5, 6, 8)]),
        ("0 0 * * 7", [utc(2024, 5, 5), utc(2024, 5, 12)]),  # 7 is Sunday, like 0
        ("0 0 31 * *", [utc(2024, 5, 31), utc(2024, 7, 31)]),  # months without a 31st skipped
        ("0 0 29 2 *", [utc(2028, 2, 29), utc(2032, 2, 29)]),  # leap days only
        ("@hourly", [utc(2024, 5, 1, 13), utc(2024, 5, 1, 14)]),
        ("@daily", [utc(2024, 5, 2), utc(2024, 5, 3)]),
        ("@weekly", [utc(2024, 5, 5), utc(2024, 5, 12)]),
        ("@monthly", [utc(2024, 6, 1), utc(2024, 7, 1)]),
        ("@yearly", [utc(2025, 1, 1), utc(2026, 1, 1)]),
        ("  0   12  *  *  *  ", [utc(2024, 5, 2, 12)]),  # spacing is free; strictly after T0
        ("0 0 * * MON", [utc(2024, 5, 6)]),  # names in any case
    ],
)
def test_next_fire_times(expression: str, expected: list[datetime]) -> None:
    assert fires(expression, len(expected)) == expected


def test_day_of_month_and_day_of_week_both_restricted_means_either() -> None:
    # The 1st and 15th of the month, and every Friday (Vixie cron).
    got = fires("0 0 1,15 * fri", 5)
    assert got == [utc(2024, 5, 3), utc(2024, 5, 10), utc(2024, 5, 15), utc(2024, 5, 17),
                   utc(2024, 5, 24)]  # fmt: skip
    # With either field starting with '*', both must match: odd days that are Mondays.
    assert fires("0 0 */2 * mon", 2) == [utc(2024, 5, 13), utc(2024, 5, 27)]


def test_next_fire_is_strictly_after_and_ignores_fractions() -> None:
    assert next_fire("* * * * *", utc(2024, 5, 1, 12, 0)) == utc(2024, 5, 1, 12, 1)
    just_after = utc(2024, 5, 1, 12, 0) + timedelta(microseconds=1)
    assert next_fire("* * * * * *", just_after) == utc(2024, 5, 1, 12, 0, 1)
    assert next_fire("* * * * *", utc(2024, 12, 31, 23, 59, 30)) == utc(2025, 1, 1)


def test_time_zones_are_wall_clock_and_results_aware() -> None:
    paris = next_fire("0 9 * * *", T0, "Europe/Paris")
    assert paris.tzinfo is not None and (paris.hour, paris.minute) == (9, 0)
    assert paris.astimezone(UTC) == utc(2024, 5, 2, 7)  # summer time, UTC+2
    winter = next_fire("0 9 * * *", utc(2024, 12, 1), "Europe/Paris")
    assert winter.astimezone(UTC) == utc(2024, 12, 1, 8)  # UTC+1
    # Any aware datetime may be passed, in any zone.
    tokyo = T0.astimezone(ZoneInfo("Asia/Tokyo"))
    assert next_fire("*/5 * * * *", tokyo) == utc(2024, 5, 1, 12, 5)


def test_daylight_saving_changes() -> None:
    ny = "America/New_York"
    # Spring forward (2:00 -> 3:00 on 10 March 2024): 2:30 does not exist; read with the
    # offset before the change it is 3:30, which fires once, and the hours go on.
    spring = [t.astimezone(UTC) for t in fires("30 * * * *", 3, utc(2024, 3, 10, 6, 0), ny)]
    assert spring == [utc(2024, 3, 10, 6, 30), utc(2024, 3, 10, 7, 30), utc(2024, 3, 10, 8, 30)]
    # Fall back (2:00 -> 1:00 on 3 November 2024): 1:30 happens twice and fires once.
    fall = [t.astimezone(UTC) for t in fires("30 * * * *", 3, utc(2024, 11, 3, 4, 0), ny)]
    assert fall == [utc(2024, 11, 3, 4, 30), utc(2024, 11, 3, 5, 30), utc(2024, 11, 3, 7, 30)]
    # A daily job at 2:30 still runs on the day 2:30 does not exist, an hour later.
    day = next_fire("30 2 * * *", utc(2024, 3, 10, 5), ny)
    assert (day.hour, day.minute, day.astimezone(UTC)) == (3, 30, utc(2024, 3, 10, 7, 30))


def test_matches_a_brute_force_search() -> None:
    """Against stepping minute by minute through eight days, for assorted expressions."""
    expressions = ["*/7 * * * *", "5 */3 * * *", "0 0 2,4 * *", "0 12 * * sat,sun",
                   "15 10 1 * mon", "59 23 * * *", "0-10/5 1-2 * * tue"]  # fmt: skip
    start = utc(2024, 2, 26, 11, 17)
    for expression in expressions:
        cron = parse(expression)
        expected, moment = [], start
        while moment < start + timedelta(days=8):
            moment += timedelta(minutes=1)
            if (
                moment.minute in cron.minutes
                and moment.hour in cron.hours
                and moment.month in cron.months
                and cron.day_matches(moment)
            ):
                expected.append(moment)
        got, after = [], start
        while (after := next_fire(cron, after)) <= expected[-1]:
            got.append(after)
        assert got == expected, expression


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        ("", "has 0 fields"),
        ("* * * *", "has 4 fields: give 5 (minute hour day-of-month month day-of-week) or 6"),
        ("* * * * * * *", "has 7 fields"),
        ("60 * * * *", "minute value 60 is out of range 0-59"),
        ("* 24 * * *", "hour value 24 is out of range 0-23"),
        ("* * 0 * *", "day-of-month value 0 is out of range 1-31"),
        ("* * * 13 *", "month value 13 is out of range 1-12"),
        ("* * * * 8", "day-of-week value 8 is out of range 0-7"),
        ("61 * * * * *", "second value 61 is out of range 0-59"),
        ("*/0 * * * *", "the minute step must be 1 or more"),
        ("5-1 * * * *", "minute range 5-1 runs backwards"),
        ("x * * * *", "minute value 'x' is not a number"),
        ("* * * foo *", "month value 'foo' is not a number (or a name: jan, feb"),
        ("* * * * funday", "day-of-week value 'funday' is not a number (or a name: sun, mon"),
        ("1,,2 * * * *", "minute value '' is not a number"),
        ("*/x * * * *", "minute step 'x' is not a number"),
        ("0 0 30 feb *", "never fires: no chosen month has day 30"),
        ("0 0 31 4,6,9,11 *", "never fires"),
        ("@often", "unknown shorthand; use one of @yearly"),
    ],
)
def test_bad_expressions_are_refused_in_one_line(expression: str, problem: str) -> None:
    with pytest.raises(ValueError) as raised:
        parse(expression)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"cron {expression!r}")
    assert problem in message
    if not expression.startswith("@"):
        assert "e.g. '*/5 * * * *' (every 5 minutes)" in message  # and a valid one to copy


def test_other_bad_input() -> None:
    with pytest.raises(ValueError, match=r"cron=5 is not valid: pass a string"):
        parse(5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pass a timezone-aware datetime"):
        next_fire("* * * * *", datetime(2024, 5, 1))
    with pytest.raises(ValueError, match="timezone 'Moon/Base' is not known: pass an IANA name"):
        zone("Moon/Base")
    with pytest.raises(ValueError, match=r"timezone '\.\./etc' is not known"):
        zone("../etc")
    assert parse("0 0 31 * mon").days == frozenset({31})  # possible through the weekdays


def test_iso_utc_is_the_key_format() -> None:
    paris = datetime(2024, 5, 1, 14, 0, 5, 123, tzinfo=ZoneInfo("Europe/Paris"))
    assert iso_utc(paris) == "2024-05-01T12:00:05Z"
