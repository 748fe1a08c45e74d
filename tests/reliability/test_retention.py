"""Retention: the sweeper removes finished workflows past their retention with their logs, events
no run can take any more and stopped workers, and nothing else, at volume; ``app.purge`` and
``durably runs purge`` remove old workflows by hand, in batches that a crash leaves whole."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any, cast

import psycopg
import pytest

import durably
from durably.storage import PurgeProgress, Store
from tests.apps import retention_app
from tests.cli_support import DURABLY, Cli, cli, script_env
from tests.helpers import ROOT, WorkerProcess, wait_until

__all__ = ["cli"]  # the fixture, imported for the tests below

HOUR = 3600.0
OLD = "'COMPLETED', now() - interval '9 days', NULL"  # a child that ended nine days ago


@pytest.fixture
def store(app: durably.App) -> Iterator[Store]:
    """A store on its own event loop, for calling the sweeper directly (the schema migrated)."""
    app.migrate()
    loop = asyncio.new_event_loop()
    opened = loop.run_until_complete(Store.open(app.url, app.schema))
    opened.loop = loop  # type: ignore[attr-defined]
    yield opened
    loop.run_until_complete(opened.close())
    loop.close()


def sweep(store: Store, retention: float | None = HOUR) -> None:
    store.loop.run_until_complete(store.sweep(15.0, retention))  # type: ignore[attr-defined]


def workflows(
    db: psycopg.Connection[Any],
    schema: str,
    n: int,
    *,
    root: str = "'COMPLETED', now() - interval '2 hours', 3600",
    child: str = "'COMPLETED', now() - interval '2 hours', 3600",
) -> list[int]:
    """``n`` workflows written straight into the tables: a durable root and two children, each
    with two log entries, and an archived entry per root. ``root`` and ``child`` give (status,
    finished_at, retention) as SQL; returns the root ids."""
    rows = db.execute(
        f"""
        WITH roots AS (
            INSERT INTO "{schema}".runs (task, args, status, durable, finished_at, retention,
                                         created_at)
            SELECT 'wf', '{{}}', v.status, true, v.finished_at::timestamptz, v.retention::float8,
                   now() - interval '3 hours'
            FROM generate_series(1, %(n)s) g,
                 LATERAL (SELECT {root}) AS v(status, finished_at, retention)
            RETURNING id
        ), kids AS (
            INSERT INTO "{schema}".runs (task, args, status, durable, parent_id, parent_seq,
                                         finished_at, retention, created_at)
            SELECT 'leaf', '{{}}', v.status, true, r.id, k,
                   v.finished_at::timestamptz, v.retention::float8,
                   now() - interval '3 hours'
            FROM roots r, generate_series(0, 1) k,
                 LATERAL (SELECT {child}) AS v(status, finished_at, retention)
            RETURNING id
        ), logs AS (
            INSERT INTO "{schema}".event_log (run_id, seq, kind, name, key, done, attempt)
            SELECT w.id, s, 'step', 's', 'k', true, 1
            FROM (SELECT id FROM roots UNION ALL SELECT id FROM kids) w, generate_series(0, 1) s
        ), archived AS (
            INSERT INTO "{schema}".event_log_archive (run_id, seq, kind, name, key, done,
                                                      attempt, created_at, epoch)
            SELECT id, 0, 'step', 's', 'k', true, 1, now(), 0 FROM roots
        )
        SELECT id FROM roots ORDER BY id
        """,
        {"n": n},
    ).fetchall()
    return [r[0] for r in rows]


def trees_left(db: psycopg.Connection[Any], schema: str) -> set[int]:
    """Root ids still stored."""
    rows = db.execute(f'SELECT id FROM "{schema}".runs WHERE parent_id IS NULL').fetchall()
    return {r[0] for r in rows}


def assert_whole(db: psycopg.Connection[Any], schema: str) -> None:
    """No run without its parent, no log or archived entry without its run."""
    s = f'"{schema}"'
    orphans = db.execute(
        f"""SELECT (SELECT count(*) FROM {s}.runs c WHERE c.parent_id IS NOT NULL
                      AND NOT EXISTS (SELECT 1 FROM {s}.runs p WHERE p.id = c.parent_id)),
                   (SELECT count(*) FROM {s}.event_log l
                      WHERE NOT EXISTS (SELECT 1 FROM {s}.runs r WHERE r.id = l.run_id)),
                   (SELECT count(*) FROM {s}.event_log_archive l
                      WHERE NOT EXISTS (SELECT 1 FROM {s}.runs r WHERE r.id = l.run_id))"""
    ).fetchone()
    assert orphans == (0, 0, 0)


def test_one_sweep_removes_10000_expired_workflows_and_nothing_else(
    store: Store, db: psycopg.Connection[Any], schema: str
) -> None:
    s = f'"{schema}"'
    statuses = "(ARRAY['COMPLETED', 'FAILED', 'CANCELLED'])[1 + g %% 3]"
    workflows(db, schema, 10_000, root=f"{statuses}, now() - interval '2 hours', 3600")
    unfinished = workflows(
        db,
        schema,
        30,
        root="(ARRAY['QUEUED', 'RUNNING', 'WAITING'])[1 + g %% 3], NULL::timestamptz, 0",
    )
    child_running = workflows(db, schema, 30, child="'RUNNING', NULL::timestamptz, 0")
    child_longer = workflows(
        db, schema, 30, child="'COMPLETED', now() - interval '2 hours', 30 * 86400"
    )
    child_kept = workflows(db, schema, 30, child="'COMPLETED', now() - interval '2 hours', NULL")
    longer = workflows(db, schema, 30, root="'FAILED', now() - interval '2 hours', 86400")
    kept = workflows(db, schema, 30, root="'COMPLETED', now() - interval '2 hours', NULL")
    not_yet = workflows(db, schema, 30, root="'COMPLETED', now() - interval '10 minutes', 3600")

    sweep(store)

    survivors = [unfinished, child_running, child_longer, child_kept, longer, kept, not_yet]
    assert trees_left(db, schema) == {i for group in survivors for i in group}
    assert db.execute(f"SELECT count(*) FROM {s}.runs").fetchone() == (3 * 7 * 30,)
    assert db.execute(f"SELECT count(*) FROM {s}.event_log").fetchone() == (6 * 7 * 30,)
    assert_whole(db, schema)
    # Roots kept for a run below them carry the tree's retention, so no sweep picks them again
    # before it: the child's 30 days, none for a child kept for good, a minute on while a
    # child runs.
    due = dict(
        db.execute(
            f"""SELECT id, {s}.purge_due(finished_at, retention) - now() FROM {s}.runs
                WHERE id = ANY(%s)""",
            (child_running + child_longer + child_kept,),
        ).fetchall()
    )
    assert all(due[i] is None for i in child_kept)
    assert all(timedelta(days=29) < due[i] < timedelta(days=30) for i in child_longer)
    assert all(timedelta(seconds=50) < due[i] < timedelta(seconds=61) for i in child_running)


def test_events_go_once_no_run_can_take_them(
    store: Store, db: psycopg.Connection[Any], schema: str
) -> None:
    s = f'"{schema}"'

    def push(n: int, ago: str) -> list[int]:
        rows = db.execute(
            f"""INSERT INTO {s}.events (key, payload, created_at)
                SELECT 'k' || (g %% 7), '1', now() - %s::interval FROM generate_series(1, %s) g
                RETURNING id""",
            (ago, n),
        ).fetchall()
        return sorted(r[0] for r in rows)

    push(10_000, "5 hours")
    waiter = db.execute(
        f"""INSERT INTO {s}.runs (task, args, status, durable, wait_event, created_at)
            VALUES ('wf', '{{}}', 'WAITING', true, 'k1', now() - interval '4 hours')
            RETURNING id"""
    ).fetchone()
    after_waiter = push(300, "3 hours")
    recent = push(300, "10 minutes")

    sweep(store)  # 10,000 events are older than every live run: one sweep takes them all
    left = [r[0] for r in db.execute(f"SELECT id FROM {s}.events ORDER BY id").fetchall()]
    assert left == after_waiter + recent

    db.execute(
        f"UPDATE {s}.runs SET status = 'COMPLETED', finished_at = now(), wait_event = NULL "
        "WHERE id = %s",
        waiter,
    )
    sweep(store)
    left = [r[0] for r in db.execute(f"SELECT id FROM {s}.events ORDER BY id").fetchall()]
    assert left == recent
    sweep(store, retention=None)  # no App retention: events are kept
    assert db.execute(f"SELECT count(*) FROM {s}.events").fetchone() == (300,)


def test_stopped_workers_go_after_the_retention(
    store: Store, db: psycopg.Connection[Any], schema: str
) -> None:
    s = f'"{schema}"'
    db.execute(
        f"""INSERT INTO {s}.workers (id, lock_id, hostname, pid, queues, tasks, slots,
                                     stopped_at)
            SELECT gen_random_uuid(), 0, 'h', g, '{{default}}', '{{t}}', 1,
                   now() - CASE WHEN g <= 2000 THEN interval '2 hours' ELSE interval '5 minutes' END
            FROM generate_series(1, 2050) g"""
    )
    sweep(store)
    left = db.execute(f"SELECT min(pid), count(*) FROM {s}.workers").fetchone()
    assert left == (2001, 50)


def test_runs_carry_their_tasks_retention(
    make_app: Callable[..., durably.App], db: psycopg.Connection[Any]
) -> None:
    app = make_app(retention=timedelta(days=2))

    @app.task(name="default")
    def default() -> None: ...

    @app.task(name="week", retention=timedelta(weeks=1))
    def week() -> None: ...

    @app.durable_task(name="forever", retention=None)
    async def forever(ctx: durably.DurableContext) -> None: ...

    default.enqueue()
    week.enqueue_many([(), ()])
    forever.enqueue()
    rows = db.execute(f'SELECT task, retention FROM "{app.schema}".runs ORDER BY id').fetchall()
    assert rows == [
        ("default", 172800.0),
        ("week", 604800.0),
        ("week", 604800.0),
        ("forever", None),
    ]
    assert make_app(retention=None).retention is None
    with pytest.raises(ValueError, match=r"retention=-1 is not valid: pass a timedelta or seconds"):
        make_app(retention=-1)
    with pytest.raises(ValueError, match=r"task 'bad': retention='7d' is not valid"):
        app.task(name="bad", retention=cast(Any, "7d"))(lambda: None)


def test_a_worker_removes_workflows_past_retention_while_it_runs_them(
    database_url: str, schema: str, db: psycopg.Connection[Any], make_app: Any
) -> None:
    """Workers execute workflows (children, steps) under a one-second retention while their
    sweepers and a hand purge remove the finished ones: every run finishes exactly as if
    nothing was removed (each leaves its effect once), and the tables are never left with a
    run without its parent or a log entry without its run."""
    app = make_app(retention=None)
    app.migrate()
    db.execute(f'CREATE TABLE "{schema}".effects (tag text)')
    client = durably.App(database_url, schema=schema)
    fan = client_task(client, "fan")
    plain = client_task(client, "plain")
    stop = threading.Event()
    checks: list[int] = []

    def check_while_running() -> None:
        with psycopg.connect(database_url, autocommit=True) as conn:
            while not stop.is_set():
                assert_whole(conn, schema)
                checks.append(1)

    purged: list[int] = []

    def purge_while_running() -> None:
        while not stop.is_set():
            purged.append(app.purge(0))

    env = {"DURABLY_TEST_RETENTION": "1"}
    with (
        WorkerProcess(database_url, schema, "retention_app", env=env) as one,
        WorkerProcess(database_url, schema, "retention_app", env=env) as two,
    ):
        threads = [threading.Thread(target=f) for f in (check_while_running, purge_while_running)]
        for t in threads:
            t.start()
        try:
            for batch in range(5):
                fan.enqueue_many([(batch * 60 + i, 3) for i in range(60)])
                plain.enqueue_many([(batch * 60 + i,) for i in range(60)])
            wait_until(
                lambda: db.execute(f'SELECT count(*) FROM "{schema}".runs').fetchone() == (0,),
                timeout=120,
                interval=0.5,
                what="every run finished and removed",
            )
        finally:
            stop.set()
            for t in threads:
                t.join()
        one.kill()
        two.kill()
    effects = db.execute(f'SELECT tag, count(*) FROM "{schema}".effects GROUP BY 1').fetchall()
    counts = dict(effects)
    expected = {f"fan:{i}" for i in range(300)} | {f"plain:{i}" for i in range(300)}
    expected |= {f"leaf:{i}:{k}" for i in range(300) for k in range(3)}
    assert set(counts) == expected
    assert set(counts.values()) == {1}
    assert checks, "the invariant check never ran"
    assert db.execute(f'SELECT count(*) FROM "{schema}".event_log').fetchone() == (0,)


def client_task(app: durably.App, name: str) -> durably.Task[Any, Any]:
    """A task of tests/apps/retention_app.py registered on the test's own App, to enqueue."""
    task = retention_app.app.get_task(name)
    register = app.durable_task if task.durable else app.task
    return register(name=name)(task.fn)


