"""Schedules: tasks enqueued on a cron (docs/scheduling.md), from the client's side.

A schedule is a row of the ``schedules`` table: a task, its input, a cron expression in a time
zone, a catch-up policy and ``next_fire_at``, the next tick to fire (database clock). This module
creates, lists, pauses, resumes and deletes them (the App's schedule methods); every worker's
:mod:`durably.scheduler` fires them.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from . import cron as cronlib
from .cron import CATCH_UP as CATCH_UP
from .cron import DEFAULT_CATCH_UP, check_catch_up
from .definitions import TaskDefinition
from .errors import UnknownSchedule
from .records import CallOptions, ScheduleRow, ScheduleSpec
from .scheduler import fire_time as fire_time
from .serde import check_text, dumps
from .storage import Store


class ScheduleOwner(Protocol):
    """What schedules need of the App that owns them (:class:`durably.App`)."""

    schema: str

    async def store(self) -> Store: ...
    def get_task(self, name: str) -> TaskDefinition: ...
    def pause_schedule(self, name: str) -> Schedule: ...
    async def pause_schedule_async(self, name: str) -> Schedule: ...
    def resume_schedule(self, name: str) -> Schedule: ...
    async def resume_schedule_async(self, name: str) -> Schedule: ...
    def delete_schedule(self, name: str) -> bool: ...
    async def delete_schedule_async(self, name: str) -> bool: ...


log = logging.getLogger("durably.schedules")


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
    app: ScheduleOwner = field(repr=False, compare=False)

    @classmethod
    def from_row(cls, app: ScheduleOwner, row: ScheduleRow) -> Schedule:
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


def default_name(task: TaskDefinition, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """The task's name, followed by a digest of the arguments when there are any: calling
    ``app.schedule`` again with the same task and arguments updates the same schedule."""
    if not args and not kwargs:
        return task.name
    digest = hashlib.sha256(dumps({"args": args, "kwargs": kwargs}, sort_keys=True).encode())
    return f"{task.name}:{digest.hexdigest()[:10]}"


# -- client operations (App's schedule methods) ---------------------------------------------


async def save(
    app: ScheduleOwner,
    task: TaskDefinition | str,
    cron: str,
    args: tuple[Any, ...] | list[Any] = (),
    kwargs: dict[str, Any] | None = None,
    *,
    name: str | None = None,
    timezone: str = "UTC",
    catch_up: str = DEFAULT_CATCH_UP,
) -> Schedule:
    """Create or update the schedule ``name`` (see :meth:`durably.App.schedule`)."""
    task = task if isinstance(task, TaskDefinition) else app.get_task(task)
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


async def list_all(app: ScheduleOwner) -> list[Schedule]:
    """Every schedule, by name."""
    rows = await (await app.store()).schedule_list()
    return [Schedule.from_row(app, row) for row in rows]


async def get(app: ScheduleOwner, name: str) -> Schedule | None:
    """The schedule ``name``, or None."""
    row = await (await app.store()).schedule_get(name)
    return None if row is None else Schedule.from_row(app, row)


def _unknown(app: ScheduleOwner, name: str) -> UnknownSchedule:
    return UnknownSchedule(
        f"no schedule named {name!r} in schema {app.schema!r}: `durably schedules list` shows them"
    )


async def pause(app: ScheduleOwner, name: str) -> Schedule:
    """Stop firing ``name`` until it is resumed."""
    row = await (await app.store()).schedule_pause(name)
    if row is None:
        raise _unknown(app, name)
    return Schedule.from_row(app, row)


async def resume(app: ScheduleOwner, name: str) -> Schedule:
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


async def _must_get(app: ScheduleOwner, name: str) -> Schedule:
    found = await get(app, name)
    if found is None:
        raise _unknown(app, name)
    return found


async def delete(app: ScheduleOwner, name: str) -> bool:
    """Delete ``name``; False when there was no such schedule."""
    return await (await app.store()).schedule_delete(name)
