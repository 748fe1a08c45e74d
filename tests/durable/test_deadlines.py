"""Run deadlines (``execution_deadline``) and per-child options of ``ctx.run``/``ctx.spawn``.

A run deadline bounds a run's whole life from its first start, across retries, recoveries and
suspensions, where ``timeout`` bounds one attempt only. Timings are read from the database's own
timestamps (first start = deadline_at - execution_deadline), never from fixed sleeps.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import psycopg
import pytest

import durably
from tests.helpers import wait_until

FAST = {"evict_after": 0.1, "poll_interval": 0.1, "sweep_interval": 0.2}


def row(db: psycopg.Connection[Any], schema: str, run_id: int) -> dict[str, Any]:
    cur = db.execute(
        "SELECT status, error, attempt, failures, deadline_at, finished_at, queue, priority,"
        f' run_at, created_at, execution_deadline, parent_id FROM "{schema}".runs WHERE id = %s',
        (run_id,),
    )
    found = cur.fetchone()
    assert found is not None
    assert cur.description is not None
    return dict(zip([c.name for c in cur.description], found, strict=True))


def failed_by_deadline(app: durably.App, run_id: int) -> durably.RunFailed:
    with pytest.raises(durably.RunFailed) as failed:
        durably.RunHandle(app, run_id).result(timeout=15)
    assert failed.value.error_type == "DeadlineExceeded", failed.value
    assert "\n" not in failed.value.error_message
    return failed.value


def lived(r: dict[str, Any]) -> float:
    """Seconds from the run's first start to its end."""
    first_start = r["deadline_at"] - timedelta(seconds=r["execution_deadline"])
    return float((r["finished_at"] - first_start).total_seconds())


# -- deadlines -------------------------------------------------------------------------------


def test_a_suspended_run_fails_at_its_deadline_not_when_its_sleep_ends(
    app: durably.App, db: psycopg.Connection[Any], schema: str
) -> None:
    @app.durable_task(name="naps", execution_deadline=2)
    async def naps(ctx: durably.DurableContext) -> None:
        await ctx.sleep(60)

    with app.worker(durable_slots=1, **FAST):
        h = naps.enqueue()
        wait_until(lambda: h.status() == "WAITING", what="the run suspended on its sleep")
        error = failed_by_deadline(app, h.id)
    assert "execution deadline of 2 s" in error.error_message
    assert "WAITING" in error.error_message
    assert 2.0 <= lived(row(db, schema, h.id)) < 4.0


@pytest.mark.parametrize("durable", [True, False])
def test_a_running_attempt_is_cut_at_the_deadline_and_not_retried(
    app: durably.App, db: psycopg.Connection[Any], schema: str, durable: bool
) -> None:
    cancelled: list[bool] = []

    async def body() -> None:
        try:
            await asyncio.sleep(60)  # in memory: the attempt stays RUNNING
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    options: Any = {"timeout": 30, "retries": 3, "backoff": 0, "execution_deadline": 1.5}
    if durable:

        @app.durable_task(name="hogs", **options)
        async def hogs(ctx: durably.DurableContext) -> None:
            await body()

    else:

        @app.task(name="hogs", **options)
        async def hogs() -> None:
            await body()

    with app.worker(slots=1, durable_slots=1, **FAST):
        h = app.registry["hogs"].enqueue()
        error = failed_by_deadline(app, h.id)
    assert "RUNNING" in error.error_message
    r = row(db, schema, h.id)
    assert (r["status"], r["attempt"]) == ("FAILED", 1)  # cut once, never retried
    assert 1.5 <= lived(r) < 3.0
    assert cancelled == [True]


def test_the_deadline_is_not_reset_by_suspensions(
    app: durably.App, db: psycopg.Connection[Any], schema: str
) -> None:
    # The bug: with `timeout=` alone, each resumption is a new attempt with a new timeout, so a
    # workflow that suspends again and again never ends.
    @app.durable_task(name="forever", timeout=1, execution_deadline=2.5)
    async def forever(ctx: durably.DurableContext) -> None:
        while True:
            await ctx.sleep(0.3)

    with app.worker(durable_slots=1, **FAST):
        h = forever.enqueue()
        failed_by_deadline(app, h.id)
    r = row(db, schema, h.id)
    assert r["attempt"] > 2  # it did suspend and resume, keeping its first deadline
    assert 2.5 <= lived(r) < 4.5