def test_purge_by_hand_filters_and_counts(
    app: durably.App, db: psycopg.Connection[Any], schema: str
) -> None:
    app.migrate()
    old_ok = workflows(
        db, schema, 1500, root="'COMPLETED', now() - interval '9 days', NULL", child=OLD
    )
    old_failed = workflows(
        db, schema, 20, root="'FAILED', now() - interval '9 days', NULL", child=OLD
    )
    recent = workflows(db, schema, 20, root="'COMPLETED', now() - interval '1 day', NULL")
    # Ended nine days ago, but a run below it ended only now: kept whole.
    child_recent = workflows(db, schema, 20, root="'COMPLETED', now() - interval '9 days', NULL")
    running = workflows(db, schema, 20, root="'RUNNING', NULL::timestamptz, NULL")
    seen: list[PurgeProgress] = []

    assert app.purge_count(timedelta(days=7), statuses=["FAILED"]) == 20
    assert app.purge(timedelta(days=7), statuses=["FAILED"]) == 60
    assert app.purge_count(timedelta(days=7), tasks=["other"]) == 0
    assert app.purge(timedelta(days=7), tasks=["other"]) == 0
    assert app.purge(7 * 86400, progress=seen.append) == 4500
    assert [p.workflows for p in seen] == [500, 1000, 1500, 1520]
    assert seen[-1].runs_removed == 4500
    assert trees_left(db, schema) == set(recent + running + child_recent)
    assert_whole(db, schema)
    assert old_ok and old_failed
    with pytest.raises(ValueError, match=r"statuses=\['RUNNING'\] is not valid"):
        app.purge(0, statuses=["RUNNING"])


