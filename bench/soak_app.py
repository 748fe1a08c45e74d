"""The tasks of the soak test (``python -m bench.soak``): a mix of task runs, three-step
workflows, durable sleeps, event waits and fan-outs. Worker processes load
``bench.soak_app:app``; the schema comes from ``DURABLY_BENCH_SCHEMA`` and the retention (in
seconds) from ``DURABLY_SOAK_RETENTION``."""

from __future__ import annotations

import os

import durably
from bench.apps import SCHEMA_ENV

RETENTION_ENV = "DURABLY_SOAK_RETENTION"
FAN_WIDTH = 5  # children per fan-out
NAP = 2.0  # seconds of each durable sleep
WAIT_TIMEOUT = 120.0  # seconds an event wait gives up after (the driver pushes each event)


def build(schema: str, url: str | None = None, retention: float | None = 180.0) -> durably.App:
    """An App on ``schema`` with the soak's tasks registered."""
    app = durably.App(url, schema=schema, retention=retention)

    @app.task(name="soak.task")
    async def task(n: int) -> int:
        return n

    def inc(value: int) -> int:
        return value + 1

    @app.durable_task(name="soak.flow")
    async def flow(ctx: durably.DurableContext, n: int) -> int:
        """Three checkpointed steps."""
        for _ in range(3):
            n = await ctx.step(inc, n)
        return n

    @app.durable_task(name="soak.nap")
    async def nap(ctx: durably.DurableContext, n: int) -> int:
        """A durable sleep (the run suspends and is woken by the claim), then a step."""
        await ctx.sleep(NAP)
        return await ctx.step(inc, n)

    @app.durable_task(name="soak.waiter")
    async def waiter(ctx: durably.DurableContext, key: str) -> object:
        """Waits for the event the driver pushes for it."""
        return await ctx.wait_for_event(key, timeout=WAIT_TIMEOUT)

    @app.task(name="soak.leaf")
    async def leaf(n: int, k: int) -> int:
        return n + k

    @app.durable_task(name="soak.fan")
    async def fan(ctx: durably.DurableContext, n: int) -> int:
        """Runs FAN_WIDTH children and sums their results."""
        children = [ctx.spawn(leaf, n, k) for k in range(FAN_WIDTH)]
        return sum(await ctx.gather(*children))

    return app


app = build(
    os.environ.get(SCHEMA_ENV, "durably_soak"),
    retention=float(os.environ.get(RETENTION_ENV, "180")),
)
