"""Flow control across workers: a task's global concurrency limit, with several worker
processes against the real PostgreSQL, sampled continuously."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import psycopg
import pytest

import durably
from tests.apps import limits_app
from tests.helpers import WorkerProcess, wait_until


@pytest.fixture
def lapp(database_url: str, schema: str) -> durably.App:
    """The client side of tests/apps/limits_app.py, on this test's schema."""
    app = durably.App(database_url, schema=schema)
    for task in limits_app.app.registry.values():
        app.task(name=task.name, concurrency=task.concurrency)(task.fn)
    app.migrate()
    return app


@contextmanager
def sampled(url: str, schema: str) -> Iterator[Counter[str]]:
    """The most runs of each task seen RUNNING at once, sampled every 5 ms while the block runs."""
    peaks: Counter[str] = Counter()
    stop = threading.Event()

    def sample() -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            while not stop.is_set():
                rows = conn.execute(
                    f'SELECT task, count(*) FROM "{schema}".runs '
                    "WHERE status = 'RUNNING' GROUP BY task"
                ).fetchall()
                for task, n in rows:
                    peaks[task] = max(peaks[task], n)
                stop.wait(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peaks
    finally:
        stop.set()
        thread.join()


def done(db: psycopg.Connection[Any], schema: str, n: int) -> bool:
    row = db.execute(f"SELECT count(*) FROM \"{schema}\".runs WHERE status = 'COMPLETED'")
    return row.fetchone() == (n,)


def test_the_global_limit_holds_across_worker_processes(
    lapp: durably.App, database_url: str, schema: str, db: psycopg.Connection[Any]
) -> None:
    lapp.registry["limited"].enqueue_many([(0.05,)] * 60)
    lapp.registry["free"].enqueue_many([(0.05,)] * 60)
    with ExitStack() as workers:
        for _ in range(3):
            workers.enter_context(
                WorkerProcess(database_url, schema, "limits_app", "--slots", "10")
            )
        with sampled(database_url, schema) as peaks:
            wait_until(lambda: done(db, schema, 120), timeout=60, what="all runs to complete")
    assert peaks["limited"] == 3  # never more, and the limit was used
    assert peaks["free"] > 3  # the unlimited task was not held back by it


def test_a_killed_workers_runs_count_until_recovered(
    lapp: durably.App, database_url: str, schema: str, db: psycopg.Connection[Any]
) -> None:
    limited = lapp.registry["limited"]
    limited.enqueue_many([(30.0,)] * 3)
    running = f"SELECT count(*) FROM \"{schema}\".runs WHERE status = 'RUNNING'"
    with WorkerProcess(database_url, schema, "limits_app", "--slots", "10") as first:
        wait_until(lambda: db.execute(running).fetchone() == (3,), 30, what="3 runs started")
        with sampled(database_url, schema) as peaks:
            first.kill()  # its 3 runs stay RUNNING, and count, until the sweeper recovers them
            limited.enqueue_many([(0.05,)] * 12)
            with WorkerProcess(database_url, schema, "limits_app", "--slots", "10"):
                recovered = f'SELECT count(*) FROM "{schema}".runs WHERE recoveries > 0'
                wait_until(lambda: db.execute(recovered).fetchone() == (3,), 30, what="recovery")
                # The recovered runs take the room again: the short ones wait for them.
                wait_until(lambda: db.execute(running).fetchone() == (3,), 30, what="3 running")
    assert peaks["limited"] == 3  # the dead worker's 3 and the new worker's never added up
    short_started = db.execute(
        f"SELECT count(*) FROM \"{schema}\".runs WHERE args::text LIKE '%%0.05%%' "
        "AND started_at IS NOT NULL"
    )
    assert short_started.fetchone() == (0,)


@pytest.mark.parametrize("bad", [0, -1, True, "5", 2.5])
def test_a_bad_limit_is_refused_in_one_line(app: durably.App, bad: Any) -> None:
    with pytest.raises(ValueError, match=r"concurrency=.* is not valid for task 'x': pass an int"):
        app.task(name="x", concurrency=bad)(lambda: None)
