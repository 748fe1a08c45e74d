"""An App whose tasks are under flow control, for tests that run several worker processes.

Worker processes load ``app`` (schema from ``DURABLY_TEST_SCHEMA``); a test builds the same tasks
on its own App with :func:`build`.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import durably

URL = os.environ.get("DURABLY_DATABASE_URL") or os.environ.get("DATABASE_URL")
SCHEMA = os.environ.get("DURABLY_TEST_SCHEMA", "durably_test")


async def pause(seconds: float) -> None:
    """Hold a slot for a while."""
    await asyncio.sleep(seconds)


def build(url: str | None, schema: str) -> durably.App:
    """The App, with every task registered (the same names in every process)."""
    app = durably.App(url, schema=schema)
    app.queue("narrow", concurrency=2)

    @app.task(name="limited", concurrency=3)
    async def limited(seconds: float) -> None:
        """At most 3 of these execute at once across all workers."""
        await pause(seconds)

    @app.task(name="free")
    async def free(seconds: float) -> None:
        """No limit: runs beside the limited tasks as slots allow."""
        await pause(seconds)

    @app.task(name="per_customer", concurrency_key=lambda customer, seconds: customer)
    async def per_customer(customer: str, seconds: float) -> None:
        """One at a time per customer (the default key limit)."""
        await pause(seconds)

    @app.task(
        name="in_order", concurrency_key=lambda customer, n, marker: customer, key_ordered=True,
        retries=1, backoff=0.3,
    )  # fmt: skip
    async def in_order(customer: str, n: int, marker: str | None) -> None:
        """One at a time per customer, in enqueue order; fails its first attempt when given a
        marker file that does not exist yet (then retries after 0.3 s)."""
        if marker and not Path(marker).exists():
            Path(marker).touch()
            raise RuntimeError("first attempt fails")
        await pause(0.02)

    @app.task(name="rated", rate_limit="5/second")
    async def rated(n: int) -> None:
        """At most 5 starts in any second."""

    @app.task(name="fair", fairness_key=lambda tenant, seconds: tenant)
    async def fair(tenant: str, seconds: float) -> None:
        """Claimed round-robin across tenants."""
        await pause(seconds)

    @app.task(name="narrow_a", queue="narrow")
    async def narrow_a(seconds: float) -> None:
        """In queue 'narrow': at most 2 of its runs execute at once, whatever their task."""
        await pause(seconds)

    @app.task(name="narrow_b", queue="narrow")
    async def narrow_b(seconds: float) -> None:
        """In queue 'narrow' too."""
        await pause(seconds)

    @app.durable_task(name="onboarding")
    async def onboarding(ctx: durably.DurableContext, customer: str, children: int) -> int:
        """Starts its children at once: their key limit lets one run at a time."""
        await ctx.gather(*(ctx.spawn(per_customer, customer, 0.05) for _ in range(children)))
        return children

    return app


app = build(URL, SCHEMA)
