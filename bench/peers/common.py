"""What every engine's adapter shares: the command line, the output, and the measurements that
are the same for all engines. Adapters run in their engine's own virtual environment, so this
module uses only the standard library and psycopg.

The protocol (``bench.compare`` is the caller):

    <venv>/bin/python bench/peers/<engine>.py <workload> --url URL [options]

prints progress on stderr and, as its last stdout line, one JSON object: the figures of one run,
or ``{"unsupported": "why"}`` for a workload the engine does not have. Workloads:

- ``drain --count N --concurrency C``: N no-op jobs are enqueued first (not timed); then one
  worker process with concurrency C empties the queue. Figure: ``rate`` in jobs/s, timed by
  :func:`measure_drain` from outside the worker.
- ``enqueue --count N``: N single enqueues in sequence from one client, after a warm-up.
  Figure: ``rate`` in jobs/s.
- ``batch --count N --batch B``: about N jobs enqueued in batches of B, one call per batch.
  Figure: ``rate`` in jobs/s.
- ``pickup --samples S --pause P``: an idle worker process; S times: wait P seconds, note the
  time, enqueue one job; the job notes when its body starts (:class:`Probe`). Figure:
  ``latencies_ms``, one per sample.
- ``workflow --count N --in-flight K``: N durable workflows of 3 checkpointed steps, each step
  returning its input + 1, K outstanding at any time; each is started by a client and its
  result awaited by that client. Figure: ``rate`` in workflows/s (client wall time).
- ``steps --per-count R``: sequential workflows of 0, 10, 20 and 40 steps, R of each,
  interleaved; figure: ``seconds`` {step count: median client seconds of one workflow}.

The database at URL is fresh and belongs to this one run: the adapter installs the engine's
schema in it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

WORKLOADS = ("drain", "enqueue", "batch", "pickup", "workflow", "steps")
WARMUP = 20  # calls before timing starts: pools open, plans cached
STEP_COUNTS = (0, 10, 20, 40)
POLL = 0.01  # seconds between looks at the engine's tables while a drain runs


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The adapter command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("workload", choices=(*WORKLOADS, "serve"))
    add = parser.add_argument
    add("--url", required=True, help="the fresh database of this run")
    add("--count", type=int, default=10_000)
    add("--concurrency", type=int, default=10)
    add("--batch", type=int, default=1_000)
    add("--samples", type=int, default=100)
    add("--pause", type=float, default=0.05)
    add("--in-flight", type=int, default=1)
    add("--per-count", type=int, default=10)
    add("--probe", help="(serve) the file the pickup job writes its start time to")
    add("--mode", default="", help="(serve) what the worker process is for")
    return parser.parse_args(argv)


def emit(figures: dict[str, Any]) -> None:
    """Print the run's figures as the last line of stdout."""
    print(json.dumps(figures), flush=True)


def unsupported(why: str) -> None:
    """Say that this engine has no such workload (shown as a dash in the table)."""
    emit({"unsupported": why})


def log(message: str) -> None:
    """Progress for the person watching (stderr)."""
    print(message, file=sys.stderr, flush=True)


def scalar(url: str, sql: str) -> Any:
    """The single value a query returns, on a fresh autocommit connection."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(sql).fetchone()
        return row[0] if row else None


def wait_until(condition: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    """Poll ``condition`` until it is truthy; TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def measure_drain(url: str, done_sql: str, count: int, worker: subprocess.Popen[bytes]) -> float:
    """Jobs/s of a worker process draining ``count`` jobs, seen from outside.

    ``done_sql`` returns how many of the jobs the engine has recorded as finished. It is
    polled every 10 ms on one connection: the clock starts at the first look that sees a job
    finished and stops at the first that sees all of them, so the worker's start-up time is not
    counted and every engine is timed the same way (to within two polls).
    """
    deadline = time.monotonic() + 60 + count / 200
    with psycopg.connect(url, autocommit=True) as conn:
        first: tuple[float, int] | None = None
        while time.monotonic() < deadline:
            if worker.poll() is not None:
                raise RuntimeError(f"the worker exited with code {worker.returncode}")
            row = conn.execute(done_sql).fetchone()
            done, now = int(row[0]) if row else 0, time.perf_counter()
            if first is None and done > 0:
                first = (now, done)
            if first is not None and done >= count:
                if done == first[1]:
                    raise RuntimeError("the whole drain happened between two polls: raise --count")
                return (done - first[1]) / (now - first[0])
            time.sleep(POLL)
    raise TimeoutError(f"the drain of {count} jobs did not finish in time")


