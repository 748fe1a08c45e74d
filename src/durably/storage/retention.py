"""Purging finished workflows by hand (``app.purge``); the sweeper's retention parts live in
:mod:`durably.storage.sweep` and share the ``purge_trees`` statement."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .base import Database

# Workflows (root runs) per purge transaction: each removes its trees' runs, logs and archives.
PURGE_BATCH = 500


@dataclass(frozen=True)
class PurgeProgress:
    """Where a purge stands after each batch: workflows looked at, runs removed so far."""

    workflows: int
    runs_removed: int


class Retention(Database):
    """Removing finished workflows with their event logs, in batches."""

    async def purge_count(
        self, older_than: float, statuses: Sequence[str], tasks: Sequence[str] | None
    ) -> int:
        """Workflows (root runs) that ended more than ``older_than`` seconds ago (database
        clock) with one of ``statuses`` (and of ``tasks``, when given): what :meth:`purge`
        would look at."""
        params = {"older_than": older_than, "statuses": list(statuses), "tasks": _list(tasks)}
        return int((await self.fetch("purge_count", params))[0][0])

    async def purge(
        self,
        older_than: float,
        statuses: Sequence[str],
        tasks: Sequence[str] | None,
        progress: Callable[[PurgeProgress], None] | None = None,
        batch: int = PURGE_BATCH,
    ) -> int:
        """Remove every workflow whose runs all ended more than ``older_than`` seconds ago and
        whose root has one of
        ``statuses`` (and of ``tasks``), with their event logs, ``batch`` workflows per
        transaction; a workflow with a run still going (or locked) is left whole. Returns the
        runs removed. Safe to interrupt: each batch commits or rolls back whole."""
        params: dict[str, Any] = {
            "older_than": older_than,
            "statuses": list(statuses),
            "tasks": _list(tasks),
            "limit": batch,
            "by_retention": False,
            "after_at": datetime.min.replace(tzinfo=UTC),
            "after_id": 0,
        }
        seen = removed = 0
        while True:
            rows = await self.fetch("purge_older", params)
            if not rows:
                return removed
            seen += len(rows)
            removed += int(rows[0][2])
            params["after_id"], params["after_at"] = rows[-1][0], rows[-1][1]
            if progress is not None:
                progress(PurgeProgress(seen, removed))
            if len(rows) < batch:
                return removed


def _list(values: Sequence[str] | None) -> list[str] | None:
    return None if values is None else list(values)
