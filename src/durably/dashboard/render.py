"""Formatting for the dashboard's templates: times, durations, JSON, the event timeline, the
non-determinism comparison and the throughput chart. Pure functions, no I/O.

Everything here returns plain text or numbers; the templates escape it (autoescape is on for
every template), so a payload is always shown, never interpreted.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ..records import DELAYED, ENDED, Status

STATUSES = tuple(Status)
# The runs page's status filter: the statuses, and DELAYED, which is not one: a QUEUED run not
# due yet (delay=, run_at=, a retry's backoff), as Console.runs_page reads it.
FILTER_STATUSES = (Status.QUEUED, DELAYED, *STATUSES[1:])
# Past this, a value shown in full on a run's page is cut (payloads may be megabytes).
SHOW_LIMIT = 64 * 1024
TIMELINE_WIDTH = 160


def fmt_time(value: datetime | None) -> str:
    """A timestamp in UTC to the second, or an em dash."""
    if value is None:
        return "\u2014"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def fmt_due(run_at: datetime, due_in_s: float) -> str:
    """When a delayed run is due, short: "12:04:10 UTC" when that is today (UTC, on the
    database clock, which ``due_in_s`` is measured on), else with its date."""
    at = run_at.astimezone(UTC)
    today = (run_at - timedelta(seconds=due_in_s)).astimezone(UTC).date()
    return at.strftime("%H:%M:%S UTC" if at.date() == today else "%Y-%m-%d %H:%M:%S UTC")


def fmt_duration(seconds: float | None) -> str:
    """A duration for people: 850 ms, 4.2 s, 3 m 20 s, 5 h 2 m, 3 d 4 h."""
    if seconds is None:
        return "\u2014"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} m {secs} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} m"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def fmt_count(count: int, cap: int) -> str:
    """A count with thousands separators; one that reached ``cap`` was cut there: "10,000+"."""
    return f"{count:,}+" if count >= cap else f"{count:,}"


def between(start: datetime | None, end: datetime | None) -> float | None:
    """Seconds from ``start`` to ``end`` (None when either is missing)."""
    if start is None or end is None:
        return None
    return (end - start).total_seconds()


def pretty_json(value: Any, limit: int = SHOW_LIMIT) -> str:
    """JSON on one line when short, else indented; cut at ``limit`` characters with a note."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    if len(text) > 80:
        text = json.dumps(value, indent=2, ensure_ascii=False, default=str)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}\n\u2026 cut: {len(text):,} characters in all"


def preview(text: str | None, size: int | None) -> str:
    """A payload preview from SQL (already cut short), marked when there is more."""
    if text is None:
        return ""
    return text + "\u2026" if size is not None and size > len(text) else text


def call_preview(text: str) -> str:
    """A stored input preview without its envelope when it is just positional arguments:
    '{"args": ["o-1", 100], "kwargs": {}}' reads '"o-1", 100'."""
    head, tail = '{"args": [', '], "kwargs": {}}'
    if text.startswith(head) and text.endswith(tail):
        return text[len(head) : -len(tail)]
    return text


def call_arguments(args: Any) -> str:
    """A run's stored input ({"args": [...], "kwargs": {...}}) as the call's arguments."""
    if not isinstance(args, dict) or set(args) - {"args", "kwargs"}:
        return pretty_json(args)
    values, options = args.get("args", []), args.get("kwargs") or {}
    if not isinstance(values, list) or not isinstance(options, dict):
        return pretty_json(args)
    positional = [json.dumps(a, ensure_ascii=False, default=str) for a in values]
    named = [f"{k}={json.dumps(v, ensure_ascii=False, default=str)}" for k, v in options.items()]
    text = ", ".join(positional + named)
    return text if len(text) <= SHOW_LIMIT else pretty_json(args)


@dataclass(frozen=True)
class Bar:
    """Where an event sits on its run's timeline, in SVG units."""

    x: float
    width: float
    pending: bool


