"""The queue benchmark's workloads; each function measures one run of one workload.

Client-side code runs in a forked child (:func:`bench.harness.isolated`), workers in their own
``durably worker`` processes, and every run uses a fresh schema that is dropped afterwards.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from typing import Any

import psycopg

from bench.apps import FLOW_ENV, FLOW_KEYS, FLOW_MODES, build
from bench.harness import WorkerProcess, connect, isolated, throwaway_schema, wait_until

WARMUP = 20  # calls before timing starts: opens the pool, migrates, warms the caches
ENQUEUE_CHUNK = 5_000  # rows per enqueue_many call when filling the queue for a drain


# -- drain: one worker process empties a full queue ------------------------------------------


def fill_queue(url: str, schema: str, task: str, count: int) -> None:
    """Enqueue ``count`` runs of ``task`` with enqueue_many (before any worker starts)."""
    bench = build(schema, url)
    flow = FLOW_MODES[os.environ.get(FLOW_ENV) or "plain"]
    keyed = [k for k in ("concurrency_key", "fairness_key") if flow.get(k)]
    if keyed:  # the runs spread evenly over FLOW_KEYS keys, key by key
        for key in range(FLOW_KEYS):
            calls = [()] * (count // FLOW_KEYS + (key < count % FLOW_KEYS))
            bench.task(task).options(**{keyed[0]: f"k{key}"}).enqueue_many(calls)
    else:
        for start in range(0, count, ENQUEUE_CHUNK):
            bench.task(task).enqueue_many([()] * min(ENQUEUE_CHUNK, count - start))
    # Statistics, as autovacuum would have gathered them (this server runs with it off): the
    # controlled claim's key-group scans need them to be planned on their index.
    with connect(url) as conn:
        conn.execute(f'ANALYZE "{schema}".runs')


def _drained(conn: psycopg.Connection[Any], schema: str, count: int, worker: WorkerProcess) -> bool:
    worker.check_alive()
    row = conn.execute(
        f"SELECT count(*) FILTER (WHERE status = 'COMPLETED'), "
        f"count(*) FILTER (WHERE status = 'FAILED') FROM \"{schema}\".runs"
    ).fetchone()
    assert row is not None
    if row[1]:
        raise RuntimeError(f"{row[1]} runs failed during the drain")
    return bool(row[0] >= count)


def _drain_seconds(conn: psycopg.Connection[Any], schema: str) -> float:
    """From the first claim to the last completion, on the database clock."""
    row = conn.execute(
        "SELECT EXTRACT(EPOCH FROM max(finished_at) - min(started_at))::float8 "
        f'FROM "{schema}".runs'
    ).fetchone()
    assert row is not None
    return float(row[0])


def _peak_running(conn: psycopg.Connection[Any], schema: str) -> int:
    """The most runs that were RUNNING at once: claimed (started_at) and not yet recorded
    (finished_at). A worker should never hold more than its slot count."""
    row = conn.execute(f"""
        SELECT max(n) FROM (
            SELECT sum(d) OVER (ORDER BY t, d) AS n FROM (
                SELECT started_at AS t, 1 AS d FROM "{schema}".runs
                UNION ALL SELECT finished_at, -1 FROM "{schema}".runs) AS events) AS running
    """).fetchone()
    assert row is not None
    return int(row[0])


@dataclass(frozen=True)
class Drain:
    """One drain: its throughput, and how many runs the worker held at most."""

    rate: float
    peak_running: int


def drain(url: str, task: str, slots: int, count: int) -> Drain:
    """Tasks/s of one worker process with ``slots`` slots draining ``count`` queued runs."""
    with throwaway_schema(url) as schema:
        isolated(fill_queue, url, schema, task, count)
        with connect(url) as conn, WorkerProcess(url, schema, slots) as worker:
            timeout = 60 + count / 500
            wait_until(lambda: _drained(conn, schema, count, worker), timeout, 0.2, "the drain")
            worker.stop()
            return Drain(count / _drain_seconds(conn, schema), _peak_running(conn, schema))


# -- enqueue: one client inserting runs -----------------------------------------------------


def _sequential_sync(url: str, schema: str, count: int) -> float:
    bench = build(schema, url)
    for i in range(WARMUP):
        bench.item.enqueue(i)
    start = time.perf_counter()
    for i in range(count):
        bench.item.enqueue(i)
    return count / (time.perf_counter() - start)


async def _sequential_async_loop(url: str, schema: str, count: int) -> float:
    bench = build(schema, url)
    for i in range(WARMUP):
        await bench.item.enqueue_async(i)
    start = time.perf_counter()
    for i in range(count):
        await bench.item.enqueue_async(i)
    return count / (time.perf_counter() - start)


def _sequential_async(url: str, schema: str, count: int) -> float:
    return asyncio.run(_sequential_async_loop(url, schema, count))


def single_enqueue(url: str, count: int, use_async: bool) -> float:
    """Enqueues/s of ``count`` sequential ``task.enqueue`` (or ``enqueue_async``) calls."""
    with throwaway_schema(url) as schema:
        return isolated(_sequential_async if use_async else _sequential_sync, url, schema, count)


def _batches(url: str, schema: str, size: int, batches: int) -> float:
    bench = build(schema, url)
    bench.item.enqueue_many([(i,) for i in range(WARMUP)])
    calls = [(i,) for i in range(size)]
    start = time.perf_counter()
    for _ in range(batches):
        bench.item.enqueue_many(calls)
    return size * batches / (time.perf_counter() - start)


def batch_enqueue(url: str, size: int, rows: int) -> float:
    """Rows/s of ``task.enqueue_many`` with batches of ``size`` calls (about ``rows`` in all)."""
    with throwaway_schema(url) as schema:
        return isolated(_batches, url, schema, size, max(1, rows // size))


# -- pickup latency: an idle worker, one run at a time --------------------------------------


def _migrate(url: str, schema: str) -> None:
    build(schema, url).app.migrate()


def _pickup_samples(url: str, schema: str, samples: int, pause: float) -> list[float]:
    bench = build(schema, url)
    latencies = []
    for n in range(WARMUP + samples):
        time.sleep(pause)  # the worker is idle again: back in its wait for a notification
        before = time.time()
        began = bench.started.enqueue().result(timeout=30)
        if n >= WARMUP:
            latencies.append(began - before)
    return latencies


def pickup(url: str, slots: int, samples: int, pause: float) -> list[float]:
    """Seconds from just before ``enqueue`` to the task body starting, one run at a time."""
    with throwaway_schema(url) as schema:
        isolated(_migrate, url, schema)
        with WorkerProcess(url, schema, slots) as worker:
            worker.wait_ready()
            return isolated(_pickup_samples, url, schema, samples, pause)
