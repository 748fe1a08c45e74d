"""Workers: registration with a liveness lock, heartbeats that extend leases, release on
shutdown, and the LISTEN of notifications."""

from __future__ import annotations

from typing import Any

import psycopg

from .base import Database
from .connection import connect


class Workers(Database):
    """A worker's own rows and connection."""

    async def heartbeat(
        self, worker_id: str, lease: float, run_ids: list[int]
    ) -> set[tuple[int, int]]:
        """Extend the leases of ``run_ids``; returns the (run id, attempt) pairs still held."""
        params = {"worker_id": worker_id, "lease": lease, "ids": run_ids}
        rows = await self.fetch("heartbeat", params)
        return {(r[0], r[1]) for r in rows}

    async def release(self, worker_id: str, run_ids: list[int]) -> int:
        """Hand runs back to the queue at once (graceful shutdown)."""
        params = {"worker_id": worker_id, "ids": run_ids, "channel": self.channel}
        return len(await self.fetch("release", params))

    async def register_worker(
        self,
        worker_id: str,
        queues: list[str],
        tasks: list[str],
        slots: int,
        hostname: str,
        pid: int,
    ) -> psycopg.AsyncConnection[Any]:
        """Open the worker's own connection, take its liveness lock on it, record the worker and
        LISTEN. The lock is taken before the row exists, so no sweeper can see a live worker
        without its lock; Postgres releases the lock the moment the worker's session ends.
        Called again when that connection is lost. The connection is named after the worker
        in pg_stat_activity."""
        conn = await connect(self.url, application_name=f"durably worker {worker_id}")
        cur = await conn.execute(self._sql["worker_next_lock_id"])
        row = await cur.fetchone()
        assert row is not None
        lock_id = row[0]
        await conn.execute(
            self._sql["worker_lock"], {"namespace": self.namespace, "lock_id": lock_id}
        )
        await conn.execute(
            self._sql["worker_register"],
            {
                "worker_id": worker_id,
                "lock_id": lock_id,
                "hostname": hostname,
                "pid": pid,
                "queues": queues,
                "tasks": tasks,
                "slots": slots,
            },
        )
        await self.listen(conn)
        return conn

    async def listen(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Subscribe ``conn`` to this schema's notifications."""
        await conn.execute(self._sql["listen"])

    async def worker_stopped(self, worker_id: str) -> None:
        """Mark a worker as stopped."""
        await self.fetch("worker_stopped", {"worker_id": worker_id})

    # -- durable runs --------------------------------------------------------------------------
