"""User code that misuses the durable context, or hangs, as an attacker's workflow would: every
case either works the same on every execution or is refused at once in one line, and no case
costs the worker its other runs."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import psycopg
import pytest

import durably


def test_a_child_awaited_twice_gives_its_result_twice_in_one_attempt(
    app: durably.App, db: psycopg.Connection[Any], schema: str
) -> None:
    """The second wait answered from what the first recorded: not taken for a lost lease."""

    @app.task(name="double")
    def double(x: int) -> int:
        return 2 * x

    @app.durable_task(name="twice")
    async def twice(ctx: durably.DurableContext) -> int:
        child = ctx.spawn(double, 21)
        first = await child
        again = await child
        (third,) = await ctx.gather(child)
        return int(first + again + third)

    with app.worker(lease=30):
        assert twice.enqueue().result(timeout=20) == 126
    row = db.execute(f"SELECT attempt, recoveries FROM \"{schema}\".runs WHERE task = 'twice'")
    assert row.fetchone() == (1, 0)


def test_a_ctx_operation_inside_a_step_or_transaction_is_refused_at_once(
    app: durably.App,
) -> None:
    """Replay skips a recorded step without calling it, so an operation inside it would vanish
    from the order of operations on re-execution: refused on the first execution instead."""

    @app.durable_task(name="nests", retries=0)
    async def nests(ctx: durably.DurableContext, where: str) -> str:
        async def nested_now() -> str:
            return str(await ctx.now())

        async def in_transaction(conn: psycopg.AsyncConnection[Any]) -> str:
            return str(await ctx.uuid4())

        if where == "step":
            return str(await ctx.step(nested_now, name="nested"))
        return str(await ctx.transaction(in_transaction, name="nested"))

    with app.worker():
        for where in ("step", "transaction"):
            with pytest.raises(durably.RunFailed, match=r"inside a step or transaction"):
                nests.options(idempotency_key=where).enqueue(where).result(timeout=20)


def test_a_suspension_caught_by_a_bare_except_still_suspends_the_run(app: durably.App) -> None:
    """``except:`` around a wait catches the engine's suspension too: the run suspends anyway,
    and the event pushed later is what it returns (not the fallback)."""

    @app.durable_task(name="approval")
    async def approval(ctx: durably.DurableContext) -> str:
        try:
            decision = await ctx.wait_for_event("approve:1", timeout=3600)
        except:  # noqa: E722 -- the user meant TimeoutError
            decision = "timed-out"
        return str(decision)

    with app.worker(evict_after=0.3):
        handle = approval.enqueue()
        deadline = time.monotonic() + 10
        while handle.status() != "WAITING":
            assert time.monotonic() < deadline, f"not suspended: {handle.status()}"
            time.sleep(0.05)
        app.push_event("approve:1", "yes")
        assert handle.result(timeout=20) == "yes"


def test_hung_sync_steps_do_not_starve_the_other_steps_of_the_worker(app: durably.App) -> None:
    """Sync step bodies that never return (past their run's timeout) keep their threads, but
    those are the worker's own, not a small shared pool: a later run's sync step still runs."""
    release = threading.Event()

    def hang() -> str:
        release.wait(60)
        return "late"

    def trivial() -> int:
        return 42

    @app.durable_task(name="stuck", timeout=1, retries=0)
    async def stuck(ctx: durably.DurableContext) -> str:
        return str(await ctx.step(hang))

    @app.durable_task(name="healthy", timeout=10)
    async def healthy(ctx: durably.DurableContext) -> int:
        return int(await ctx.step(trivial))

    try:
        with app.worker(durable_slots=20):
            stuck_runs = [stuck.options(idempotency_key=str(i)).enqueue() for i in range(10)]
            for handle in stuck_runs:
                with pytest.raises(durably.RunFailed, match="timeout"):
                    handle.result(timeout=20)
            assert healthy.enqueue().result(timeout=10) == 42
    finally:
        release.set()


def test_a_wait_for_an_event_key_push_event_would_refuse_is_refused(app: durably.App) -> None:
    @app.durable_task(name="waits_long", retries=0)
    async def waits_long(ctx: durably.DurableContext) -> Any:
        return await ctx.wait_for_event("k" * 1500)

    with app.worker(), pytest.raises(durably.RunFailed, match="event key is not valid"):
        waits_long.enqueue().result(timeout=20)


def test_a_systemexit_in_a_background_task_of_a_run_does_not_end_the_worker(
    app: durably.App,
) -> None:
    """asyncio lets SystemExit escape its event loop from any task: one raised in a task a run
    started and never awaited (a library giving up) must not end the worker."""

    async def gives_up() -> None:
        raise SystemExit("library gave up")

    @app.task(name="fire_and_forget")
    async def fire_and_forget() -> str:
        background = asyncio.ensure_future(gives_up())
        await asyncio.sleep(0.2)
        return "started it" if background.done() else "still running"

    @app.task(name="after")
    def after() -> str:
        return "served"

    with app.worker(slots=2) as worker:
        assert fire_and_forget.enqueue().result(timeout=10) == "started it"
        assert after.enqueue().result(timeout=10) == "served"
        worker.raise_if_crashed()


def test_a_run_that_swallows_its_cancellation_frees_its_slot_and_lets_shutdown_end(
    app: durably.App,
) -> None:
    """A polling loop that catches CancelledError and goes on ignores the cancellation sent by
    ``app.cancel``: its slot is taken back a few seconds later (its writes are refused anyway),
    so the next run is served, and the worker's shutdown is not held up by it."""
    stop_polling = threading.Event()

    @app.task(name="poller")
    async def poller() -> None:
        while not stop_polling.is_set():
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:  # the misbehaviour under test
                continue

    @app.task(name="quick")
    def quick() -> str:
        return "ran"

    try:
        with app.worker(slots=1, grace_period=1):
            handle = poller.enqueue()
            deadline = time.monotonic() + 10
            while handle.status() != "RUNNING":
                assert time.monotonic() < deadline, "the poller never started"
                time.sleep(0.05)
            assert app.cancel(handle.id)
            assert quick.enqueue().result(timeout=20) == "ran"
            stopping = time.monotonic()
        assert time.monotonic() - stopping < 15, "shutdown waited for the poller"
    finally:
        stop_polling.set()
