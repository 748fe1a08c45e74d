"""Runs from the client's side: enqueueing (with idempotency keys), reading, cancelling."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
import psycopg.errors

from ..records import NewRun, Run, RunState
from .base import Database, Row
from .connection import out_of_space


class Runs(Database):
    """Inserting and reading runs."""

    def _enqueue_params(self, runs: Sequence[NewRun]) -> dict[str, Any]:
        return {
            "task": [r.task for r in runs],
            "queue": [r.queue for r in runs],
            "priority": [r.priority for r in runs],
            "args": [r.args for r in runs],
            "max_retries": [r.max_retries for r in runs],
            "max_recoveries": [r.max_recoveries for r in runs],
            "delay": [r.delay for r in runs],
            "schedule_timeout": [r.schedule_timeout for r in runs],
            "idempotency_key": [r.idempotency_key for r in runs],
            "durable": [r.durable for r in runs],
            "trace_context": [r.trace_context for r in runs],
            "concurrency_key": [r.concurrency_key for r in runs],
            "fairness_key": [r.fairness_key for r in runs],
            "flow": [r.flow for r in runs],
            "execution_deadline": [r.execution_deadline for r in runs],
            "retention": [r.retention for r in runs],
            "channel": self.channel,
        }

    async def enqueue(
        self, runs: Sequence[NewRun], conn: psycopg.AsyncConnection[Any] | None = None
    ) -> list[int]:
        """Insert runs (one statement) and return their ids in input order; a run whose
        idempotency key exists already gets the existing run's id."""
        if conn is None:
            async with self.pool.connection() as own:
                return await self.enqueue(runs, own)
        if len(runs) == 1:
            params = {**vars(runs[0]), "channel": self.channel}  # shallow: asdict deep-copies
            cur = await self.execute(conn, "enqueue_one", params)
        else:
            cur = await self.execute(conn, "enqueue", self._enqueue_params(runs))
        inserted = await cur.fetchall()
        existing: dict[tuple[str, str], int] = {}
        for task, keys in _missing_keys(runs, inserted).items():
            cur = await conn.execute(self._sql["existing_by_key"], {"task": task, "keys": keys})
            existing.update({(task, k): i for k, i in await cur.fetchall()})
        return _ids_in_order(runs, inserted, existing)

    def enqueue_sync(self, runs: Sequence[NewRun], conn: psycopg.Connection[Any]) -> list[int]:
        """:meth:`enqueue` on the caller's own (sync) connection, inside its transaction."""
        try:
            cur = conn.execute(self._sql["enqueue"], self._enqueue_params(runs))
        except psycopg.errors.UndefinedTable:
            raise self._not_migrated() from None
        except psycopg.errors.DiskFull as exc:
            raise out_of_space(exc) from None
        inserted = cur.fetchall()
        existing: dict[tuple[str, str], int] = {}
        for task, keys in _missing_keys(runs, inserted).items():
            cur = conn.execute(self._sql["existing_by_key"], {"task": task, "keys": keys})
            existing.update({(task, k): i for k, i in cur.fetchall()})
        return _ids_in_order(runs, inserted, existing)

    async def cancel(self, run_id: int) -> bool:
        """Cancel a run that has not ended; False when it had already ended (or is unknown)."""
        rows = await self.fetch("cancel", {"id": run_id, "channel": self.channel})
        return any(row[0] == run_id for row in rows)

    async def get_run(self, run_id: int) -> Run | None:
        """One run as stored."""
        runs = await self.fetch_as(Run, "run_get", {"id": run_id})
        return runs[0] if runs else None

    async def run_state(self, run_id: int) -> RunState | None:
        """A run's status and outcome."""
        states = await self.fetch_as(RunState, "run_status", {"id": run_id})
        return states[0] if states else None

    async def list_runs(
        self,
        status: str | None,
        task: str | None,
        queue: str | None,
        limit: int,
        before_id: int | None = None,
    ) -> list[Run]:
        """Runs, newest first, filtered; page with ``before_id``."""
        params = {
            "status": status,
            "task": task,
            "queue": queue,
            "limit": limit,
            "before_id": before_id,
        }
        return await self.fetch_as(Run, "runs_list", params)


def _inserted_keys(inserted: list[Row]) -> set[tuple[str, str]]:
    # Keys are unique per task; an inserted row is (id, idempotency_key, notified, task).
    return {(r[3], r[1]) for r in inserted if r[1] is not None}


def _missing_keys(runs: Sequence[NewRun], inserted: list[Row]) -> dict[str, list[str]]:
    got = _inserted_keys(inserted)
    missing: dict[str, list[str]] = {}
    for r in runs:
        if r.idempotency_key is not None and (r.task, r.idempotency_key) not in got:
            missing.setdefault(r.task, []).append(r.idempotency_key)
    return missing


def _ids_in_order(
    runs: Sequence[NewRun], inserted: list[Row], existing: dict[tuple[str, str], int]
) -> list[int]:
    # Identities were drawn in input order, so sorted new ids line up with the runs inserted.
    new_ids = iter(sorted(r[0] for r in inserted))
    inserted_keys = _inserted_keys(inserted)
    ids: list[int] = []
    seen: set[tuple[str, str]] = set()
    for r in runs:
        key = None if r.idempotency_key is None else (r.task, r.idempotency_key)
        if key is not None and (key not in inserted_keys or key in seen):
            ids.append(existing[key] if key in existing else _same_batch(ids, runs, r))
        else:
            ids.append(next(new_ids))
            if key is not None:
                seen.add(key)
    return ids


def _same_batch(ids: list[int], runs: Sequence[NewRun], run: NewRun) -> int:
    # A key repeated inside one batch: the first occurrence was inserted, later ones share it.
    for i, earlier in enumerate(runs[: len(ids)]):
        if earlier.task == run.task and earlier.idempotency_key == run.idempotency_key:
            return ids[i]
    raise AssertionError("idempotency key neither inserted nor found")
