"""The filters of ``runs list`` and of the bulk ``runs retry`` / ``runs cancel``: statuses, task,
queue and a time range given as ISO times or as durations back from now."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import click

from ..records import DELAYED, Status
from .common import TEXT

STATUSES = tuple(Status)
# What --status takes: the statuses, and DELAYED, which is not one: a QUEUED run not due yet
# (delay=, run_at=, a retry's backoff), as Console.runs_page reads it.
FILTER_STATUSES = (Status.QUEUED, DELAYED, *STATUSES[1:])
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"^(?:\d+(?:\.\d+)?[smhdw])+$")
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_MAX_AGO = 1000 * 366 * 86400  # a thousand years: far past any run, and within the clock's range

F = TypeVar("F", bound=Callable[..., Any])


def parse_statuses(
    ctx: click.Context | None, param: click.Parameter | None, values: tuple[str, ...]
) -> tuple[str, ...]:
    """``--status`` values, repeated or comma-separated, any case, checked against
    FILTER_STATUSES."""
    found: list[str] = []
    for value in values:
        for part in value.split(","):
            status = part.strip().upper()
            if status not in FILTER_STATUSES:
                raise click.BadParameter(
                    f"{part.strip()!r} is not a status: use one or more of "
                    f"{', '.join(FILTER_STATUSES)}",
                    ctx,
                    param,
                )
            if status not in found:
                found.append(status)
    return tuple(found)


@dataclass(frozen=True)
class Moment:
    """A bound of a time range: an absolute time, or an age back from now (database clock)."""

    at: datetime | None = None
    ago: float | None = None
    text: str = ""  # as the user wrote it

    def __str__(self) -> str:
        return f"{self.text} ago" if self.ago is not None else self.text


def parse_moment(
    ctx: click.Context | None, param: click.Parameter | None, value: str | None
) -> Moment | None:
    """An ISO time (UTC unless it says otherwise) or a duration back from now: 90s, 15m, 2h,
    1d, 1w, or combined like 1h30m."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if _DURATION.match(text):
        ago = sum(float(n) * _UNITS[u] for n, u in _PART.findall(text))
        if ago > _MAX_AGO:
            raise click.BadParameter(
                f"{text!r} is too far back: give at most 1000 years (366000d), or an ISO time",
                ctx,
                param,
            )
        return Moment(ago=ago, text=text)
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is neither a duration (15m, 2h, 1d, 1h30m) nor an ISO time "
            "(2026-01-31T14:00, UTC unless it has an offset)",
            ctx,
            param,
        ) from None
    return Moment(at=at if at.tzinfo else at.replace(tzinfo=UTC), text=text)


@dataclass(frozen=True)
class RunFilter:
    """Which runs a command is about; empty fields match any run."""

    statuses: tuple[str, ...] = ()
    task: str | None = None
    queue: str | None = None
    since: Moment | None = None
    until: Moment | None = None

    @property
    def empty(self) -> bool:
        """True when nothing narrows the runs: every run matches."""
        return not (self.statuses or self.task or self.queue or self.since or self.until)

    def query(self, statuses: tuple[str, ...] | None = None) -> dict[str, Any]:
        """Keyword arguments for ``Console.runs_page`` and ``Console.runs_count``."""
        chosen = self.statuses if statuses is None else statuses
        since, until = self.since or Moment(), self.until or Moment()
        return {
            "statuses": list(chosen) or None,
            "task": self.task,
            "queue": self.queue,
            "created_after": since.at,
            "within": since.ago,
            "created_before": until.at,
            "older_than": until.ago,
        }

    def describe(self) -> str:
        """The filter in words, for a confirmation question."""
        parts = []
        if self.statuses:
            parts.append("status " + " or ".join(self.statuses))
        if self.task:
            parts.append(f"task {self.task}")
        if self.queue:
            parts.append(f"queue {self.queue}")
        if self.since:
            parts.append(f"created since {self.since}")
        if self.until:
            parts.append(f"created before {self.until}")
        return ", ".join(parts) or "no filter"


def filter_options(fn: F) -> F:
    """``--status``, ``--task``, ``--queue``, ``--since`` and ``--until``."""
    options = [
        click.option(
            "--until",
            callback=parse_moment,
            help="Runs created before this: an ISO time, or a duration ago (e.g. 1h).",
        ),
        click.option(
            "--since",
            callback=parse_moment,
            help="Runs created since this: an ISO time, or a duration ago (15m, 2h, 1d).",
        ),
        click.option("--queue", type=TEXT, default=None, help="Runs of this queue."),
        click.option(
            "--task", type=TEXT, default=None, help="Runs of this task (its registered name)."
        ),
        click.option(
            "--status",
            "statuses",
            multiple=True,
            callback=parse_statuses,
            help="QUEUED, DELAYED (queued, not due yet), RUNNING, WAITING, COMPLETED, FAILED "
            "or CANCELLED; repeat it or give several separated by commas.",
        ),
    ]
    for option in options:
        fn = option(fn)
    return fn


def run_filter(
    statuses: tuple[str, ...],
    task: str | None,
    queue: str | None,
    since: Moment | None,
    until: Moment | None,
) -> RunFilter:
    """The RunFilter of the options added by :func:`filter_options`."""
    return RunFilter(statuses, task or None, queue or None, since, until)
