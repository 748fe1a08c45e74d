"""The worker's side of the queue: claiming due runs and recording how their attempts ended."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..records import STATUS_OF, Claim, ClaimedRun, FlowRules, Outcome, Status
from .base import Database, Row


class Queue(Database):
    """Claims and outcomes."""

    async def claim(
        self,
        worker_id: str,
        queues: list[str],
        tasks: list[str],
        limit: int,
        lease: float,
        durable: bool = False,
        rules: FlowRules | None = None,
    ) -> Claim:
        """Claim up to ``limit`` due runs of ``tasks`` in one statement (FOR UPDATE SKIP LOCKED):
        durable runs or task runs, as the slot pool being filled. ``rules`` (the pool's flow
        control, from :func:`durably.flow.claim_rules`) make it a turn-taking claim that keeps
        them."""
        params = {
            "worker_id": worker_id,
            "queues": queues,
            "tasks": tasks,
            "limit": limit,
            "lease": lease,
            "durable": durable,
        }
        if rules is not None:
            rows = await self._claim_controlled({**params, **_flow_params(rules)})
        else:
            name = "claim_one_queue" if len(queues) == 1 else "claim_queues"
            rows = await self.fetch(name, params)
        # Rows whose task is NULL stand for waiting runs whose timer was due (see `claim`).
        runs = [ClaimedRun(*row) for row in rows if row[1] is not None]
        return Claim(runs, len(rows) - len(runs))

    async def _claim_controlled(self, params: dict[str, Any]) -> list[Row]:
        """The claim under the flow-control lock, in one short transaction."""
        async with self.pool.connection() as conn, conn.transaction():
            await self.execute(conn, "claim_flow_lock", {"namespace": self.namespace})
            cur = await self.execute(conn, "claim_controlled", params)
            return await cur.fetchall()

    async def flow_adopt(self, queues: list[str], tasks: Sequence[str]) -> int:
        """Mark queued runs of these queues and tasks as under flow control; returns how many
        were not (enqueued before the limits were declared, or by code that did not declare
        them)."""
        params = {"queues": queues, "tasks": list(tasks)}
        async with self.pool.connection() as conn:
            cur = await self.execute(conn, "flow_adopt", params)
            return cur.rowcount

    async def next_due(self, queues: list[str], tasks: list[str]) -> float | None:
        """Seconds until the earliest queued run of these queues and tasks is due."""
        rows = await self.fetch("next_due", {"queues": queues, "tasks": tasks})
        return rows[0][0] if rows else None

    async def finish(self, worker_id: str, outcomes: Sequence[Outcome]) -> dict[int, Status]:
        """Record many attempts' outcomes in one fenced statement; returns the runs written,
        each with the status it got (an outcome whose attempt lost its lease is not written)."""
        if len(outcomes) == 1:
            (one,) = outcomes
            params = {
                "worker_id": worker_id,
                "channel": self.channel,
                "id": one.run_id,
                "attempt": one.attempt,
                "outcome": one.kind.value,
                "result": one.result,
                "error": one.error,
                "delay": one.delay,
            }
            return _written(await self.fetch("finish_one", params))
        params = {
            "worker_id": worker_id,
            "channel": self.channel,
            "ids": [o.run_id for o in outcomes],
            "attempts": [o.attempt for o in outcomes],
            "outcomes": [o.kind.value for o in outcomes],
            "results": [o.result for o in outcomes],
            "errors": [o.error for o in outcomes],
            "delays": [o.delay for o in outcomes],
        }
        return _written(await self.fetch("finish", params))


def _written(rows: list[Row]) -> dict[int, Status]:
    # A row per run written: (id, status, queue, parent_id).
    return {row[0]: STATUS_OF[row[1]] for row in rows}


def _flow_params(rules: FlowRules) -> dict[str, Any]:
    """The parameters of ``claim_pick_controlled`` (sql/flow.sql), in arrays."""
    tasks, queues = rules.tasks, rules.queues
    return {
        "c_task": [t.task for t in tasks],
        "c_cap": [t.concurrency for t in tasks],
        "c_rate_n": [t.rate_count for t in tasks],
        "c_key_cap": [t.key_concurrency for t in tasks],
        "c_key_rate_n": [t.key_rate_count for t in tasks],
        "c_ordered": [t.ordered for t in tasks],
        "c_fair": [t.fair for t in tasks],
        "q_name": [q.queue for q in queues],
        "q_cap": [q.concurrency for q in queues],
        "q_rate_n": [q.rate_count for q in queues],
        "free": list(rules.free),
        "r_rule": list(rules.windows),
        "r_seconds": list(rules.windows.values()),
    }