def test_purge_cli_counts_confirms_and_reports(
    cli: Cli, app: durably.App, db: psycopg.Connection[Any], schema: str
) -> None:
    app.migrate()
    old = workflows(db, schema, 3, root="'COMPLETED', now() - interval '9 days', NULL", child=OLD)
    workflows(db, schema, 2, root="'CANCELLED', now() - interval '9 days', NULL", child=OLD)
    workflows(db, schema, 2, root="'COMPLETED', now() - interval '1 hour', NULL")

    declined = cli("runs", "purge", "--older-than", "7d", input="n\n")
    assert declined.exit_code == 1
    assert (
        "5 workflows match (ended more than 7d ago, COMPLETED/FAILED/CANCELLED)" in declined.output
    )
    assert "not confirmed, nothing was removed" in declined.output
    assert len(trees_left(db, schema)) == 7

    done = cli("runs", "purge", "--older-than", "7d", "--status", "cancelled", "--yes")
    assert done.exit_code == 0, done.output
    assert "2 workflows match" in done.output
    assert "purged 6 runs of the 2 workflows that matched" in done.output
    done = cli("runs", "purge", "--older-than", "1w", "--task", "wf", input="y\n")
    assert done.exit_code == 0, done.output
    assert "purged 9 runs of the 3 workflows that matched" in done.output
    assert not trees_left(db, schema) & set(old)
    nothing = cli("runs", "purge", "--older-than", "7d")
    assert "no workflow matches" in nothing.output

    bad = cli("runs", "purge", "--older-than", "2026-01-01", "--yes")
    assert bad.exit_code == 2
    assert "'2026-01-01' is not a duration: give an age such as 7d" in bad.output
    bad = cli("runs", "purge", "--older-than", "7d", "--status", "running", "--yes")
    assert bad.exit_code == 2
    assert "RUNNING: only finished runs are purged" in bad.output


