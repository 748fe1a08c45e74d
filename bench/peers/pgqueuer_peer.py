"""The PgQueuer adapter for ``bench.compare`` (see ``common.py`` for the protocol).

PgQueuer (``pgqueuer==1.6.0``) is a job queue, not a durable-execution engine, so it runs the
queue workloads (drain, enqueue, batch, pickup) and reports ``workflow`` and ``steps`` as
unsupported.

- Driver: asyncpg (``AsyncpgDriver``) when it is installed, else psycopg (``PsycopgDriver``):
  the order ``pgq``'s own commands try them in. PgQueuer's docs recommend asyncpg for the
  worker and for throughput; with psycopg an idle worker takes about a second to pick up a
  job, as its notification watcher holds the connection's lock for up to 1 s at a time. One
  connection per client or worker, as PgQueuer's examples and benchmark tool use.
- Event loop: uvloop, a dependency of PgQueuer, which ``pgq run`` and its benchmark tool use.
- Schema: ``Queries.install()`` (what ``pgq install`` runs, durable: all tables logged), then
  ``Queries.optimize_autovacuum()`` (``pgq autovac``), which PgQueuer's performance guide
  tells you to run after installing.
- Worker: a ``QueueManager`` with async entrypoints. ``--concurrency C`` is its
  ``max_concurrent_tasks`` (PgQueuer's per-worker cap on jobs held at once, like a slot count)
  with ``batch_size = C // 2`` (jobs claimed per dequeue query), the largest batch that cap
  allows: PgQueuer's tuning guide says to raise the batch size for short jobs, and no-op jobs
  are as short as jobs get. Pickup uses ``QueueManager.run``'s defaults.
- Client: ``Queries.enqueue``, the async producer API: one job per call, or lists of jobs
  (one statement) per call for ``batch``.
- A finished job is deleted from the queue table by the statement that logs it as successful
  in ``pgqueuer_log`` (the worker buffers these and writes them in batches), so the jobs
  finished are the jobs enqueued minus the rows left in the queue table.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psycopg
import uvloop
from pgqueuer.db import AsyncpgDriver, PsycopgDriver
from pgqueuer.models import Job
from pgqueuer.qm import QueueManager
from pgqueuer.queries import Queries

sys.path.insert(0, str(Path(__file__).parent))
import common

NOOP = "noop"  # the entrypoint of drain, enqueue and batch jobs
PICKUP = "pickup"  # the entrypoint of pickup jobs: notes when it starts
QUEUE_TABLE = "pgqueuer"  # PgQueuer's default table names
LOG_TABLE = "pgqueuer_log"
FILL_CHUNK = 10_000  # jobs per enqueue call while filling the queue for a drain
READY_TIMEOUT = 60.0  # seconds a new worker may take to run its first job
DRIVER = "asyncpg" if importlib.util.find_spec("asyncpg") else "psycopg"


@asynccontextmanager
async def connect(url: str) -> AsyncIterator[Queries]:
    """PgQueuer's queries over a new connection of ``DRIVER``, closed afterwards."""
    if DRIVER == "asyncpg":
        import asyncpg

        conn = await asyncpg.connect(url)
        try:
            yield Queries(AsyncpgDriver(conn))
        finally:
            await conn.close()
    else:
        # PgQueuer's psycopg driver requires autocommit.
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            yield Queries(PsycopgDriver(conn))


def payload(n: int) -> bytes:
    """A job's payload: the number it carries (pickup reads it back)."""
    return str(n).encode()


async def install(url: str) -> None:
    """Install PgQueuer's schema in the run's fresh database, tuned as its docs advise."""
    async with connect(url) as queries:
        await queries.install()
        await queries.optimize_autovacuum()


async def enqueue_many(queries: Queries, numbers: range) -> None:
    """Enqueue one no-op job per number with a single call (one statement)."""
    count = len(numbers)
    await queries.enqueue([NOOP] * count, [payload(n) for n in numbers], [0] * count)


# --- the worker process ------------------------------------------------------------------


async def noop(job: Job) -> None:
    """The drain job: nothing to do."""


def pickup_job(probe: common.Probe) -> Callable[[Job], Awaitable[None]]:
    """The pickup job: first of all, it notes the time it started."""

    async def run(job: Job) -> None:
        probe.record(int((job.payload or b"").decode()))

    return run