def test_a_run_queued_for_a_retry_fails_at_its_deadline(
    app: durably.App, db: psycopg.Connection[Any], schema: str
) -> None:
    @app.task(name="flaky", retries=5, backoff=60, execution_deadline=1.5)
    def flaky() -> None:
        raise RuntimeError("down")

    with app.worker(slots=1, **FAST):
        h = flaky.enqueue()
        error = failed_by_deadline(app, h.id)
    assert "QUEUED" in error.error_message
    r = row(db, schema, h.id)
    assert (r["attempt"], r["failures"]) == (1, 1)
    assert 1.5 <= lived(r) < 3.5


def test_unfinished_children_are_cancelled_with_their_parent(
    app: durably.App, db: psycopg.Connection[Any], schema: str
) -> None:
    cancelled: list[bool] = []

    @app.task(name="busy_child")
    async def busy_child() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    @app.durable_task(name="napping_child")
    async def napping_child(ctx: durably.DurableContext) -> None:
        await ctx.sleep(60)

    @app.durable_task(name="impatient", execution_deadline=1.5)
    async def impatient(ctx: durably.DurableContext) -> None:
        await ctx.gather(ctx.spawn(busy_child), ctx.spawn(napping_child))

    with app.worker(slots=1, durable_slots=2, **FAST):
        h = impatient.enqueue()
        wait_until(lambda: h.status() == "WAITING", what="the parent suspended")
        failed_by_deadline(app, h.id)
        children = {r.task: r for r in app.list_runs() if r.id != h.id}
        assert {t: r.status for t, r in children.items()} == {
            "busy_child": "CANCELLED",
            "napping_child": "CANCELLED",
        }
        wait_until(lambda: cancelled, what="the running child's body cancelled")


def test_a_child_past_its_deadline_wakes_its_parent(app: durably.App) -> None:
    @app.durable_task(name="slow_kid", execution_deadline=1)
    async def slow_kid(ctx: durably.DurableContext) -> None:
        await ctx.sleep(60)

    @app.durable_task(name="waits_for_kid")
    async def waits_for_kid(ctx: durably.DurableContext) -> str:
        try:
            await ctx.run(slow_kid)
        except durably.ChildFailed as exc:
            return str(exc.error["type"])
        return "completed"

    with app.worker(durable_slots=2, **FAST):
        assert waits_for_kid.enqueue().result(timeout=15) == "DeadlineExceeded"


def test_retry_after_a_deadline_gives_a_fresh_deadline(
    app: durably.App, db: psycopg.Connection[Any], schema: str
) -> None:
    calls: list[int] = []

    @app.task(name="slow_once", execution_deadline=1)
    async def slow_once() -> str:
        calls.append(1)
        if len(calls) == 1:
            await asyncio.sleep(60)
        return "ok"

    with app.worker(slots=1, **FAST):
        h = slow_once.enqueue()
        failed_by_deadline(app, h.id)
        first = row(db, schema, h.id)["deadline_at"]
        assert app.retry(h.id) is True
        # An old deadline kept would fail the retried run at once, without calling it.
        assert h.result(timeout=15) == "ok"
    assert row(db, schema, h.id)["deadline_at"] > first
    assert len(calls) == 2


# -- per-child options -----------------------------------------------------------------------


