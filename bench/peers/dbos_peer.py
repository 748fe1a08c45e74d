"""DBOS Transact (PyPI ``dbos==3.4.0``) adapter for ``bench.compare``.

The protocol is in the docstring of ``common.py``. DBOS keeps all its state in its *system
database*: here the run's fresh database (schema ``dbos``; DBOS 3 has no application database).
Jobs are workflows on a database-backed queue (``DBOS.register_queue``), enqueued from outside
the application with ``DBOSClient``, which never migrates: the adapter installs the schema first
(``DBOS.migrate``) or launches DBOS itself. Nothing phones home: Conductor starts only with a
key, OTLP export only with ``enable_otlp``, and neither is set.

- drain: ``--concurrency`` is the queue's ``worker_concurrency``, DBOS's per-process limit; the
  worker polls every ``TUNED_POLL_SEC`` rather than DBOS's default second (see there).
- enqueue: ``DBOSClient.enqueue``, DBOS's way to enqueue from another process.
- batch: unsupported, DBOS has no call that enqueues several workflows.
- pickup: the queue's default settings, so a poll every ``DEFAULT_POLL_SEC`` (±5 % jitter).
  The worker polled just as it picked up the previous sample, and the next is enqueued a
  ``--pause`` later, so latencies come out near the interval minus the pause, not half of it.
- workflow: ``rate`` is DBOS's usual in-process way, ``DBOS.start_workflow`` and the handle's
  ``get_result``; ``rate_via_queue`` has a client enqueue to a worker process and poll for the
  result (queue and result polls at ``TUNED_POLL_SEC``).
- steps: ``DBOS.start_workflow`` of a workflow of n steps, in process.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa  # a dependency of dbos
from dbos import DBOS, DBOSClient, DBOSConfig, EnqueueOptions

sys.path.insert(0, str(Path(__file__).parent))
import common  # lives next to this file, not in the venv

APP = "durably_bench"  # clients enqueue on the application's behalf; workers serve only it
VERSION = "bench"  # fixed, so that every process of a run runs the latest application version
QUEUE = "bench"
DEFAULT_POLL_SEC = 1.0  # DBOS's default queue polling interval (DBOS.register_queue)
# A worker claims at most worker_concurrency workflows per poll, so at the default interval a
# drain could never exceed C jobs/s, whatever DBOS's real cost (measured: 51/s at C = 50).
# DBOS documents the interval as the knob trading latency against database load; 10 ms is the
# interval at which ``common`` watches every engine's tables. Result polls (DBOSClient handles
# also default to 1 s) get the same.
TUNED_POLL_SEC = 0.01
QUEUED_SQL = f"SELECT count(*) FROM dbos.workflow_status WHERE queue_name = '{QUEUE}'"
DONE_SQL = f"{QUEUED_SQL} AND status = 'SUCCESS'"  # DBOS keeps finished workflows' rows
ENQUEUED_SQL = f"{QUEUED_SQL} AND status = 'ENQUEUED'"  # not yet claimed by a worker

_probe_path = ""  # (serve, pickup) the file the probe workflow writes its start time to


@DBOS.workflow(name="noop")
def noop(n: int) -> int:
    """The drain and enqueue job: does nothing."""
    return n


@DBOS.workflow(name="probe")
def probe(n: int) -> None:
    """The pickup job: notes when its body started, first thing."""
    common.Probe(_probe_path).record(n)


@DBOS.step(name="add_one")
def add_one(x: int) -> int:
    """One checkpointed step."""
    return x + 1


@DBOS.workflow(name="three_steps")
def three_steps(x: int) -> int:
    """The workflow workload's workflow: x + 3, in three steps."""
    return add_one(add_one(add_one(x)))


@DBOS.workflow(name="n_steps")
def n_steps(n: int) -> int:
    """The steps workload's workflow: n, counted in n steps."""
    x = 0
    for _ in range(n):
        x = add_one(x)
    return x


# --- DBOS in this process, and clients ---------------------------------------------------


def launch(url: str, *, listen: bool) -> None:
    """Launch DBOS in this process on the run's database, migrating it if need be.

    Unless ``listen``, this process dequeues nothing, so that it never competes with a worker.
    """
    config: DBOSConfig = {
        "name": APP,
        "system_database_url": url,
        "application_version": VERSION,
        "log_level": "WARNING",
    }
    DBOS(config=config)
    if not listen:
        DBOS.listen_queues([])
    DBOS.launch()


@contextmanager
def launched(url: str) -> Iterator[None]:
    """DBOS launched in this process (listening to no queue) for the duration."""
    launch(url, listen=False)
    try:
        yield
    finally:
        DBOS.destroy()


@contextmanager
def client(url: str, pool_size: int | None = None) -> Iterator[DBOSClient]:
    """A client on a database that already has DBOS's schema (``None``: DBOS's default pool)."""
    dbos_client = DBOSClient(
        system_database_url=url, application_name=APP, system_database_pool_size=pool_size
    )
    try:
        yield dbos_client
    finally:
        dbos_client.destroy()


def job(workflow_name: str) -> EnqueueOptions:
    """The options of one enqueue of ``workflow_name`` onto the bench queue."""
    return {"workflow_name": workflow_name, "queue_name": QUEUE}


def check_count(url: str, sql: str, expected: int) -> None:
    """Fail loudly if the database does not hold the workflows the run meant to create."""
    found = int(common.scalar(url, sql))
    if found != expected:
        raise AssertionError(f"expected {expected} workflows, found {found}")


# --- the worker process -------------------------------------------------------------------


