"""The chaos workload: durable order workflows whose every effect leaves a trace the checker can
count. Worker processes import ``app`` (``durably worker tests.chaos.workload:app``).

Each ``order(item)`` run:

1. ``reserve``: a step with an external effect (a row in ``ledger``, written on a connection of
   its own, tagged with ``ctx.idempotency_key``); at least once, so re-executions may repeat it
   with the same key;
2. ``charge``: a child task with an external effect, tagged with the child's run id;
3. ``apply``: ``ctx.transaction``, an effect in the same database (``applied.times += 1``), which
   must happen exactly once;
4. for some items a durable sleep and a wait for an event the harness pushes;
5. a result computed from everything above, so the checker can tell an unexpected result.
"""

from __future__ import annotations

import os
import random
import threading
import time
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

_local = threading.local()


def record_effect(effect: str, run_id: int, item: int, idem_key: str) -> None:
    """Append one execution of an external effect to the ledger (reconnecting if needed)."""
    conn: psycopg.Connection[Any] | None = getattr(_local, "conn", None)
    try:
        if conn is None or conn.closed:
            conn = psycopg.connect(LEDGER_URL, autocommit=True, connect_timeout=5)
            _local.conn = conn
        conn.execute(
            f'INSERT INTO "{SCHEMA}".ledger (effect, run_id, item, idem_key, pid) '
            "VALUES (%s, %s, %s, %s, %s)",
            (effect, run_id, item, idem_key, os.getpid()),
        )
    except psycopg.OperationalError:
        _local.conn = None
        raise


def charge(item: int) -> int:
    run_id = durably.current_run_id()
    assert run_id is not None
    time.sleep(random.uniform(0.0, 0.2))  # a call to another system takes a while
    record_effect("charge", run_id, item, f"charge:{run_id}")
    return item * 7


async def apply(conn: psycopg.AsyncConnection[Any], item: int) -> int:
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


def expected(item: int) -> dict[str, Any]:
    """The result ``order(item)`` must end with."""
    return {
        "item": item,
        "reserved": item + 1,
        "charged": item * 7,
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
    applied = await ctx.transaction(apply, item, name="apply")
    if sleeps(item):
        await ctx.sleep(0.3)
    event = await ctx.wait_for_event(event_key(item)) if waits(item) else None
    return {
        "item": item,
        "reserved": reserved,
        "charged": charged,
        "applied": applied,
        "event": event,
    }


def build(app: durably.App) -> durably.App:
    """Register the workload's tasks on ``app`` (workers and the harness's client alike)."""
    app.task(name="charge", **OPTIONS)(charge)
    app.durable_task(name="order", **OPTIONS)(order)
    return app


app = build(durably.App(URL, schema=SCHEMA))
