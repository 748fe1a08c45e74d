"""Worker processes: claim under contention, SIGKILL recovery, graceful shutdown, fencing."""

from __future__ import annotations

import signal
import time
from collections import Counter
from typing import Any

import psycopg

import durably
from tests.helpers import WorkerProcess, wait_until


def effects(db: psycopg.Connection[Any], schema: str) -> list[tuple[str, int]]:
    return [(r[0], r[1]) for r in db.execute(f'SELECT tag, pid FROM "{schema}".effects').fetchall()]


def statuses(db: psycopg.Connection[Any], schema: str) -> Counter[str]:
    return Counter(r[0] for r in db.execute(f'SELECT status FROM "{schema}".runs').fetchall())


def run_row(db: psycopg.Connection[Any], schema: str, run_id: int) -> dict[str, Any]:
    cur = db.execute(
        "SELECT status, attempt, recoveries, failures, result, finished_at"
        f' FROM "{schema}".runs WHERE id = %s',
        (run_id,),
    )
    row = cur.fetchone()
    assert row is not None
    return dict(
        zip(
            ["status", "attempt", "recoveries", "failures", "result", "finished_at"],
            row,
            strict=True,
        )
    )


def test_claim_under_contention_runs_each_once(
    qapp: durably.App, database_url: str, schema: str, db: psycopg.Connection[Any]
) -> None:
    effect = qapp.registry["effect"]
    n = 400
    effect.enqueue_many([(f"t{i}",) for i in range(n)])
    workers = [WorkerProcess(database_url, schema, "queue_app", "--slots", "8") for _ in range(4)]
    try:
        wait_until(
            lambda: statuses(db, schema)["COMPLETED"] == n, timeout=60, what="all runs completed"
        )
    finally:
        for w in workers:
            w.kill()
    done = effects(db, schema)
    assert Counter(tag for tag, _ in done) == Counter(f"t{i}" for i in range(n))
    assert len({pid for _, pid in done}) >= 2, "work should be spread over several processes"
    attempts = db.execute(f'SELECT max(attempt) FROM "{schema}".runs').fetchone()
    assert attempts is not None and attempts[0] == 1


def test_sigkilled_worker_run_finishes_elsewhere_within_seconds(
    qapp: durably.App, database_url: str, schema: str, db: psycopg.Connection[Any]
) -> None:
    handle = qapp.registry["slow_first"].enqueue("k1")
    with WorkerProcess(database_url, schema, "queue_app", "--slots", "1") as first:
        wait_until(lambda: effects(db, schema), what="first attempt started")
        with WorkerProcess(database_url, schema, "queue_app", "--slots", "1") as second:
            second.wait_for_line("serving queues")
            first.kill()
            killed_at = time.monotonic()
            result = handle.result(timeout=30)
            recovered_in = time.monotonic() - killed_at
    row = run_row(db, schema, handle.id)
    assert row["status"] == "COMPLETED" and row["attempt"] == 2 and row["recoveries"] == 1
    assert row["failures"] == 0, "losing a worker does not use the retry budget"
    assert result == f"k1:{second.proc.pid}"
    assert recovered_in < 5.0, f"recovery took {recovered_in:.1f}s"


def test_graceful_shutdown_finishes_running_and_claims_nothing_more(
    qapp: durably.App, database_url: str, schema: str, db: psycopg.Connection[Any]
) -> None:
    effect = qapp.registry["effect"]
    first = effect.enqueue_many([("a", 1.0), ("b", 1.0)])
    with WorkerProcess(database_url, schema, "queue_app", "--slots", "2") as worker:
        wait_until(lambda: statuses(db, schema)["RUNNING"] == 2, what="two runs running")
        later = effect.enqueue("c", 0.0)
        worker.signal(signal.SIGTERM)
        assert worker.wait(20) == 0
    assert [h.status() for h in first] == ["COMPLETED", "COMPLETED"]
    assert later.status() == "QUEUED"
    assert sorted(tag for tag, _ in effects(db, schema)) == ["a", "b"]


def test_shutdown_past_grace_period_releases_runs_at_once(
    qapp: durably.App, database_url: str, schema: str, db: psycopg.Connection[Any]
) -> None:
    handle = qapp.registry["slow_first"].enqueue("g1")
    with WorkerProcess(
        database_url, schema, "queue_app", "--slots", "1", "--grace-period", "0.5"
    ) as worker:
        wait_until(lambda: effects(db, schema), what="run started")
        worker.signal(signal.SIGTERM)
        assert worker.wait(20) == 0
    row = run_row(db, schema, handle.id)
    assert (row["status"], row["attempt"], row["recoveries"], row["failures"]) == (
        "QUEUED",
        1,
        0,
        0,
    )
    with WorkerProcess(database_url, schema, "queue_app", "--slots", "1") as other:
        assert handle.result(timeout=20) == f"g1:{other.proc.pid}"


def test_second_signal_stops_at_once(
    qapp: durably.App, database_url: str, schema: str, db: psycopg.Connection[Any]
) -> None:
    handle = qapp.registry["slow_first"].enqueue("s1")
    with WorkerProcess(database_url, schema, "queue_app", "--slots", "1") as worker:
        wait_until(lambda: effects(db, schema), what="run started")
        worker.signal(signal.SIGTERM)
        worker.wait_for_line("stopping")
        started = time.monotonic()
        worker.signal(signal.SIGTERM)
        assert worker.wait(20) == 0
        assert time.monotonic() - started < 10, "the default grace period is 30 s"
    assert run_row(db, schema, handle.id)["status"] == "QUEUED"


def test_zombie_worker_writes_nothing_after_its_lease_is_taken(
    qapp: durably.App, database_url: str, schema: str, db: psycopg.Connection[Any]
) -> None:
    """A worker paused past its lease (SIGSTOP) loses the run to another worker; when it wakes up
    and its task body returns, its outcome is refused by the fence."""
    handle = qapp.registry["effect_pid"].enqueue("z1", 2.0)
    with WorkerProcess(database_url, schema, "queue_app", "--slots", "1", "--lease", "1") as zombie:
        wait_until(lambda: run_row(db, schema, handle.id)["status"] == "RUNNING", what="claimed")
        zombie.signal(signal.SIGSTOP)
        with WorkerProcess(database_url, schema, "queue_app", "--slots", "1") as rescuer:
            assert handle.result(timeout=30) == f"z1:{rescuer.proc.pid}"
            done = run_row(db, schema, handle.id)
            zombie.signal(signal.SIGCONT)
            # The zombie's body runs to its end (at-least-once) but its outcome is not written.
            wait_until(
                lambda: ("z1", zombie.proc.pid) in effects(db, schema), what="zombie body ended"
            )
            fenced = f"outcomes of runs [{handle.id}] not recorded"
            abandoned = f"abandoning run {handle.id}:"
            wait_until(
                lambda: any(fenced in line or abandoned in line for line in zombie.lines),
                what="the zombie to give the run up",
            )
    assert run_row(db, schema, handle.id) == done
    assert done["attempt"] == 2 and done["recoveries"] == 1
