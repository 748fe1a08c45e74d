"""The worker in this process: execution, slots, priorities, delays, retries, timeouts, cancel."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from typing import Any

import psycopg
import pytest

import durably
from durably.records import ClaimedRun
from durably.storage import QUERIES
from tests.helpers import wait_until


def test_sync_and_async_tasks_complete(app: durably.App) -> None:
    @app.task(name="add")
    def add(a: int, b: int) -> int:
        return a + b

    @app.task(name="greet")
    async def greet(name: str) -> str:
        await asyncio.sleep(0)
        return f"hello {name}"

    with app.worker(slots=2):
        assert add.enqueue(2, 3).result(timeout=10) == 5
        assert greet.enqueue(name="ada").result(timeout=10) == "hello ada"


def test_slots_bound_concurrency_exactly(app: durably.App) -> None:
    lock = threading.Lock()
    state = {"now": 0, "max": 0}

    @app.task(name="busy")
    def busy() -> None:
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(0.15)
        with lock:
            state["now"] -= 1

    handles = busy.enqueue_many([() for _ in range(12)])
    with app.worker(slots=3, poll_interval=0.05):
        for h in handles:
            h.result(timeout=20)
    assert state["max"] == 3


def test_priority_then_fifo_order(app: durably.App) -> None:
    order: list[str] = []

    @app.task(name="mark")
    def mark(tag: str) -> None:
        order.append(tag)

    mark.enqueue("low-1")
    mark.options(priority=10).enqueue("high-1")
    mark.enqueue("low-2")
    mark.options(priority=10).enqueue("high-2")
    last = mark.options(priority=5).enqueue("mid")
    with app.worker(slots=1):
        wait_until(lambda: len(order) == 5, what="five runs")
        last.result(timeout=10)
    assert order == ["high-1", "high-2", "mid", "low-1", "low-2"]


def test_delay_is_respected(app: durably.App, db: psycopg.Connection[Any], schema: str) -> None:
    @app.task(name="later")
    def later() -> str:
        return "ran"

    with app.worker(slots=1, poll_interval=5.0):
        handle = later.options(delay=1.0).enqueue()
        assert handle.status() == "QUEUED"
        assert handle.result(timeout=10) == "ran"
    row = db.execute(
        f'SELECT EXTRACT(EPOCH FROM started_at - created_at) FROM "{schema}".runs WHERE id = %s',
        (handle.id,),
    ).fetchone()
    assert row is not None
    # Started after its delay (database clock), and promptly: the worker slept until it was due,
    # not for its whole 5 s poll interval.
    assert 1.0 <= float(row[0]) < 3.0


def test_delayed_run_is_not_held_up_by_a_busy_worker(
    app: durably.App, db: psycopg.Connection[Any], schema: str
) -> None:
    @app.task(name="slow")
    async def slow() -> None:
        await asyncio.sleep(4)

    @app.task(name="later")
    def later() -> str:
        return "ran"

    with app.worker(slots=4, poll_interval=0.5):
        handle = later.options(delay=0.5).enqueue()
        time.sleep(0.1)  # the worker saw `later`, not due yet, and sleeps until it is due...
        slow.enqueue()  # ...when a claim takes `slow`: the worker is busy, with free slots
        assert handle.result(timeout=10) == "ran"
    row = db.execute(
        f'SELECT EXTRACT(EPOCH FROM started_at - created_at) FROM "{schema}".runs WHERE id = %s',
        (handle.id,),
    ).fetchone()
    assert row is not None
    # Started once due (within a poll interval), not when `slow` ended 4 s later.
    assert 0.5 <= float(row[0]) < 2.0


def test_retries_with_constant_backoff(app: durably.App) -> None:
    starts: list[float] = []

    @app.task(name="flaky", retries=3, backoff=durably.Backoff.constant(0.3))
    def flaky() -> str:
        starts.append(time.monotonic())
        if len(starts) < 3:
            raise ConnectionError("try again")
        return "ok"

    with app.worker(slots=1, poll_interval=0.05):
        handle = flaky.enqueue()
        assert handle.result(timeout=10) == "ok"
    run = app.get_run(handle.id)
    assert run is not None
    assert (run.attempt, run.failures, run.status) == (3, 2, "COMPLETED")
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(gap >= 0.3 for gap in gaps), gaps


def test_exponential_backoff_grows(app: durably.App) -> None:
    starts: list[float] = []

    @app.task(
        name="flaky_exp",
        retries=3,
        backoff=durably.Backoff.exponential(base=0.2, factor=3, max=10, jitter=False),
    )
    def flaky_exp() -> None:
        starts.append(time.monotonic())
        raise ConnectionError("always")

    with app.worker(slots=1, poll_interval=0.05):
        handle = flaky_exp.enqueue()
        with pytest.raises(durably.RunFailed) as failed:
            handle.result(timeout=15)
    assert failed.value.error_type == "ConnectionError"
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert len(starts) == 4
    assert gaps[0] >= 0.2 and gaps[1] >= 0.6 and gaps[2] >= 1.8, gaps


def test_retries_exhausted_records_the_error(app: durably.App) -> None:
    @app.task(name="always_fails", retries=2, backoff=0)
    def always_fails(x: int) -> None:
        raise ValueError(f"bad value {x}")

    with app.worker(slots=1):
        handle = always_fails.enqueue(7)
        with pytest.raises(durably.RunFailed) as failed:
            handle.result(timeout=10)
    err = failed.value
    assert (err.error_type, err.error_message) == ("ValueError", "bad value 7")
    assert err.remote_traceback is not None and "always_fails" in err.remote_traceback
    run = app.get_run(handle.id)
    assert run is not None and (run.status, run.attempt, run.failures) == ("FAILED", 3, 3)


def test_non_retryable_error_fails_at_once(app: durably.App) -> None:
    @app.task(name="refuse", retries=5, backoff=0)
    def refuse() -> None:
        raise durably.NonRetryableError("card declined")

    with app.worker(slots=1):
        handle = refuse.enqueue()
        with pytest.raises(durably.RunFailed, match="card declined"):
            handle.result(timeout=10)
    run = app.get_run(handle.id)
    assert run is not None and run.attempt == 1 and run.status == "FAILED"


def test_async_timeout_cancels_the_task(app: durably.App) -> None:
    cancelled = threading.Event()

    @app.task(name="hangs_async", timeout=0.3)
    async def hangs_async() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with app.worker(slots=1):
        started = time.monotonic()
        with pytest.raises(durably.RunFailed) as failed:
            hangs_async.enqueue().result(timeout=10)
        assert time.monotonic() - started < 5
    assert failed.value.error_type == "TimeoutError"
    assert "timeout of 0.3s" in failed.value.error_message
    assert cancelled.is_set()


def test_sync_timeout_discards_the_late_result(app: durably.App) -> None:
    finished = threading.Event()

    @app.task(name="hangs_sync", timeout=0.3)
    def hangs_sync() -> str:
        time.sleep(1.0)
        finished.set()
        return "too late"

    @app.task(name="after")
    def after() -> str:
        return "worker still serving"

    with app.worker(slots=1):
        handle = hangs_sync.enqueue()
        with pytest.raises(durably.RunFailed) as failed:
            handle.result(timeout=10)
        assert failed.value.error_type == "TimeoutError"
        assert finished.wait(5)
        assert after.enqueue().result(timeout=10) == "worker still serving"
    run = app.get_run(handle.id)
    assert run is not None and run.status == "FAILED" and run.result is None


def test_timeout_is_retried(app: durably.App) -> None:
    calls: list[int] = []

    @app.task(name="slow_once", timeout=0.3, retries=1, backoff=0)
    async def slow_once() -> int:
        calls.append(1)
        if len(calls) == 1:
            await asyncio.sleep(10)
        return len(calls)

    with app.worker(slots=1):
        assert slow_once.enqueue().result(timeout=10) == 2


def test_schedule_timeout_fails_runs_not_picked_up(app: durably.App) -> None:
    @app.task(name="unserved", queue="nobody", schedule_timeout=0.5)
    def unserved() -> None:
        pass

    @app.task(name="served")
    def served() -> None:
        pass

    with app.worker(slots=1, queues=["default"], sweep_interval=0.1):
        handle = unserved.enqueue()
        with pytest.raises(durably.RunFailed) as failed:
            handle.result(timeout=10)
    assert failed.value.error_type == "ScheduleTimeout"


def test_cancel_running_async_task(app: durably.App) -> None:
    started = threading.Event()
    cancelled = threading.Event()

    @app.task(name="long_async")
    async def long_async() -> None:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    @app.task(name="quick")
    def quick() -> str:
        return "ok"

    with app.worker(slots=1):
        handle = long_async.enqueue()
        assert started.wait(10)
        assert handle.cancel() is True
        with pytest.raises(durably.RunCancelled):
            handle.result(timeout=10)
        assert cancelled.wait(5)
        assert quick.enqueue().result(timeout=10) == "ok"
    assert handle.cancel() is False


def test_result_waits_without_polling_the_run(app: durably.App) -> None:
    gate = threading.Event()

    @app.task(name="gated")
    def gated() -> str:
        gate.wait(10)
        return "open"

    with app.worker(slots=1):
        handle = gated.enqueue()
        timer = threading.Timer(0.3, gate.set)
        timer.start()
        started = time.monotonic()
        assert handle.result(timeout=10) == "open"
        # Woken by the completion notification, well before the 5 s re-check timer.
        assert time.monotonic() - started < 2.0


def test_a_pool_claim_does_not_read_the_other_pools_runs(
    app: durably.App, db: psycopg.Connection[Any], schema: str
) -> None:
    """The durable pool's claim, with only task runs queued, finds nothing without reading
    them (a million queued task runs once made it scan them all on every claim)."""

    @app.task(name="plain")
    def plain() -> None:
        pass

    plain.enqueue_many([()] * 2_000)
    db.execute(f'ANALYZE "{schema}".runs')
    sql = QUERIES["claim_pick_one_queue"].replace("{schema}", f'"{schema}"')
    params = {"queues": ["default"], "tasks": ["flow"], "durable": True, "limit": 10}
    with db.transaction():
        plan = db.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", params).fetchone()
        assert plan is not None
        nodes = []
        stack = [plan[0][0]["Plan"]]
        while stack:
            node = stack.pop()
            nodes.append(node)
            stack += node.get("Plans", [])
    scans = [n for n in nodes if n.get("Relation Name") == "runs"]
    assert [n.get("Index Name") for n in scans] == ["runs_claim_pool"]
    assert sum(n.get("Rows Removed by Filter", 0) for n in scans) == 0


def test_a_run_cancelled_before_its_task_starts_frees_its_slot(app: durably.App) -> None:
    # The race: a cancel notification arrives between the claim (the asyncio task for the run
    # is created) and the task's first step. The run's slot must come back all the same.
    @app.task(name="never_starts")
    async def never_starts() -> None:
        raise AssertionError("the body must not run")

    worker = app.make_worker(slots=1)

    async def claim_then_cancel() -> None:
        claimed = ClaimedRun(
            run_id=1,
            task="never_starts",
            args='{"args": [], "kwargs": {}}',
            attempt=1,
            failures=0,
            max_retries=0,
            has_log=False,
            trace_context=None,
            deadline_in=None,
        )
        worker._start(claimed)
        assert worker.busy[False] == 1
        worker._abandon(1, "cancelled")  # before the loop ever ran the task
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    asyncio.run(claim_then_cancel())
    assert worker.busy[False] == 0
    assert worker._running == {}