def worker_settings(args: argparse.Namespace) -> dict[str, Any]:
    """``QueueManager.run`` options: PgQueuer's defaults for pickup, the drain mapping of
    ``--concurrency`` otherwise (see the module docstring)."""
    if args.mode == "pickup":
        return {}  # batch_size 10, no task cap, woken by LISTEN/NOTIFY, 30 s polling fallback
    if args.concurrency < 2:
        raise SystemExit("--concurrency must be at least 2 (PgQueuer needs cap >= 2 x batch)")
    return {"batch_size": args.concurrency // 2, "max_concurrent_tasks": args.concurrency}


async def serve(args: argparse.Namespace) -> None:
    """Run one PgQueuer worker until SIGTERM (``common.worker_process`` stops it so)."""
    async with connect(args.url) as queries:
        manager = QueueManager(queries)
        if args.mode == "pickup":
            manager.entrypoint(PICKUP)(pickup_job(common.Probe(args.probe)))
        else:
            manager.entrypoint(NOOP)(noop)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            # A graceful stop: the worker flushes its buffered job logs before it exits.
            loop.add_signal_handler(signum, manager.shutdown.set)
        await manager.run(**worker_settings(args))


# --- the client side ---------------------------------------------------------------------


def scalar(url: str, sql: str) -> int:
    """An integer a query returns."""
    return int(common.scalar(url, sql))


def expect_queued(url: str, count: int) -> None:
    """Check that exactly ``count`` jobs are in the queue (no enqueue lost or doubled)."""
    queued = scalar(url, f"SELECT count(*) FROM {QUEUE_TABLE}")
    if queued != count:
        raise RuntimeError(f"{queued} jobs in the queue, expected {count}")


def expect_all_done(url: str, count: int) -> None:
    """Check that the queue is empty and the log holds ``count`` successful jobs."""
    expect_queued(url, 0)
    sql = f"SELECT count(*) FROM {LOG_TABLE} WHERE status = 'successful'"
    if (done := scalar(url, sql)) != count:
        raise RuntimeError(f"{done} jobs logged as successful, expected {count}")


async def fill(url: str, count: int) -> None:
    """Install the schema and enqueue ``count`` no-op jobs (the untimed part of a drain)."""
    await install(url)
    async with connect(url) as queries:
        for start in range(0, count, FILL_CHUNK):
            await enqueue_many(queries, range(start, min(start + FILL_CHUNK, count)))


def drain(url: str, count: int, concurrency: int) -> dict[str, float]:
    """One worker process with concurrency C empties a queue of ``count`` no-op jobs."""
    uvloop.run(fill(url, count))
    common.log(f"pgqueuer: {count} jobs queued, draining with concurrency {concurrency}")
    done_sql = f"SELECT {count} - count(*) FROM {QUEUE_TABLE}"
    options = ("--mode", "drain", "--concurrency", str(concurrency))
    with common.worker_process(__file__, url, *options) as worker:
        rate = common.measure_drain(url, done_sql, count, worker)
    expect_all_done(url, count)
    return {"rate": rate}


async def timed_rate(count: int, body: Callable[[int], Awaitable[object]]) -> float:
    """``common.timed_rate`` for a coroutine: calls/s of ``await body(i)``, after warm-up."""
    for i in range(common.WARMUP):
        await body(-1 - i)
    start = time.perf_counter()
    for i in range(count):
        await body(i)
    return count / (time.perf_counter() - start)


async def enqueue(url: str, count: int) -> dict[str, float]:
    """``count`` single-job enqueues in sequence, one ``await queries.enqueue`` each."""
    await install(url)
    async with connect(url) as queries:
        rate = await timed_rate(count, lambda i: queries.enqueue(NOOP, payload(i)))
    expect_queued(url, count + common.WARMUP)
    return {"rate": rate}


async def batch(url: str, count: int, size: int) -> dict[str, float]:
    """About ``count`` jobs in batches of ``size``, one enqueue call per batch, after one
    untimed warm-up batch. The timed part includes building each batch's lists."""
    await install(url)
    batches = max(1, round(count / size))
    async with connect(url) as queries:
        await enqueue_many(queries, range(-size, 0))
        start = time.perf_counter()
        for b in range(batches):
            await enqueue_many(queries, range(b * size, (b + 1) * size))
        elapsed = time.perf_counter() - start
    expect_queued(url, (batches + 1) * size)
    return {"rate": batches * size / elapsed}


async def pickup_samples(
    samples: int, pause: float, probe: common.Probe, enqueue: Callable[[int], Awaitable[object]]
) -> list[float]:
    """``common.pickup_samples`` with an awaited enqueue: milliseconds from just before the
    enqueue of sample n to the start of its job, warm-up excluded."""
    latencies = []
    for n in range(common.WARMUP + samples):
        await asyncio.sleep(pause)  # the worker is idle again: back to waiting for work
        before = time.time()
        await enqueue(n)
        began = probe.started(n)  # blocks the loop, which has nothing else to do
        if n >= common.WARMUP:
            latencies.append((began - before) * 1000)
    return latencies


async def pickup(url: str, samples: int, pause: float) -> dict[str, list[float]]:
    """An idle worker with PgQueuer's default settings; ``samples`` single jobs, one at a
    time, each noting when it started."""
    await install(url)
    probe = common.Probe()
    try:
        options = ("--mode", "pickup", "--probe", probe.path)
        with common.worker_process(__file__, url, *options):
            async with connect(url) as queries:

                async def send(n: int) -> None:
                    await queries.enqueue(PICKUP, payload(n))

                # Ready means it has run a job: started, installed its listener, dequeued.
                await send(-1)
                probe.started(-1, timeout=READY_TIMEOUT)
                latencies = await pickup_samples(samples, pause, probe, send)
        expect_all_done(url, 1 + common.WARMUP + samples)  # the readiness job too
    finally:
        probe.remove()
    return {"latencies_ms": latencies}


def main() -> None:
    """Run the workload the command line names; print its figures."""
    args = common.parse()
    if args.workload in ("workflow", "steps"):
        common.unsupported("PgQueuer has no durable workflows")
        return
    if args.workload == "serve":
        uvloop.run(serve(args))
        return
    common.log(f"pgqueuer: {args.workload} with the {DRIVER} driver")
    if args.workload == "drain":
        common.emit(drain(args.url, args.count, args.concurrency))
    elif args.workload == "enqueue":
        common.emit(uvloop.run(enqueue(args.url, args.count)))
    elif args.workload == "batch":
        common.emit(uvloop.run(batch(args.url, args.count, args.batch)))
    elif args.workload == "pickup":
        common.emit(uvloop.run(pickup(args.url, args.samples, args.pause)))


if __name__ == "__main__":
    main()
