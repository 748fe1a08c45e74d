"""Durable runs across worker processes that crash, freeze and restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

import durably
from durably import demo
from tests.apps import durable_app
from tests.helpers import ROOT, WorkerProcess, wait_until

DEMO_POINTS = [
    "before_spawn:demo.charge_payment",
    "after_spawn:demo.charge_payment",
    "task_start:demo.charge_payment",
    "after_body:demo.charge_payment",
    "after_finish:demo.charge_payment",
    "after_observe:demo.charge_payment",
    "before_spawn:demo.send_confirmation_email",
    "task_start:demo.send_confirmation_email",
    "after_body:demo.send_confirmation_email",
    "after_finish:demo.send_confirmation_email",
]


def demo_worker(url: str, schema: str, failpoints: str = "") -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "DURABLY_DATABASE_URL": url,
        "DURABLY_DEMO_SCHEMA": schema,
        "DURABLY_FAILPOINTS": failpoints,
        "PYTHONPATH": str(ROOT),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "durably", "worker", "durably.demo:app", "--slots", "2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )


@pytest.fixture
def demo_app(
    database_url: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[durably.App]:
    """durably.demo's App and ledger, moved to this test's schema."""
    app = durably.App(database_url, schema=schema)
    for task in demo.app.registry.values():
        (app.durable_task if task.durable else app.task)(name=task.name)(task.fn)
    app.migrate()
    monkeypatch.setattr(demo, "SCHEMA", schema)
    monkeypatch.setattr(demo, "app", app)
    demo.create_ledger()
    yield app


@pytest.mark.parametrize("point", DEMO_POINTS)
def test_demo_killed_at_each_point_pays_once_and_finishes(
    demo_app: durably.App, database_url: str, schema: str, point: str
) -> None:
    handle = demo_app.registry["demo.process_order"].enqueue("order-1", 100)
    first = demo_worker(database_url, schema, point)
    try:
        assert first.wait(timeout=60) == -signal.SIGKILL, f"{point} was never reached"
        second = demo_worker(database_url, schema)
        try:
            result = handle.result(timeout=60)
        finally:
            second.kill()
            second.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)
    assert result["charged"] == 100 and result["email"] == "confirmation sent for order-1"
    payments = demo._ledger("SELECT count(*) FROM {schema}.demo_payments")
    assert payments == [(1,)], "the payment was performed exactly once"
    emails = demo._ledger("SELECT count(*) FROM {schema}.demo_emails")
    # Sending the email is an at-least-once child without an idempotency key: killed after its
    # body ran but before its outcome was recorded, it runs again.
    assert emails == [(2,)] if point == "after_body:demo.send_confirmation_email" else [(1,)]
    run = demo_app.get_run(handle.id)
    assert run is not None and run.status == "COMPLETED"


@pytest.fixture
def durable_client(database_url: str, schema: str) -> durably.App:
    app = durably.App(database_url, schema=schema)
    for task in durable_app.app.registry.values():
        (app.durable_task if task.durable else app.task)(name=task.name)(task.fn)
    app.migrate()
    return app


def log_rows(db: psycopg.Connection[Any], schema: str, run_id: int) -> list[tuple[Any, ...]]:
    return db.execute(
        f'SELECT seq, attempt, done FROM "{schema}".event_log WHERE run_id = %s ORDER BY seq',
        (run_id,),
    ).fetchall()


def test_zombie_worker_cannot_append_to_the_log(
    durable_client: durably.App, database_url: str, schema: str, db: psycopg.Connection[Any]
) -> None:
    handle = durable_client.registry["three_steps"].enqueue()
    args = ("--lease", "1")
    with WorkerProcess(database_url, schema, "durable_app", *args) as zombie:
        wait_until(lambda: len(log_rows(db, schema, handle.id)) == 1, what="step 0 recorded")
        zombie.signal(signal.SIGSTOP)  # frozen in the middle of the slow step 1
        with WorkerProcess(database_url, schema, "durable_app") as rescuer:
            assert handle.result(timeout=30) == [0, 10, 2]
            rows = log_rows(db, schema, handle.id)
            zombie.signal(signal.SIGCONT)
            # Thawed, it gives the run up: at its next heartbeat, or when its append is fenced.
            gave_up = (
                f"abandoning run {handle.id}:",
                f"run {handle.id} attempt 1 no longer belongs",
            )
            wait_until(
                lambda: any(g in line for line in zombie.lines for g in gave_up),
                what="the zombie to give the run up",
            )
            del rescuer
    assert log_rows(db, schema, handle.id) == rows == [(0, 1, True), (1, 2, True), (2, 2, True)]


def test_sleep_keeps_its_wake_time_across_a_worker_restart(
    durable_client: durably.App, database_url: str, schema: str, db: psycopg.Connection[Any]
) -> None:
    handle = durable_client.registry["sleepy"].enqueue(3.0)
    with WorkerProcess(database_url, schema, "durable_app") as first:
        wait_until(lambda: len(log_rows(db, schema, handle.id)) == 2, what="sleep recorded")
        first.kill()
    wake_at = db.execute(
        f'SELECT wake_at FROM "{schema}".event_log WHERE run_id = %s AND kind = %s',
        (handle.id, "sleep"),
    ).fetchone()
    with WorkerProcess(database_url, schema, "durable_app"):
        slept = handle.result(timeout=30)
    assert 3.0 <= slept < 4.5, "the sleep ended at its original wake time, not 3 s after restart"
    again = db.execute(
        f'SELECT wake_at FROM "{schema}".event_log WHERE run_id = %s AND kind = %s',
        (handle.id, "sleep"),
    ).fetchone()
    assert again == wake_at