def timeline_bar(event: dict[str, Any], start: datetime, end: datetime) -> Bar:
    """The bar of one event between the run's creation and its end (or now): from the event's
    creation to its completion, or to the end while it is still pending."""
    span = max((end - start).total_seconds(), 1e-3)
    began = max(0.0, (event["created_at"] - start).total_seconds())
    finished = event["completed_at"] or end
    x = min(TIMELINE_WIDTH - 2.0, began / span * TIMELINE_WIDTH)
    width = max(2.0, (finished - event["created_at"]).total_seconds() / span * TIMELINE_WIDTH)
    return Bar(round(x, 1), round(min(width, TIMELINE_WIDTH - x), 1), not event["done"])


# NonDeterminismError's message (context.py): "run 7 is not deterministic at event 3: the log
# recorded step 'a' with input [1] but the code now did step 'b' with input [1]; keep ...".
_NONDETERMINISM = re.compile(
    r"at event (?P<seq>\d+): the log recorded (?P<recorded>.*?) but the code now did "
    r"(?P<current>.*); keep the code's order",
    re.S,
)
_OPERATION = re.compile(r"^(?P<kind>\w+) (?P<name>'.*'|\".*\") with input (?P<input>.*)$", re.S)


def nondeterminism(error: dict[str, Any] | None) -> dict[str, Any] | None:
    """For a run that failed with NonDeterminismError: the event number and the operation the
    code did now (kind, name, input), read from the stored message; None for other errors."""
    if not error or not str(error.get("type", "")).endswith("NonDeterminismError"):
        return None
    match = _NONDETERMINISM.search(str(error.get("message", "")))
    if match is None:
        return None
    current = _OPERATION.match(match["current"])
    parts = (
        {"kind": current["kind"], "name": current["name"][1:-1], "input": current["input"]}
        if current
        else {"kind": "", "name": match["current"], "input": ""}
    )
    return {"seq": int(match["seq"]), "current": parts}


@dataclass(frozen=True)
class ChartBar:
    """One minute of the chart: its bars and its tooltip."""

    x: float
    completed_y: float
    completed_h: float
    failed_y: float
    failed_h: float
    label: str


@dataclass(frozen=True)
class Chart:
    """Completions and failures per minute as SVG geometry (stacked bars)."""

    width: int
    height: int
    top: int
    bar_width: float
    bars: list[ChartBar]
    ticks: list[tuple[float, str, str]]
    peak: int
    completed: int
    failed: int


def chart(minutes: list[dict[str, Any]], width: int = 1200, height: int = 200) -> Chart:
    """Lay out per-minute counts (oldest first) as stacked bars: completed below, failed above."""
    top, bottom = 14, 22
    plot = height - top - bottom
    peak = max([m["completed"] + m["failed"] for m in minutes] + [1])
    step = width / max(len(minutes), 1)
    bars, ticks = [], []
    for i, m in enumerate(minutes):
        done_h = m["completed"] / peak * plot
        fail_h = m["failed"] / peak * plot
        when = m["minute"].astimezone(UTC).strftime("%H:%M")
        label = f"{when} UTC: {m['completed']} completed, {m['failed']} failed"
        base = top + plot
        bars.append(
            ChartBar(
                round(i * step + 1, 1),
                round(base - done_h, 1),
                round(done_h, 1),
                round(base - done_h - fail_h, 1),
                round(fail_h, 1),
                label,
            )
        )
        if i % max(len(minutes) // 6, 1) == 0 or i == len(minutes) - 1:
            ticks.append((round(i * step + step / 2, 1), when, "middle"))
    if ticks:  # the first and last labels stay inside the picture
        ticks[0] = (0.0, ticks[0][1], "start")
        ticks[-1] = (float(width), ticks[-1][1], "end")
    return Chart(
        width,
        height,
        top,
        round(max(step - 2, 1), 1),
        bars,
        ticks,
        peak,
        sum(m["completed"] for m in minutes),
        sum(m["failed"] for m in minutes),
    )


def register(env: Any) -> None:
    """Add these helpers to a Jinja2 environment as filters and globals."""
    env.filters.update(
        time=fmt_time,
        duration=fmt_duration,
        pretty=pretty_json,
        arguments=call_arguments,
        call=call_preview,
        capped=fmt_count,
        due=fmt_due,
    )
    env.globals.update(
        STATUSES=STATUSES,
        FILTER_STATUSES=FILTER_STATUSES,
        ENDED=ENDED,
        between=between,
        preview=preview,
        timeline_bar=timeline_bar,
        TIMELINE_WIDTH=TIMELINE_WIDTH,
    )
