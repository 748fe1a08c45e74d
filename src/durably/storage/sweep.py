"""The sweeper's statements: recovery of dead workers' and expired leases' runs, schedule
timeouts, run deadlines, the wake-up backstop, expired flow-control rows, and retention
(finished workflows past their retention, events no run can take, stopped workers)."""

from __future__ import annotations

import logging
from typing import Any

import psycopg

from ..errors import DurablyError
from .base import Database
from .connection import first_line

# The sweeper handles at most SWEEP_BATCH rows per statement, each statement its own short
# transaction (row locks held briefly, little to roll back), and repeats a part while batches
# come back full, up to SWEEP_ROUNDS times per sweep: 20,000 rows a second per part.
SWEEP_BATCH = 1000
SWEEP_ROUNDS = 20
log = logging.getLogger("durably.sweeper")

# The parts of every sweep, in order, and those that only run with a retention.
_PARTS = (
    "sweep_orphans",
    "sweep_schedule_timeouts",
    "sweep_wake_ready",
    "sweep_rate_starts",
    "sweep_fair_turns",
    "sweep_deadlines",
    "sweep_purge",
)
_RETENTION_PARTS = ("sweep_events", "sweep_workers")


class Sweep(Database):
    """One sweep, part by part."""

    async def sweep(
        self, dead_after: float, retention: float | None = None
    ) -> tuple[int, int, int] | None:
        """Recover runs of dead workers and expired leases, fail runs past their schedule timeout,
        wake WAITING runs whose wake-up raced with their suspension, forget expired
        flow-control rows, and remove finished workflows past their own retention; with
        ``retention`` (seconds), also events older than that which no run can take any more, and
        workers stopped longer ago.

        Each part runs in batches of at most ``SWEEP_BATCH`` rows, each batch its own short
        transaction under the sweeper's advisory lock (one sweeper at a time), repeated while
        batches come back full, up to ``SWEEP_ROUNDS`` per part; the rest waits for the next
        sweep. A part that fails is logged and retried next sweep; the others still run. Returns
        None when another sweeper holds the lock, else (recovered, expired, woken) counts.
        """
        params = {
            "dead_after": dead_after,
            "namespace": self.namespace,
            "channel": self.channel,
            "limit": SWEEP_BATCH,
            "retention": retention,
            "by_retention": True,
            "older_than": None,
        }
        parts = _PARTS if retention is None else _PARTS + _RETENTION_PARTS
        async with self.pool.connection() as conn:
            if await self._sweep_part(conn, "sweep_dead_workers", params) is None:
                return None
            counts = [await self._sweep_part(conn, part, params) or 0 for part in parts]
            if self._purged:
                log.info("retention: %d runs of finished workflows removed", self._purged)
                self._purged = 0
            return counts[0], counts[1], counts[2]

    async def _sweep_part(
        self, conn: psycopg.AsyncConnection[Any], part: str, params: dict[str, Any]
    ) -> int | None:
        """Rows one part of the sweep handled, None when another sweeper holds the lock; rows
        handled before a failure when it failed (logged, retried next sweep)."""
        done = 0
        try:
            for round_ in range(SWEEP_ROUNDS):
                batch = await self._sweep_batch(conn, part, params)
                if batch is None:  # another sweeper holds the lock (or took it between batches)
                    return None if round_ == 0 else done
                done += batch
                if batch < SWEEP_BATCH:
                    break
        except (psycopg.Error, DurablyError) as exc:
            if conn.closed or conn.broken:
                raise
            self._sweep_failed(part, exc)
            return done
        if self._sweep_failures.pop(part, None) is not None:
            log.info("sweep: %s works again", part)
        return done

    async def _sweep_batch(
        self, conn: psycopg.AsyncConnection[Any], part: str, params: dict[str, Any]
    ) -> int | None:
        """One statement of the sweep in its own transaction, under the sweeper lock; None when
        another sweeper holds the lock."""
        async with conn.transaction():
            cur = await self.execute(conn, "sweep_lock", params)
            row = await cur.fetchone()
            if not row or not row[0]:
                return None
            cur = await self.execute(conn, part, params)
            if part == "sweep_purge":  # one row per workflow looked at, with the runs removed
                rows = await cur.fetchall()
                self._purged += rows[0][2] if rows else 0
            return max(cur.rowcount, 0)

    def _sweep_failed(self, part: str, exc: BaseException) -> None:
        """Log a failing part once, not on every sweep while it keeps failing the same way."""
        reason = first_line(exc)
        if self._sweep_failures.get(part) != reason:
            log.warning("sweep: %s failed (%s); the other parts ran, it is retried", part, reason)
        self._sweep_failures[part] = reason
