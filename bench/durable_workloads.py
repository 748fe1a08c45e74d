"""The durable workflow benchmark's workloads; each function measures one run of one workload.

As in the queue benchmark (:mod:`bench.workloads`), client code runs in a forked child
(:func:`bench.harness.isolated`), the worker is a ``durably worker`` process, and every run uses
a fresh schema that is dropped afterwards. Durations of runs are read from the ``runs`` table
(``finished_at - started_at``), so they use the database clock and begin at the worker's claim.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from bench.apps import build
from bench.harness import WorkerProcess, connect, isolated, throwaway_schema

WARMUP = 20  # workflows before timing starts: opens the pools, warms the worker's caches
RESULT_TIMEOUT = 120.0  # seconds a client waits for one run before giving up


@dataclass(frozen=True)
class Slots:
    """The worker's two slot pools: ``--slots`` (tasks) and ``--durable-slots``."""

    tasks: int
    durable: int


def _migrate(url: str, schema: str) -> None:
    build(schema, url).app.migrate()


@contextmanager
def _worker(url: str, slots: Slots) -> Iterator[tuple[str, WorkerProcess]]:
    """A fresh migrated schema and one idle worker process serving it."""
    with throwaway_schema(url) as schema:
        isolated(_migrate, url, schema)
        with WorkerProcess(url, schema, slots.tasks, slots.durable) as worker:
            worker.wait_ready()
            yield schema, worker
            worker.check_alive()


def run_seconds(url: str, schema: str, ids: list[int]) -> dict[int, float]:
    """Seconds from the claim of each run's last attempt to its recorded end (database clock)."""
    with connect(url) as conn:
        rows = conn.execute(
            f"SELECT id, status, EXTRACT(EPOCH FROM finished_at - started_at)::float8 "
            f'FROM "{schema}".runs WHERE id = ANY(%s)',
            (ids,),
        ).fetchall()
    bad = [(i, status) for i, status, _ in rows if status != "COMPLETED"]
    if bad or len(rows) != len(ids):
        raise RuntimeError(f"runs did not all complete: {bad[:5]} ({len(rows)}/{len(ids)} found)")
    return {int(i): float(seconds) for i, _, seconds in rows}


# -- workflows/s: a 3-step workflow, one at a time or N in flight ---------------------------


async def _keep_in_flight(url: str, schema: str, count: int, in_flight: int) -> None:
    """Run ``count`` workflows with ``in_flight`` lanes, each enqueueing its next workflow as
    soon as its previous one has returned, so ``in_flight`` are outstanding at all times."""
    task = build(schema, url).three_steps
    todo = iter(range(count))

    async def lane() -> None:
        for start in todo:  # shared by the lanes: each takes the next workflow
            handle = await task.enqueue_async(start)
            result = await handle.result_async(timeout=RESULT_TIMEOUT)
            if result != start + 3:
                raise AssertionError(f"workflow {handle.id} returned {result}, not {start + 3}")

    await asyncio.gather(*(lane() for _ in range(in_flight)))


async def _timed_workflows(url: str, schema: str, count: int, in_flight: int) -> float:
    await _keep_in_flight(url, schema, WARMUP, in_flight)
    start = time.perf_counter()
    await _keep_in_flight(url, schema, count, in_flight)
    return count / (time.perf_counter() - start)


def _workflow_client(url: str, schema: str, count: int, in_flight: int) -> float:
    return asyncio.run(_timed_workflows(url, schema, count, in_flight))


def workflows(url: str, slots: Slots, count: int, in_flight: int) -> float:
    """Workflows/s of ``count`` 3-step workflows, ``in_flight`` outstanding at any time
    (1 = sequential: enqueue one, wait for its result, enqueue the next), client wall time."""
    with _worker(url, slots) as (schema, _):
        return isolated(_workflow_client, url, schema, count, in_flight)


# -- per-step overhead: sequential workflows of 0, 10, 20, 40 steps -------------------------


async def _sequential_steps(
    url: str, schema: str, counts: list[int], per_count: int
) -> tuple[dict[int, list[int]], dict[int, list[float]]]:
    """Run ``per_count`` workflows of each step count, one at a time, the counts interleaved
    (0, 10, 20, 40, 0, 10, ...) so that drift affects them all alike. Returns each count's run
    ids and client-side seconds (enqueue to result)."""
    task = build(schema, url).steps
    ids: dict[int, list[int]] = {n: [] for n in counts}
    walls: dict[int, list[float]] = {n: [] for n in counts}
    for i in range(WARMUP + per_count * len(counts)):
        n = counts[i % len(counts)]
        before = time.perf_counter()
        handle = await task.enqueue_async(n)
        if await handle.result_async(timeout=RESULT_TIMEOUT) != n:
            raise AssertionError(f"run {handle.id} of {n} steps returned a wrong result")
        if i >= WARMUP:
            walls[n].append(time.perf_counter() - before)
            ids[n].append(handle.id)
    return ids, walls


