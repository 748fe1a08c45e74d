"""The operator's console: read-only views of an App's schema for the CLI and the dashboard.

Rows are dicts keyed by column name, ready for templates, tables and JSON; every view is paged
(by keyset) and bounded in time (see :mod:`durably.storage.views`). Actions (cancel, retry,
replay, fork) are the App's own methods. Views read from the App's read replica when it has
one (``App(read_url=...)``), so an operator's queries never load the primary.
"""

from __future__ import annotations

from typing import Any

from .app import App


class Console:
    """The operator's views of ``app``'s runs, events, workers and queues (async, with sync
    twins)."""

    def __init__(self, app: App) -> None:
        self.app = app

    @property
    def schema(self) -> str:
        """The App's schema."""
        return self.app.schema

    async def runs_page_async(self, **query: Any) -> list[dict[str, Any]]:
        """A page of runs, newest first: filters ``status`` (or ``statuses``, a list; either may
        be ``"DELAYED"``, a QUEUED run not due yet), ``task``, ``queue``, ``created_after``,
        ``created_before`` (datetimes), ``within`` and ``older_than`` (seconds), paged with
        ``before_id`` / ``after_id`` and ``limit`` (see
        :meth:`durably.storage.views.Views.runs_page`). Each row has ``run_at`` and
        ``due_in_s``: seconds until a delayed run is due (None for the others)."""
        return await (await self.app.read_store()).runs_page(**query)

    def runs_page(self, **query: Any) -> list[dict[str, Any]]:
        """A page of runs (see :meth:`runs_page_async`)."""
        return self.app.call(self.runs_page_async(**query))

    async def runs_count_async(self, **filters: Any) -> dict[str, Any]:
        """How many runs match the filters of :meth:`runs_page_async` (``runs``), and the ids of
        the oldest and newest of them (``min_id``, ``max_id``; None when none match). It counts
        every match: on a huge table, narrow the filters."""
        return await (await self.app.read_store()).runs_count(**filters)

    def runs_count(self, **filters: Any) -> dict[str, Any]:
        """Count the runs matching filters (see :meth:`runs_count_async`)."""
        return self.app.call(self.runs_count_async(**filters))

    async def run_detail_async(self, run_id: int) -> dict[str, Any] | None:
        """One run in full, with the number of its events, children and archived events, its
        flow-control keys, and ``due_in_s`` (seconds until it is due, for a delayed run)."""
        return await (await self.app.read_store()).run_detail(run_id)

    def run_detail(self, run_id: int) -> dict[str, Any] | None:
        """One run in full (see :meth:`run_detail_async`)."""
        return self.app.call(self.run_detail_async(run_id))

    async def events_page_async(
        self, run_id: int, from_seq: int = 0, limit: int = 200
    ) -> list[dict[str, Any]]:
        """Up to ``limit`` entries of a run's event log from ``from_seq``, payloads cut short."""
        return await (await self.app.read_store()).events_page(run_id, from_seq, limit)

    def events_page(self, run_id: int, from_seq: int = 0, limit: int = 200) -> list[dict[str, Any]]:
        """A page of a run's event log (see :meth:`events_page_async`)."""
        return self.app.call(self.events_page_async(run_id, from_seq, limit))

    async def event_detail_async(self, run_id: int, seq: int) -> dict[str, Any] | None:
        """One entry of a run's event log in full (input, result, error)."""
        return await (await self.app.read_store()).event_detail(run_id, seq)

    def event_detail(self, run_id: int, seq: int) -> dict[str, Any] | None:
        """One entry of a run's event log (see :meth:`event_detail_async`)."""
        return self.app.call(self.event_detail_async(run_id, seq))

    async def task_names_async(self, limit: int = 500) -> list[str]:
        """The distinct task names of the stored runs (registered on this App or not)."""
        return await (await self.app.read_store()).task_names(limit)

    async def children_page_async(
        self, run_id: int, after_id: int = 0, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Up to ``limit`` children of a run, oldest first, after the child ``after_id``."""
        return await (await self.app.read_store()).children_page(run_id, after_id, limit)

    def children_page(
        self, run_id: int, after_id: int = 0, limit: int = 100
    ) -> list[dict[str, Any]]:
        """A page of a run's children (see :meth:`children_page_async`)."""
        return self.app.call(self.children_page_async(run_id, after_id, limit))

    async def workers_overview_async(self, limit: int = 100) -> list[dict[str, Any]]:
        """Workers, live ones first: slots, runs held, heartbeat age (database clock)."""
        return await (await self.app.read_store()).workers_overview(limit)

    def workers_overview(self, limit: int = 100) -> list[dict[str, Any]]:
        """Workers (see :meth:`workers_overview_async`)."""
        return self.app.call(self.workers_overview_async(limit))

    async def queues_overview_async(
        self, window: float = 60.0, cap: int = 10_000
    ) -> list[dict[str, Any]]:
        """Per queue: depth by status (counts stop at ``cap``), oldest queued age, and runs
        completed and failed in the last ``window`` seconds."""
        return await (await self.app.read_store()).queues_overview(window, cap)

    def queues_overview(self, window: float = 60.0, cap: int = 10_000) -> list[dict[str, Any]]:
        """Queues (see :meth:`queues_overview_async`)."""
        return self.app.call(self.queues_overview_async(window, cap))

    async def throughput_async(
        self, minutes: int = 60, queue: str | None = None
    ) -> list[dict[str, Any]]:
        """Runs completed and failed per minute over the last ``minutes`` minutes."""
        return await (await self.app.read_store()).throughput(minutes, queue)

    def throughput(self, minutes: int = 60, queue: str | None = None) -> list[dict[str, Any]]:
        """Completions and failures per minute (see :meth:`throughput_async`)."""
        return self.app.call(self.throughput_async(minutes, queue))

    # -- schedules (docs/scheduling.md) ----------------------------------------------------
