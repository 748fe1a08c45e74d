"""The sweeper at volume: thousands of rows due in one sweep, a part that fails, long histories.

Each sweeper statement must finish whatever the number of due rows (notification payloads stay
under Postgres's 8000-byte limit, batches stay short), one failing part must not stop the
others, and each must cost in proportion to the work due, not to the history of the tables.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

import durably
from durably.records import Outcome, OutcomeKind
from durably.storage import Store
from tests.apps import queue_app
from tests.helpers import WorkerProcess, wait_until


@pytest.fixture
def store(qapp: durably.App) -> Iterator[Store]:
    """A store of its own, on its own event loop, for calling the sweeper directly."""
    loop = asyncio.new_event_loop()
    opened = loop.run_until_complete(Store.open(qapp.url, qapp.schema))
    opened.loop = loop  # type: ignore[attr-defined]
    yield opened
    loop.run_until_complete(opened.close())
    loop.close()


def sweep(store: Store) -> tuple[int, int, int] | None:
    return store.loop.run_until_complete(store.sweep(dead_after=15.0))  # type: ignore[attr-defined,no-any-return]


def statuses(db: psycopg.Connection[Any], schema: str, where: str = "true") -> Counter[str]:
    rows = db.execute(f'SELECT status, count(*) FROM "{schema}".runs WHERE {where} GROUP BY 1')
    return Counter({status: n for status, n in rows.fetchall()})


def dead_worker(db: psycopg.Connection[Any], schema: str) -> str:
    """A worker row that looks alive by its heartbeat but whose session holds no lock: a worker
    killed a moment ago."""
    worker_id = str(uuid.uuid4())
    db.execute(
        f'INSERT INTO "{schema}".workers (id, lock_id, hostname, pid, queues, tasks, slots)'
        " VALUES (%s, 999999, 'gone', 1, '{default}', '{noop}', 1)",
        (worker_id,),
    )
    return worker_id


def test_20000_schedule_timeouts_in_one_sweep_and_recovery_meanwhile(
    qapp: durably.App, database_url: str, schema: str, db: psycopg.Connection[Any]
) -> None:
    n = 20_000
    late = qapp.task(name="late", queue="nobody", schedule_timeout=1)(queue_app.noop.fn)
    late.enqueue_many([() for _ in range(n)])
    held = qapp.registry["started_then_sleep"].enqueue("held", 600.0)
    with WorkerProcess(database_url, schema, "queue_app", "--slots", "1") as doomed:
        wait_until(lambda: statuses(db, schema, f"id = {held.id}")["RUNNING"], what="held run")
        doomed.kill()
    # Every run of `late` is past its deadline now; a worker serving another queue sweeps.
    with qapp.worker(queues=["elsewhere"], slots=1):
        wait_until(
            lambda: statuses(db, schema, "task = 'late'")["FAILED"] == n,
            timeout=30,
            what="every late run failed by its schedule timeout",
        )
        row = wait_until(
            lambda: db.execute(
                f'SELECT status, recoveries FROM "{schema}".runs WHERE id = %s AND recoveries = 1',
                (held.id,),
            ).fetchone(),
            timeout=10,
            what="the killed worker's run recovered",
        )
    assert row == ("QUEUED", 1)
    errors = db.execute(
        f"SELECT DISTINCT error->>'type' FROM \"{schema}\".runs WHERE task = 'late'"
    ).fetchall()
    assert errors == [("ScheduleTimeout",)]


def test_20000_orphans_of_a_killed_worker_are_all_recovered(
    qapp: durably.App, store: Store, schema: str, db: psycopg.Connection[Any]
) -> None:
    n = 20_000
    worker_id = dead_worker(db, schema)
    # Half can be recovered, half have used up max_recoveries and must fail.
    db.execute(
        f'INSERT INTO "{schema}".runs (task, args, status, worker_id, attempt, recoveries,'
        " max_recoveries, lease_expires_at)"
        " SELECT 'noop', '[]', 'RUNNING', %s, 1, (i %% 2) * 3, 3, now() + interval '1 hour'"
        " FROM generate_series(1, %s) i",
        (worker_id, n),
    )
    recovered = 0
    for _ in range(n // 1000 + 5):  # each sweep may stop early and leave the rest for the next
        swept = sweep(store)
        assert swept is not None
        recovered += swept[0]
        if recovered == n:
            break
    assert recovered == n
    assert statuses(db, schema) == Counter({"QUEUED": n // 2, "FAILED": n // 2})
    lost = db.execute(
        f"SELECT count(*) FROM \"{schema}\".runs WHERE error->>'type' = 'WorkerLost'"
        " AND recoveries = 4 AND finished_at IS NOT NULL"
    ).fetchone()
    assert lost == (n // 2,)


def test_a_failing_sweep_part_does_not_stop_the_others(
    qapp: durably.App,
    store: Store,
    schema: str,
    db: psycopg.Connection[Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    s = f'"{schema}"'
    # Schedule timeouts cannot be written until the trigger is dropped.
    db.execute(
        f"CREATE FUNCTION {s}.refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        " RAISE EXCEPTION 'refused by the test'; END $$"
    )
    db.execute(
        f"CREATE TRIGGER refuse BEFORE UPDATE ON {s}.runs FOR EACH ROW"
        f" WHEN (NEW.error->>'type' = 'ScheduleTimeout') EXECUTE FUNCTION {s}.refuse()"
    )
    worker_id = dead_worker(db, schema)
    ids = [
        r[0]
        for r in db.execute(
            f"INSERT INTO {s}.runs (task, args, status, worker_id, attempt, schedule_deadline,"
            " wait_event, durable) VALUES"
            " ('noop', '[]', 'QUEUED', NULL, 0, now() - interval '1 s', NULL, false),"
            " ('noop', '[]', 'RUNNING', %s, 1, NULL, NULL, false),"
            " ('noop', '[]', 'WAITING', NULL, 1, NULL, 'ready', true)"
            " RETURNING id",
            (worker_id,),
        ).fetchall()
    ]
    db.execute(f"INSERT INTO {s}.events (key, payload) VALUES ('ready', '1')")
    with caplog.at_level(logging.WARNING):
        assert sweep(store) == (1, 0, 1)
        assert sweep(store) == (0, 0, 0)
    warnings = [r.getMessage() for r in caplog.records if "refused by the test" in r.getMessage()]
    assert len(warnings) == 1, "a part failing the same way again is logged once"
    assert "schedule" in warnings[0]
    rows = dict(db.execute(f"SELECT id, status FROM {s}.runs").fetchall())
    assert [rows[i] for i in ids] == ["QUEUED", "QUEUED", "QUEUED"]
    db.execute(f"DROP TRIGGER refuse ON {s}.runs")
    assert sweep(store) == (0, 1, 0)
    assert db.execute(f"SELECT status FROM {s}.runs WHERE id = %s", (ids[0],)).fetchone() == (
        "FAILED",
    )


def test_finish_announces_500_runs_with_19_digit_ids_in_bounded_payloads(
    qapp: durably.App, store: Store, schema: str, database_url: str, db: psycopg.Connection[Any]
) -> None:
    worker_id = str(uuid.uuid4())
    ids = [10**18 + i for i in range(500)]
    db.execute(
        f'INSERT INTO "{schema}".runs (id, task, args, status, worker_id, attempt)'
        " OVERRIDING SYSTEM VALUE"
        " SELECT i, 'noop', '[]', 'RUNNING', %s, 1 FROM unnest(%s::bigint[]) i",
        (worker_id, ids),
    )
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute(f'LISTEN "{store.channel}"')
        outcomes = [Outcome(i, 1, OutcomeKind.OK, result="null") for i in ids]
        written = store.loop.run_until_complete(store.finish(worker_id, outcomes))  # type: ignore[attr-defined]
        payloads = [n.payload for n in listener.notifies(timeout=2.0)]
    assert len(written) == 500
    assert all(len(p.encode()) < 8000 for p in payloads)
    announced = {int(i) for p in payloads if p.startswith("done:") for i in p[5:].split(",")}
    assert announced == set(ids)


def rows_read(plan: dict[str, Any]) -> int:
    """Rows every node of an EXPLAIN ANALYZE plan read, kept or filtered out, over all its
    loops."""
    kept = plan.get("Actual Rows", 0)
    dropped = plan.get("Rows Removed by Filter", 0) + plan.get("Rows Removed by Index Recheck", 0)
    own = int((kept + dropped) * plan.get("Actual Loops", 1))
    return own + sum(rows_read(child) for child in plan.get("Plans", []))


def test_sweep_cost_does_not_grow_with_event_history(
    qapp: durably.App, store: Store, schema: str, db: psycopg.Connection[Any]
) -> None:
    s = f'"{schema}"'
    db.execute(
        f"INSERT INTO {s}.events (key, payload, created_at)"
        " SELECT 'reused', to_jsonb(i), now() - interval '1 day' FROM generate_series(1, 300000) i"
    )
    db.execute(
        f"INSERT INTO {s}.runs (task, args, status, attempt, wait_event, durable)"
        " SELECT 'noop', '[]', 'WAITING', 1, 'reused', true FROM generate_series(1, 50)"
    )
    db.execute(f"ANALYZE {s}.events")
    db.execute(f"ANALYZE {s}.runs")
    plan_sql = "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + store.sql("sweep_wake_ready")
    params = {"channel": store.channel, "limit": 1000}
    with db.transaction(force_rollback=True):
        [[explained]] = db.execute(plan_sql, params).fetchall()
    plan = (json.loads(explained) if isinstance(explained, str) else explained)[0]["Plan"]
    assert rows_read(plan) < 5_000, f"the sweep read {rows_read(plan)} rows"
    assert plan["Shared Hit Blocks"] + plan["Shared Read Blocks"] < 2_000
    # One new event wakes them all: the old ones are skipped, not lost.
    db.execute(f"INSERT INTO {s}.events (key, payload) VALUES ('reused', '1')")
    assert sweep(store) == (0, 0, 50)


def test_20000_timers_due_at_once_are_woken_in_bounded_claims(
    qapp: durably.App, store: Store, schema: str, db: psycopg.Connection[Any]
) -> None:
    n = 20_000

    @qapp.durable_task(name="napper")
    async def napper(ctx: durably.DurableContext) -> int:
        return 1

    db.execute(
        f'INSERT INTO "{schema}".runs (task, queue, args, durable, status, wake_at)'
        f" SELECT 'napper', 'default', '{{\"args\": [], \"kwargs\": {{}}}}', true, 'WAITING',"
        " now() - interval '1 second' FROM generate_series(1, %s)",
        (n,),
    )
    # One claim wakes a bounded batch of the due timers, not all 20,000 in one statement.
    claim = store.claim(str(uuid.uuid4()), ["default"], ["napper"], 1, 30.0, durable=True)
    woken = store.loop.run_until_complete(claim).woken  # type: ignore[attr-defined]
    assert 0 < woken <= 1000
    assert statuses(db, schema)["WAITING"] == n - woken
    # A worker still wakes and runs every one of them.
    with qapp.worker(durable_slots=500):
        wait_until(
            lambda: statuses(db, schema)["COMPLETED"] == n, timeout=120, what="all timers run"
        )


def test_a_parent_gathering_many_children_is_woken_once_they_all_ended(
    qapp: durably.App, db: psycopg.Connection[Any], schema: str
) -> None:
    """A parent suspended on 100 children that end one by one is queued again once all of them
    ended, not at each one's end (each wake re-executes it against its log only to suspend it
    again): its attempts stay a handful, not one per child."""

    @qapp.task(name="slow_child")
    async def slow_child(i: int) -> int:
        await asyncio.sleep(0.05 * (i % 20))
        return i

    @qapp.durable_task(name="gatherer")
    async def gatherer(ctx: durably.DurableContext, n: int) -> int:
        results = await ctx.gather(*[ctx.spawn(slow_child, i) for i in range(n)])
        return sum(results)

    with qapp.worker(slots=5, evict_after=0.1, sweep_interval=0.2):
        assert gatherer.enqueue(100).result(timeout=60) == sum(range(100))
    row: Any = db.execute(
        f"SELECT attempt FROM \"{schema}\".runs WHERE task = 'gatherer'"
    ).fetchone()
    assert row is not None and row[0] <= 4, f"the parent executed {row[0]} times"