def test_a_purge_killed_midway_leaves_every_workflow_whole(
    app: durably.App, db: psycopg.Connection[Any], database_url: str, schema: str
) -> None:
    """SIGKILL ``durably runs purge`` while it removes 30,000 workflows: what it removed is
    gone whole, the rest is intact, and purging again removes the rest."""
    app.migrate()
    s = f'"{schema}"'
    workflows(db, schema, 30_000, root="'COMPLETED', now() - interval '9 days', NULL", child=OLD)
    keep = workflows(db, schema, 50, root="'COMPLETED', now() - interval '1 hour', NULL")
    env = script_env(database_url, schema)
    proc = subprocess.Popen(
        [str(DURABLY), "runs", "purge", "--older-than", "7d", "--yes"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )
    try:
        wait_until(
            lambda: db.execute(f"SELECT count(*) FROM {s}.runs").fetchone()[0] < 80_000,  # type: ignore[index]
            timeout=60,
            interval=0.01,
            what="the purge under way",
        )
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(10)
    total = db.execute(f"SELECT count(*) FROM {s}.runs").fetchone()[0]  # type: ignore[index]
    assert 150 < total < 90_150, "the purge was killed before it started or after it ended"
    assert total % 3 == 0
    assert_whole(db, schema)
    assert app.purge(timedelta(days=7)) == total - 150
    assert trees_left(db, schema) == set(keep)


def test_a_child_removed_before_its_parent_saw_it_end_fails_the_wait(store: Store) -> None:
    """A durable run may wait on a run of another workflow (a child named by an idempotency key
    that existed already); should retention remove that workflow first, the wait ends with a
    clear failure instead of waiting for a run that is gone."""
    ends = store.loop.run_until_complete(store.children_status([10**12]))  # type: ignore[attr-defined]
    end = ends[10**12]
    assert end.ended and end.status == "FAILED"
    assert end.error is not None and end.error["type"] == "ChildRemoved"
    assert "removed (retention or purge)" in end.error["message"]
