"""Schedules: tasks enqueued on a cron (docs/scheduling.md).

A schedule is a row of the ``schedules`` table: a task, its input, a cron expression in a time
zone, a catch-up policy and ``next_fire_at``, the next tick to fire (database clock). Every worker
runs a scheduler loop: about once a second, or sooner when a tick is nearer, it reads the earliest
unpaused schedules of its tasks and fires the due ones. Firing a tick inserts its run with the
idempotency key ``schedule:<name>:<fire time, ISO 8601 UTC>`` and moves ``next_fire_at`` on, in one
transaction whose first statement only matches while ``next_fire_at`` is still the tick that was
read: however many workers race for a tick, one moves the schedule on and inserts its run, and
the unique key would refuse a second run for the same tick anyway.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import psycopg

from . import cron as cronlib
from .errors import DurablyError, UnknownSchedule
from .records import DueSchedule, NewRun, ScheduleRow, ScheduleSpec
from .serde import check_text, dumps
from .storage import first_line
from .tasks import CallOptions, Task

if TYPE_CHECKING:
    from .app import App
    from .worker import Worker

log = logging.getLogger("durably.schedules")

CATCH_UP = ("all", "latest", "none")
DEFAULT_CATCH_UP = "latest"
CATCH_UP_BATCH = 100  # ticks of one schedule enqueued per transaction when catching up "all"
MISSED_AFTER = 60.0  # seconds overdue after which a running worker's ticks count as missed
MAX_SLEEP = 1.0  # seconds the scheduler loop sleeps at most: new schedules are seen this fast
DUE_BATCH = 50  # schedules read per pass
_DB_ERRORS = (psycopg.Error, DurablyError, OSError)


@dataclass(frozen=True)
class Schedule:
    """A schedule as stored (see :meth:`durably.App.schedule`), and a handle to act on it.

    ``next_fire_at`` is the next tick to fire (None while paused); ``last_fired_at`` the fire
    time of the last tick enqueued and ``last_run_id`` its run. ``declared`` schedules come from
    ``@app.task(cron=...)`` and follow the code.
    """

    name: str
    task: str
    cron: str
    timezone: str
    args: list[Any]
    kwargs: dict[str, Any]
    catch_up: str
    declared: bool
    paused: bool
    next_fire_at: datetime | None
    last_fired_at: datetime | None
    last_run_id: int | None
    created_at: datetime
    updated_at: datetime
    app: App = field(repr=False, compare=False)

    @classmethod
    def from_row(cls, app: App, row: ScheduleRow) -> Schedule:
        """Build from a schedule as stored."""
        return cls(
            name=row.name,
            task=row.task,
            cron=row.cron,
            timezone=row.timezone,
            args=row.args.get("args", []),
            kwargs=row.args.get("kwargs", {}),
            catch_up=row.catch_up,
            declared=row.declared,
            paused=row.paused,
            next_fire_at=row.next_fire_at,
            last_fired_at=row.last_fired_at,
            last_run_id=row.last_run_id,
            created_at=row.created_at,
            updated_at=row.updated_at,
            app=app,
        )

    def as_dict(self) -> dict[str, Any]:
        """The stored fields, for JSON."""
        return {k: v for k, v in vars(self).items() if k != "app"}

    def pause(self) -> Schedule:
        """Pause it (see :meth:`durably.App.pause_schedule`)."""
        return self.app.pause_schedule(self.name)

    async def pause_async(self) -> Schedule:
        """Async twin of :meth:`pause`."""
        return await self.app.pause_schedule_async(self.name)

    def resume(self) -> Schedule:
        """Resume it (see :meth:`durably.App.resume_schedule`)."""
        return self.app.resume_schedule(self.name)

    async def resume_async(self) -> Schedule:
        """Async twin of :meth:`resume`."""
        return await self.app.resume_schedule_async(self.name)

    def delete(self) -> bool:
        """Delete it (see :meth:`durably.App.delete_schedule`)."""
        return self.app.delete_schedule(self.name)

    async def delete_async(self) -> bool:
        """Async twin of :meth:`delete`."""
        return await self.app.delete_schedule_async(self.name)


# -- checks ---------------------------------------------------------------------------------


def check_catch_up(catch_up: str) -> str:
    """Refuse an unknown catch-up policy in one line."""
    if catch_up not in CATCH_UP:
        raise ValueError(
            f"catch_up={catch_up!r} is not valid: pass 'latest' (one run for the ticks missed, "
            "the default), 'all' (one run per tick missed) or 'none'"
        )
    return catch_up


def check_declared(task: Task[Any, Any]) -> None:
    """Check ``cron=`` (and ``timezone=``, ``catch_up=``) of ``@app.task`` at registration."""
    if task.cron is None:
        raise ValueError(
            f"timezone= and catch_up= of task {task.name!r} only apply with cron=: add "
            "cron='...' or remove them"
        )
    cronlib.parse(task.cron)
    cronlib.zone(task.timezone or "UTC")
    check_catch_up(task.catch_up or DEFAULT_CATCH_UP)
    try:
        task.signature.check_call((), {})
    except TypeError:
        required = [
            p.name
            for i, p in enumerate(task.signature.signature.parameters.values())
            if p.default is p.empty
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
            and not (i == 0 and task.durable)
        ]
        raise ValueError(
            f"task {task.name!r} cannot take cron=: it has arguments without defaults "
            f"({', '.join(required)}); give them defaults, or use app.schedule(task, cron, "
            "args=...)"
        ) from None


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


def default_name(task: Task[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """The task's name, followed by a digest of the arguments when there are any: calling
    ``app.schedule`` again with the same task and arguments updates the same schedule."""
    if not args and not kwargs:
        return task.name
    digest = hashlib.sha256(dumps({"args": args, "kwargs": kwargs}, sort_keys=True).encode())
    return f"{task.name}:{digest.hexdigest()[:10]}"


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


# -- client operations (App's schedule methods) ---------------------------------------------


async def save(
    app: App,
    task: Task[Any, Any] | str,
    cron: str,
    args: tuple[Any, ...] | list[Any] = (),
    kwargs: dict[str, Any] | None = None,
    *,
    name: str | None = None,
    timezone: str = "UTC",
    catch_up: str = DEFAULT_CATCH_UP,
) -> Schedule:
    """Create or update the schedule ``name`` (see :meth:`durably.App.schedule`)."""
    task = task if isinstance(task, Task) else app.get_task(task)
    if not isinstance(args, tuple | list):
        raise TypeError(
            f"args={args!r} is not valid: pass a tuple of positional arguments, e.g. ('eu',)"
        )
    parsed = cronlib.parse(cron)
    tz = cronlib.zone(timezone)
    check_catch_up(catch_up)
    call_args, call_kwargs = tuple(args), dict(kwargs or {})
    encoded = task.new_run(call_args, call_kwargs, CallOptions()).args  # checked like enqueue
    name = check_text(name or default_name(task, call_args, call_kwargs), "schedule name")
    store = await app.store()
    next_fire_at = parsed.next_after(await store.now(), tz)
    spec = ScheduleSpec(name, task.name, cron, timezone, encoded, catch_up, next_fire_at)
    row = await store.schedule_save(spec)
    if row is None:
        raise ValueError(
            f"schedule {name!r} is declared by @app.task(cron=...) on task {task.name!r}: change "
            "it in the code, or pass another name="
        )
    return Schedule.from_row(app, row)


async def list_all(app: App) -> list[Schedule]:
    """Every schedule, by name."""
    rows = await (await app.store()).schedule_list()
    return [Schedule.from_row(app, row) for row in rows]


async def get(app: App, name: str) -> Schedule | None:
    """The schedule ``name``, or None."""
    row = await (await app.store()).schedule_get(name)
    return None if row is None else Schedule.from_row(app, row)


def _unknown(app: App, name: str) -> UnknownSchedule:
    return UnknownSchedule(
        f"no schedule named {name!r} in schema {app.schema!r}: `durably schedules list` shows them"
    )


async def pause(app: App, name: str) -> Schedule:
    """Stop firing ``name`` until it is resumed."""
    row = await (await app.store()).schedule_pause(name)
    if row is None:
        raise _unknown(app, name)
    return Schedule.from_row(app, row)


async def resume(app: App, name: str) -> Schedule:
    """Fire ``name`` again from its next tick after now (the paused time is not caught up)."""
    store = await app.store()
    row = await store.schedule_get(name)
    if row is None:
        raise _unknown(app, name)
    if not row.paused:
        return Schedule.from_row(app, row)
    tz = cronlib.zone(row.timezone)
    next_fire_at = cronlib.parse(row.cron).next_after(await store.now(), tz)
    resumed = await store.schedule_resume(name, next_fire_at)
    return Schedule.from_row(app, resumed) if resumed else await _must_get(app, name)


async def _must_get(app: App, name: str) -> Schedule:
    found = await get(app, name)
    if found is None:
        raise _unknown(app, name)
    return found


async def delete(app: App, name: str) -> bool:
    """Delete ``name``; False when there was no such schedule."""
    return await (await app.store()).schedule_delete(name)


# -- the scheduler loop of every worker -------------------------------------------------------


class Scheduler:
    """Declares the App's cron tasks when its worker starts, then fires due schedules."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.registry = worker.app.registry
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
        store = self.worker.store
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
        rows = await self.worker.store.schedules_due(self.tasks, DUE_BATCH, MISSED_AFTER)
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
        ids = await self.worker.store.schedule_fire(
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


async def fire_schedules(worker: Worker) -> None:
    """The scheduler loop of ``worker`` (one of its background tasks)."""
    await Scheduler(worker).run()
