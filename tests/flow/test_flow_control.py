"""Flow control across workers: concurrency limits per task, per key and per queue, strict order
per key, rate limits and fair turns, with several worker processes against the real PostgreSQL
(tests/apps/limits_app.py), sampled continuously where a limit is about runs at once."""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

import durably
from tests.apps import limits_app
from tests.helpers import WorkerProcess, wait_until

Db = psycopg.Connection[Any]


@pytest.fixture
def lapp(database_url: str, schema: str) -> durably.App:
    """The client side of tests/apps/limits_app.py, on this test's schema."""
    app = limits_app.build(database_url, schema)
    app.migrate()
    return app


@contextmanager
def workers(url: str, schema: str, count: int = 3, slots: int = 10) -> Iterator[None]:
    """``count`` worker processes serving limits_app."""
    with ExitStack() as stack:
        for _ in range(count):
            stack.enter_context(WorkerProcess(url, schema, "limits_app", "--slots", str(slots)))
        yield


@contextmanager
def sampled(url: str, schema: str, group: str = "task") -> Iterator[Counter[Any]]:
    """The most RUNNING runs seen at once per ``group`` (SQL over runs), sampled every 5 ms."""
    peaks: Counter[Any] = Counter()
    stop = threading.Event()
    query = f"SELECT {group}, count(*) FROM \"{schema}\".runs WHERE status = 'RUNNING' GROUP BY 1"

    def sample() -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            while not stop.is_set():
                for key, n in conn.execute(query).fetchall():
                    peaks[key] = max(peaks[key], n)
                stop.wait(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peaks
    finally:
        stop.set()
        thread.join()


def scalar(db: Db, sql: str) -> int:
    """The one number ``sql`` selects."""
    row = db.execute(sql.encode()).fetchone()
    assert row is not None
    return int(row[0])


def completed(db: Db, schema: str, n: int) -> Callable[[], bool]:
    """A condition: ``n`` runs have completed."""
    query = f"SELECT count(*) FROM \"{schema}\".runs WHERE status = 'COMPLETED'"
    return lambda: db.execute(query).fetchone() == (n,)


def runs(db: Db, schema: str, task: str) -> list[tuple[Any, ...]]:
    """(id, concurrency_key, fairness_key, started_at, finished_at) of a task's runs, by id."""
    return db.execute(
        "SELECT id, concurrency_key, fairness_key, started_at, finished_at "
        f'FROM "{schema}".runs WHERE task = %s ORDER BY id',
        (task,),
    ).fetchall()


# -- global concurrency per task and per queue ---------------------------------------------------


def test_the_global_limit_holds_across_worker_processes(
    lapp: durably.App, database_url: str, schema: str, db: Db
) -> None:
    lapp.registry["limited"].enqueue_many([(0.05,)] * 60)
    lapp.registry["free"].enqueue_many([(0.05,)] * 60)
    with workers(database_url, schema), sampled(database_url, schema) as peaks:
        wait_until(completed(db, schema, 120), timeout=60, what="all runs to complete")
    assert peaks["limited"] == 3  # never more, and the limit was used
    assert peaks["free"] > 3  # the unlimited task was not held back by it


def test_a_killed_workers_runs_count_until_recovered(
    lapp: durably.App, database_url: str, schema: str, db: Db
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


def test_a_queue_limit_holds_for_every_task_of_the_queue(
    lapp: durably.App, database_url: str, schema: str, db: Db
) -> None:
    lapp.registry["narrow_a"].enqueue_many([(0.05,)] * 20)
    lapp.registry["narrow_b"].enqueue_many([(0.05,)] * 20)
    lapp.registry["free"].enqueue_many([(0.05,)] * 20)
    with workers(database_url, schema), sampled(database_url, schema, "queue") as peaks:
        wait_until(completed(db, schema, 60), timeout=60, what="all runs to complete")
    assert peaks["narrow"] == 2  # both tasks together, on all workers
    assert peaks["default"] > 2


# -- per-key concurrency and order ---------------------------------------------------------------


def test_one_run_at_a_time_per_key_and_keys_in_parallel(
    lapp: durably.App, database_url: str, schema: str, db: Db
) -> None:
    per_customer = lapp.registry["per_customer"]
    per_customer.enqueue_many([(f"c{i % 6}", 0.05) for i in range(36)])
    with workers(database_url, schema), sampled(database_url, schema, "concurrency_key") as peaks:
        wait_until(completed(db, schema, 36), timeout=60, what="all runs to complete")
    assert set(peaks) == {f"c{i}" for i in range(6)}
    assert set(peaks.values()) == {1}  # one at a time per customer, on all workers
    overlapping = db.execute(
        f'SELECT count(*) FROM "{schema}".runs a JOIN "{schema}".runs b '
        "ON a.concurrency_key <> b.concurrency_key AND a.id < b.id "
        "AND a.started_at < b.finished_at AND b.started_at < a.finished_at"
    ).fetchone()
    assert overlapping is not None and overlapping[0] > 0  # different customers ran at once


def test_ordered_keys_start_in_enqueue_order_even_across_a_retry(
    lapp: durably.App, database_url: str, schema: str, db: Db, tmp_path: Path
) -> None:
    in_order = lapp.registry["in_order"]
    for n in range(6):
        for customer in ("a", "b", "c"):
            # Customer a's second run fails once and waits 0.3 s to retry: a's later runs must
            # wait for it, though they are due and a's key is free meanwhile.
            marker = str(tmp_path / "fail-once") if (customer, n) == ("a", 1) else None
            in_order.enqueue(customer, n, marker)
    with workers(database_url, schema):
        wait_until(completed(db, schema, 18), timeout=60, what="all runs to complete")
    rows = runs(db, schema, "in_order")
    for customer in ("a", "b", "c"):
        mine = [r for r in rows if r[1] == customer]
        for earlier, later in itertools.pairwise(mine):
            assert later[3] >= earlier[4], (
                f"{customer}: {later[0]} started before {earlier[0]} ended"
            )
    retried = db.execute(f'SELECT failures FROM "{schema}".runs WHERE id = %s', (rows[3][0],))
    assert retried.fetchone() == (1,)


# -- rate limits ---------------------------------------------------------------------------------


def test_the_rate_limit_holds_in_every_window_and_holds_no_slot(
    lapp: durably.App, database_url: str, schema: str, db: Db
) -> None:
    lapp.registry["rated"].enqueue_many([(n,) for n in range(20)])
    lapp.registry["free"].enqueue_many([(0.01,)] * 10)
    with workers(database_url, schema, slots=2):
        wait_until(completed(db, schema, 30), timeout=60, what="all runs to complete")
    starts = sorted(r[3] for r in runs(db, schema, "rated"))
    # 5 per second: any 6 consecutive starts span at least a second, and the limit was reached.
    assert all(b - a >= timedelta(seconds=1) for a, b in zip(starts, starts[5:], strict=False))
    assert any(b - a < timedelta(seconds=1) for a, b in zip(starts, starts[4:], strict=False))
    # Waiting runs hold no slot: with 6 slots in all, the free runs did not wait for them.
    free_done = max(r[4] for r in runs(db, schema, "free"))
    assert free_done < starts[-1] - timedelta(seconds=1)


# -- fairness ------------------------------------------------------------------------------------


def test_a_small_tenant_is_not_delayed_by_a_big_one(
    lapp: durably.App, database_url: str, schema: str, db: Db
) -> None:
    fair = lapp.registry["fair"]
    fair.enqueue_many([("big", 0.02)] * 300)
    with workers(database_url, schema, slots=3):
        started = f'SELECT count(*) FROM "{schema}".runs WHERE started_at IS NOT NULL'
        wait_until(lambda: scalar(db, started) >= 30, 30, what="big under way")
        fair.enqueue_many([("small", 0.02)] * 10)
        wait_until(completed(db, schema, 310), timeout=60, what="all runs to complete")
    rows = runs(db, schema, "fair")
    small = [r for r in rows if r[2] == "small"]
    small_enqueued = db.execute(
        f'SELECT min(created_at) FROM "{schema}".runs WHERE fairness_key = %s', ("small",)
    ).fetchone()
    assert small_enqueued is not None
    last_small = max(r[3] for r in small)
    big_between = [r for r in rows if r[2] == "big" and small_enqueued[0] <= r[3] < last_small]
    # Turns alternate, so the big tenant starts about as many runs as the small one meanwhile
    # (plus what was being claimed when the small runs arrived), not its 270 queued ones.
    assert len(big_between) <= 10 + 9 + 5, len(big_between)


# -- durable runs ------------------------------------------------------------------------------


def test_children_of_durable_runs_keep_their_key_limit(
    lapp: durably.App, database_url: str, schema: str, db: Db
) -> None:
    onboarding = lapp.registry["onboarding"]
    handles = [onboarding.enqueue(customer, 6) for customer in ("x", "y")]
    with workers(database_url, schema), sampled(database_url, schema, "concurrency_key") as peaks:
        assert [h.result(timeout=60) for h in handles] == [6, 6]
    assert peaks["x"] == 1 and peaks["y"] == 1


# -- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, True, "5", 2.5])
def test_a_bad_limit_is_refused_in_one_line(app: durably.App, bad: Any) -> None:
    with pytest.raises(ValueError, match=r"concurrency=.* is not valid for task 'x': pass an int"):
        app.task(name="x", concurrency=bad)(lambda: None)


@pytest.mark.parametrize("bad", ["100", "0/minute", "5/fortnight", "x/second", "5/0s", 5])
def test_a_bad_rate_is_refused_in_one_line(app: durably.App, bad: Any) -> None:
    with pytest.raises(ValueError, match=r"rate_limit=.* is not valid for task 'x': write") as exc:
        app.task(name="x", rate_limit=bad)(lambda: None)
    assert "\n" not in str(exc.value)
    with pytest.raises(ValueError, match=r"rate_limit=.* is not valid for queue 'q': write"):
        app.queue("q", rate_limit=bad)


def test_bad_keys_are_refused_in_one_line(app: durably.App) -> None:
    with pytest.raises(ValueError, match=r"need a concurrency_key .*pass concurrency_key="):
        app.task(name="x", key_concurrency=2)(lambda: None)
    with pytest.raises(ValueError, match="concurrency_key='c' is not valid for task 'y'"):
        app.task(name="y", concurrency_key="c")(lambda: None)  # type: ignore[call-overload]

    @app.task(name="plain")
    def plain(n: int) -> None: ...

    with pytest.raises(ValueError, match="declares no concurrency_key: declare it"):
        plain.options(concurrency_key="c").enqueue(1)

    @app.task(name="keyed", concurrency_key=lambda n: n)
    def keyed(n: Any) -> None: ...

    with pytest.raises(TypeError, match="the concurrency_key must be a str"):
        keyed.enqueue(1)
    assert app.list_runs() == []  # nothing was written
