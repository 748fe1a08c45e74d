"""An App with scheduled tasks, for tests that run worker processes.

``tick`` declares ``cron=`` from ``DURABLY_TEST_CRON`` (no cron when it is unset); ``noop`` is the
task that tests schedule with ``app.schedule``.
"""

from __future__ import annotations

import os

import durably

URL = os.environ.get("DURABLY_DATABASE_URL") or os.environ.get("DATABASE_URL")
SCHEMA = os.environ.get("DURABLY_TEST_SCHEMA", "durably_test")
app = durably.App(URL, schema=SCHEMA)


@app.task(name="tick", cron=os.environ.get("DURABLY_TEST_CRON"))
async def tick() -> None:
    """Fired by its own cron."""


@app.task(name="noop")
async def noop(label: str = "") -> str:
    """Fired by schedules the tests make."""
    return label
