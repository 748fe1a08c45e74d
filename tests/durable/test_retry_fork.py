"""Retry after a cascading cancel brings the whole durable tree back; a fork owns its pending
children instead of sharing its source's."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import psycopg
import pytest

import durably
from tests.helpers import wait_until


class Tree:
    """A three-level durable tree: root -> mid (durable) -> leaf, whose leaf waits on a gate."""

    def __init__(self, app: durably.App) -> None:
        self.app = app
        self.calls: Counter[str] = Counter()
        self.gate = {"open": False}

        @app.task(name="leaf")
        async def leaf(x: int) -> int:
            self.calls["leaf"] += 1
            try:
                while not self.gate["open"]:
                    await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                self.calls["leaf_cancelled"] += 1
                raise
            return x + 1

        @app.durable_task(name="mid")
        async def mid(ctx: durably.DurableContext, x: int) -> int:
            return int(await ctx.run(leaf, x)) * 10

        @app.durable_task(name="root")
        async def root(ctx: durably.DurableContext, x: int) -> int:
            return int(await ctx.run(mid, x)) + 1

        self.root = root

    def cancel_while_leaf_runs(self, root_id: int, times: int) -> None:
        """Wait for the leaf's ``times``-th execution, then cancel the root and see every level
        of the tree end CANCELLED (the running leaf stopped)."""
        wait_until(lambda: self.calls["leaf"] == times, what=f"leaf execution {times}")
        wait_until(
            lambda: self.app.list_runs(task="leaf", status="RUNNING"), what="the leaf running"
        )
        assert self.app.cancel(root_id) is True
        wait_until(lambda: self.calls["leaf_cancelled"] == times, what="the leaf stopped")
        statuses = {r.task: r.status for r in self.app.list_runs(limit=10)}
        assert statuses == {"root": "CANCELLED", "mid": "CANCELLED", "leaf": "CANCELLED"}


def test_retry_after_a_cascading_cancel_restores_a_three_level_tree(app: durably.App) -> None:
    tree = Tree(app)
    with app.worker(slots=2, durable_slots=4, evict_after=0.2):
        handle = tree.root.enqueue(1)
        tree.cancel_while_leaf_runs(handle.id, times=1)
        tree.gate["open"] = True
        assert app.retry(handle.id) is True
        assert handle.result(timeout=20) == 21
    assert tree.calls["leaf"] == 2, "the cancelled grandchild ran again"
    statuses = {r.task: r.status for r in app.list_runs(limit=10)}
    assert statuses == {"root": "COMPLETED", "mid": "COMPLETED", "leaf": "COMPLETED"}
    assert len(app.list_runs(limit=10)) == 3, "retry brought back the same runs, made no new ones"


def test_a_tree_cancelled_and_retried_twice_completes(app: durably.App) -> None:
    tree = Tree(app)
    with app.worker(slots=2, durable_slots=4, evict_after=0.2):
        handle = tree.root.enqueue(4)
        tree.cancel_while_leaf_runs(handle.id, times=1)
        assert app.retry(handle.id) is True
        tree.cancel_while_leaf_runs(handle.id, times=2)
        assert app.retry(handle.id) is True
        tree.gate["open"] = True
        assert handle.result(timeout=20) == 51
    assert tree.calls["leaf"] == 3


def test_retry_clears_what_the_cancelled_runs_were_waiting_for(
    app: durably.App, db: psycopg.Connection[Any], schema: str
) -> None:
    tree = Tree(app)
    with app.worker(slots=2, durable_slots=4, evict_after=0.2):
        handle = tree.root.enqueue(1)
        wait_until(lambda: app.list_runs(task="mid", status="WAITING"), what="mid suspended")
        wait_until(lambda: handle.status() == "WAITING", what="root suspended")
        tree.cancel_while_leaf_runs(handle.id, times=1)
    # No worker now: the retried runs stay QUEUED for us to look at.
    assert app.retry(handle.id) is True
    rows = db.execute(
        f"SELECT task, status, worker_id, lease_expires_at, wake_at, wait_children, wait_event,"
        f' error, finished_at FROM "{schema}".runs ORDER BY id'
    ).fetchall()
    assert rows == [
        (task, "QUEUED", None, None, None, None, None, None, None)
        for task in ("root", "mid", "leaf")
    ]
    tree.gate["open"] = True
    with app.worker(slots=2, durable_slots=4, evict_after=0.2):
        assert handle.result(timeout=20) == 21


def test_retry_brings_back_ten_thousand_cancelled_children_in_one_call(
    app: durably.App, db: psycopg.Connection[Any], schema: str
) -> None:
    n = 10_000

    @app.task(name="item", queue="items")
    def item(i: int) -> int:
        return i

    @app.durable_task(name="fan")
    async def fan(ctx: durably.DurableContext) -> int:
        return sum(await ctx.gather(*(ctx.spawn(item, i) for i in range(n))))

    # A worker for the parent only: it spawns every child, then suspends waiting for them.
    with app.worker(queues=["default"], durable_slots=1, evict_after=0.2):
        handle = fan.enqueue()
        wait_until(lambda: handle.status() == "WAITING", timeout=60, what="the parent waiting")
    assert app.cancel(handle.id) is True

    def count(status: str) -> int:
        sql = f'SELECT count(*) FROM "{schema}".runs WHERE task = %s AND status = %s'
        return int(db.execute(sql, ("item", status)).fetchone()[0])  # type: ignore[index]

    assert count("CANCELLED") == n
    assert app.retry(handle.id) is True
    assert count("QUEUED") == n
    with app.worker(slots=50, durable_slots=1):
        assert handle.result(timeout=60) == sum(range(n))


def test_a_fork_of_a_run_waiting_on_a_child_gets_its_own_child(app: durably.App) -> None:
    calls: Counter[str] = Counter()
    gate = {"open": False}

    @app.task(name="slow")
    async def slow(x: int) -> int:
        calls["slow"] += 1
        while not gate["open"]:
            await asyncio.sleep(0.01)
        return x * 2

    @app.durable_task(name="parent")
    async def parent(ctx: durably.DurableContext) -> int:
        return int(await ctx.run(slow, 21))

    def child_of(run_id: int) -> int | None:
        log = app.event_log(run_id)
        return log[0]["child_id"] if log else None

    with app.worker(slots=2, durable_slots=2, evict_after=0.2):
        source = parent.enqueue()
        wait_until(lambda: source.status() == "WAITING", what="the source waiting on its child")
        fork = app.fork(source.id, at_event=1)
        wait_until(lambda: fork.status() == "WAITING", what="the fork waiting on a child")
        source_child, fork_child = child_of(source.id), child_of(fork.id)
        assert fork_child is not None and fork_child != source_child
        wait_until(lambda: calls["slow"] == 2, what="the fork's own child running")
        assert app.cancel(source.id) is True
        with pytest.raises(durably.RunCancelled):
            source.result(timeout=10)
        assert fork.status() in ("RUNNING", "WAITING"), "cancelling the source left the fork be"
        gate["open"] = True
        assert fork.result(timeout=20) == 42
    statuses = {r.id: r.status for r in app.list_runs(task="slow")}
    assert statuses == {source_child: "CANCELLED", fork_child: "COMPLETED"}


def test_a_fork_reuses_a_child_that_already_completed(app: durably.App) -> None:
    calls: Counter[str] = Counter()

    @app.task(name="quick", queue="children")
    def quick(x: int) -> int:
        calls["quick"] += 1
        return x * 3

    @app.durable_task(name="parent")
    async def parent(ctx: durably.DurableContext) -> int:
        return int(await ctx.run(quick, 5)) + 1

    # The source spawns its child and suspends; the child completes while no worker serves the
    # source, so the source's log still has the child pending when the fork is made.
    with app.worker(queues=["default"], durable_slots=1, evict_after=0.2):
        source = parent.enqueue()
        wait_until(lambda: source.status() == "WAITING", what="the source waiting")
    with app.worker(queues=["children"], slots=1):
        wait_until(lambda: source.status() == "QUEUED", what="the child done, the source woken")
    [source_entry] = app.event_log(source.id)
    assert source_entry["done"] is False
    fork = app.fork(source.id, at_event=1)
    [copied] = app.event_log(fork.id)
    assert (copied["done"], copied["result"]) == (True, 15), "the result is the fork's own"
    assert app.cancel(source.id) is True
    with app.worker(slots=1, durable_slots=1):
        assert fork.result(timeout=20) == 16
    assert calls["quick"] == 1, "the fork took the completed child's result, not a new child"
    [fork_entry] = app.event_log(fork.id)
    assert fork_entry["child_id"] == source_entry["child_id"]


def test_a_retried_child_is_not_failed_by_its_old_schedule_timeout(
    app: durably.App, db: psycopg.Connection[Any], schema: str
) -> None:
    @app.task(name="picky", queue="children", schedule_timeout=0.5)
    def picky() -> str:
        return "done"

    @app.durable_task(name="parent")
    async def parent(ctx: durably.DurableContext) -> str:
        return str(await ctx.run(picky))

    # The child is spawned but no worker serves its queue; the parent is cancelled in time.
    with app.worker(queues=["default"], durable_slots=1, evict_after=0.2):
        handle = parent.enqueue()
        wait_until(lambda: handle.status() == "WAITING", what="the parent waiting")
    assert app.cancel(handle.id) is True

    def deadline_passed() -> bool:
        sql = f'SELECT schedule_deadline < now() FROM "{schema}".runs WHERE task = %s'
        return bool(db.execute(sql, ("picky",)).fetchone()[0])  # type: ignore[index]

    wait_until(deadline_passed, what="the child's first schedule deadline to pass")
    assert app.retry(handle.id) is True
    with app.worker(slots=1, durable_slots=1, sweep_interval=0.05):
        assert handle.result(timeout=20) == "done"


def test_a_fork_of_a_run_waiting_for_an_event_takes_an_event_pushed_after_it(
    app: durably.App,
) -> None:
    @app.durable_task(name="waiter")
    async def waiter(ctx: durably.DurableContext) -> Any:
        return await ctx.wait_for_event("go", timeout=60)

    with app.worker(durable_slots=2, evict_after=0.2):
        source = waiter.enqueue()
        wait_until(lambda: source.status() == "WAITING", what="the source waiting")
        fork = app.fork(source.id, at_event=1)
        wait_until(lambda: fork.status() == "WAITING", what="the fork waiting")
        assert app.cancel(source.id) is True
        app.push_event("go", {"n": 1})
        assert fork.result(timeout=20) == {"n": 1}
    [entry] = app.event_log(fork.id)
    assert entry["kind"] == "event" and entry["done"] is True
