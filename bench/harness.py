"""Plumbing for the benchmarks: throwaway schemas, worker processes, isolated client processes,
polling with a deadline, and summary statistics."""

from __future__ import annotations

import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import psycopg

from bench.apps import SCHEMA_ENV
from bench.peers import common

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent


def database_url() -> str:
    """DURABLY_DATABASE_URL, else DATABASE_URL, else durably's embedded server."""
    import durably

    # An App resolves the URL exactly as workers will (starting the embedded server if needed).
    return durably.App(schema="durably_bench").url


def int_list(text: str) -> list[int]:
    """``"50,100,200"`` -> ``[50, 100, 200]`` (command-line lists)."""
    return [int(s) for s in text.split(",") if s.strip()]


def new_schema_name() -> str:
    """A fresh schema name, so every measurement starts from empty tables."""
    return f"bench_{uuid.uuid4().hex[:12]}"


def connect(url: str) -> psycopg.Connection[Any]:
    """A plain autocommit connection for looking at the tables directly."""
    return psycopg.connect(url, autocommit=True)


def drop_schema(url: str, schema: str) -> None:
    """Remove a benchmark schema and everything in it."""
    with connect(url) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@contextmanager
def throwaway_schema(url: str) -> Iterator[str]:
    """A new schema name for the block; the schema is dropped afterwards."""
    schema = new_schema_name()
    try:
        yield schema
    finally:
        drop_schema(url, schema)


def isolated(fn: Callable[..., T], *args: Any) -> T:
    """Call ``fn(*args)`` in a forked child process and return its result.

    Each client measurement gets a fresh process: its App's connections, portal thread and
    listeners end with it, and no measurement inherits another's warm state or garbage.
    """
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(fn, *args).result()


def wait_until(condition: Callable[[], T], timeout: float, interval: float, what: str) -> T:
    """Poll ``condition`` until it returns a truthy value; raise TimeoutError after ``timeout``
    (the adapters' helper, with this module's argument order)."""
    value: T = common.wait_until(condition, timeout, what, every=interval)
    return value


class WorkerProcess:
    """``python -m durably worker bench.apps:app`` on one schema, as a context manager.
    ``durable_slots``, when given, sets the worker's pool of durable slots (else its default)."""

    def __init__(
        self,
        url: str,
        schema: str,
        slots: int,
        durable_slots: int | None = None,
        *extra: str,
    ) -> None:
        self.extra = extra  # more `durably worker` options
        self.url = url
        self.schema = schema
        self.slots = slots
        self.durable_slots = durable_slots
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in __exit__
            prefix=f"durably-{schema}-", suffix=".log", delete=False
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> WorkerProcess:
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        env = {
            **os.environ,
            "DURABLY_DATABASE_URL": self.url,
            SCHEMA_ENV: self.schema,
            "PYTHONPATH": path,
        }
        command = [
            sys.executable,
            "-m",
            "durably",
            "worker",
            "bench.apps:app",
            "--slots",
            str(self.slots),
        ]
        if self.durable_slots is not None:
            command += ["--durable-slots", str(self.durable_slots)]
        command += self.extra
        self.proc = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.log.close()
        if exc[0] is None:
            os.unlink(self.log.name)
        else:
            print(f"worker log kept at {self.log.name}", file=sys.stderr)

    def stop(self) -> None:
        """SIGTERM (graceful shutdown), then SIGKILL if it does not end within 15 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def check_alive(self) -> None:
        """Raise with the worker's log when the process has ended."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            self.log.flush()
            tail = Path(self.log.name).read_text(errors="replace")[-2000:]
            raise RuntimeError(f"worker exited with code {self.proc.returncode}:\n{tail}")

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until the worker has registered itself (it then LISTENs and claims)."""
        assert self.proc is not None
        pid = self.proc.pid

        def registered() -> bool:
            self.check_alive()
            with connect(self.url) as conn:
                row = conn.execute(
                    f'SELECT count(*) FROM "{self.schema}".workers WHERE pid = %s', (pid,)
                ).fetchone()
            return bool(row and row[0])

        wait_until(registered, timeout, 0.05, "the worker to register")


def percentile(values: list[float], fraction: float) -> float:
    """The ``fraction`` quantile (0..1) by linear interpolation between closest ranks."""
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: list[float]) -> float:
    """The median of several runs' figures."""
    return statistics.median(values)
