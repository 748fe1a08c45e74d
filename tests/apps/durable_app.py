"""Durable tasks for tests that run worker processes (schema from DURABLY_TEST_SCHEMA)."""

from __future__ import annotations

import os
import time

import durably

URL = os.environ.get("DURABLY_DATABASE_URL") or os.environ.get("DATABASE_URL")
SCHEMA = os.environ.get("DURABLY_TEST_SCHEMA", "durably_test")
app = durably.App(URL, schema=SCHEMA)


def quick(n: int) -> int:
    return n


def slow(n: int) -> int:
    time.sleep(3.0)
    return n * 10


@app.durable_task(name="three_steps")
async def three_steps(ctx: durably.DurableContext) -> list[int]:
    """Step 1 is slow, so a test can freeze the worker in the middle of it."""
    return [await ctx.step(quick, 0), await ctx.step(slow, 1), await ctx.step(quick, 2)]


@app.durable_task(name="sleepy")
async def sleepy(ctx: durably.DurableContext, seconds: float) -> float:
    """Sleeps durably and returns how long it slept by the database clock."""
    start = await ctx.now()
    await ctx.sleep(seconds)
    return ((await ctx.now()) - start).total_seconds()