def _steps_client(
    url: str, schema: str, counts: list[int], per_count: int
) -> tuple[dict[int, list[int]], dict[int, list[float]]]:
    return asyncio.run(_sequential_steps(url, schema, counts, per_count))


def step_durations(
    url: str, slots: Slots, counts: list[int], per_count: int
) -> tuple[dict[int, float], dict[int, float]]:
    """For each step count, the median seconds of one workflow of that many steps: in the
    worker (claim to recorded end, database clock) and end to end (client wall time)."""
    with _worker(url, slots) as (schema, _):
        ids, walls = isolated(_steps_client, url, schema, counts, per_count)
        seconds = run_seconds(url, schema, [i for group in ids.values() for i in group])
    worker = {n: statistics.median(seconds[i] for i in group) for n, group in ids.items()}
    end_to_end = {n: statistics.median(values) for n, values in walls.items()}
    return worker, end_to_end


def slope(points: dict[int, float]) -> float:
    """Least-squares slope of value against count: the cost of one more step."""
    xs, ys = list(points), list(points.values())
    return statistics.linear_regression(xs, ys).slope


# -- resume: re-execute runs whose log holds N recorded steps -------------------------------


async def _record_sources(task: Any, sizes: list[int]) -> dict[int, int]:
    """One run per size, executed live: it records ``size`` steps. Returns size -> run id."""
    handles = {n: await task.enqueue_async(n) for n in sizes}
    for n, handle in handles.items():
        if await handle.result_async(timeout=RESULT_TIMEOUT * 5) != n:
            raise AssertionError(f"source run {handle.id} did not execute its {n} steps")
    return {n: h.id for n, h in handles.items()}


async def _resume_forks(
    url: str, schema: str, sizes: list[int], repeats: int
) -> dict[int, list[int]]:
    """Fork each source at its full length, one fork at a time, the sizes interleaved: each
    fork is a new run whose log already holds every step it makes, so it re-executes against
    the log from its first claim. Returns size -> fork run ids."""
    bench = build(schema, url)
    sources = await _record_sources(bench.replayable, sizes)

    async def fork(n: int) -> int:
        handle = await bench.app.fork_async(sources[n], at_event=n)
        executed = await handle.result_async(timeout=RESULT_TIMEOUT)
        if executed != 0:
            raise AssertionError(f"fork {handle.id} executed {executed} of its {n} steps")
        return handle.id

    for n in [min(sizes)] * WARMUP + sizes:  # warm-up, not measured
        await fork(n)
    forks: dict[int, list[int]] = {n: [] for n in sizes}
    for _ in range(repeats):
        for n in sizes:
            forks[n].append(await fork(n))
    return forks


def _resume_client(url: str, schema: str, sizes: list[int], repeats: int) -> dict[int, list[int]]:
    return asyncio.run(_resume_forks(url, schema, sizes, repeats))


def _check_not_appended(url: str, schema: str, forks: dict[int, list[int]]) -> None:
    """A re-executed step that ran again would append a new entry: each fork's log must hold
    exactly the entries copied from its source, none recorded by the fork's own attempt."""
    with connect(url) as conn:
        for n, ids in forks.items():
            row = conn.execute(
                f"SELECT count(*), count(*) FILTER (WHERE attempt > 0) "
                f'FROM "{schema}".event_log WHERE run_id = ANY(%s)',
                (ids,),
            ).fetchone()
            if row is None or row[0] != n * len(ids) or row[1]:
                raise AssertionError(f"forks of {n} steps appended to their logs: {row}")


def resume_durations(url: str, slots: Slots, sizes: list[int], repeats: int) -> dict[int, float]:
    """For each log length (0 = an empty log), the median seconds of a re-execution against a
    log of that many recorded steps: claim to recorded end, database clock."""
    with _worker(url, slots) as (schema, _):
        forks = isolated(_resume_client, url, schema, sizes, repeats)
        _check_not_appended(url, schema, forks)
        seconds = run_seconds(url, schema, [i for group in forks.values() for i in group])
    return {n: statistics.median(seconds[i] for i in ids) for n, ids in forks.items()}
