"""The scheduler loop every worker runs (docs/scheduling.md): it declares the schedules of tasks
with ``cron=`` when the worker starts, then, about once a second or sooner when a tick is nearer,
reads the earliest unpaused schedules of its tasks and fires the due ones.

Firing a tick inserts its run with the idempotency key ``schedule:<name>:<fire time, ISO 8601
UTC>`` and moves ``next_fire_at`` on, in one transaction whose first statement only matches while
``next_fire_at`` is still the tick that was read: however many workers race for a tick, one moves
the schedule on and inserts its run, and the unique key would refuse a second run for the same
tick anyway.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg

from . import cron as cronlib
from .cron import DEFAULT_CATCH_UP
from .definitions import TaskDefinition
from .errors import DurablyError
from .records import CallOptions, DueSchedule, NewRun, ScheduleSpec
from .serde import dumps
from .storage import Store, first_line

log = logging.getLogger("durably.schedules")

CATCH_UP_BATCH = 100  # ticks of one schedule enqueued per transaction when catching up "all"
MISSED_AFTER = 60.0  # seconds overdue after which a running worker's ticks count as missed
MAX_SLEEP = 1.0  # seconds the scheduler loop sleeps at most: new schedules are seen this fast
DUE_BATCH = 50  # schedules read per pass
_DB_ERRORS = (psycopg.Error, DurablyError, OSError)


def fire_key(name: str, fire_time: datetime) -> str:
    """The idempotency key of a schedule's run for one tick."""
    return f"schedule:{name}:{cronlib.iso_utc(fire_time)}"


