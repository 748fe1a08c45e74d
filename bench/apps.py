"""The durably App and tasks the benchmarks use, in the client and in worker processes.

Worker processes load ``bench.apps:app``: its schema comes from ``DURABLY_BENCH_SCHEMA`` and its
database from ``DURABLY_DATABASE_URL`` / ``DATABASE_URL`` (else durably's embedded server). The
client side builds Apps on other schemas with :func:`build`. Tasks have fixed names, so a run
enqueued by one process is found in the registry of another.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import durably
from bench.peers.common import Probe
from durably.tasks import Task

SCHEMA_ENV = "DURABLY_BENCH_SCHEMA"
# Flow control on the no-op tasks (bench.flow): one of FLOW_MODES, with limits too high to bind,
# so a drain measures what the mechanism costs the claim, not the limit itself.
FLOW_ENV = "DURABLY_BENCH_FLOW"
FLOW_KEYS = 100  # keys the keyed modes spread the runs over
NEVER = 1_000_000_000
FLOW_MODES: dict[str, dict[str, Any]] = {
    "plain": {},
    "task concurrency": {"concurrency": NEVER},
    "queue concurrency": {},  # app.queue("default", concurrency=NEVER)
    "task rate limit": {"rate_limit": f"{NEVER}/second"},
    "per-key concurrency": {"concurrency_key": True, "key_concurrency": 10},
    "fairness": {"fairness_key": True},
}
DEFAULT_SCHEMA = "durably_bench"


async def noop() -> None:
    """Do nothing (async): the drain workload measures pure queue overhead."""


def noop_sync() -> None:
    """Do nothing (sync): runs on the worker's thread pool."""


async def item(i: int) -> None:
    """Do nothing with one small argument: the task the enqueue workloads insert."""


async def started() -> float:
    """Return the wall-clock time at which the body started (pickup latency)."""
    return time.time()


def inc(value: int) -> int:
    """The trivial function that durable workflows call as a checkpointed step."""
    return value + 1


async def three_steps(ctx: durably.DurableContext, start: int) -> int:
    """A 3-step durable workflow: three checkpointed calls of :func:`inc`."""
    a = await ctx.step(inc, start)
    b = await ctx.step(inc, a)
    return int(await ctx.step(inc, b))


async def steps(ctx: durably.DurableContext, count: int) -> int:
    """A durable workflow of ``count`` checkpointed steps (the per-step overhead workload)."""
    value = 0
    for _ in range(count):
        value = await ctx.step(inc, value)
    return value


async def probe(n: int, path: str) -> None:
    """Note when the body started, for the side-by-side pickup latency (bench.compare)."""
    Probe(path).record(n)


async def hold(seconds: float) -> None:
    """Stay in flight for a while (the memory of a worker with many runs in flight)."""
    await asyncio.sleep(seconds)


async def parked(ctx: durably.DurableContext, key: str) -> Any:
    """Wait for an event: suspended once the worker evicts it (memory of suspended runs)."""
    return await ctx.wait_for_event(key)


# Step bodies executed in this process, by run id: how the resume workload proves that a run
# re-executed against its log returned the recorded results instead of calling the steps again.
_executed: Counter[int] = Counter()
_executed_lock = threading.Lock()


def counted_inc(value: int) -> int:
    """:func:`inc`, counting its executions for the run that calls it (step bodies of sync
    functions run on a thread that carries the run's context)."""
    run_id = durably.current_run_id()
    if run_id is None:
        raise RuntimeError("counted_inc runs only as a step of a durable run")
    with _executed_lock:
        _executed[run_id] += 1
    return value + 1


async def replayable(ctx: durably.DurableContext, count: int) -> int:
    """``count`` checkpointed steps; returns how many step bodies this execution ran: ``count``
    when it recorded them, 0 when it re-executed against a log that already held them all."""
    for i in range(count):
        value = await ctx.step(counted_inc, i)
        if value != i + 1:
            raise AssertionError(f"step {i} returned {value}, expected {i + 1}")
    with _executed_lock:
        return _executed.pop(ctx.run_id, 0)


@dataclass(frozen=True)
class BenchApp:
    """An App on one schema with the benchmark's tasks registered."""

    app: durably.App
    noop: Task[[], Any]
    noop_sync: Task[[], Any]
    item: Task[[int], Any]
    started: Task[[], Any]
    probe: Task[[int, str], Any]
    three_steps: Task[[durably.DurableContext, int], Any]
    steps: Task[[durably.DurableContext, int], Any]
    replayable: Task[[durably.DurableContext, int], Any]
    hold: Task[[float], Any]
    parked: Task[[durably.DurableContext, str], Any]

    def task(self, name: str) -> Task[..., Any]:
        """A task by its short name (``noop``, ``noop_sync``, ``item``, ``started``,
        ``probe``, ``three_steps``, ``steps``, ``replayable``, ``hold``, ``parked``)."""
        task: Task[..., Any] = getattr(self, name)
        return task


def build(schema: str, url: str | None = None) -> BenchApp:
    """An App on ``schema`` (``url`` or the environment's database) with the tasks."""
    app = durably.App(url, schema=schema)
    mode = os.environ.get(FLOW_ENV) or "plain"
    flow = FLOW_MODES[mode]
    if mode == "queue concurrency":
        app.queue("default", concurrency=NEVER)
    return BenchApp(
        app=app,
        noop=app.task(name="bench.noop", **flow)(noop),
        noop_sync=app.task(name="bench.noop_sync", **flow)(noop_sync),
        item=app.task(name="bench.item")(item),
        started=app.task(name="bench.started")(started),
        probe=app.task(name="bench.probe")(probe),
        three_steps=app.durable_task(name="bench.three_steps")(three_steps),
        steps=app.durable_task(name="bench.steps")(steps),
        replayable=app.durable_task(name="bench.replayable")(replayable),
        hold=app.task(name="bench.hold")(hold),
        parked=app.durable_task(name="bench.parked")(parked),
    )


# What `durably worker bench.apps:app` serves. Building an App opens no connection.
app = build(os.environ.get(SCHEMA_ENV, DEFAULT_SCHEMA)).app