def serve(args: argparse.Namespace) -> None:
    """A DBOS worker serving the bench queue until SIGTERM. Mode ``pickup`` keeps all of
    DBOS's queue defaults; the others (drain, workflow) set worker_concurrency and a tuned poll."""
    global _probe_path
    _probe_path = args.probe or ""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    launch(args.url, listen=True)
    if args.mode == "pickup":
        DBOS.register_queue(QUEUE, on_conflict="always_update")
    else:
        DBOS.register_queue(
            QUEUE,
            worker_concurrency=args.concurrency,
            polling_interval_sec=TUNED_POLL_SEC,
            on_conflict="always_update",
        )
    common.log(f"dbos worker ({args.mode}) serving queue {QUEUE}")
    stop.wait()
    DBOS.destroy()


# --- the workloads ------------------------------------------------------------------------


def fill_queue(url: str, count: int) -> None:
    """Enqueue ``count`` no-op workflows in one transaction (faster; the filling is untimed)."""
    engine = sa.create_engine(sa.make_url(url).set(drivername="postgresql+psycopg"))
    try:
        with client(url) as dbos_client, engine.begin() as conn:
            for i in range(count):
                dbos_client.enqueue_in_transaction(conn, job("noop"), i)
    finally:
        engine.dispose()


def drain(args: argparse.Namespace) -> dict[str, Any]:
    """N no-op workflows enqueued first, then drained by one worker process."""
    DBOS.migrate(args.url)
    fill_queue(args.url, args.count)
    check_count(args.url, ENQUEUED_SQL, args.count)
    common.log(f"{args.count} workflows enqueued; worker_concurrency {args.concurrency}")
    options = ("--mode", "drain", "--concurrency", str(args.concurrency))
    with common.worker_process(__file__, args.url, *options) as proc:
        return {"rate": common.measure_drain(args.url, DONE_SQL, args.count, proc)}


def enqueue(args: argparse.Namespace) -> dict[str, Any]:
    """N single ``DBOSClient.enqueue`` calls in sequence (no worker runs them)."""
    DBOS.migrate(args.url)
    with client(args.url) as dbos_client:

        def one(i: int) -> None:
            dbos_client.enqueue(job("noop"), i)

        rate = common.timed_rate(args.count, one)
    check_count(args.url, ENQUEUED_SQL, args.count + common.WARMUP)
    return {"rate": rate}


def pickup(args: argparse.Namespace) -> dict[str, Any]:
    """One probe workflow at a time, enqueued for an idle worker on DBOS's default polling."""
    DBOS.migrate(args.url)
    probe_file = common.Probe()
    options = ("--mode", "pickup", "--probe", probe_file.path)
    try:
        with client(args.url) as dbos_client, common.worker_process(__file__, args.url, *options):

            def one(n: int) -> None:
                dbos_client.enqueue(job("probe"), n)

            latencies = common.pickup_samples(args.samples, args.pause, probe_file, one)
    finally:
        probe_file.remove()
    return {"latencies_ms": latencies}


def in_flight_rate(count: int, in_flight: int, one: Callable[[int], None]) -> float:
    """Calls/s of ``one(i)`` for i in 0..count-1, ``in_flight`` at any time, after ``WARMUP``
    untimed calls. Threads, because DBOS's synchronous handles block until the result."""
    with ThreadPoolExecutor(max_workers=in_flight) as pool:
        list(pool.map(one, range(-common.WARMUP, 0)))
        start = time.perf_counter()
        list(pool.map(one, range(count)))  # re-raises the first failure, if any
        return count / (time.perf_counter() - start)


def check_result(i: int, result: int) -> None:
    """Fail loudly on a three-step workflow that did not return its input + 3."""
    if result != i + 3:
        raise AssertionError(f"workflow {i} returned {result}, not {i + 3}")


def via_queue_rate(args: argparse.Namespace) -> float:
    """The workflow workload through the queue: a client enqueues and polls for each result,
    a worker process runs them."""
    options = ("--mode", "workflow", "--concurrency", str(args.in_flight))
    # Result polls may use only half of a client's pool: give each in-flight workflow a slot.
    with client(args.url, pool_size=max(5, 2 * args.in_flight)) as dbos_client:

        def one(i: int) -> None:
            handle = dbos_client.enqueue(job("three_steps"), i)
            check_result(i, handle.get_result(polling_interval_sec=TUNED_POLL_SEC))

        with common.worker_process(__file__, args.url, *options):
            return in_flight_rate(args.count, args.in_flight, one)


def workflow(args: argparse.Namespace) -> dict[str, Any]:
    """Three-step workflows, K in flight: in process (``rate``), then through the queue."""

    def one(i: int) -> None:
        check_result(i, DBOS.start_workflow(three_steps, i).get_result())

    with launched(args.url):
        rate = in_flight_rate(args.count, args.in_flight, one)
        common.log(f"in process: {rate:.1f} workflows/s; now through the queue")
        return {"rate": rate, "rate_via_queue": via_queue_rate(args)}


def steps(args: argparse.Namespace) -> dict[str, Any]:
    """Medians of one in-process workflow of 0, 10, 20 and 40 steps, end to end."""

    def run(n: int) -> int:
        return DBOS.start_workflow(n_steps, n).get_result()

    with launched(args.url):
        return {"seconds": common.step_medians(args.per_count, run)}


WORKLOADS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "drain": drain,
    "enqueue": enqueue,
    "pickup": pickup,
    "workflow": workflow,
    "steps": steps,
}


def main() -> None:
    """Run the workload the command line names; print its figures as the last stdout line."""
    args = common.parse()
    if args.workload == "serve":
        serve(args)
    elif args.workload == "batch":
        common.unsupported("DBOS has no batch enqueue: DBOSClient.enqueue takes one workflow")
    else:
        common.emit(WORKLOADS[args.workload](args))


if __name__ == "__main__":
    main()
