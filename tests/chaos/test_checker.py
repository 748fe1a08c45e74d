"""The chaos checker must be able to fail: writes that break an invariant, made by hand, are
caught by the audit and reported."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest

import durably
from tests.chaos import checker, workload

HOLDER_PID, ZOMBIE_PID = 11111, 22222


def as_process(url: str, pid: int) -> psycopg.Connection[Any]:
    """A connection named like the pooled connections of the durably process ``pid``."""
    return psycopg.connect(url, autocommit=True, application_name=f"durably pid {pid}")


def test_the_audit_catches_zombie_writes_and_outcomes_recorded_twice(
    database_url: str, schema: str, db: psycopg.Connection[Any]
) -> None:
    app = workload.build(durably.App(database_url, schema=schema))
    app.migrate()
    checker.install_audit(db, schema)
    run = app.registry["order"].options(idempotency_key="order-1").enqueue(1)
    s, holder = f'"{schema}"', str(uuid.uuid4())
    db.execute(
        f"INSERT INTO {s}.workers (id, lock_id, hostname, pid, queues, tasks, slots) "
        "VALUES (%s, 1, 'here', %s, '{default}', '{order}', 1)",
        (holder, HOLDER_PID),
    )
    claim = (
        f"UPDATE {s}.runs SET status = 'RUNNING', worker_id = %s, attempt = attempt + 1, "
        "lease_expires_at = now() + interval '1 minute', started_at = now() WHERE id = %s"
    )
    db.execute(claim, (holder, run.id))
    with as_process(database_url, ZOMBIE_PID) as zombie:
        # A process that does not hold the attempt appends to the log with an old attempt...
        zombie.execute(
            f"INSERT INTO {s}.event_log (run_id, seq, kind, name, key, done, attempt) "
            "VALUES (%s, 0, 'step', 'reserve', 'k', true, 0)",
            (run.id,),
        )
        # ...and ends the attempt while its holder is alive and its lease valid.
        zombie.execute(f"UPDATE {s}.runs SET status = 'COMPLETED' WHERE id = %s", (run.id,))
    db.execute(claim, (holder, run.id))
    with as_process(database_url, HOLDER_PID) as owner:  # the holder records a second outcome
        owner.execute(f"UPDATE {s}.runs SET status = 'COMPLETED' WHERE id = %s", (run.id,))

    report = checker.check(database_url, schema, [1])
    kinds = sorted(z.split()[0] for z in report.zombie_writes)
    assert kinds == ["foreign_log_write", "foreign_outcome", "stale_append"]
    assert report.outcomes_recorded_twice == [run.id]
    assert report.effects_missing  # the completed order never reserved or charged anything
    assert report.problems()


def test_the_checker_passes_a_clean_run(
    database_url: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(workload, "SCHEMA", schema)  # where the ledger and applied tables are
    monkeypatch.setattr(workload, "LEDGER_URL", database_url)
    app = workload.build(durably.App(database_url, schema=schema))
    app.migrate()
    with psycopg.connect(database_url, autocommit=True) as conn:
        checker.install_audit(conn, schema)
    handles = [
        app.registry["order"].options(idempotency_key=f"order-{i}").enqueue(i) for i in range(6)
    ]
    for i in range(6):
        if workload.waits(i):
            app.push_event(workload.event_key(i), {"item": i})
    with app.worker(evict_after=0.1):
        results = [h.result(timeout=30) for h in handles]
    assert results == [workload.expected(i) for i in range(6)]
    report = checker.check(database_url, schema, list(range(6)))
    assert report.problems() == []
    assert report.completed == 12
