"""Values a durable run records: the same value, of the same type, on the first execution and on
every re-execution; refused at once (NotSerializable, PayloadTooLarge) when they cannot be
recorded that way, with nothing written."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import psycopg
import pydantic
import pytest

import durably
from durably.serde import MAX_DEPTH


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Order(pydantic.BaseModel):
    id: str
    total: float


def point() -> Point:
    return Point(1, 2)


def pair() -> tuple[int, str]:
    return (1, "a")


def order() -> Order:
    return Order(id="o-1", total=9.5)


def by_id() -> dict[int, str]:
    return {1: "a", 22: "b"}


def big_float() -> float:
    return 1e16  # Postgres gives it back as 10000000000000000


def untyped_pair():  # type: ignore[no-untyped-def]  # no annotation: the JSON form
    return (1, "a")


def nested(depth: int) -> Any:
    """A list nested ``depth`` levels deep."""
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


def seen_as(value: Any) -> tuple[str, Any]:
    return type(value).__name__, value


def test_step_results_have_their_declared_type_on_every_execution(app: durably.App) -> None:
    executions: list[list[tuple[str, Any]]] = []

    @app.durable_task(name="steps", retries=1, backoff=0)
    async def steps(ctx: durably.DurableContext) -> None:
        seen = [
            seen_as(await ctx.step(fn))
            for fn in (point, pair, order, by_id, big_float, untyped_pair)
        ]
        executions.append(seen)
        if len(executions) == 1:
            raise RuntimeError("fail once, to execute again from the log")

    with app.worker(durable_slots=1):
        steps.enqueue().result(timeout=20)
    first, again = executions
    assert first == [
        ("Point", Point(1, 2)),
        ("tuple", (1, "a")),
        ("Order", Order(id="o-1", total=9.5)),
        ("dict", {1: "a", 22: "b"}),
        ("float", 1e16),
        ("list", [1, "a"]),  # undeclared: the JSON form, on the first execution too
    ]
    assert again == first


def test_transaction_result_has_its_declared_type_on_every_execution(
    app: durably.App, db: psycopg.Connection[Any], schema: str
) -> None:
    app.migrate()
    db.execute(f'CREATE TABLE "{schema}".ledger (note text)')
    executions: list[list[tuple[str, Any]]] = []

    async def write(conn: psycopg.AsyncConnection[Any], note: str) -> Point:
        await conn.execute(f'INSERT INTO "{schema}".ledger VALUES (%s)', (note,))
        return Point(3, 4)

    def write_untyped(conn, note):  # type: ignore[no-untyped-def]
        conn.execute(f'INSERT INTO "{schema}".ledger VALUES (%s)', (note,))
        return {"b": 1, "a": (2, 3)}

    @app.durable_task(name="writer", retries=1, backoff=0)
    async def writer(ctx: durably.DurableContext) -> None:
        typed = await ctx.transaction(write, "typed")
        untyped = await ctx.transaction(write_untyped, "untyped")
        executions.append([seen_as(typed), seen_as(untyped), seen_as(list(untyped))])
        if len(executions) == 1:
            raise RuntimeError("fail once, to execute again from the log")

    with app.worker(durable_slots=1):
        writer.enqueue().result(timeout=20)
    first, again = executions
    assert first == [("Point", Point(3, 4)), ("dict", {"a": [2, 3], "b": 1}), ("list", ["a", "b"])]
    assert again == first  # the same keys in the same order (Postgres's) both times
    row = db.execute(f'SELECT count(*) FROM "{schema}".ledger').fetchone()
    assert row == (2,)


def test_child_result_has_the_child_tasks_declared_type(app: durably.App) -> None:
    executions: list[list[tuple[str, Any]]] = []

    @app.task(name="child")
    def child(x: int) -> Point:
        return Point(x, x)

    @app.task(name="untyped_child")
    def untyped_child():  # type: ignore[no-untyped-def]
        return (1, 2)

    @app.durable_task(name="parent", retries=1, backoff=0)
    async def parent(ctx: durably.DurableContext) -> None:
        one = await ctx.run(child, 1)
        two, three = await ctx.gather(ctx.spawn(child, 2), ctx.spawn(untyped_child))
        executions.append([seen_as(one), seen_as(two), seen_as(three)])
        if len(executions) == 1:
            raise RuntimeError("fail once, to execute again from the log")

    with app.worker(slots=2, durable_slots=1):
        parent.enqueue().result(timeout=20)
    first, again = executions
    assert first == [("Point", Point(1, 1)), ("Point", Point(2, 2)), ("list", [1, 2])]
    assert again == first


def test_event_payload_is_the_same_json_on_every_execution(app: durably.App) -> None:
    executions: list[tuple[str, Any]] = []

    @app.durable_task(name="waiter", retries=1, backoff=0)
    async def waiter(ctx: durably.DurableContext) -> None:
        executions.append(seen_as(await ctx.wait_for_event("approved")))
        if len(executions) == 1:
            raise RuntimeError("fail once, to execute again from the log")

    with app.worker(durable_slots=1):
        handle = waiter.enqueue()
        app.push_event("approved", Point(5, 6))
        handle.result(timeout=20)
    assert executions == [("dict", {"x": 5, "y": 6})] * 2


def _refused_run(app: durably.App, handle: durably.RunHandle, error: type[Exception]) -> str:
    """Wait for ``handle`` to fail with ``error`` at its first attempt, without a retry (it would
    be refused again) and with nothing in its log; return the error's message."""
    with pytest.raises(durably.RunFailed) as failed:
        handle.result(timeout=20)
    assert failed.value.error_type == f"durably.errors.{error.__name__}"
    run = app.get_run(handle.id)
    assert run is not None and (run.status, run.attempt) == ("FAILED", 1)
    assert app.event_log(handle.id) == []
    return failed.value.error_message


