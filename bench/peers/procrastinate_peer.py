"""Procrastinate (PyPI ``procrastinate==3.10.0``) adapter for ``bench.compare``.

The protocol is in the docstring of ``common.py``. Procrastinate is a task queue: it has
``drain``, ``enqueue``, ``batch`` and ``pickup``, and no durable workflows.

- The client side is Procrastinate's own async API on a ``PsycopgConnector``: the schema is
  applied with ``App.schema_manager.apply_schema_async()``, jobs are created with
  ``Task.defer_async`` and ``Task.batch_defer_async``.
- The worker side (``serve``) is ``App.run_worker_async`` in a process of its own, with
  Procrastinate's defaults (LISTEN/NOTIFY on, 5 s fallback polling, jobs kept after they
  finish) except ``concurrency`` and the pool size its docs ask for with it.
- Before a drain, the full queue table is ANALYZEd (untimed; see :func:`fill_queue`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import procrastinate

sys.path.insert(0, str(Path(__file__).parent))
import common  # lives next to this file, not in the venv

NOOP = "bench_noop"
PROBE = "bench_probe"
POOL_DEFAULT = 4  # psycopg_pool's default min_size (and so max_size)
CHUNK = 1_000  # jobs per batch_defer call when filling the queue for a drain (untimed)

# Jobs are kept after they finish (delete_jobs defaults to "never"), with status 'succeeded'.
DONE_SQL = "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"
ALL_SQL = "SELECT count(*) FROM procrastinate_jobs"
# The worker is ready for the pickup once its listener connection has issued its LISTEN.
LISTENING_SQL = (
    "SELECT count(*) FROM pg_stat_activity"
    " WHERE datname = current_database() AND query LIKE 'LISTEN %'"
)


def build_app(
    url: str, probe: common.Probe | None = None, pool_max: int | None = None
) -> procrastinate.App:
    """An App on ``url`` with the no-op task and, given a probe, the pickup task.

    ``pool_max`` is the connection pool's ``max_size`` (None: psycopg_pool's default, which is
    its ``min_size`` of 4). Task names are fixed so that the client and the worker agree
    whatever ``__name__`` is (so Procrastinate's warning about an App made in ``__main__``,
    which is about task names, does not apply).
    """
    pool_args = {} if pool_max is None else {"max_size": pool_max}
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url, **pool_args))

    async def noop(n: int) -> None:
        """The drain, enqueue and batch job: does nothing."""

    app.task(name=NOOP)(noop)
    if probe is not None:

        async def record(n: int) -> None:
            """The pickup job: notes when its body started, first thing."""
            probe.record(n)

        app.task(name=PROBE)(record)
    return app


def count_rows(url: str, sql: str) -> int:
    """The count a ``SELECT count(*)`` query returns."""
    return int(common.scalar(url, sql))


def check_count(url: str, expected: int, sql: str = ALL_SQL) -> None:
    """Fail loudly if the database does not hold the jobs the run meant to create."""
    found = count_rows(url, sql)
    if found != expected:
        raise AssertionError(f"expected {expected} jobs, found {found}")


async def install_schema(app: procrastinate.App) -> None:
    """Procrastinate's tables, functions and triggers, in the run's fresh database."""
    await app.schema_manager.apply_schema_async()


async def timed_rate_async(count: int, body: Callable[[int], Awaitable[object]]) -> float:
    """:func:`common.timed_rate` for a coroutine: calls/s of ``await body(i)`` for i in
    0..count-1, after ``common.WARMUP`` untimed calls."""
    for i in range(common.WARMUP):
        await body(-1 - i)
    start = time.perf_counter()
    for i in range(count):
        await body(i)
    return count / (time.perf_counter() - start)


async def fill_queue(url: str, count: int) -> None:
    """Install the schema and enqueue ``count`` no-op jobs, batch by batch (not timed)."""
    async with build_app(url).open_async() as app:
        await install_schema(app)
        task = app.tasks[NOOP]
        for first in range(0, count, CHUNK):
            await task.batch_defer_async(
                *({"n": n} for n in range(first, min(first + CHUNK, count)))
            )
        # The planner needs statistics on the now full table: without them it plans the fetch
        # as "sort every todo job" instead of "first entry of the priority index", and each
        # fetch costs O(queue length). Autovacuum gathers them on a server in steady state;
        # here the table is seconds old (and the benchmark server has autovacuum off).
        await app.connector.execute_query_async("ANALYZE procrastinate_jobs")


def drain(args: argparse.Namespace) -> dict[str, float]:
    """One worker process at ``--concurrency`` empties a queue of ``--count`` no-op jobs."""
    asyncio.run(fill_queue(args.url, args.count))
    common.log(
        f"procrastinate: {args.count} jobs queued, draining at concurrency {args.concurrency}"
    )
    options = ("--mode", "drain", "--concurrency", str(args.concurrency))
    with common.worker_process(__file__, args.url, *options) as proc:
        rate = common.measure_drain(args.url, DONE_SQL, args.count, proc)
    check_count(args.url, args.count)  # no more jobs than meant, ...
    check_count(args.url, args.count, DONE_SQL)  # ... and every one succeeded
    return {"rate": rate}


async def enqueue_async(url: str, count: int) -> float:
    """Defers/s of ``count`` sequential ``defer_async`` calls on one app (one pool)."""
    async with build_app(url).open_async() as app:
        await install_schema(app)
        task = app.tasks[NOOP]
        return await timed_rate_async(count, lambda n: task.defer_async(n=n))


def enqueue(args: argparse.Namespace) -> dict[str, float]:
    """``--count`` single defers in sequence from one client, after a warm-up."""
    rate = asyncio.run(enqueue_async(args.url, args.count))
    check_count(args.url, common.WARMUP + args.count)
    return {"rate": rate}


async def batch_async(url: str, calls: int, size: int) -> float:
    """Jobs/s of ``calls`` ``batch_defer_async`` calls of ``size`` jobs, after one warm-up
    call. Building each call's arguments is timed too, as the client has to do it."""
    async with build_app(url).open_async() as app:
        await install_schema(app)
        task = app.tasks[NOOP]
        await task.batch_defer_async(*({"n": -1 - n} for n in range(size)))
        start = time.perf_counter()
        for call in range(calls):
            await task.batch_defer_async(*({"n": call * size + n} for n in range(size)))
        return calls * size / (time.perf_counter() - start)


