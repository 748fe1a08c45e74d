"""Schedules' statements: the schedules table, and firing a tick with its runs."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from ..records import DueSchedule, NewRun, ScheduleRow, ScheduleSpec
from .runs import Runs


class Schedules(Runs):
    """Reading, saving and firing schedules."""

    async def now(self) -> datetime:
        """The database clock."""
        rows = await self.fetch("schedule_now")
        now: datetime = rows[0][0]
        return now

    async def schedule_list(self) -> list[ScheduleRow]:
        """Every schedule, by name."""
        return await self.fetch_as(ScheduleRow, "schedule_list")

    async def schedule_get(self, name: str) -> ScheduleRow | None:
        """The schedule ``name``, or None."""
        return _first(await self.fetch_as(ScheduleRow, "schedule_get", {"name": name}))

    async def schedule_save(self, spec: ScheduleSpec) -> ScheduleRow | None:
        """Create or update a schedule; None when a declared schedule has that name."""
        return _first(await self.fetch_as(ScheduleRow, "schedule_save", vars(spec)))

    async def schedule_declare(self, spec: ScheduleSpec) -> bool:
        """Upsert the schedule of a task's ``cron=``; True when it was new or changed."""
        return bool(await self.fetch("schedule_declare", vars(spec)))

    async def schedule_forget(self, tasks: list[str]) -> list[str]:
        """Drop the declared schedules of ``tasks`` (which no longer declare one); their names."""
        return [row[0] for row in await self.fetch("schedule_forget", {"tasks": tasks})]

    async def schedule_pause(self, name: str) -> ScheduleRow | None:
        """Pause ``name``; None when there is no such schedule."""
        return _first(await self.fetch_as(ScheduleRow, "schedule_pause", {"name": name}))

    async def schedule_resume(self, name: str, next_fire_at: datetime) -> ScheduleRow | None:
        """Resume a paused ``name`` from ``next_fire_at``; None when it is not paused (or gone)."""
        params = {"name": name, "next_fire_at": next_fire_at}
        return _first(await self.fetch_as(ScheduleRow, "schedule_resume", params))

    async def schedule_delete(self, name: str) -> bool:
        """Delete ``name``; False when there was no such schedule."""
        return bool(await self.fetch("schedule_delete", {"name": name}))

    async def schedules_due(
        self, tasks: list[str], limit: int, missed_after: float
    ) -> list[DueSchedule]:
        """The earliest unpaused schedules of ``tasks``, by next tick."""
        params = {"tasks": tasks, "limit": limit, "missed_after": missed_after}
        return await self.fetch_as(DueSchedule, "schedule_due", params)

    async def schedule_fire(
        self,
        name: str,
        expected: datetime,
        next_fire_at: datetime,
        fired_at: datetime | None,
        runs: Sequence[NewRun],
    ) -> list[int] | None:
        """Fire schedule ``name``: move its next tick from ``expected`` to ``next_fire_at`` and
        insert ``runs``, in one transaction. None, writing nothing, when its next tick is no
        longer ``expected`` (another worker fired it first, or it was paused or changed)."""
        params = {
            "name": name,
            "expected": expected,
            "next_fire_at": next_fire_at,
            "fired_at": fired_at,
        }
        async with self.pool.connection() as conn, conn.transaction():
            cur = await self.execute(conn, "schedule_advance", params)
            if await cur.fetchone() is None:
                return None
            ids = await self.enqueue(runs, conn) if runs else []
            if ids:
                await self.execute(conn, "schedule_fired", {"name": name, "run_id": ids[-1]})
            return ids


def _first(rows: list[ScheduleRow]) -> ScheduleRow | None:
    return rows[0] if rows else None
