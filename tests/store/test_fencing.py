"""Fencing at the store: every write about a run is conditional on (id, attempt, worker, RUNNING),
so a worker whose lease was taken writes nothing."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import psycopg

import durably
from durably.records import Outcome, OutcomeKind
from durably.storage import Store


async def _scenario(app: durably.App) -> dict[str, Any]:
    store = await Store.open(app.url, app.schema)
    try:
        await store.migrate()
        task = app.registry["fenced"]
        [run_id] = await store.enqueue([task.new_run(("x",), {}, durably.records.CallOptions())])
        stale, fresh = str(uuid.uuid4()), str(uuid.uuid4())
        [claimed] = (await store.claim(stale, ["default"], ["fenced"], 1, 30.0)).runs
        # The stale worker never registered, so the sweeper sees its run as orphaned at once:
        # back to the queue, and another worker claims it with the next attempt.
        swept = await store.sweep(dead_after=15.0)
        [reclaimed] = (await store.claim(fresh, ["default"], ["fenced"], 1, 30.0)).runs
        late = Outcome(run_id, claimed.attempt, OutcomeKind.OK, result='"stale"')
        return {
            "run_id": run_id,
            "attempts": (claimed.attempt, reclaimed.attempt),
            "swept": swept,
            "stale_finish": await store.finish(stale, [late]),
            "stale_finish_new_attempt": await store.finish(
                stale, [Outcome(run_id, reclaimed.attempt, OutcomeKind.OK, result='"stale"')]
            ),
            "stale_heartbeat": await store.heartbeat(stale, 30.0, [run_id]),
            "stale_release": await store.release(stale, [run_id]),
            "fresh_heartbeat": await store.heartbeat(fresh, 30.0, [run_id]),
            "fresh_finish": await store.finish(
                fresh, [Outcome(run_id, reclaimed.attempt, OutcomeKind.OK, result='"fresh"')]
            ),
            "fresh_again": await store.finish(
                fresh, [Outcome(run_id, reclaimed.attempt, OutcomeKind.FAIL, error="{}")]
            ),
        }
    finally:
        await store.close()


def test_stale_attempt_writes_nothing(app: durably.App, db: psycopg.Connection[Any]) -> None:
    @app.task(name="fenced")
    def fenced(x: str) -> str:
        return x

    seen = asyncio.run(_scenario(app))
    run_id = seen["run_id"]
    assert seen["attempts"] == (1, 2)
    assert seen["swept"] == (1, 0, 0)
    assert seen["stale_finish"] == {}
    assert seen["stale_finish_new_attempt"] == {}, "the attempt alone is not enough: worker too"
    assert seen["stale_heartbeat"] == set()
    assert seen["stale_release"] == 0
    assert seen["fresh_heartbeat"] == {(run_id, 2)}
    assert seen["fresh_finish"] == {run_id: "COMPLETED"}
    assert seen["fresh_again"] == {}, "an outcome is recorded exactly once"
    run = app.get_run(run_id)
    assert run is not None
    assert (run.status, run.result, run.attempt, run.recoveries) == ("COMPLETED", "fresh", 2, 1)


def test_recoveries_are_capped(make_app: Callable[..., durably.App]) -> None:
    app = make_app()

    @app.task(name="kills_worker", max_recoveries=2)
    def kills_worker() -> None:
        pass

    async def lose_it_three_times() -> list[Any]:
        store = await Store.open(app.url, app.schema)
        try:
            await store.migrate()
            task = app.registry["kills_worker"]
            [run_id] = await store.enqueue([task.new_run((), {}, durably.records.CallOptions())])
            sweeps = []
            for _ in range(3):
                await store.claim(str(uuid.uuid4()), ["default"], ["kills_worker"], 1, 30.0)
                sweeps.append(await store.sweep(dead_after=15.0))
            return [run_id, sweeps]
        finally:
            await store.close()

    run_id, sweeps = asyncio.run(lose_it_three_times())
    assert sweeps == [(1, 0, 0), (1, 0, 0), (1, 0, 0)]
    run = app.get_run(run_id)
    assert run is not None and run.status == "FAILED" and run.recoveries == 3
    assert run.error is not None and run.error["type"] == "WorkerLost"