def batch(args: argparse.Namespace) -> dict[str, float]:
    """About ``--count`` jobs in calls of ``--batch`` jobs each."""
    calls = max(1, args.count // args.batch)
    rate = asyncio.run(batch_async(args.url, calls, args.batch))
    check_count(args.url, (calls + 1) * args.batch)
    return {"rate": rate}


async def pickup_samples_async(
    samples: int, pause: float, probe: common.Probe, enqueue: Callable[[int], Awaitable[object]]
) -> list[float]:
    """:func:`common.pickup_samples` with an awaited ``enqueue(n)``. ``probe.started`` blocks
    the loop while it polls the file: nothing else needs the loop meanwhile."""
    latencies = []
    for n in range(common.WARMUP + samples):
        await asyncio.sleep(pause)  # the worker is idle again: back to waiting for work
        before = time.time()
        await enqueue(n)
        began = probe.started(n)
        if n >= common.WARMUP:
            latencies.append((began - before) * 1000)
    return latencies


async def pickup_async(args: argparse.Namespace, probe: common.Probe) -> list[float]:
    """Install the schema, start an idle worker, wait until it listens, then sample."""
    async with build_app(args.url, probe).open_async() as app:
        await install_schema(app)
        task = app.tasks[PROBE]
        # Procrastinate's default worker: concurrency 1, LISTEN/NOTIFY, 5 s fallback polling.
        options = ("--mode", "pickup", "--probe", probe.path, "--concurrency", "1")
        with common.worker_process(__file__, args.url, *options):
            common.wait_until(lambda: count_rows(args.url, LISTENING_SQL), 60, "the worker")
            return await pickup_samples_async(
                args.samples, args.pause, probe, lambda n: task.defer_async(n=n)
            )


def pickup(args: argparse.Namespace) -> dict[str, list[float]]:
    """Latency from a defer to the start of the job's body, with an idle worker waiting."""
    probe = common.Probe()
    try:
        return {"latencies_ms": asyncio.run(pickup_async(args, probe))}
    finally:
        probe.remove()


async def serve_async(args: argparse.Namespace) -> None:
    """The worker process: run a Procrastinate worker until SIGTERM (a graceful stop)."""
    probe = common.Probe(args.probe) if args.probe else None
    # Procrastinate's docs on pool size: with short jobs the pool should hold as many
    # connections as the concurrency, plus one (the default of 4 covers concurrency <= 3).
    app = build_app(args.url, probe, pool_max=max(POOL_DEFAULT, args.concurrency + 1))
    async with app.open_async():
        await app.run_worker_async(concurrency=args.concurrency)


def serve(args: argparse.Namespace) -> None:
    """Run the worker. Logging at WARNING: at INFO Procrastinate logs two lines per job."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(serve_async(args))


def main() -> None:
    """Dispatch one workload; print its figures as the last stdout line."""
    args = common.parse()
    if args.workload == "serve":
        serve(args)
    elif args.workload in ("workflow", "steps"):
        common.unsupported("Procrastinate has no durable workflows")
    else:
        workloads = {"drain": drain, "enqueue": enqueue, "batch": batch, "pickup": pickup}
        common.emit(workloads[args.workload](args))


if __name__ == "__main__":
    main()
