"""The client side against the real database: enqueue and its options, idempotency keys, batches,
transactional enqueue, JSON arguments and results, argument errors, listing and cancelling."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg
import pydantic
import pytest

import durably


def count_runs(db: psycopg.Connection[Any], schema: str) -> int:
    row = db.execute(f'SELECT count(*) FROM "{schema}".runs').fetchone()
    assert row is not None
    return int(row[0])


# Module level, so the tasks' (string) annotations resolve to them.
@dataclass
class Point:
    x: int
    y: int


class Order(pydantic.BaseModel):
    id: str
    points: list[Point]
    note: str | None = None


@dataclass
class Receipt:
    order_id: str
    total: int
    kinds: list[str]


class Summary(pydantic.BaseModel):
    count: int
    first: Point


# -- enqueue -------------------------------------------------------------------------------


def test_enqueue_returns_a_queued_handle(app: durably.App) -> None:
    @app.task(name="add")
    def add(a: int, b: int) -> int:
        return a + b

    handle = add.enqueue(1, b=2)
    assert isinstance(handle, durably.RunHandle)
    assert handle.status() == "QUEUED"
    run = app.get_run(handle.id)
    assert run is not None
    assert (run.task, run.queue, run.status, run.priority, run.attempt) == (
        "add",
        "default",
        "QUEUED",
        0,
        0,
    )
    assert run.args == {"args": [1], "kwargs": {"b": 2}}
    assert run.result is None and run.error is None and run.idempotency_key is None
    assert add.enqueue(3, 4).id > handle.id


def test_enqueue_async_returns_a_queued_handle(app: durably.App) -> None:
    @app.task(name="add")
    def add(a: int, b: int) -> int:
        return a + b

    async def main() -> tuple[durably.RunHandle, str, list[durably.RunHandle]]:
        try:
            handle = await add.enqueue_async(5, 6)
            many = await add.enqueue_many_async([(1, 1), (2, 2)])
            return handle, await handle.status_async(), many
        finally:
            await app.aclose()

    handle, status, many = asyncio.run(main())
    assert status == "QUEUED"
    run = app.get_run(handle.id)
    assert run is not None and run.args == {"args": [5, 6], "kwargs": {}}
    stored = [app.get_run(h.id) for h in many]
    assert [r.args["args"] if r else None for r in stored] == [[1, 1], [2, 2]]


def test_options_are_stored_on_the_row(app: durably.App) -> None:
    @app.task(name="ship")
    def ship(order_id: str) -> None:
        pass

    handle = ship.options(priority=5, delay=30, queue="q", idempotency_key="order-1").enqueue("o-1")
    run = app.get_run(handle.id)
    assert run is not None
    assert (run.priority, run.queue, run.idempotency_key, run.status) == (
        5,
        "q",
        "order-1",
        "QUEUED",
    )
    # run_at and created_at come from the same statement's now(): the delay is exact.
    assert run.run_at - run.created_at == timedelta(seconds=30)


def test_task_defaults_apply_and_options_override_them(app: durably.App) -> None:
    @app.task(name="report", queue="reports", priority=3)
    def report() -> None:
        pass

    plain = app.get_run(report.enqueue().id)
    assert plain is not None
    assert (plain.queue, plain.priority) == ("reports", 3)
    assert plain.run_at == plain.created_at

    bound = report.options(priority=9).options(queue="urgent")
    chained = app.get_run(bound.enqueue().id)
    assert chained is not None
    assert (chained.queue, chained.priority) == ("urgent", 9)


def test_negative_delay_is_refused(
    app: durably.App, db: psycopg.Connection[Any], schema: str
) -> None:
    @app.task(name="later")
    def later() -> None:
        pass

    later.enqueue()  # creates the schema
    with pytest.raises(ValueError, match="delay"):
        later.options(delay=-1).enqueue()
    assert count_runs(db, schema) == 1


# -- idempotency keys ----------------------------------------------------------------------


def test_idempotency_key_returns_the_existing_run(
    app: durably.App, db: psycopg.Connection[Any], schema: str
) -> None:
    @app.task(name="charge")
    def charge(order_id: str, amount: int) -> None:
        pass

    first = charge.options(idempotency_key="charge-o-1").enqueue("o-1", 100)
    again = charge.options(idempotency_key="charge-o-1").enqueue("o-1", 999)
    assert again.id == first.id
    assert count_runs(db, schema) == 1
    run = app.get_run(first.id)
    assert run is not None and run.args == {"args": ["o-1", 100], "kwargs": {}}

    other = charge.options(idempotency_key="charge-o-2").enqueue("o-2", 100)
    assert other.id != first.id
    assert count_runs(db, schema) == 2


def test_idempotency_key_is_per_task(
    app: durably.App, db: psycopg.Connection[Any], schema: str
) -> None:
    @app.task(name="charge")
    def charge() -> None:
        pass

    @app.task(name="refund")
    def refund() -> None:
        pass

    a = charge.options(idempotency_key="o-1").enqueue()
    b = refund.options(idempotency_key="o-1").enqueue()
    assert a.id != b.id
    assert count_runs(db, schema) == 2


def test_idempotency_key_inside_enqueue_many(
    app: durably.App, db: psycopg.Connection[Any], schema: str
) -> None:
    @app.task(name="charge")
    def charge(n: int) -> None:
        pass

    handles = charge.options(idempotency_key="batch-key").enqueue_many([(1,), (2,), (3,)])
    assert len(handles) == 3
    assert len({h.id for h in handles}) == 1
    assert count_runs(db, schema) == 1
    run = app.get_run(handles[0].id)
    assert run is not None and run.args["args"] == [1]


def test_idempotency_key_across_enqueue_and_enqueue_many(
    app: durably.App, db: psycopg.Connection[Any], schema: str
) -> None:
    @app.task(name="charge")
    def charge(n: int) -> None:
        pass

    single = charge.options(idempotency_key="k-1").enqueue(1)
    batch = charge.options(idempotency_key="k-1").enqueue_many([(2,), (3,)])
    assert [h.id for h in batch] == [single.id, single.id]

    batch_first = charge.options(idempotency_key="k-2").enqueue_many([(4,)])
    single_after = charge.options(idempotency_key="k-2").enqueue(5)
    assert single_after.id == batch_first[0].id

    # A batch without a key next to keyed ones still inserts every run of its own.
    fresh = charge.enqueue_many([(6,), (7,)])
    assert len({h.id for h in fresh} | {single.id, single_after.id}) == 4
    assert count_runs(db, schema) == 4


# -- enqueue_many ----------------------------------------------------------------------------


def test_enqueue_many_inserts_all_in_one_statement_in_input_order(
    app: durably.App, db: psycopg.Connection[Any], schema: str
) -> None:
    @app.task(name="square")
    def square(n: int, label: str) -> int:
        return n * n

    calls = [(i, f"item-{i}") for i in range(200)]
    handles = square.enqueue_many(calls)
    assert len(handles) == 200
    ids = [h.id for h in handles]
    assert ids == sorted(ids) and len(set(ids)) == 200
    rows = db.execute(f'SELECT id, args, created_at FROM "{schema}".runs ORDER BY id').fetchall()
    assert [r[0] for r in rows] == ids
    assert [r[1]["args"] for r in rows] == [list(c) for c in calls]
    # One statement: every row got the same transaction timestamp.
    assert len({r[2] for r in rows}) == 1
    assert square.enqueue_many([]) == []


def test_enqueue_many_checks_every_call_before_inserting_any(
    app: durably.App, db: psycopg.Connection[Any], schema: str
) -> None:
    @app.task(name="pair")
    def pair(a: int, b: int) -> None:
        pass

    pair.enqueue(0, 0)
    with pytest.raises(durably.NotSerializable, match="argument 2"):
        pair.enqueue_many([(1, 1), (2, object()), (3, 3)])
    with pytest.raises(TypeError, match="pair"):
        pair.enqueue_many([(1, 1), (2,)])
    with pytest.raises(TypeError, match="item 1"):
        pair.enqueue_many([(1, 1), [2, 2]])  # type: ignore[list-item]
    assert count_runs(db, schema) == 1


# -- transactional enqueue -----------------------------------------------------------------


def test_transactional_enqueue_is_visible_after_commit(app: durably.App, database_url: str) -> None:
    @app.task(name="confirm")
    def confirm(order_id: str) -> str:
        return f"confirmed {order_id}"

    with psycopg.connect(database_url) as conn:
        with conn.transaction():
            handle = confirm.enqueue("o-7", connection=conn)
            # Not committed yet: the App's own connections cannot see it.
            assert app.get_run(handle.id) is None
        assert handle.status() == "QUEUED"
    with app.worker(slots=1):
        assert handle.result(timeout=10) == "confirmed o-7"


def test_transactional_enqueue_is_absent_after_rollback(
    app: durably.App, database_url: str, db: psycopg.Connection[Any], schema: str
) -> None:
    @app.task(name="confirm")
    def confirm(order_id: str) -> None:
        pass

    app.migrate()
    db.execute(f'CREATE TABLE "{schema}".orders (id text PRIMARY KEY)')
    with (
        psycopg.connect(database_url) as conn,
        pytest.raises(RuntimeError, match="payment declined"),
        conn.transaction(),
    ):
        conn.execute(f'INSERT INTO "{schema}".orders VALUES (%s)', ("o-8",))
        handle = confirm.enqueue("o-8", connection=conn)
        raise RuntimeError("payment declined")
    assert app.get_run(handle.id) is None
    assert app.list_runs() == []
    assert db.execute(f'SELECT count(*) FROM "{schema}".orders').fetchone() == (0,)


def test_transactional_enqueue_async(app: durably.App, database_url: str) -> None:
    @app.task(name="confirm")
    def confirm(order_id: str) -> None:
        pass

    async def main() -> tuple[int, int, durably.Run | None, durably.Run | None]:
        try:
            async with await psycopg.AsyncConnection.connect(database_url) as conn:
                async with conn.transaction():
                    kept = await confirm.enqueue_async("kept", connection=conn)
                    seen_inside = await app.get_run_async(kept.id)
                assert seen_inside is None
                try:
                    async with conn.transaction():
                        dropped = await confirm.enqueue_async("dropped", connection=conn)
                        raise RuntimeError("abort")
                except RuntimeError:
                    pass
            return (
                kept.id,
                dropped.id,
                await app.get_run_async(kept.id),
                await app.get_run_async(dropped.id),
            )
        finally:
            await app.aclose()

    kept_id, dropped_id, kept, dropped = asyncio.run(main())
    assert kept is not None and kept.status == "QUEUED" and kept.args["args"] == ["kept"]
    assert dropped is None
    assert [r.id for r in app.list_runs()] == [kept_id]
    assert dropped_id != kept_id


def test_sync_enqueue_refuses_an_async_connection(app: durably.App, database_url: str) -> None:
    @app.task(name="confirm")
    def confirm() -> None:
        pass

    async def main() -> None:
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            with pytest.raises(TypeError, match="enqueue_async"):
                confirm.enqueue(connection=conn)  # type: ignore[arg-type]

    asyncio.run(main())
    assert app.list_runs() == []


# -- arguments and results as JSON ---------------------------------------------------------


def test_dataclasses_and_pydantic_models_are_rebuilt_on_the_worker(app: durably.App) -> None:
    @app.task(name="price")
    def price(order: Order, origin: Point, extra: list[Point]) -> Receipt:
        kinds = [type(order).__name__, type(order.points[0]).__name__, type(origin).__name__]
        kinds += [type(p).__name__ for p in extra]
        total = sum(p.x * p.y for p in order.points) + origin.x + sum(p.y for p in extra)
        return Receipt(order.id, total, kinds)

    @app.task(name="summarise")
    async def summarise(points: list[Point], *, first: Point) -> Summary:
        assert all(isinstance(p, Point) for p in points), points
        assert isinstance(first, Point), first
        return Summary(count=len(points), first=first)

    order = Order(id="o-1", points=[Point(2, 3), Point(4, 5)])
    priced = price.enqueue(order, Point(1, 0), [Point(0, 10)])
    summed = summarise.enqueue([Point(1, 1), Point(2, 2)], first=Point(9, 9))

    # Stored as plain JSON, never pickled.
    run = app.get_run(priced.id)
    assert run is not None
    assert run.args == {
        "args": [
            {"id": "o-1", "points": [{"x": 2, "y": 3}, {"x": 4, "y": 5}], "note": None},
            {"x": 1, "y": 0},
            [{"x": 0, "y": 10}],
        ],
        "kwargs": {},
    }

    with app.worker(slots=2):
        receipt = priced.result(timeout=10)
        summary = summed.result(timeout=10)
    assert isinstance(receipt, Receipt)
    assert receipt == Receipt("o-1", 2 * 3 + 4 * 5 + 1 + 10, ["Order", "Point", "Point", "Point"])
    assert isinstance(summary, Summary) and isinstance(summary.first, Point)
    assert summary == Summary(count=2, first=Point(9, 9))

    stored = app.get_run(priced.id)
    assert stored is not None and stored.result == {
        "order_id": "o-1",
        "total": 37,
        "kinds": ["Order", "Point", "Point", "Point"],
    }
    # A handle made from the id alone rebuilds the result through the App's registry.
    assert app.handle(priced.id).result(timeout=5) == receipt


class _Opaque:
    pass


def _circular() -> list[Any]:
    loop: list[Any] = []
    loop.append(loop)
    return loop


@pytest.mark.parametrize(
    ("value", "type_name"),
    [
        (object(), "object"),
        ({1, 2}, "set"),
        (_Opaque(), "_Opaque"),
        (float("nan"), "float"),
        (b"bytes", "bytes"),
        ("nul \x00 inside", "str"),
        (_circular(), "list"),
    ],
    ids=["object", "set", "class", "nan", "bytes", "nul", "circular"],
)
def test_non_json_argument_raises_not_serializable_naming_it(
    app: durably.App, db: psycopg.Connection[Any], schema: str, value: Any, type_name: str
) -> None:
    @app.task(name="store_it")
    def store_it(key: str, value: Any = None, **extra: Any) -> None:
        pass

    app.migrate()
    with pytest.raises(durably.NotSerializable) as positional:
        store_it.enqueue("k", value)
    message = str(positional.value)
    assert "store_it" in message and "argument 2" in message and f"({type_name})" in message
    assert "\n" not in message

    with pytest.raises(durably.NotSerializable, match="argument 'payload'"):
        store_it.enqueue("k", payload=value)
    assert isinstance(positional.value, TypeError)  # also catchable as a TypeError
    assert count_runs(db, schema) == 0


def test_payload_over_max_payload_raises(
    make_app: Callable[..., durably.App], db: psycopg.Connection[Any], schema: str
) -> None:
    app = make_app(max_payload=1000)

    @app.task(name="upload")
    def upload(blob: str) -> None:
        pass

    upload.enqueue("x" * 900)  # under the limit: fine
    with pytest.raises(durably.PayloadTooLarge) as too_large:
        upload.enqueue("x" * 1000)
    message = str(too_large.value)
    assert "upload" in message and "1000" in message and "max_payload" in message
    with pytest.raises(durably.PayloadTooLarge):
        upload.enqueue_many([("small",), ("y" * 5000,)])
    assert count_runs(db, schema) == 1


def test_wrong_arguments_raise_type_error_naming_the_task(
    app: durably.App, db: psycopg.Connection[Any], schema: str
) -> None:
    @app.task(name="charge_payment")
    def charge_payment(order_id: str, amount: int) -> None:
        pass

    app.migrate()
    with pytest.raises(TypeError, match=r"charge_payment: .*missing.*'amount'"):
        charge_payment.enqueue("o-1")
    with pytest.raises(TypeError, match=r"charge_payment: .*too many"):
        charge_payment.enqueue("o-1", 1, 2)
    with pytest.raises(TypeError, match=r"charge_payment: .*'currency'"):
        charge_payment.enqueue("o-1", 1, currency="EUR")
    with pytest.raises(TypeError, match="charge_payment"):
        charge_payment.options(priority=1).enqueue()
    assert count_runs(db, schema) == 0


# -- listing, cancelling, waiting ----------------------------------------------------------


def test_list_runs_filters(app: durably.App) -> None:
    @app.task(name="a")
    def a() -> None:
        pass

    @app.task(name="b")
    def b() -> None:
        pass

    a1 = a.enqueue()
    b1 = b.options(queue="q2").enqueue()
    a2 = a.enqueue()
    assert app.cancel(a2.id)

    def ids(runs: list[durably.Run]) -> list[int]:
        return [r.id for r in runs]

    assert ids(app.list_runs()) == [a2.id, b1.id, a1.id]  # newest first
    assert ids(app.list_runs(task="a")) == [a2.id, a1.id]
    assert ids(app.list_runs(queue="q2")) == [b1.id]
    assert ids(app.list_runs(status="CANCELLED")) == [a2.id]
    assert ids(app.list_runs(status="QUEUED", task="a")) == [a1.id]
    assert ids(app.list_runs(limit=2)) == [a2.id, b1.id]
    assert ids(app.list_runs(before_id=b1.id)) == [a1.id]
    assert app.list_runs(task="nope") == []
    assert all(isinstance(r, durably.Run) for r in app.list_runs())


def test_cancel_a_queued_run(app: durably.App) -> None:
    @app.task(name="slow")
    def slow() -> None:
        pass

    handle = slow.enqueue()
    assert app.cancel(handle.id) is True
    assert handle.status() == "CANCELLED"
    run = app.get_run(handle.id)
    assert run is not None and run.finished_at is not None
    with pytest.raises(durably.RunCancelled) as cancelled:
        handle.result(timeout=5)
    assert cancelled.value.run_id == handle.id
    assert isinstance(cancelled.value, durably.RunFailed)
    # Already ended: nothing more to cancel.
    assert app.cancel(handle.id) is False
    assert handle.cancel() is False
    assert app.cancel(10**12) is False


def test_a_cancelled_run_is_never_executed(app: durably.App) -> None:
    ran: list[str] = []

    @app.task(name="mark")
    def mark(tag: str) -> str:
        ran.append(tag)
        return tag

    cancelled = mark.enqueue("cancelled")
    assert cancelled.cancel()
    later = mark.enqueue("later")
    with app.worker(slots=2):
        assert later.result(timeout=10) == "later"
    assert ran == ["later"]
    assert cancelled.status() == "CANCELLED"


def test_result_times_out_on_a_run_no_worker_serves(app: durably.App) -> None:
    @app.task(name="orphan")
    def orphan() -> None:
        pass

    handle = orphan.enqueue()
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=str(handle.id)):
        handle.result(timeout=0.5)
    elapsed = time.monotonic() - started
    assert 0.5 <= elapsed < 3.0
    assert handle.status() == "QUEUED"
