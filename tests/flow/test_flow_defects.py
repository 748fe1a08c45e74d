"""Flow control whatever the enqueuer knows: runs of unlimited tasks beside a queue limit are
picked up by a running worker, on every path that creates runs; a client that declares fewer
limits than the worker (or more) cannot strand runs or slip past the worker's limits; and key
functions are called with the task's arguments by name, however the task was called."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

import durably

Db = psycopg.Connection[Any]


def limited_app(make_app: Callable[..., durably.App]) -> tuple[durably.App, Any, Any]:
    """An App with a limited queue and a task on it, plus an unlimited ``add``."""
    app = make_app()
    app.queue("emails", concurrency=5)

    @app.task(name="send", queue="emails")
    def send(to: str) -> str:
        return f"sent to {to}"

    @app.task(name="add")
    def add(a: int, b: int) -> int:
        return a + b

    app.migrate()
    return app, send, add


def test_an_unlimited_task_is_picked_up_beside_a_queue_limit(
    make_app: Callable[..., durably.App],
) -> None:
    app, send, add = limited_app(make_app)
    with app.worker(slots=4):
        assert add.enqueue(2, 2).result(timeout=10) == 4
        assert [h.result(timeout=10) for h in add.enqueue_many([(1, 1), (2, 3)])] == [2, 5]
        with psycopg.connect(app.url) as conn:
            in_transaction = add.enqueue(3, 4, connection=conn)
        assert in_transaction.result(timeout=10) == 7
        assert send.enqueue("a@example.com").result(timeout=10) == "sent to a@example.com"


def test_a_retried_run_of_an_unlimited_task_is_picked_up_beside_a_queue_limit(
    make_app: Callable[..., durably.App],
) -> None:
    app, _, _ = limited_app(make_app)
    attempts: list[int] = []

    @app.task(name="flaky")
    def flaky() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise durably.NonRetryableError("first attempt fails")
        return "ok"

    with app.worker(slots=2):
        handle = flaky.enqueue()
        with pytest.raises(durably.RunFailed):
            handle.result(timeout=10)
        assert app.retry(handle.id)
        assert handle.result(timeout=10) == "ok"


def test_a_durable_runs_child_of_an_unlimited_task_is_picked_up_beside_a_queue_limit(
    make_app: Callable[..., durably.App],
) -> None:
    app, _, add = limited_app(make_app)

    @app.durable_task(name="parent")
    async def parent(ctx: durably.DurableContext, n: int) -> int:
        first = await ctx.run(add, n, 1)
        second, third = await ctx.gather(ctx.spawn(add, first, 1), ctx.spawn(add, first, 2))
        return int(second + third)

    # Enqueued before the worker starts: the parent is taken whatever the claim reads; only
    # its children are created while the worker runs.
    handle = parent.enqueue(1)
    with app.worker(slots=4, durable_slots=2):
        assert handle.result(timeout=15) == 7
        assert parent.enqueue(10).result(timeout=15) == 25
        forked = app.fork(handle.id, at_event=1)
        assert forked.result(timeout=15) == 7


def no_overlap(db: Db, schema: str, task: str) -> None:
    """Runs of ``task`` executed one at a time (their [started, finished] spans are disjoint)."""
    spans = db.execute(
        f'SELECT started_at, finished_at FROM "{schema}".runs WHERE task = %s ORDER BY started_at',
        (task,),
    ).fetchall()
    assert len(spans) > 1
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end, f"two runs of {task} executed at once"


def test_a_client_that_declares_no_limits_cannot_strand_runs_or_pass_the_limits(
    make_app: Callable[..., durably.App], db: Db, schema: str
) -> None:
    worker_app = make_app()
    worker_app.queue("emails", concurrency=1)
    client = make_app()  # the same tasks, without the queue limit or the task limit

    for app, limit in ((worker_app, 1), (client, None)):

        @app.task(name="send", queue="emails")
        def send(n: int) -> int:
            return n

        @app.task(name="charge", concurrency=limit)
        def charge(n: int) -> int:
            return n

        @app.task(name="add")
        def add(a: int, b: int) -> int:
            return a + b

    worker_app.migrate()
    client_send = client.get_task("send")
    client_charge = client.get_task("charge")
    with worker_app.worker(slots=4):
        sends = client_send.enqueue_many([(n,) for n in range(6)])
        charges = client_charge.enqueue_many([(n,) for n in range(6)])
        assert client.get_task("add").enqueue(1, 2).result(timeout=10) == 3
        assert [h.result(timeout=10) for h in sends + charges] == [*range(6), *range(6)]
    no_overlap(db, schema, "send")
    no_overlap(db, schema, "charge")


def test_a_client_that_declares_more_limits_than_the_worker_does_not_bind_it(
    make_app: Callable[..., durably.App],
) -> None:
    worker_app = make_app()
    worker_app.queue("emails", concurrency=1)  # the worker claims under flow control
    client = make_app()
    client.queue("default", concurrency=1)
    together = threading.Barrier(2, timeout=10)

    for app, limit in ((worker_app, None), (client, 1)):

        @app.task(name="pair", concurrency=limit)
        def pair(n: int) -> int:
            together.wait()  # returns only when two runs execute at once
            return n

    worker_app.migrate()
    with worker_app.worker(slots=4):
        handles = client.get_task("pair").enqueue_many([(1,), (2,)])
        assert [h.result(timeout=15) for h in handles] == [1, 2]


def fairness_keys(db: Db, schema: str) -> list[str]:
    query = f'SELECT fairness_key FROM "{schema}".runs ORDER BY id'
    return [row[0] for row in db.execute(query).fetchall()]


def test_the_documented_fairness_key_works_positionally_and_by_keyword(
    app: durably.App, db: Db, schema: str
) -> None:
    @app.task(name="build_report", fairness_key=lambda tenant, **_: tenant)
    async def build_report(tenant: str, report_id: int) -> None: ...

    @app.task(name="defaulted", fairness_key=lambda tenant, **_: tenant)
    async def defaulted(report_id: int, tenant: str = "house") -> None: ...

    @app.durable_task(name="durable_report", fairness_key=lambda tenant, **_: tenant)
    async def durable_report(ctx: durably.DurableContext, tenant: str, report_id: int) -> None: ...

    build_report.enqueue("acme", 7)
    build_report.enqueue(tenant="globex", report_id=8)
    build_report.enqueue("initech", report_id=9)
    build_report.enqueue_many([("umbrella", 10)])
    defaulted.enqueue(11)
    defaulted.enqueue(12, "hooli")
    durable_report.enqueue("wayne", 13)
    assert fairness_keys(db, schema) == [
        "acme", "globex", "initech", "umbrella", "house", "hooli", "wayne",
    ]  # fmt: skip


def test_a_key_function_that_fails_says_which_task_and_what_to_write(app: durably.App) -> None:
    @app.task(name="build_report", concurrency_key=lambda customer: customer)
    async def build_report(tenant: str, report_id: int) -> None: ...

    with pytest.raises(ValueError) as caught:
        build_report.enqueue("acme", 7)
    message = str(caught.value)
    assert "\n" not in message
    assert "build_report" in message and "concurrency_key" in message
    assert "lambda tenant, **_: tenant" in message
