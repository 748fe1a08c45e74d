"""The durably App and tasks the queue benchmark uses, in the client and in worker processes.

Worker processes load ``bench.apps:app``: its schema comes from ``DURABLY_BENCH_SCHEMA`` and its
database from ``DURABLY_DATABASE_URL`` / ``DATABASE_URL`` (else durably's embedded server). The
client side builds Apps on other schemas with :func:`build`. Tasks have fixed names, so a run
enqueued by one process is found in the registry of another.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import durably
from durably.tasks import Task

SCHEMA_ENV = "DURABLY_BENCH_SCHEMA"
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


@dataclass(frozen=True)
class BenchApp:
    """An App on one schema with the benchmark's tasks registered."""

    app: durably.App
    noop: Task[[], Any]
    noop_sync: Task[[], Any]
    item: Task[[int], Any]
    started: Task[[], Any]

    def task(self, name: str) -> Task[..., Any]:
        """A task by its short name (``noop``, ``noop_sync``, ``item``, ``started``)."""
        task: Task[..., Any] = getattr(self, name)
        return task


def build(schema: str, url: str | None = None) -> BenchApp:
    """An App on ``schema`` (``url`` or the environment's database) with the tasks."""
    app = durably.App(url, schema=schema)
    return BenchApp(
        app=app,
        noop=app.task(name="bench.noop")(noop),
        noop_sync=app.task(name="bench.noop_sync")(noop_sync),
        item=app.task(name="bench.item")(item),
        started=app.task(name="bench.started")(started),
    )


# What `durably worker bench.apps:app` serves. Building an App opens no connection.
app = build(os.environ.get(SCHEMA_ENV, DEFAULT_SCHEMA)).app