def fire_time(idempotency_key: str | None) -> datetime | None:
    """The tick a run was enqueued for, read from its idempotency key; None for a run that no
    schedule enqueued. ``fire_time(app.get_run(durably.current_run_id()).idempotency_key)``
    inside a task tells it which period it covers (useful with ``catch_up="all"``)."""
    # schedule:<name>:<fire time>, the fire time always 20 characters: 2026-05-01T12:00:00Z.
    if not idempotency_key or not idempotency_key.startswith("schedule:"):
        return None
    try:
        stamp = datetime.strptime(idempotency_key[-20:], "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return None
    return stamp.replace(tzinfo=UTC)


# -- which ticks to fire ----------------------------------------------------------------------


def due_ticks(
    cron: cronlib.Cron,
    tz: ZoneInfo,
    first: datetime,
    now: datetime,
    catch_up: str,
    missed: bool,
) -> tuple[list[datetime], datetime]:
    """For a schedule whose next tick ``first`` is due (``first <= now``): the fire times to
    enqueue now, and the schedule's next tick after them.

    Ticks that are only late (a worker was running when they came due) all fire, like ticks
    caught up with ``all``: every due tick, oldest first, at most ``CATCH_UP_BATCH`` at a time
    (the next pass continues at once). Ticks ``missed`` (no worker ran when the oldest came due,
    or it is ``MISSED_AFTER`` seconds overdue) follow the policy: ``all`` as above, ``latest``
    the most recent due tick only, ``none`` nothing (the schedule resumes from its next tick).
    """
    # In UTC throughout: Python compares two datetimes of one zone by their wall time.
    first, now = first.astimezone(UTC), now.astimezone(UTC)
    if catch_up == "all" or not missed:
        fires, nxt = [first], _next(cron, tz, first)
        while nxt <= now and len(fires) < CATCH_UP_BATCH:
            fires.append(nxt)
            nxt = _next(cron, tz, nxt)
        return fires, nxt
    latest = _latest_due(cron, tz, first, now)
    return ([latest] if catch_up == "latest" else []), _next(cron, tz, latest)


def _latest_due(cron: cronlib.Cron, tz: ZoneInfo, first: datetime, now: datetime) -> datetime:
    """The last tick at or before ``now``, ``first`` being one. Looks back from ``now`` over
    doubling spans rather than stepping from ``first``: after a week of downtime, a schedule
    firing every second is not walked through 600,000 ticks."""
    latest, span = first, timedelta(seconds=1)
    while now - span > first:
        found = _next(cron, tz, now - span)
        if found <= now:
            latest = found
            break
        span *= 2
    while (nxt := _next(cron, tz, latest)) <= now:
        latest = nxt
    return latest


def _next(cron: cronlib.Cron, tz: ZoneInfo, after: datetime) -> datetime:
    return cron.next_after(after, tz).astimezone(UTC)


# -- the scheduler loop of every worker -------------------------------------------------------


class Scheduler:
    """Declares the App's cron tasks when its worker starts, then fires due schedules."""

    def __init__(self, store: Store, registry: Mapping[str, TaskDefinition]) -> None:
        self.store = store
        self.registry = registry
        self.tasks = sorted(self.registry)
        self._broken: set[tuple[str, str]] = set()  # (name, cron) reported as unusable

    async def run(self) -> None:
        """Until cancelled (the worker's shutdown)."""
        declared, failures = False, 0
        while True:
            try:
                if not declared:
                    await self.declare()
                    declared = True
                wait = await self.fire_due()
                failures = 0
            except _DB_ERRORS as exc:
                failures += 1
                wait = min(0.1 * 2**failures, 5.0)
                log.warning("scheduler: %s; retrying in %.1fs", first_line(exc), wait)
            except Exception:  # never let the loop die silently: the worker would stop firing
                failures += 1
                wait = min(0.1 * 2**failures, 5.0)
                log.exception("scheduler pass failed; retrying in %.1fs", wait)
            await asyncio.sleep(wait)

    async def declare(self) -> None:
        """Upsert the schedules of tasks with ``cron=``; drop those of tasks that lost it."""
        store = self.store
        plain = [t.name for t in self.registry.values() if t.cron is None]
        if plain:
            for name in await store.schedule_forget(plain):
                log.info("schedule %r removed: its task no longer declares cron=", name)
        crons = [t for t in self.registry.values() if t.cron is not None]
        if not crons:
            return
        now = await store.now()
        for task in crons:
            assert task.cron is not None
            timezone = task.timezone or "UTC"
            spec = ScheduleSpec(
                name=task.name,
                task=task.name,
                cron=task.cron,
                timezone=timezone,
                args=dumps({"args": [], "kwargs": {}}),
                catch_up=task.catch_up or DEFAULT_CATCH_UP,
                next_fire_at=cronlib.next_fire(task.cron, now, timezone),
            )
            if await store.schedule_declare(spec):
                log.info("schedule %r declared: %s (%s)", task.name, task.cron, timezone)

    async def fire_due(self) -> float:
        """Fire every due schedule read; returns seconds to sleep before the next pass."""
        rows = await self.store.schedules_due(self.tasks, DUE_BATCH, MISSED_AFTER)
        again = False
        for row in rows:
            if row.wait_s > 0:
                # Rows come by next_fire_at: the first one not due says how long to sleep.
                return 0.0 if again else min(MAX_SLEEP, row.wait_s + 0.002)
            moved_on = await self.fire(row)
            # Still due after firing (catching up "all" in batches), or maybe more rows due.
            again = again or moved_on is True or (moved_on is False and len(rows) == DUE_BATCH)
        return 0.0 if again else MAX_SLEEP

    async def fire(self, due: DueSchedule) -> bool | None:
        """Fire one due schedule: None when this worker did not move it on (another worker
        did, or it cannot fire), else whether it is still due (more ticks to catch up)."""
        name, task_name, cron, timezone = due.name, due.task, due.cron, due.timezone
        payload, catch_up, expected, now, missed = (
            due.args,
            due.catch_up,
            due.next_fire_at,
            due.now,
            due.missed,
        )
        try:
            parsed, tz = cronlib.parse(cron), cronlib.zone(timezone)
            fires, nxt = due_ticks(parsed, tz, expected, now, catch_up, missed)
        except ValueError as exc:
            if (name, cron) not in self._broken:
                self._broken.add((name, cron))
                log.error("schedule %r cannot fire: %s", name, exc)
            return None
        built = [(t, r) for t in fires if (r := self._run(name, task_name, payload, t)) is not None]
        ids = await self.store.schedule_fire(
            name, expected, nxt, fires[-1] if fires else None, [r for _, r in built]
        )
        if ids is None:
            return None  # another worker fired this tick first
        if missed and catch_up != "all":
            log.info(
                "schedule %r: ticks missed since %s %s (catch_up=%r)",
                name,
                cronlib.iso_utc(expected),
                "skipped but the latest" if fires else "skipped",
                catch_up,
            )
        if len(ids) == 1:
            log.info(
                "schedule %r fired tick %s: run %s", name, cronlib.iso_utc(built[0][0]), ids[0]
            )
        elif ids:
            log.info(
                "schedule %r fired %d ticks, %s to %s: runs %s to %s",
                name,
                len(ids),
                cronlib.iso_utc(built[0][0]),
                cronlib.iso_utc(built[-1][0]),
                ids[0],
                ids[-1],
            )
        return bool(nxt <= now)

    def _run(self, name: str, task_name: str, payload: Any, fire_time: datetime) -> NewRun | None:
        task = self.registry[task_name]
        try:
            args, kwargs = task.signature.decode_args(payload)
            opts = CallOptions(idempotency_key=fire_key(name, fire_time))
            return task.new_run(tuple(args), kwargs, opts)
        except (TypeError, ValueError, DurablyError) as exc:
            log.error(
                "schedule %r: tick %s skipped: its arguments do not fit task %r (%s)",
                name,
                cronlib.iso_utc(fire_time),
                task_name,
                first_line(exc),
            )
            return None