def test_step_result_that_cannot_be_recorded_is_refused_at_once(app: durably.App) -> None:
    caught: list[str] = []

    def make_set() -> Any:
        return {1, 2}

    def wrong_shape() -> tuple[int, int]:
        return [1, 2, 3]  # type: ignore[return-value]

    @app.durable_task(name="bad_step", retries=3, backoff=0)
    async def bad_step(ctx: durably.DurableContext, fn_name: str) -> None:
        fn = {"set": make_set, "shape": wrong_shape}[fn_name]
        try:
            await ctx.step(fn)
        except durably.NotSerializable as exc:
            caught.append(str(exc))
            raise

    with app.worker(durable_slots=1):
        unencodable = _refused_run(app, bad_step.enqueue("set"), durably.NotSerializable)
        misshapen = _refused_run(app, bad_step.enqueue("shape"), durably.NotSerializable)
    assert len(caught) == 2, "raised inside the workflow, at the first execution"
    assert "make_set" in unencodable and "set" in unencodable and "\n" not in caught[0]
    assert "wrong_shape" in misshapen and "tuple[int, int]" in misshapen
    assert "\n" not in caught[1]


def test_payloads_over_max_payload_are_refused_with_nothing_stored(
    make_app: Callable[..., durably.App], db: psycopg.Connection[Any], schema: str
) -> None:
    app = make_app(max_payload=1000)
    app.migrate()
    db.execute(f'CREATE TABLE "{schema}".ledger (note text)')
    big = "x" * 2000

    @app.task(name="child")
    def child(blob: str) -> None:
        pass

    def echo(blob: str) -> str:
        return blob

    def make_big() -> str:
        return big

    async def write_big(conn: psycopg.AsyncConnection[Any]) -> str:
        await conn.execute(f"INSERT INTO \"{schema}\".ledger VALUES ('written')")
        return big

    @app.durable_task(name="big", retries=2, backoff=0)
    async def big_flow(ctx: durably.DurableContext, what: str) -> None:
        if what == "step result":
            await ctx.step(make_big)
        elif what == "step input":
            await ctx.step(echo, big)
        elif what == "child input":
            await ctx.run(child, big)
        elif what == "transaction result":
            await ctx.transaction(write_big)

    cases = ["step result", "step input", "child input", "transaction result"]
    with app.worker(slots=1, durable_slots=1):
        handles = {what: big_flow.enqueue(what) for what in cases}
        messages = {
            what: _refused_run(app, h, durably.PayloadTooLarge) for what, h in handles.items()
        }
    assert "make_big" in messages["step result"] and "max_payload" in messages["step result"]
    assert "echo" in messages["step input"]
    assert "child" in messages["child input"]
    assert "write_big" in messages["transaction result"]
    # The transaction's own write was rolled back with it; no child run was created.
    assert db.execute(f'SELECT count(*) FROM "{schema}".ledger').fetchone() == (0,)
    assert {r.task for r in app.list_runs()} == {"big"}
    with pytest.raises(durably.PayloadTooLarge, match="event 'k'"):
        app.push_event("k", big)
    assert db.execute(f'SELECT count(*) FROM "{schema}".events').fetchone() == (0,)


def test_deeply_nested_values_are_refused_as_not_serializable(
    app: durably.App, db: psycopg.Connection[Any], schema: str
) -> None:
    deep = nested(5000)

    @app.task(name="takes")
    def takes(value: Any) -> None:
        pass

    with pytest.raises(durably.NotSerializable, match="nested more than") as enqueued:
        takes.enqueue(deep)
    assert "argument 1" in str(enqueued.value) and "\n" not in str(enqueued.value)
    with pytest.raises(durably.NotSerializable, match="nested more than"):
        app.push_event("deep", deep)
    app.push_event("deep", nested(MAX_DEPTH))  # at the limit: accepted
    with pytest.raises(durably.NotSerializable, match="nested more than"):
        app.push_event("deep", nested(MAX_DEPTH + 1))
    assert db.execute(f'SELECT count(*) FROM "{schema}".events').fetchone() == (1,)

    def make_deep() -> Any:
        return deep

    @app.durable_task(name="deep_step", retries=2, backoff=0)
    async def deep_step(ctx: durably.DurableContext) -> None:
        await ctx.step(make_deep)

    with app.worker(durable_slots=1):
        message = _refused_run(app, deep_step.enqueue(), durably.NotSerializable)
    assert "make_deep" in message and "nested more than" in message
