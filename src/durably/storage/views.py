"""The operator's views (dashboard and CLI): read-only, paged by keyset, bounded in time."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg
import psycopg.errors
from psycopg.rows import dict_row

from ..errors import DurablyError
from ..records import DELAYED, Status
from .base import Database


class Views(Database):
    """Pages of runs, events, children, workers and queues, as dicts for display."""

    # Read-only and paged by keyset. Rows are dicts keyed by the column names of the SQL in
    # operator_views.sql, ready for templates, tables and JSON. They run unprepared,
    # so each is planned with its actual values: NULL filters fold away, and the planner uses
    # the index that matches the filters given.

    ops_timeout = 10  # seconds an operator view may run before the database cancels it

    async def _ops_fetch(self, name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        # One short transaction: the limits of ops_limits hold for this statement only.
        sql = (
            self._sql[name]
            .replace("{columns}", self._sql["ops_runs_columns"])
            .replace("{filter}", self._sql["ops_runs_filter"])
        )
        async with self.pool.connection() as conn, conn.transaction():
            cur = conn.cursor(row_factory=dict_row)
            try:
                await cur.execute(self._sql["ops_limits"], {"timeout": f"{self.ops_timeout}s"})
                await cur.execute(sql, params, prepare=False)
            except psycopg.errors.UndefinedTable:
                raise self._not_migrated() from None
            except psycopg.errors.QueryCanceled:
                raise DurablyError(
                    f"{name} took longer than {self.ops_timeout} s and was cancelled: narrow the "
                    "filters (a status, a task or a time window)"
                ) from None
            rows: list[dict[str, Any]] = await cur.fetchall()
            return rows

    async def runs_page(
        self,
        *,
        limit: int = 50,
        before_id: int | None = None,
        after_id: int | None = None,
        preview: int = 200,
        **filters: Any,
    ) -> list[dict[str, Any]]:
        """Up to ``limit`` runs matching the filters (see :func:`runs_filter`), newest first.
        ``before_id`` pages to older runs, ``after_id`` to the newer ones; payloads are cut to
        ``preview`` characters."""
        params = {
            **runs_filter(**filters),
            "limit": limit,
            "before_id": before_id,
            "after_id": after_id,
            "preview": preview,
        }
        if after_id is None:
            return await self._ops_fetch("ops_runs_older", params)
        return list(reversed(await self._ops_fetch("ops_runs_newer", params)))

    async def runs_count(self, **filters: Any) -> dict[str, Any]:
        """How many runs match the filters (see :func:`runs_filter`): ``runs``, and the ids of
        the oldest and newest of them, ``min_id`` and ``max_id`` (None when none match)."""
        rows = await self._ops_fetch("ops_runs_count", runs_filter(**filters))
        return rows[0]

    async def run_detail(self, run_id: int) -> dict[str, Any] | None:
        """One run in full, with counts of its events, children and archived events."""
        rows = await self._ops_fetch("ops_run", {"id": run_id})
        return rows[0] if rows else None

    async def events_page(
        self, run_id: int, from_seq: int = 0, limit: int = 200, preview: int = 200
    ) -> list[dict[str, Any]]:
        """Up to ``limit`` entries of a run's event log from sequence number ``from_seq``."""
        params = {"run_id": run_id, "from_seq": from_seq, "limit": limit, "preview": preview}
        return await self._ops_fetch("ops_events", params)

    async def event_detail(self, run_id: int, seq: int) -> dict[str, Any] | None:
        """One entry of a run's event log in full."""
        rows = await self._ops_fetch("ops_event", {"run_id": run_id, "seq": seq})
        return rows[0] if rows else None

    async def children_page(
        self, run_id: int, after_id: int = 0, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Up to ``limit`` children of a run, oldest first, after the child ``after_id``."""
        params = {"id": run_id, "after_id": after_id, "limit": limit}
        return await self._ops_fetch("ops_children", params)

    async def task_names(self, limit: int = 500) -> list[str]:
        """The distinct task names of the stored runs."""
        return [r["task"] for r in await self._ops_fetch("ops_task_names", {"limit": limit})]

    async def workers_overview(self, limit: int = 100) -> list[dict[str, Any]]:
        """Workers, live ones first: heartbeat age and runs held (task and durable)."""
        return await self._ops_fetch("ops_workers", {"limit": limit})

    async def queues_overview(
        self, window: float = 60.0, cap: int = 10_000, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Per queue: unfinished runs by status (each count stops at ``cap``), the oldest
        queued run's age, and runs completed and failed in the last ``window`` seconds."""
        params = {"window": window, "cap": cap, "limit": limit}
        return await self._ops_fetch("ops_queues", params)

    async def throughput(self, minutes: int = 60, queue: str | None = None) -> list[dict[str, Any]]:
        """Runs completed and failed in each of the last ``minutes`` minutes, oldest first."""
        return await self._ops_fetch("ops_throughput", {"minutes": minutes, "queue": queue})


def runs_filter(
    *,
    status: str | None = None,
    statuses: Sequence[str] | None = None,
    task: str | None = None,
    queue: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    within: float | None = None,
    older_than: float | None = None,
) -> dict[str, Any]:
    """The parameters of ``ops_runs_filter``; None means any. ``status`` is one status,
    ``statuses`` any of several; either may be ``DELAYED``: a QUEUED run that is not due yet
    (its ``run_at`` is after now, database clock). ``within`` keeps runs created in the last so
    many seconds and ``older_than`` runs created longer ago than that (both on the database
    clock)."""
    delayed = None  # see ops_runs_filter: None, "all" or "queued"
    if status == DELAYED:
        status, delayed = Status.QUEUED, "all"
    chosen = None if statuses is None else list(statuses)
    if chosen is not None and DELAYED in chosen:
        chosen.remove(DELAYED)
        # QUEUED asked for as well takes every queued run, delayed or not.
        if Status.QUEUED not in chosen:
            delayed = "queued" if chosen else "all"
            chosen.append(Status.QUEUED)
    return {
        "status": status,
        "statuses": chosen,
        "delayed": delayed,
        "task": task,
        "queue": queue,
        "created_after": created_after,
        "created_before": created_before,
        "within": within,
        "older_than": older_than,
    }
