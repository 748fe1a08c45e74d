"""Liveness while user code holds a lock or a connection, and the user's own exceptions inside
``ctx.transaction``.

A ``ctx.transaction`` runs user code inside the engine's transaction, holding its run's row lock
and a connection for as long as that code takes. None of it may make a healthy worker look dead:
its heartbeat, sweeps, claims and outcome writes go on, no run of it is recovered, and nothing
runs twice. And an exception the user's function raises, even an ``OSError``, is the workflow's
to see, not a lost database.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

import durably

# A worker that is declared dead 3 s after its last heartbeat, with 4 s leases: any statement of
# the engine stuck behind a transaction of 6-10 s is caught.
LIVELY = {"lease": 4.0, "dead_after": 3.0, "heartbeat_interval": 0.5, "sweep_interval": 0.2}


class WorkerWatch:
    """Samples the only worker's row until ``done()``: its heartbeat's age and whether it was
    ever marked stopped."""

    def __init__(self, db: psycopg.Connection[Any], schema: str) -> None:
        self.db = db
        self.schema = schema
        self.oldest_heartbeat = 0.0
        self.stopped = False

    def until(self, done: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            row = self.db.execute(
                f"SELECT EXTRACT(EPOCH FROM now() - heartbeat_at)::float8, stopped_at IS NOT NULL "
                f'FROM "{self.schema}".workers'
            ).fetchone()
            if row is not None:
                self.oldest_heartbeat = max(self.oldest_heartbeat, row[0])
                self.stopped = self.stopped or row[1]
            if time.monotonic() > deadline:
                raise AssertionError(f"runs not finished within {timeout}s")
            time.sleep(0.1)


def runs(db: psycopg.Connection[Any], schema: str) -> dict[str, list[tuple[str, int, int]]]:
    """(status, attempt, recoveries) of every run, by task."""
    found: dict[str, list[tuple[str, int, int]]] = {}
    for task, status, attempt, recoveries in db.execute(
        f'SELECT task, status, attempt, recoveries FROM "{schema}".runs ORDER BY id'
    ):
        found.setdefault(task, []).append((status, attempt, recoveries))
    return found


def all_ended(db: psycopg.Connection[Any], schema: str) -> Callable[[], bool]:
    def ended() -> bool:
        row = db.execute(
            f"SELECT count(*) FROM \"{schema}\".runs WHERE status NOT IN ('COMPLETED', 'FAILED')"
        ).fetchone()
        return row is not None and row[0] == 0

    return ended


def executions(db: psycopg.Connection[Any], schema: str) -> dict[str, int]:
    rows = db.execute(f'SELECT name, count(*) FROM "{schema}".executions GROUP BY name')
    return {name: n for name, n in rows}


@pytest.fixture
def tables(app: durably.App, db: psycopg.Connection[Any], schema: str) -> None:
    app.migrate()
    db.execute(f'CREATE TABLE "{schema}".executions (name text)')
    db.execute(f'CREATE TABLE "{schema}".lease_left (seconds float8)')


def test_a_long_transaction_leaves_its_worker_and_other_runs_alone(
    app: durably.App, db: psycopg.Connection[Any], schema: str, database_url: str, tables: None
) -> None:
    """A 10 s ctx.transaction beside a 6 s run on the same worker (dead after 3 s without
    heartbeat): the worker is never taken for dead, the other run executes once, and the run
    in the transaction keeps its lease past the commit."""
    opened = threading.Event()

    async def record(name: str) -> None:
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            await conn.execute(f'INSERT INTO "{schema}".executions VALUES (%s)', (name,))

    async def hold(conn: psycopg.AsyncConnection[Any], seconds: float) -> str:
        await conn.execute(f"INSERT INTO \"{schema}\".executions VALUES ('transaction')")
        opened.set()
        await asyncio.sleep(seconds)
        return "held"

    @app.durable_task(name="holder")
    async def holder(ctx: durably.DurableContext) -> str:
        value = str(await ctx.transaction(hold, 10.0))
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            await conn.execute(
                f'INSERT INTO "{schema}".lease_left SELECT EXTRACT(EPOCH FROM lease_expires_at '
                f'- clock_timestamp()) FROM "{schema}".runs WHERE id = %s',
                (ctx.run_id,),
            )
        await asyncio.sleep(1.0)  # in memory, while the sweeper looks for expired leases
        return value

    @app.task(name="bystander")
    async def bystander() -> str:
        await record("bystander")
        await asyncio.sleep(6.0)
        return "done"

    watch = WorkerWatch(db, schema)
    with app.worker(slots=2, durable_slots=2, **LIVELY):
        held = holder.enqueue()
        assert opened.wait(10), "the transaction never started"
        other = bystander.enqueue()
        watch.until(all_ended(db, schema), timeout=30)
        assert held.result(timeout=1) == "held" and other.result(timeout=1) == "done"
    assert executions(db, schema) == {"transaction": 1, "bystander": 1}
    assert runs(db, schema) == {
        "holder": [("COMPLETED", 1, 0)],
        "bystander": [("COMPLETED", 1, 0)],
    }
    assert not watch.stopped, "the worker was marked stopped while it was alive"
    assert watch.oldest_heartbeat < LIVELY["dead_after"]
    row = db.execute(f'SELECT seconds FROM "{schema}".lease_left').fetchone()
    assert row is not None and row[0] > LIVELY["lease"] - 1, f"lease left after commit: {row}"


def test_more_long_transactions_than_engine_connections_do_not_starve_it(
    app: durably.App, db: psycopg.Connection[Any], schema: str, database_url: str, tables: None
) -> None:
    """Six transactions of 6 s at once (the worker's engine pool has 4 connections), one run
    with two transactions gathered, and a bystander: heartbeats, claims and outcome writes go
    on, nothing is recovered, the gathered transactions take turns without a deadlock."""
    opened = threading.Semaphore(0)

    async def hold(conn: psycopg.AsyncConnection[Any], name: str, seconds: float) -> str:
        await conn.execute(f'INSERT INTO "{schema}".executions VALUES (%s)', (name,))
        opened.release()
        await asyncio.sleep(seconds)
        return name

    @app.durable_task(name="payer")
    async def payer(ctx: durably.DurableContext, n: int) -> str:
        return str(await ctx.transaction(hold, f"payer {n}", 6.0))

    @app.durable_task(name="twins")
    async def twins(ctx: durably.DurableContext) -> list[str]:
        first = ctx.transaction(hold, "twin a", 1.0)
        second = ctx.transaction(hold, "twin b", 1.0)
        return list(await asyncio.gather(first, second))

    @app.task(name="bystander")
    async def bystander() -> str:
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            await conn.execute(f"INSERT INTO \"{schema}\".executions VALUES ('bystander')")
        await asyncio.sleep(3.0)
        return "done"

    watch = WorkerWatch(db, schema)
    with app.worker(slots=2, durable_slots=8, **LIVELY):
        payers = payer.enqueue_many([(n,) for n in range(6)])
        for _ in range(6):
            assert opened.acquire(timeout=10), "the transactions never started"
        pair = twins.enqueue()
        other = bystander.enqueue()
        watch.until(all_ended(db, schema), timeout=30)
        assert [h.result(timeout=1) for h in payers] == [f"payer {n}" for n in range(6)]
        assert pair.result(timeout=1) == ["twin a", "twin b"]
        assert other.result(timeout=1) == "done"
    assert executions(db, schema) == {
        **{f"payer {n}": 1 for n in range(6)},
        "twin a": 1,
        "twin b": 1,
        "bystander": 1,
    }
    assert runs(db, schema) == {
        "payer": [("COMPLETED", 1, 0)] * 6,
        "twins": [("COMPLETED", 1, 0)],
        "bystander": [("COMPLETED", 1, 0)],
    }
    assert not watch.stopped, "the worker was marked stopped while it was alive"
    assert watch.oldest_heartbeat < LIVELY["dead_after"]


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_an_oserror_of_user_code_in_a_transaction_reaches_the_workflow(
    app: durably.App, db: psycopg.Connection[Any], schema: str, tables: None, kind: str
) -> None:
    """The gateway's ConnectionRefusedError is the workflow's: it catches it and completes, in
    its first attempt; what the function wrote before it raised is rolled back."""
    insert = f"INSERT INTO \"{schema}\".executions VALUES ('before the gateway')"

    async def call_gateway(conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.execute(insert)
        raise ConnectionRefusedError("gateway down")

    def call_gateway_sync(conn: psycopg.Connection[Any]) -> None:
        conn.execute(insert)
        raise ConnectionRefusedError("gateway down")

    @app.durable_task(name="checkout", max_recoveries=2)
    async def checkout(ctx: durably.DurableContext) -> str:
        try:
            await ctx.transaction(call_gateway)
        except ConnectionRefusedError as exc:
            return f"caught: {exc}"
        return "not raised"

    @app.durable_task(name="checkout_sync", max_recoveries=2)
    def checkout_sync(ctx: durably.SyncDurableContext) -> str:
        try:
            ctx.transaction(call_gateway_sync)
        except ConnectionRefusedError as exc:
            return f"caught: {exc}"
        return "not raised"

    task = checkout if kind == "async" else checkout_sync
    with app.worker(durable_slots=1):
        assert task.enqueue().result(timeout=20) == "caught: gateway down"
    assert runs(db, schema) == {task.name: [("COMPLETED", 1, 0)]}
    assert executions(db, schema) == {}


def test_a_transaction_whose_connection_breaks_is_handed_back(
    app: durably.App, db: psycopg.Connection[Any], schema: str, tables: None
) -> None:
    """The connection handed to the function is the engine's: when it breaks under the function
    (here it ends its own session), the run is handed back and resumes, like after any lost
    database connection, instead of failing on the user's account."""

    async def write(conn: psycopg.AsyncConnection[Any], attempt: int) -> int:
        await conn.execute(f"INSERT INTO \"{schema}\".executions VALUES ('transaction')")
        if attempt == 1:
            await conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        return attempt

    @app.durable_task(name="fragile", max_recoveries=2)
    async def fragile(ctx: durably.DurableContext) -> int:
        return int(await ctx.transaction(write, ctx.attempt))

    with app.worker(durable_slots=1):
        assert fragile.enqueue().result(timeout=20) == 2
    assert runs(db, schema) == {"fragile": [("COMPLETED", 2, 1)]}
    assert executions(db, schema) == {"transaction": 1}


def test_a_blocked_event_loop_loses_no_run_whose_lease_is_valid(
    make_app: Callable[..., durably.App], db: psycopg.Connection[Any], schema: str, tables: None
) -> None:
    """An async task that blocks its worker's event loop for 5 s (a sync call inside ``async
    def``) stops that worker's heartbeats: another worker's sweeper marks it stopped after 2 s.
    But it still holds its lock (alive and connected), so the run it executes beside the blocker,
    whose 15 s lease is valid, is not taken from it: it executes once, attempt 1."""
    app = make_app()
    app.migrate()
    sweeper = make_app()

    @app.task(name="blocker", queue="a")
    async def blocker() -> str:
        time.sleep(5.0)  # blocks the event loop: heartbeats, sweeps, everything stops
        return "unblocked"

    @app.task(name="counted", queue="a")
    def counted() -> str:
        db_conn = psycopg.connect(app.url, autocommit=True)
        with db_conn:
            db_conn.execute(f"INSERT INTO \"{schema}\".executions VALUES ('counted')")
        time.sleep(7.0)
        return "once"

    @sweeper.task(name="idle", queue="b")
    def idle() -> None: ...

    lively = {"lease": 15.0, "dead_after": 2.0, "heartbeat_interval": 0.5, "sweep_interval": 0.2}
    watch = WorkerWatch(db, schema)
    with sweeper.worker(**lively), app.worker(slots=4, **lively):
        run = counted.enqueue()
        deadline = time.monotonic() + 10
        while executions(db, schema).get("counted") != 1:
            assert time.monotonic() < deadline, "counted never started"
            time.sleep(0.05)
        blocked = blocker.enqueue()
        watch.until(all_ended(db, schema), timeout=40)
        assert run.result(timeout=1) == "once" and blocked.result(timeout=1) == "unblocked"
    assert watch.stopped, "the blocked worker was never marked stopped: the test proves nothing"
    assert executions(db, schema) == {"counted": 1}
    assert runs(db, schema)["counted"] == [("COMPLETED", 1, 0)]


def test_the_sync_api_in_an_async_task_is_refused_instead_of_freezing_the_worker(
    app: durably.App,
) -> None:
    """``child.enqueue(...).result()`` inside ``async def`` would block the worker's event loop
    until its timeout (the child could never be claimed by this worker meanwhile): it raises at
    once, saying what to call instead, and the worker goes on serving."""

    @app.task(name="child")
    def child(x: int) -> int:
        return x * 2

    @app.task(name="blocking_parent", retries=0)
    async def blocking_parent() -> int:
        return int(child.enqueue(21).result(timeout=30))

    @app.task(name="async_parent")
    async def async_parent() -> int:
        handle = await child.enqueue_async(21)
        return int(await handle.result_async(timeout=30))

    with app.worker(slots=2):
        with pytest.raises(durably.RunFailed, match="await the async twin instead"):
            blocking_parent.enqueue().result(timeout=10)
        assert async_parent.enqueue().result(timeout=10) == 42
