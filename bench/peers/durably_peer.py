"""durably's adapter for the side-by-side benchmark (protocol: bench/peers/common.py).

It runs in durably's own environment with the tasks of :mod:`bench.apps`; workers are
``durably worker bench.apps:app`` processes (:class:`bench.harness.WorkerProcess`). Clients use
the async API, durably's fastest from one client, as the peers' adapters use theirs.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:
    # Run as a script: the project root first on the path, so `bench.*` and `durably` resolve.
    sys.path[0] = str(Path(__file__).resolve().parent.parent.parent)

import argparse
import asyncio
import time
from collections.abc import Coroutine
from typing import Any, ClassVar

from bench.apps import DEFAULT_SCHEMA, build
from bench.harness import WorkerProcess
from bench.peers import common
from bench.peers.common import Probe

SCHEMA = DEFAULT_SCHEMA  # the database is fresh, so the default schema is too
CHUNK = 5_000  # rows per enqueue_many call when filling the queue for a drain
RESULT_TIMEOUT = 120.0


class Client:
    """A durably App with the benchmark's tasks and a private event loop to run its async
    calls on, so that sync loops (the shared helpers) can drive the async API."""

    opened: ClassVar[list[Client]] = []  # closed by main() once the figures are out

    def __init__(self, url: str) -> None:
        Client.opened.append(self)
        self.bench = build(SCHEMA, url)
        self.loop = asyncio.new_event_loop()
        self.run(self.bench.app.migrate_async())

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run ``coro`` to completion on the client's loop."""
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        """Close the App's connections on the client's loop, then the loop: an adapter run
        ends without stray pool tasks."""
        self.run(self.bench.app.aclose())
        self.loop.close()

    async def result(self, task: Any, *args: Any) -> Any:
        """Enqueue one run and wait for its result."""
        handle = await task.enqueue_async(*args)
        return await handle.result_async(timeout=RESULT_TIMEOUT)


def worker(url: str, slots: int) -> WorkerProcess:
    """One durably worker process with ``slots`` task slots (and its default durable slots)."""
    return WorkerProcess(url, SCHEMA, slots)


def drain(args: argparse.Namespace) -> dict[str, Any]:
    """Fill the queue with no-op runs, then time one worker process emptying it."""
    client = Client(args.url)
    for start in range(0, args.count, CHUNK):
        calls = [()] * min(CHUNK, args.count - start)
        client.run(client.bench.noop.enqueue_many_async(calls))
    done = f"SELECT count(*) FROM \"{SCHEMA}\".runs WHERE status = 'COMPLETED'"
    with worker(args.url, args.concurrency) as process:
        assert process.proc is not None
        return {"rate": common.measure_drain(args.url, done, args.count, process.proc)}


async def _enqueues(task: Any, count: int) -> float:
    """:func:`common.timed_rate` on one event loop: ``count`` awaited enqueues, after warm-up."""
    for i in range(common.WARMUP):
        await task.enqueue_async(-1 - i)
    start = time.perf_counter()
    for i in range(count):
        await task.enqueue_async(i)
    return count / (time.perf_counter() - start)


def enqueue(args: argparse.Namespace) -> dict[str, Any]:
    """Single enqueues in sequence from one client (one event loop, as an async app would)."""
    client = Client(args.url)
    return {"rate": client.run(_enqueues(client.bench.item, args.count))}


def batch(args: argparse.Namespace) -> dict[str, Any]:
    """``enqueue_many`` with ``--batch`` calls per round trip."""
    client = Client(args.url)
    calls = [(i,) for i in range(args.batch)]
    batches = max(1, args.count // args.batch)

    def one_batch(_: int) -> None:
        client.run(client.bench.item.enqueue_many_async(calls))

    return {"rate": common.timed_rate(batches, one_batch) * args.batch}


def pickup(args: argparse.Namespace) -> dict[str, Any]:
    """An idle worker process; one run at a time, each noting when its body started."""
    client = Client(args.url)
    probe = Probe()
    try:
        with worker(args.url, 10) as process:
            process.wait_ready()
            latencies = common.pickup_samples(
                args.samples,
                args.pause,
                probe,
                lambda n: client.run(client.bench.probe.enqueue_async(n, probe.path)),
            )
    finally:
        probe.remove()
    return {"latencies_ms": latencies}


async def _in_flight(client: Client, count: int, in_flight: int) -> None:
    """``count`` 3-step workflows with ``in_flight`` lanes, each starting its next workflow
    as soon as its previous one returned."""
    todo = iter(range(count))

    async def lane() -> None:
        for start in todo:  # shared by the lanes
            if await client.result(client.bench.three_steps, start) != start + 3:
                raise AssertionError(f"workflow {start} returned a wrong result")

    await asyncio.gather(*(lane() for _ in range(in_flight)))


def workflow(args: argparse.Namespace) -> dict[str, Any]:
    """3-step durable workflows, ``--in-flight`` outstanding, client wall time."""
    client = Client(args.url)
    with worker(args.url, 10) as process:
        process.wait_ready()
        client.run(_in_flight(client, common.WARMUP, args.in_flight))
        start = time.perf_counter()
        client.run(_in_flight(client, args.count, args.in_flight))
        seconds = time.perf_counter() - start
    return {"rate": args.count / seconds}


def steps(args: argparse.Namespace) -> dict[str, Any]:
    """Sequential workflows of 0, 10, 20 and 40 steps, end to end."""
    client = Client(args.url)
    with worker(args.url, 10) as process:
        process.wait_ready()
        seconds = common.step_medians(
            args.per_count, lambda n: int(client.run(client.result(client.bench.steps, n)))
        )
    return {"seconds": seconds}


WORKLOADS = {
    "drain": drain,
    "enqueue": enqueue,
    "batch": batch,
    "pickup": pickup,
    "workflow": workflow,
    "steps": steps,
}


def main() -> None:
    """Run one workload once and print its figures."""
    args = common.parse()
    common.emit(WORKLOADS[args.workload](args))
    for client in Client.opened:
        client.close()


if __name__ == "__main__":
    main()