@contextmanager
def worker_process(script: str, url: str, *options: str) -> Iterator[subprocess.Popen[bytes]]:
    """``python <script> serve --url URL <options>`` in this venv, stopped afterwards (SIGTERM,
    then SIGKILL after 10 s). Its output goes to stderr."""
    command = [sys.executable, script, "serve", "--url", url, *options]
    proc = subprocess.Popen(command, stdout=sys.stderr, stderr=sys.stderr)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Probe:
    """How a pickup job tells the client when its body started: it appends ``<n> <time>`` to a
    file the client watches. Plain file I/O, so every engine pays the same (tiny) cost."""

    def __init__(self, path: str | None = None) -> None:
        if path is None:
            fd, path = tempfile.mkstemp(prefix="durably-pickup-", suffix=".txt")
            os.close(fd)
        self.path = path

    def record(self, n: int) -> None:
        """In the job: note that sample ``n`` started now (call it first thing in the body)."""
        now = time.time()
        with open(self.path, "a") as f:
            f.write(f"{n} {now!r}\n")

    def started(self, n: int, timeout: float = 30.0) -> float:
        """In the client: the time at which sample ``n``'s job started (waits for it)."""
        deadline = time.monotonic() + timeout
        key = f"{n} "
        while time.monotonic() < deadline:
            for line in Path(self.path).read_text().splitlines():
                if line.startswith(key):
                    return float(line.split()[1])
            time.sleep(0.002)
        raise TimeoutError(f"pickup sample {n} did not start within {timeout:.0f}s")

    def remove(self) -> None:
        """Delete the file."""
        Path(self.path).unlink(missing_ok=True)


def pickup_samples(
    samples: int, pause: float, probe: Probe, enqueue: Callable[[int], None]
) -> list[float]:
    """The pickup loop with an idle worker already running: ``enqueue(n)`` must enqueue one
    job whose body calls ``probe.record(n)``. Returns milliseconds per sample (warm-up
    excluded)."""
    latencies = []
    for n in range(WARMUP + samples):
        time.sleep(pause)  # the worker is idle again: back to waiting for work
        before = time.time()
        enqueue(n)
        began = probe.started(n)
        if n >= WARMUP:
            latencies.append((began - before) * 1000)
    return latencies


def timed_rate(count: int, body: Callable[[int], None]) -> float:
    """Calls/s of ``body(i)`` for i in 0..count-1, after ``WARMUP`` untimed calls."""
    for i in range(WARMUP):
        body(-1 - i)
    start = time.perf_counter()
    for i in range(count):
        body(i)
    return count / (time.perf_counter() - start)


def step_medians(per_count: int, run: Callable[[int], int]) -> dict[str, float]:
    """The ``steps`` workload: ``run(n)`` executes one workflow of n steps end to end and
    returns its result (which must be n). Counts interleaved so that drift hits all alike."""
    walls: dict[int, list[float]] = {n: [] for n in STEP_COUNTS}
    for i in range(WARMUP + per_count * len(STEP_COUNTS)):
        n = STEP_COUNTS[i % len(STEP_COUNTS)]
        before = time.perf_counter()
        if run(n) != n:
            raise AssertionError(f"a workflow of {n} steps returned a wrong result")
        if i >= WARMUP:
            walls[n].append(time.perf_counter() - before)
    return {str(n): statistics.median(v) for n, v in walls.items()}
