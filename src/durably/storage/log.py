"""The event log of durable runs: every write is fenced by the attempt's :class:`Fence`, so an
attempt that lost its lease writes nothing."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import psycopg
from psycopg.rows import dict_row

from ..records import (
    Appended,
    ChildEnd,
    Entry,
    Fence,
    LogWrite,
    NewRun,
    Status,
    TakenEvent,
)
from .base import Database
from .connection import blame, pool_kwargs


class EventLog(Database):
    """Appends, children, events, transactions and suspension of durable runs."""

    async def load_log(self, run_id: int) -> list[Entry]:
        """The whole event log of a run, in one query."""
        rows = await self.fetch("log_load", {"run_id": run_id})
        return [Entry(*row) for row in rows]

    async def log_append(self, fence: Fence, write: LogWrite) -> Appended | None:
        """Append one entry, fenced; None when the attempt is no longer held."""
        rows = await self.fetch("log_append", {**vars(fence), **vars(write)})
        return Appended(*rows[0]) if rows else None

    async def log_complete(
        self, fence: Fence, seq: int, result: str | None, error: str | None
    ) -> bool:
        """Mark a pending entry done with its (encoded) outcome, fenced; False when the attempt
        is no longer held."""
        params = {**vars(fence), "seq": seq, "result": result, "error": error}
        return bool(await self.fetch("log_complete", params))

    async def log_spawn(self, fence: Fence, seq: int, key: str, child: NewRun) -> int | None:
        """Create a child run and its entry, fenced; the child's id (an existing run's, when its
        idempotency key names one), or None when the attempt is no longer held."""
        params = {**vars(child), **vars(fence), "seq": seq, "key": key, "channel": self.channel}
        child_id, held, _ = (await self.fetch("log_spawn", params))[0]
        if held and child_id is None:
            # The key's run was inserted by a transaction that committed during the statement,
            # so its snapshot could not see it: a new statement does.
            child_id, held, _ = (await self.fetch("log_spawn", params))[0]
        return int(child_id) if child_id is not None else None

    async def fail_past_deadline(self, fence: Fence) -> bool:
        """Fail a run whose attempt reached its run deadline, cancelling its unfinished
        descendants, fenced; False when the attempt is no longer held."""
        rows = await self.fetch("deadline_fail_held", {**vars(fence), "channel": self.channel})
        return bool(rows[0][0])

    async def take_event(self, fence: Fence, seq: int, key: str) -> TakenEvent | None:
        """Take the next event of ``key`` for the waiting entry ``seq``, fenced."""
        rows = await self.fetch("log_take_event", {**vars(fence), "seq": seq, "key": key})
        return TakenEvent(*rows[0]) if rows else None

    async def children_status(self, ids: list[int]) -> dict[int, ChildEnd]:
        """Each child run's status and outcome, by id. A child that no longer exists (a run of
        another workflow, named by its idempotency key, that retention or a purge removed
        before this run saw it end) counts as failed, so the wait ends with a clear error."""
        rows = await self.fetch("children_status", {"ids": ids})
        ends = {r[0]: ChildEnd(r[1], r[2], r[3]) for r in rows}
        for missing in set(ids) - ends.keys():
            ends[missing] = ChildEnd(Status.FAILED, None, _removed(missing))
        return ends

    async def suspend(
        self, fence: Fence, wake_in: float | None, children: Sequence[int], event: str | None
    ) -> Status | None:
        """Mark a run WAITING (or QUEUED when what it waits for already happened), fenced;
        the status it got, None when the attempt is no longer held."""
        params = {
            **vars(fence),
            "wake_in": wake_in,
            "children": list(children) or None,
            "event": event,
        }
        rows = await self.fetch("suspend", params)
        return Status(rows[0][0]) if rows else None

    async def in_transaction(
        self,
        fence: Fence,
        write: LogWrite,
        lease: float,
        call: Callable[[psycopg.AsyncConnection[Any]], Awaitable[Any]],
        encode: Callable[[Any], str],
    ) -> tuple[bool, Any]:
        """``await call(conn)`` and record its result as ``write`` in one transaction (fenced),
        on a connection of the transaction pool; (held, value), held False when the attempt is
        no longer held. An exception of ``call`` rolls the transaction back and comes out as
        :class:`~durably.storage.connection.UserCodeFailed` unless it is the database's (see
        :func:`~durably.storage.connection.blame`)."""
        params = {**vars(fence), **vars(write), "lease": lease}
        pool = await self._transactions()
        async with pool.connection() as conn, conn.transaction():
            cur = await self.execute(conn, "log_hold", params)
            if await cur.fetchone() is None:
                return False, None
            try:
                value = await call(conn)
            except Exception as exc:
                problem = blame(conn, exc)
                if problem is exc:
                    raise
                raise problem from exc
            await self.execute(conn, "log_append", {**params, "result": encode(value)})
            await self.execute(conn, "log_hold_renew", params)
            return True, value

    def in_transaction_sync(
        self,
        fence: Fence,
        write: LogWrite,
        lease: float,
        call: Callable[[psycopg.Connection[Any]], Any],
        encode: Callable[[Any], str],
    ) -> tuple[bool, Any]:
        """:meth:`in_transaction` for a sync ``call``, on a sync connection of its own."""
        params = {**vars(fence), **vars(write), "lease": lease}
        with (
            psycopg.connect(self.url, connect_timeout=10, **pool_kwargs()) as conn,
            conn.transaction(),
        ):
            if conn.execute(self._sql["log_hold"], params).fetchone() is None:
                return False, None
            try:
                value = call(conn)
            except Exception as exc:
                problem = blame(conn, exc)
                if problem is exc:
                    raise
                raise problem from exc
            conn.execute(self._sql["log_append"], {**params, "result": encode(value)})
            conn.execute(self._sql["log_hold_renew"], params)
            return True, value

    async def push_event(self, key: str, payload: str) -> int:
        """Store an event and wake the runs waiting for its key; returns the event id."""
        rows = await self.fetch(
            "push_event", {"key": key, "payload": payload, "channel": self.channel}
        )
        return int(rows[0][0])

    async def log_list(self, run_id: int) -> list[dict[str, Any]]:
        """A run's event log for display, each entry a dict keyed by column name."""
        async with self.pool.connection() as conn:
            cur: psycopg.AsyncCursor[dict[str, Any]] = conn.cursor(row_factory=dict_row)
            await self._run(cur, "log_list", {"run_id": run_id})
            return await cur.fetchall()

    async def retry(self, run_id: int) -> bool:
        """A failed or cancelled run back to the queue, its log kept."""
        return bool(await self.fetch("retry", {"id": run_id, "channel": self.channel}))

    async def replay(self, run_id: int) -> bool:
        """Archive a finished run's log and queue it to run from scratch."""
        return bool(await self.fetch("replay", {"id": run_id, "channel": self.channel}))

    async def fork(self, run_id: int, at_event: int) -> int | None:
        """A new run whose log starts with the first ``at_event`` entries of ``run_id``."""
        params = {"id": run_id, "at_event": at_event, "channel": self.channel}
        rows = await self.fetch("fork", params)
        return int(rows[0][0]) if rows else None


def _removed(run_id: int) -> dict[str, Any]:
    return {
        "type": "ChildRemoved",
        "message": f"child run {run_id} no longer exists: it was removed (retention or purge) "
        "before this run saw it end; give it a longer retention",
        "traceback": None,
    }