def test_a_child_spawned_with_options_is_stored_with_them_and_runs(
    app: durably.App, db: psycopg.Connection[Any], schema: str
) -> None:
    @app.task(name="double")
    def double(x: int) -> int:
        return 2 * x

    @app.durable_task(name="async_parent")
    async def async_parent(ctx: durably.DurableContext, x: int) -> int:
        child = double.options(priority=7, queue="payments", delay=0.5, execution_deadline=30)
        return int(await ctx.run(child, x))

    @app.durable_task(name="sync_parent")
    def sync_parent(ctx: durably.SyncDurableContext, x: int) -> int:
        child = ctx.spawn(double.options(priority=3, queue="payments"), x)
        [doubled] = ctx.gather(child)
        return int(doubled)

    with app.worker(slots=1, durable_slots=2, queues=["default", "payments"], **FAST):
        a, s = async_parent.enqueue(3), sync_parent.enqueue(4)
        assert (a.result(timeout=15), s.result(timeout=15)) == (6, 8)
    children = {r.id: row(db, schema, r.id) for r in app.list_runs(task="double")}
    by_parent = {c["parent_id"]: c for c in children.values()}
    ca, cs = by_parent[a.id], by_parent[s.id]
    assert (ca["queue"], ca["priority"], ca["execution_deadline"]) == ("payments", 7, 30)
    assert ca["run_at"] - ca["created_at"] >= timedelta(seconds=0.5)
    assert (cs["queue"], cs["priority"], cs["execution_deadline"]) == ("payments", 3, None)


def test_child_options_are_not_part_of_the_operation_key(app: durably.App) -> None:
    # A parent that resumes with other options for a child already spawned (as after a deploy
    # that moved the child to another queue) replays it; it is not a non-determinism.
    @app.task(name="slowish")
    async def slowish() -> str:
        await asyncio.sleep(0.5)
        return "done"

    @app.durable_task(name="fickle")
    async def fickle(ctx: durably.DurableContext) -> tuple[str, int]:
        result = await ctx.run(slowish.options(priority=ctx.attempt))
        return result, ctx.attempt

    with app.worker(slots=1, durable_slots=1, **FAST):
        result, attempt = fickle.enqueue().result(timeout=15)
    assert result == "done" and attempt > 1


def test_a_child_idempotency_key_that_exists_reuses_that_run(
    app: durably.App, db: psycopg.Connection[Any], schema: str
) -> None:
    @app.task(name="charge")
    def charge(amount: int) -> int:
        return amount

    @app.durable_task(name="checkout")
    async def checkout(ctx: durably.DurableContext, amount: int) -> int:
        return int(await ctx.run(charge.options(idempotency_key="order-1"), amount))

    with app.worker(slots=1, durable_slots=2, **FAST):
        first = charge.options(idempotency_key="order-1").enqueue(100)
        assert first.result(timeout=15) == 100
        # The key's run is the child: its result, not a second charge of 999.
        assert checkout.enqueue(999).result(timeout=15) == 100
        assert checkout.enqueue(555).result(timeout=15) == 100
    assert [r.id for r in app.list_runs(task="charge")] == [first.id]
    logged = db.execute(
        f"SELECT child_id FROM \"{schema}\".event_log WHERE kind = 'child'"
    ).fetchall()
    assert logged == [(first.id,), (first.id,)]  # one run per log entry


def test_bad_options_are_refused_in_one_line(app: durably.App) -> None:
    @app.task(name="target")
    def target() -> None: ...

    def not_a_task() -> None: ...

    bad: Any
    for bad in (0, -1, "2", True):
        with pytest.raises(ValueError, match=r"execution_deadline=.* is not valid") as e:
            target.options(execution_deadline=bad)
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="execution_deadline=0 is not valid"):
        app.task(name="other", execution_deadline=0)(not_a_task)
    with pytest.raises(TypeError, match="no option 'prio'; the options are queue, priority"):
        target.options(priority=1).options(prio=2)

    @app.durable_task(name="confused")
    async def confused(ctx: durably.DurableContext) -> None:
        await ctx.run(not_a_task)  # type: ignore[arg-type]

    with app.worker(durable_slots=1, **FAST), pytest.raises(durably.RunFailed) as failed:
        confused.enqueue().result(timeout=15)
    assert failed.value.error_type == "TypeError"
    assert "ctx.run and ctx.spawn take a task" in failed.value.error_message
    assert "not_a_task" in failed.value.error_message
    assert "\n" not in failed.value.error_message
