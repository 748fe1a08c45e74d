"""Durable tasks in this process: replay from the log, every operation, sync and async."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from typing import Any

import psycopg
import pytest

import durably
from tests.helpers import wait_until


def test_async_durable_task_resumes_from_its_log(app: durably.App) -> None:
    calls: Counter[str] = Counter()

    @app.task(name="child")
    def child(x: int) -> int:
        calls["child"] += 1
        return x * 10

    def double(x: int) -> int:
        calls["double"] += 1
        return x * 2

    @app.durable_task(name="flow", retries=1, backoff=0)
    async def flow(ctx: durably.DurableContext, x: int) -> dict[str, Any]:
        a = await ctx.run(child, x)
        b = await ctx.step(double, a)
        c, d = await ctx.gather(ctx.spawn(child, 1), ctx.spawn(child, 2))
        token = str(await ctx.uuid4())
        r = await ctx.random()
        now = (await ctx.now()).isoformat()
        await ctx.sleep(0.1)
        calls["body"] += 1
        if calls["body"] == 1:
            raise RuntimeError("crash after the checkpoints")
        return {"a": a, "b": b, "cd": [c, d], "token": token, "r": r, "now": now}

    with app.worker(slots=2, durable_slots=2):
        handle = flow.enqueue(3)
        result = handle.result(timeout=20)
    assert (result["a"], result["b"], result["cd"]) == (30, 60, [10, 20])
    assert calls == Counter(child=3, double=1, body=2), "each checkpoint ran once"
    kinds = [e["kind"] for e in app.event_log(handle.id)]
    assert kinds == ["child", "step", "child", "child", "uuid4", "random", "now", "sleep"]
    run = app.get_run(handle.id)
    assert run is not None and run.attempt == 2


def test_sync_durable_task_has_the_same_operations(app: durably.App) -> None:
    calls: Counter[str] = Counter()

    @app.task(name="child")
    async def child(x: int) -> int:
        calls["child"] += 1
        return x + 1

    @app.durable_task(name="sync_flow", retries=1, backoff=0)
    def sync_flow(ctx: durably.SyncDurableContext, x: int) -> list[Any]:
        a = ctx.run(child, x)
        b = ctx.step(lambda v: v * 100, a, name="times100")
        c = ctx.gather(ctx.spawn(child, 5), ctx.spawn(child, 6))
        ctx.sleep(0.05)
        token = str(ctx.uuid4())
        calls["body"] += 1
        if calls["body"] == 1:
            raise RuntimeError("crash")
        return [a, b, c, token]

    with app.worker(slots=2, durable_slots=2):
        result = sync_flow.enqueue(1).result(timeout=20)
    assert result[:3] == [2, 200, [6, 7]]
    uuid.UUID(result[3])
    assert calls == Counter(child=3, body=2)


def test_recorded_values_are_the_same_on_re_execution(app: durably.App) -> None:
    seen: list[tuple[str, float, str]] = []

    @app.durable_task(name="values", retries=1, backoff=0)
    async def values(ctx: durably.DurableContext) -> None:
        seen.append((str(await ctx.uuid4()), await ctx.random(), (await ctx.now()).isoformat()))
        if len(seen) == 1:
            raise RuntimeError("again")

    with app.worker(durable_slots=1):
        values.enqueue().result(timeout=20)
    assert len(seen) == 2 and seen[0] == seen[1]


def test_step_retries_then_records_the_final_failure(app: durably.App) -> None:
    keys: list[str] = []
    holder: dict[str, durably.DurableContext] = {}

    def flaky(x: int) -> int:
        keys.append(holder["ctx"].idempotency_key)
        raise ValueError(f"no {x}")

    @app.durable_task(name="steps")
    async def steps(ctx: durably.DurableContext) -> str:
        holder["ctx"] = ctx
        try:
            await ctx.step(flaky, 7, retries=2)
        except durably.StepFailed as exc:
            return str(exc)
        return "unreachable"

    with app.worker(durable_slots=1):
        handle = steps.enqueue()
        message = handle.result(timeout=20)
    assert "ValueError: no 7" in message
    assert keys == [f"{handle.id}:0"] * 3, "three tries, one stable idempotency key"
    [entry] = app.event_log(handle.id)
    assert entry["kind"] == "step" and entry["error"]["type"] == "ValueError"


def test_failed_child_raises_child_failed_and_is_recorded(app: durably.App) -> None:
    calls: Counter[str] = Counter()

    @app.task(name="bad_child")
    def bad_child() -> None:
        calls["child"] += 1
        raise LookupError("not found")

    @app.durable_task(name="parent", retries=1, backoff=0)
    async def parent(ctx: durably.DurableContext) -> str:
        calls["parent"] += 1
        try:
            await ctx.run(bad_child)
        except durably.ChildFailed as exc:
            if calls["parent"] == 1:
                raise RuntimeError("fail the attempt after observing the child") from exc
            return f"{exc.error['type']}: {exc.error['message']}"
        return "unreachable"

    with app.worker(slots=1, durable_slots=1):
        assert parent.enqueue().result(timeout=20) == "LookupError: not found"
    assert calls == Counter(child=1, parent=2), "the child's failure was replayed, not re-run"


def test_changed_code_raises_a_readable_non_determinism_error(app: durably.App) -> None:
    version = {"n": 1}

    def charge_payment(order: str) -> str:
        return f"charged {order}"

    def refund_payment(order: str) -> str:
        return f"refunded {order}"

    @app.durable_task(name="order", retries=3, backoff=0)
    async def order(ctx: durably.DurableContext, order_id: str) -> str:
        step = charge_payment if version["n"] == 1 else refund_payment
        result = await ctx.step(step, order_id)
        if version["n"] == 1:
            version["n"] = 2  # the code changes before the next attempt
            raise RuntimeError("crash")
        return str(result)

    with app.worker(durable_slots=1):
        handle = order.enqueue("o-1")
        with pytest.raises(durably.RunFailed) as failed:
            handle.result(timeout=20)
    err = failed.value
    assert err.error_type == "durably.errors.NonDeterminismError"
    assert f"run {handle.id} is not deterministic at event 0" in err.error_message
    assert "step 'test_changed_code" in err.error_message and "charge_payment" in err.error_message
    assert "refund_payment" in err.error_message and '["o-1"]' in err.error_message
    run = app.get_run(handle.id)
    assert run is not None and run.attempt == 2, "non-determinism is not retried"


def test_waiting_runs_do_not_hold_slots(
    app: durably.App, db: psycopg.Connection[Any], schema: str
) -> None:
    @app.durable_task(name="waiter")
    async def waiter(ctx: durably.DurableContext, n: int) -> Any:
        return await ctx.wait_for_event(f"go:{n}")

    handles = waiter.enqueue_many([(i,) for i in range(50)])
    with app.worker(durable_slots=1, evict_after=0.05, poll_interval=0.1):

        def waiting() -> bool:
            row = db.execute(
                f"SELECT count(*) FROM \"{schema}\".runs WHERE status = 'WAITING'"
            ).fetchone()
            return row is not None and row[0] == 50

        wait_until(waiting, timeout=30, what="all 50 runs suspended")
        for i in range(50):
            app.push_event(f"go:{i}", {"n": i})
        assert [h.result(timeout=30) for h in handles] == [{"n": i} for i in range(50)]


def test_durable_sleep_suspends_and_wakes_on_time(app: durably.App) -> None:
    @app.durable_task(name="sleeper")
    async def sleeper(ctx: durably.DurableContext) -> float:
        start = await ctx.now()
        await ctx.sleep(1.5)
        return ((await ctx.now()) - start).total_seconds()

    with app.worker(durable_slots=1, evict_after=0.1, poll_interval=5.0):
        handle = sleeper.enqueue()
        wait_until(lambda: handle.status() == "WAITING", what="suspended while sleeping")
        slept = handle.result(timeout=20)
    # Woken by the worker's own timer, well before its 5 s poll interval.
    assert 1.5 <= slept < 2.2


def test_events_pushed_before_the_wait_are_seen_once_each(app: durably.App) -> None:
    @app.durable_task(name="collector")
    async def collector(ctx: durably.DurableContext) -> list[Any]:
        await ctx.sleep(0.3)  # the events arrive while the run sleeps, before it waits
        return [await ctx.wait_for_event("tick") for _ in range(3)]

    with app.worker(durable_slots=1):
        handle = collector.enqueue()
        for i in range(3):
            app.push_event("tick", i)
        assert handle.result(timeout=20) == [0, 1, 2]


def test_event_wait_times_out(app: durably.App) -> None:
    @app.durable_task(name="impatient")
    async def impatient(ctx: durably.DurableContext) -> str:
        try:
            await ctx.wait_for_event("never", timeout=0.3)
        except TimeoutError as exc:
            return f"timeout: {exc}"
        return "unreachable"

    with app.worker(durable_slots=1):
        assert impatient.enqueue().result(timeout=20).startswith("timeout: no event 'never'")


def test_transaction_applies_its_effect_exactly_once(
    app: durably.App, db: psycopg.Connection[Any], schema: str
) -> None:
    app.migrate()
    db.execute(f'CREATE TABLE "{schema}".ledger (note text)')
    tries: Counter[str] = Counter()

    async def write(conn: psycopg.AsyncConnection[Any], note: str) -> str:
        await conn.execute(f'INSERT INTO "{schema}".ledger VALUES (%s)', (note,))
        return note

    @app.durable_task(name="writer", retries=2, backoff=0)
    async def writer(ctx: durably.DurableContext) -> str:
        done = await ctx.transaction(write, "paid")
        tries["body"] += 1
        if tries["body"] < 3:
            raise RuntimeError("crash after the transaction")
        return str(done)

    with app.worker(durable_slots=1):
        assert writer.enqueue().result(timeout=20) == "paid"
    row = db.execute(f'SELECT count(*) FROM "{schema}".ledger').fetchone()
    assert row is not None and row[0] == 1 and tries["body"] == 3


def test_sync_transaction_gets_a_sync_connection(
    app: durably.App, db: psycopg.Connection[Any], schema: str
) -> None:
    app.migrate()
    db.execute(f'CREATE TABLE "{schema}".ledger (note text)')

    def write(conn: psycopg.Connection[Any], note: str) -> int:
        conn.execute(f'INSERT INTO "{schema}".ledger VALUES (%s)', (note,))
        row = conn.execute(f'SELECT count(*) FROM "{schema}".ledger').fetchone()
        return int(row[0]) if row else 0

    @app.durable_task(name="sync_writer")
    def sync_writer(ctx: durably.SyncDurableContext) -> int:
        return int(ctx.transaction(write, "x"))

    with app.worker(durable_slots=1):
        assert sync_writer.enqueue().result(timeout=20) == 1


def test_retry_resumes_and_replay_starts_over(
    app: durably.App, db: psycopg.Connection[Any], schema: str
) -> None:
    calls: Counter[str] = Counter()
    fail = {"on": True}

    def work(x: int) -> int:
        calls["work"] += 1
        return x

    @app.durable_task(name="resumable")
    async def resumable(ctx: durably.DurableContext) -> int:
        value = int(await ctx.step(work, 5))
        if fail["on"]:
            raise RuntimeError("fails until fixed")
        return value

    with app.worker(durable_slots=1):
        handle = resumable.enqueue()
        with pytest.raises(durably.RunFailed):
            handle.result(timeout=20)
        assert calls["work"] == 1
        fail["on"] = False
        assert app.retry(handle.id) is True
        assert handle.result(timeout=20) == 5
        assert calls["work"] == 1, "retry resumed after the checkpoint"
        assert app.retry(handle.id) is False, "only failed or cancelled runs are retried"
        assert app.replay(handle.id) is True
        assert handle.result(timeout=20) == 5
        assert calls["work"] == 2, "replay ran the step again"
    archived = db.execute(
        f'SELECT epoch, kind FROM "{schema}".event_log_archive WHERE run_id = %s', (handle.id,)
    ).fetchall()
    assert archived == [(0, "step")]
    assert [e["kind"] for e in app.event_log(handle.id)] == ["step"]


def test_fork_copies_the_first_events(app: durably.App) -> None:
    calls: Counter[int] = Counter()

    def step(n: int) -> int:
        calls[n] += 1
        return n * 10

    @app.durable_task(name="three_steps")
    async def three_steps(ctx: durably.DurableContext) -> list[int]:
        return [int(await ctx.step(step, n)) for n in range(3)]

    with app.worker(durable_slots=1):
        source = three_steps.enqueue()
        assert source.result(timeout=20) == [0, 10, 20]
        fork = app.fork(source.id, at_event=2)
        assert fork.result(timeout=20) == [0, 10, 20]
    assert fork.id != source.id
    assert calls == Counter({0: 1, 1: 1, 2: 2}), "the fork re-ran only what followed event 2"
    assert len(app.event_log(source.id)) == 3 and len(app.event_log(fork.id)) == 3


def test_cancel_cascades_to_unfinished_children(app: durably.App) -> None:
    cancelled = asyncio.Event()
    flags: dict[str, bool] = {}

    @app.task(name="slow_child")
    async def slow_child() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            flags["child_cancelled"] = True
            raise

    @app.durable_task(name="slow_parent")
    async def slow_parent(ctx: durably.DurableContext) -> None:
        await ctx.run(slow_child)

    with app.worker(slots=1, durable_slots=1, evict_after=0.2):
        parent = slow_parent.enqueue()
        wait_until(lambda: app.list_runs(task="slow_child", status="RUNNING"), what="child running")
        wait_until(lambda: parent.status() == "WAITING", what="parent suspended")
        assert parent.cancel() is True
        with pytest.raises(durably.RunCancelled):
            parent.result(timeout=10)
        [child] = app.list_runs(task="slow_child")
        assert child.status == "CANCELLED"
        wait_until(lambda: flags.get("child_cancelled"), what="the child's task cancelled")
    del cancelled


def test_parent_and_children_never_starve_each_other(app: durably.App) -> None:
    @app.task(name="leaf")
    def leaf(i: int) -> int:
        return i

    @app.durable_task(name="fan_out")
    async def fan_out(ctx: durably.DurableContext, n: int) -> int:
        results = await ctx.gather(*(ctx.spawn(leaf, i) for i in range(n)))
        return sum(results)

    started = time.monotonic()
    with app.worker(slots=1, durable_slots=1):
        handles = fan_out.enqueue_many([(5,), (5,), (5,)])
        assert [h.result(timeout=30) for h in handles] == [10, 10, 10]
    assert time.monotonic() - started < 30


def test_sync_durable_task_waits_for_events_and_records_values(app: durably.App) -> None:
    seen: list[tuple[str, float, str]] = []

    @app.durable_task(name="sync_waiter")
    def sync_waiter(ctx: durably.SyncDurableContext) -> Any:
        seen.append((ctx.now().isoformat(), ctx.random(), str(ctx.uuid4())))
        return ctx.wait_for_event("sync:go")

    with app.worker(durable_slots=1, evict_after=0.1):
        handle = sync_waiter.enqueue()
        wait_until(lambda: handle.status() == "WAITING", what="suspended in a sync wait")
        app.push_event("sync:go", {"ok": True})
        assert handle.result(timeout=20) == {"ok": True}
    # The suspended run was executed again from the top: the same recorded values both times.
    assert len(seen) == 2 and len(set(seen)) == 1


@pytest.mark.parametrize("missed", ["child", "event"])
def test_a_missed_wake_up_is_caught_by_the_sweeper(
    app: durably.App, db: psycopg.Connection[Any], schema: str, missed: str
) -> None:
    """A child that ends (or an event pushed) at the very moment its parent suspends can miss
    the parent: neither transaction sees the other's write. Here the miss is made on purpose —
    the child ends, and the event is stored, without the statements that wake the parent — and
    the sweeper must notice within a sweep."""

    @app.task(name="late_child", queue="elsewhere")
    def late_child() -> str:
        return "never run here"

    @app.durable_task(name="parent")
    async def parent(ctx: durably.DurableContext) -> Any:
        if missed == "child":
            return await ctx.run(late_child)
        return await ctx.wait_for_event("go")

    handle = parent.enqueue()
    with app.worker(queues=["default"], evict_after=0.05):
        wait_until(lambda: handle.status() == "WAITING", what="the parent suspended")
    s = f'"{schema}"'
    if missed == "child":
        db.execute(
            f"UPDATE {s}.runs SET status = 'COMPLETED', result = '\"done\"', finished_at = now() "
            f"WHERE task = 'late_child'"
        )
    else:
        db.execute(f"INSERT INTO {s}.events (key, payload) VALUES ('go', '\"done\"')")
    with app.worker(queues=["default"], evict_after=0.05, sweep_interval=0.2):
        assert handle.result(timeout=10) == "done"
