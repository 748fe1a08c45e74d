"""An App with a globally limited task, for tests that run several worker processes."""

from __future__ import annotations

import asyncio
import os

import durably

URL = os.environ.get("DURABLY_DATABASE_URL") or os.environ.get("DATABASE_URL")
SCHEMA = os.environ.get("DURABLY_TEST_SCHEMA", "durably_test")
app = durably.App(URL, schema=SCHEMA)


@app.task(name="limited", concurrency=3)
async def limited(seconds: float) -> None:
    """At most 3 of these execute at once across all workers."""
    await asyncio.sleep(seconds)


@app.task(name="free")
async def free(seconds: float) -> None:
    """No limit: runs beside the limited task as slots allow."""
    await asyncio.sleep(seconds)
