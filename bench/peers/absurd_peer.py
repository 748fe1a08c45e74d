"""The Absurd adapter of ``bench.compare`` (absurd-sdk 0.5.1, schema from absurdctl 0.5.1).

Absurd keeps its whole engine in SQL functions of the ``absurd`` schema; each queue gets its own
tables (``absurd.t_<queue>`` tasks, ``absurd.r_<queue>`` runs, ``absurd.c_<queue>`` checkpoints).
Workers pull: ``absurd.claim_task`` claims up to a batch of runs and, when it finds none, the
worker sleeps ``poll_interval`` (0.25 s by default). There is no LISTEN/NOTIFY.

The worker process is the SDK's async worker (``AsyncAbsurd.start_worker``) with its default
timings: it claims up to ``concurrency`` runs at once, runs them as coroutines sharing the
client's single connection, and claims again when all of them are done. Clients use the sync
client (``Absurd``): ``spawn`` enqueues one task per call. To learn a result a client polls
``fetch_task_result`` every ``RESULT_POLL`` seconds rather than calling the SDK's
``await_task_result``, whose backoff (50 ms, doubling up to 1 s) would add up to hundreds of
milliseconds of client sleep to every workflow and hide the cost of a step entirely.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
from absurd_sdk import Absurd, AsyncAbsurd, AsyncTaskContext, TaskResultSnapshot

sys.path.insert(0, str(Path(__file__).parent))
import common  # a sibling file, found through the path set just above

QUEUE = "bench"
# Runs, not tasks: every task here succeeds at its first attempt, so it has exactly one run, and
# the runs table has an index on (state, available_at) that this count can use.
DONE_SQL = f"SELECT count(*) FROM absurd.r_{QUEUE} WHERE state = 'completed'"
WORKER_POLL = 0.25  # the SDK's default: seconds an idle worker sleeps between claims
RESULT_POLL = 0.01  # seconds between a client's looks at a task's state (as common.POLL)
RESULT_TIMEOUT = 60.0  # seconds a client waits for one task's result before giving up
FINAL_STATES = ("completed", "failed", "cancelled")
NO_BATCH = (
    "no batch spawn: the SDK's spawn() and the SQL function absurd.spawn_task() take one task "
    "per call"
)


# -- schema -----------------------------------------------------------------------------------


def install_schema(url: str) -> None:
    """Apply Absurd's schema and create the queue, as its docs say: ``absurdctl init`` and
    ``absurdctl create-queue`` (they pipe the SQL bundled in absurdctl through ``psql``)."""
    absurdctl = str(Path(sys.executable).parent / "absurdctl")
    for command in (["init"], ["create-queue", QUEUE]):
        # absurdctl reports on stdout, which must hold nothing but the figures.
        subprocess.run([absurdctl, *command, "--database", url], check=True, stdout=sys.stderr)


# -- the tasks (worker side) ------------------------------------------------------------------


def register_tasks(app: AsyncAbsurd, probe: common.Probe | None) -> None:
    """Register every task the workloads spawn on the worker's client."""

    @app.register_task("noop")
    async def noop(params: Any, ctx: AsyncTaskContext) -> None:
        """The drain job: nothing."""

    @app.register_task("probe")
    async def probe_task(params: Any, ctx: AsyncTaskContext) -> None:
        """The pickup job: note when its body starts."""
        assert probe is not None, "the pickup worker needs --probe"
        probe.record(params["n"])

    @app.register_task("workflow")
    async def workflow(params: Any, ctx: AsyncTaskContext) -> int:
        """Three checkpointed steps, each returning its input + 1."""
        return await checkpointed_increments(ctx, params["x"], 3)

    @app.register_task("steps")
    async def steps(params: Any, ctx: AsyncTaskContext) -> int:
        """``n`` checkpointed steps counting up from 0: returns ``n``."""
        return await checkpointed_increments(ctx, 0, params["n"])


async def increment(value: int) -> int:
    """What every step does."""
    return value + 1


async def checkpointed_increments(ctx: AsyncTaskContext, value: int, count: int) -> int:
    """``count`` steps, each a checkpoint holding the previous value + 1."""
    for k in range(count):
        value = await ctx.step(f"inc-{k}", partial(increment, value))
    return value


async def serve_async(args: argparse.Namespace) -> None:
    """The SDK's async worker on the bench queue until SIGTERM."""
    app = AsyncAbsurd(args.url, queue_name=QUEUE)
    register_tasks(app, common.Probe(args.probe) if args.probe else None)
    # The graceful stop: the worker finishes the batch it holds, then its loop ends.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, app.stop_worker)
    common.log(f"absurd worker: mode {args.mode or '-'}, concurrency {args.concurrency}")
    try:
        await app.start_worker(concurrency=args.concurrency, poll_interval=WORKER_POLL)
    finally:
        await app.close()


# -- client helpers ---------------------------------------------------------------------------


def client(url: str) -> Absurd:
    """A client that spawns onto the bench queue (tasks are registered on the worker only, so
    every spawn names the queue)."""
    return Absurd(url, queue_name=QUEUE)


def spawn(app: Absurd, task: str, params: dict[str, int]) -> str:
    """Spawn one task; its id."""
    return app.spawn(task, params, queue=QUEUE)["task_id"]


