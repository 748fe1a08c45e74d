"""The chaos workload: durable order workflows whose every effect leaves a trace the checker can
count. Worker processes import ``app`` (``durably worker tests.chaos.workload:app``).

Each ``order(item)`` run:

1. ``reserve``: a step with an external effect (a row in ``ledger``, written on a connection of
   its own, tagged with ``ctx.idempotency_key``); at least once, so re-executions may repeat it
   with the same key;
2. ``charge``: a child task with an external effect, tagged with the child's run id;
3. ``apply``: ``ctx.transaction``, an effect in the same database (``applied.times += 1``), which
   must happen exactly once;
4. ``quote``: a step whose result is a dataclass, which must come back as that dataclass when the
   run re-executes after a crash, a suspension or a retry;
5. for some items a durable sleep and a wait for an event the harness pushes;
6. a result computed from everything above, so the checker can tell an unexpected result.

In volume mode (``CHAOS_VOLUME=1`` in the workers' environment) some ``apply`` transactions stay
open longer than the workers' lease, and the harness adds bursts of thousands of ``hold`` runs
(orphaned together when the worker holding them is killed) and of ``expire`` runs (passing their
schedule timeout together on a queue no worker serves).
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from dataclasses import dataclass
from typing import Any

import psycopg

import durably

URL = os.environ.get("DURABLY_DATABASE_URL") or os.environ.get("DATABASE_URL")
SCHEMA = os.environ.get("DURABLY_TEST_SCHEMA", "chaos")
# External effects go straight to the server, not through the fault proxy: they stand for
# another system, which the engine's faults do not touch.
LEDGER_URL = os.environ.get("CHAOS_LEDGER_URL") or URL
# Generous budgets: runs must survive minutes of faults; what is checked is that nothing is lost
# or doubled, not how few retries the faults cost.
RETRIES = 100
OPTIONS: dict[str, Any] = {
    "retries": RETRIES,
    "backoff": durably.Backoff.exponential(base=0.1, max=2.0),
    "max_recoveries": 1000,
}
# Volume mode: how long the long transactions of `apply` stay open: longer than the workers'
# 3 s lease, yet short enough that most commit before their worker is next killed (a worker
# lives about 5 s between the harness's kills); one order in 50 has one.
LONG_TRANSACTION = 3.5
EXPIRE_QUEUE = "nowhere"  # served by no worker: its runs can only pass their schedule timeout
BURST_QUEUE = "burst"

_local = threading.local()


def volume() -> bool:
    """Volume mode (set by the harness in the workers' environment)."""
    return os.environ.get("CHAOS_VOLUME") == "1"


def record_effect(
    effect: str, run_id: int, item: int, idem_key: str, started: float | None = None
) -> None:
    """Append one execution of an external effect to the ledger (reconnecting if needed);
    ``started`` (epoch seconds) dates its start, its end is the time of the insert: the checker
    looks for executions of one run that overlapped."""
    conn: psycopg.Connection[Any] | None = getattr(_local, "conn", None)
    try:
        if conn is None or conn.closed:
            assert LEDGER_URL is not None, "set DATABASE_URL (or CHAOS_LEDGER_URL) for the ledger"
            conn = psycopg.connect(LEDGER_URL, autocommit=True, connect_timeout=5)
            _local.conn = conn
        conn.execute(
            f'INSERT INTO "{SCHEMA}".ledger (effect, run_id, item, idem_key, pid, started) '
            "VALUES (%s, %s, %s, %s, %s, to_timestamp(%s))",
            (effect, run_id, item, idem_key, os.getpid(), started),
        )
    except psycopg.OperationalError:
        _local.conn = None
        raise


def charge(item: int) -> int:
    run_id = durably.current_run_id()
    assert run_id is not None
    started = time.time()
    time.sleep(random.uniform(0.0, 0.2))  # a call to another system takes a while
    record_effect("charge", run_id, item, f"charge:{run_id}", started)
    return item * 7


def long_transaction(item: int) -> bool:
    """Volume mode: this item's ``apply`` holds its transaction open past the lease."""
    return volume() and item % 50 == 3


async def apply(conn: psycopg.AsyncConnection[Any], item: int) -> int:
    if long_transaction(item):
        await asyncio.sleep(LONG_TRANSACTION)  # user code inside the engine's transaction
    await conn.execute(
        f'INSERT INTO "{SCHEMA}".applied (item, times) VALUES (%s, 1) '
        "ON CONFLICT (item) DO UPDATE SET times = applied.times + 1",
        (item,),
    )
    return item


def sleeps(item: int) -> bool:
    return item % 4 == 0


def waits(item: int) -> bool:
    return item % 5 == 0


def event_key(item: int) -> str:
    return f"go:{item}"


@dataclass
class Quote:
    """A step result that is not plain JSON."""

    item: int
    total: int


def quote(item: int) -> Quote:
    return Quote(item, item * 3)


def expected(item: int) -> dict[str, Any]:
    """The result ``order(item)`` must end with."""
    return {
        "item": item,
        "reserved": item + 1,
        "charged": item * 7,
        "quoted": item * 3,
        "applied": item,
        "event": {"item": item} if waits(item) else None,
    }


async def order(ctx: durably.DurableContext, item: int) -> dict[str, Any]:
    def reserve(n: int) -> int:
        time.sleep(random.uniform(0.0, 0.2))
        record_effect("reserve", ctx.run_id, n, ctx.idempotency_key)
        return n + 1

    reserved = await ctx.step(reserve, item, name="reserve", retries=30)
    charged = await ctx.run(app.registry["charge"], item)
    quoted = await ctx.step(quote, item, name="quote")
    if not isinstance(quoted, Quote):  # the same type on every execution, or the run fails
        raise durably.NonRetryableError(f"quote came back as {type(quoted).__name__}")
    applied = await ctx.transaction(apply, item, name="apply")
    if sleeps(item):
        await ctx.sleep(0.3)
    event = await ctx.wait_for_event(event_key(item)) if waits(item) else None
    return {
        "item": item,
        "reserved": reserved,
        "charged": charged,
        "quoted": quoted.total,
        "applied": applied,
        "event": event,
    }


async def hold(item: int) -> int:
    """A burst run: busy for a moment (so a killed worker leaves it orphaned), then one effect."""
    run_id = durably.current_run_id()
    assert run_id is not None
    started = time.time()
    await asyncio.sleep(random.uniform(0.5, 2.0))
    await asyncio.to_thread(record_effect, "hold", run_id, item, f"hold:{run_id}", started)
    return item


def expire(item: int) -> int:
    """Enqueued on a queue no worker serves: it must end FAILED by its schedule timeout."""
    run_id = durably.current_run_id()
    assert run_id is not None
    record_effect("expire", run_id, item, f"expire:{run_id}")  # never expected to run
    return item


def build(app: durably.App) -> durably.App:
    """Register the workload's tasks on ``app`` (workers and the harness's client alike)."""
    app.task(name="charge", **OPTIONS)(charge)
    app.durable_task(name="order", **OPTIONS)(order)
    app.task(name="hold", queue=BURST_QUEUE, **OPTIONS)(hold)
    # Fails at its first lost worker: thousands of these reach max_recoveries in one sweep.
    app.task(name="hold_once", queue=BURST_QUEUE, **{**OPTIONS, "max_recoveries": 0})(hold)
    app.task(name="expire", queue=EXPIRE_QUEUE, schedule_timeout=1.0)(expire)
    return app


app = build(durably.App(URL, schema=SCHEMA))
