"""A worker whose own connection (listener and liveness lock) is dropped by the server takes it
back and keeps serving."""

from __future__ import annotations

import threading
from typing import Any

import psycopg

import durably
from tests.helpers import wait_until


def listener_pids(db: psycopg.Connection[Any], worker: durably.Worker) -> list[int]:
    rows = db.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s",
        (f"durably worker {worker.id}",),
    ).fetchall()
    return [r[0] for r in rows]


def lock_held(db: psycopg.Connection[Any], schema: str, worker: durably.Worker) -> bool:
    row = db.execute(
        f"""SELECT EXISTS (SELECT 1 FROM "{schema}".workers w JOIN pg_locks l
              ON l.locktype = 'advisory' AND l.objsubid = 2 AND l.granted
             AND l.objid = w.lock_id::oid
            WHERE w.id = %s AND w.stopped_at IS NULL)""",
        (worker.id,),
    ).fetchone()
    return bool(row and row[0])


def test_worker_takes_its_connection_back_after_the_server_drops_it(
    app: durably.App, db: psycopg.Connection[Any], schema: str
) -> None:
    gate = threading.Event()

    @app.task(name="gated")
    def gated() -> str:
        gate.wait(20)
        return "done"

    @app.task(name="quick")
    def quick() -> str:
        return "quick"

    with app.worker(slots=2) as worker:
        running = gated.enqueue()
        wait_until(lambda: running.status() == "RUNNING", what="the gated run started")
        [pid] = wait_until(lambda: listener_pids(db, worker), what="the worker's connection")
        db.execute("SELECT pg_terminate_backend(%s)", (pid,))
        wait_until(
            lambda: (p := listener_pids(db, worker)) and p != [pid],
            what="a new listener connection",
        )
        wait_until(lambda: lock_held(db, schema, worker), what="the liveness lock taken again")
        assert quick.enqueue().result(timeout=20) == "quick"
        gate.set()
        assert running.result(timeout=20) == "done"
    assert running.status() == "COMPLETED"