def spawner(app: Absurd, task: str, key: str) -> Callable[[int], None]:
    """A function that spawns ``task`` with params ``{key: n}`` for its argument ``n``."""

    def spawn_one(n: int) -> None:
        spawn(app, task, {key: n})

    return spawn_one


def run_to_result(app: Absurd, task: str, params: dict[str, int]) -> Any:
    """Spawn one task and wait for its result, looking every ``RESULT_POLL`` seconds."""
    task_id = spawn(app, task, params)

    def finished() -> TaskResultSnapshot | None:
        snapshot = app.fetch_task_result(task_id)
        return snapshot if snapshot and snapshot.state in FINAL_STATES else None

    snapshot = common.wait_until(finished, RESULT_TIMEOUT, f"task {task_id}", every=RESULT_POLL)
    if snapshot.state != "completed":
        raise RuntimeError(f"task {task_id} ended {snapshot.state}: {snapshot.failure}")
    return snapshot.result


def spawn_untimed(url: str, task: str, count: int) -> None:
    """``count`` spawns in one transaction (the SDK on a connection we own), for the drain's
    set-up, which is not timed: far faster than ``count`` commits."""
    with psycopg.connect(url) as conn:
        app = Absurd(conn, queue_name=QUEUE)
        for i in range(count):
            spawn(app, task, {"i": i})
    # Leaving the block commits.


def in_lanes(clients: list[Absurd], count: int, job: Callable[[Absurd, int], None]) -> None:
    """``job(client, i)`` for i in 0..count-1, one thread per client, each taking the next ``i``
    as soon as its previous job is done: ``len(clients)`` jobs are outstanding at any time."""
    counter = itertools.count()
    lock = threading.Lock()

    def lane(app: Absurd) -> None:
        while True:
            with lock:
                i = next(counter)
            if i >= count:
                return
            job(app, i)

    with ThreadPoolExecutor(len(clients)) as pool:
        for future in [pool.submit(lane, app) for app in clients]:
            future.result()  # re-raises a lane's failure


# -- workloads --------------------------------------------------------------------------------


def drain(args: argparse.Namespace) -> dict[str, Any]:
    """Spawn N no-op tasks, then time one worker process draining them."""
    spawn_untimed(args.url, "noop", args.count)
    common.log(f"spawned {args.count} no-op tasks; draining at concurrency {args.concurrency}")
    options = ("--mode", "drain", "--concurrency", str(args.concurrency))
    with common.worker_process(__file__, args.url, *options) as proc:
        rate = common.measure_drain(args.url, DONE_SQL, args.count, proc)
    return {"rate": rate}


def enqueue(args: argparse.Namespace) -> dict[str, Any]:
    """N single spawns in sequence from one client."""
    app = client(args.url)
    try:
        rate = common.timed_rate(args.count, spawner(app, "noop", "i"))
    finally:
        app.close()
    return {"rate": rate}


def pickup(args: argparse.Namespace) -> dict[str, Any]:
    """An idle worker with the SDK's default settings (concurrency 1, 0.25 s poll): the time
    from a spawn to the task's body starting."""
    probe = common.Probe()
    app = client(args.url)
    try:
        options = ("--mode", "pickup", "--concurrency", "1", "--probe", probe.path)
        with common.worker_process(__file__, args.url, *options):
            latencies = common.pickup_samples(
                args.samples, args.pause, probe, spawner(app, "probe", "n")
            )
    finally:
        app.close()
        probe.remove()
    return {"latencies_ms": latencies}


def workflow(args: argparse.Namespace) -> dict[str, Any]:
    """N three-step workflows, K in flight, each spawned and awaited by one of K client lanes
    (a thread with its own client and connection)."""

    def one(app: Absurd, i: int) -> None:
        result = run_to_result(app, "workflow", {"x": i})
        if result != i + 3:
            raise AssertionError(f"workflow {i} returned {result!r}, not {i + 3}")

    lanes = max(args.in_flight, 1)
    clients = [client(args.url) for _ in range(lanes)]
    options = ("--mode", "workflow", "--concurrency", str(lanes))
    try:
        with common.worker_process(__file__, args.url, *options):
            in_lanes(clients, common.WARMUP, one)
            start = time.perf_counter()
            in_lanes(clients, args.count, one)
            elapsed = time.perf_counter() - start
    finally:
        for app in clients:
            app.close()
    return {"rate": args.count / elapsed}


def steps(args: argparse.Namespace) -> dict[str, Any]:
    """Sequential workflows of 0, 10, 20 and 40 checkpointed steps: median client seconds."""
    app = client(args.url)
    try:
        with common.worker_process(__file__, args.url, "--mode", "steps", "--concurrency", "1"):
            seconds = common.step_medians(
                args.per_count, lambda n: run_to_result(app, "steps", {"n": n})
            )
    finally:
        app.close()
    return {"seconds": seconds}


WORKLOADS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "drain": drain,
    "enqueue": enqueue,
    "pickup": pickup,
    "workflow": workflow,
    "steps": steps,
}


def main() -> None:
    """Run one workload (or, as ``serve``, be the worker process) and print its figures."""
    args = common.parse()
    if args.workload == "serve":
        asyncio.run(serve_async(args))
        return
    if args.workload == "batch":
        common.unsupported(NO_BATCH)
        return
    install_schema(args.url)
    common.emit(WORKLOADS[args.workload](args))


if __name__ == "__main__":
    main()
