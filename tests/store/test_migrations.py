"""Schema migrations: applied once and idempotently, safely from many processes at once, checked
by workers (too old or too new a schema refuses to serve); and schemas isolate Apps."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

import durably
from durably.storage import LATEST_VERSION, MIGRATIONS
from tests.helpers import wait_until

ALL = [(m.version, m.name) for m in MIGRATIONS]


@pytest.fixture
def other_schema(database_url: str) -> Iterator[str]:
    """A second schema for the test, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def recorded_versions(db: psycopg.Connection[Any], schema: str) -> list[tuple[int, str]]:
    rows = db.execute(f'SELECT version, name FROM "{schema}".migrations ORDER BY version')
    return [(int(v), str(n)) for v, n in rows.fetchall()]


def table_exists(db: psycopg.Connection[Any], schema: str, table: str) -> bool:
    row = db.execute("SELECT to_regclass(%s) IS NOT NULL", (f'"{schema}".{table}',)).fetchone()
    return bool(row and row[0])


def test_migrate_applies_0001_once(
    make_app: Callable[..., durably.App], db: psycopg.Connection[Any], schema: str
) -> None:
    assert ALL[0] == (1, "queue")
    app = make_app(migrate=False)
    assert app.migrate() == [v for v, _ in ALL]
    assert recorded_versions(db, schema) == ALL
    assert table_exists(db, schema, "runs") and table_exists(db, schema, "workers")

    assert app.migrate() == []
    assert make_app(migrate=False).migrate() == []
    assert recorded_versions(db, schema) == ALL
    assert app.call(app.schema_version_async()) == (LATEST_VERSION, LATEST_VERSION)


def test_first_use_migrates_a_fresh_schema(
    app: durably.App, db: psycopg.Connection[Any], schema: str
) -> None:
    @app.task(name="idle")
    def idle() -> None:
        pass

    assert not table_exists(db, schema, "runs")
    assert idle.enqueue().status() == "QUEUED"
    assert recorded_versions(db, schema) == ALL


def test_concurrent_migrate_applies_once(
    make_app: Callable[..., durably.App], db: psycopg.Connection[Any], schema: str
) -> None:
    apps = [make_app(migrate=False) for _ in range(6)]
    barrier = threading.Barrier(len(apps))
    results: list[list[int]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def migrate(app: durably.App) -> None:
        try:
            app.call(app.store())  # connect first, so the migrations themselves race
            barrier.wait(timeout=20)
            done = app.migrate()
            with lock:
                results.append(done)
        except BaseException as exc:
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=migrate, args=(a,)) for a in apps]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert sorted(results) == [[]] * 5 + [[v for v, _ in ALL]]
    assert recorded_versions(db, schema) == ALL


def test_concurrent_workers_on_a_fresh_schema_all_start(
    make_app: Callable[..., durably.App], db: psycopg.Connection[Any], schema: str
) -> None:
    apps = [make_app() for _ in range(3)]
    for app in apps:

        @app.task(name="idle")
        def idle() -> str:
            return "done"

    workers = [app.make_worker(slots=1) for app in apps]
    barrier = threading.Barrier(len(workers))
    started: list[threading.Thread] = []
    errors: list[BaseException] = []

    def start(worker: durably.Worker) -> None:
        try:
            barrier.wait(timeout=20)
            started.append(worker.start_in_thread())
        except BaseException as exc:
            errors.append(exc)

    starters = [threading.Thread(target=start, args=(w,)) for w in workers]
    for t in starters:
        t.start()
    for t in starters:
        t.join(30)
    try:
        assert errors == []
        assert len(started) == 3
        assert recorded_versions(db, schema) == ALL
        handle = apps[0].registry["idle"].enqueue()
        assert handle.result(timeout=10) == "done"
    finally:
        for worker in workers:
            worker.stop_from_thread()
        for thread in started:
            thread.join(30)


def test_worker_refuses_an_unmigrated_schema(
    make_app: Callable[..., durably.App], db: psycopg.Connection[Any], schema: str
) -> None:
    app = make_app(migrate=False)

    @app.task(name="idle")
    def idle() -> None:
        pass

    with pytest.raises(durably.ConfigurationError) as refused, app.worker(slots=1):
        pass
    message = str(refused.value)
    assert "\n" not in message
    assert f"schema {schema!r} is at version 0" in message
    assert "run `durably db migrate`" in message
    # migrate=False is respected: the worker created nothing.
    assert not table_exists(db, schema, "migrations")
    assert not table_exists(db, schema, "runs")


@pytest.mark.parametrize("migrate", [True, False])
def test_worker_refuses_a_schema_newer_than_its_code(
    make_app: Callable[..., durably.App], db: psycopg.Connection[Any], schema: str, migrate: bool
) -> None:
    make_app(migrate=False).migrate()
    future = LATEST_VERSION + 1
    db.execute(
        f'INSERT INTO "{schema}".migrations (version, name) VALUES (%s, %s)',
        (future, "from_the_future"),
    )
    app = make_app(migrate=migrate)

    @app.task(name="idle")
    def idle() -> None:
        pass

    with pytest.raises(durably.ConfigurationError) as refused, app.worker(slots=1):
        pass
    message = str(refused.value)
    assert "\n" not in message
    assert f"at version {future}, newer than this durably ({LATEST_VERSION})" in message
    assert "upgrade durably" in message
    assert recorded_versions(db, schema) == [*ALL, (future, "from_the_future")]
    rows = db.execute(f'SELECT count(*) FROM "{schema}".workers').fetchone()
    assert rows == (0,)  # refused before registering


def test_apps_on_different_schemas_do_not_see_each_other(
    database_url: str, schema: str, other_schema: str
) -> None:
    first = durably.App(database_url, schema=schema)
    second = durably.App(database_url, schema=other_schema)

    @first.task(name="same")
    def same_first(tag: str) -> str:
        return f"first {tag}"

    @second.task(name="same")
    def same_second(tag: str) -> str:
        return f"second {tag}"

    mine = same_first.enqueue("a")
    theirs = same_second.enqueue("b")
    assert [r.args["args"] for r in first.list_runs()] == [["a"]]
    assert [r.args["args"] for r in second.list_runs()] == [["b"]]
    # Ids are per schema too: the same number names a different run in each.
    assert mine.id == theirs.id

    with second.worker(slots=1, poll_interval=0.05):
        assert theirs.result(timeout=10) == "second b"
    run = first.get_run(mine.id)
    assert run is not None
    assert (run.status, run.attempt) == ("QUEUED", 0)  # the other schema's worker never saw it
    assert [r.status for r in second.list_runs()] == ["COMPLETED"]

    assert first.cancel(mine.id)
    other = second.get_run(theirs.id)
    assert other is not None and other.status == "COMPLETED"


def test_upgrading_to_retention_keeps_every_run(
    make_app: Callable[..., durably.App], db: psycopg.Connection[Any], schema: str
) -> None:
    """A schema at version 9 with runs of every status, logs, archives, events and workers is
    migrated to the retention schema: every row stays, no run gets a retention (so no sweep
    removes one), and the sweeper of an App with a retention removes nothing of them."""
    s = f'"{schema}"'
    db.execute(f"CREATE SCHEMA {s}")
    db.execute(
        f"CREATE TABLE {s}.migrations (version integer PRIMARY KEY, name text NOT NULL,"
        " applied_at timestamptz NOT NULL DEFAULT now())"
    )
    for m in MIGRATIONS:
        if m.version <= 9:
            db.execute(m.template.replace("{schema}", s).encode())
            db.execute(
                f"INSERT INTO {s}.migrations (version, name) VALUES (%s, %s)", (m.version, m.name)
            )
    db.execute(
        f"""INSERT INTO {s}.runs (task, args, status, durable, finished_at, created_at)
            SELECT 'old', '{{}}', st, true,
                   CASE WHEN st IN ('COMPLETED', 'FAILED', 'CANCELLED')
                        THEN now() - interval '400 days' END,
                   now() - interval '401 days'
            FROM unnest(ARRAY['QUEUED', 'RUNNING', 'WAITING', 'COMPLETED', 'FAILED',
                              'CANCELLED']) st, generate_series(1, 500)"""
    )
    db.execute(
        f"INSERT INTO {s}.event_log (run_id, seq, kind, name, key, done, attempt)"
        f" SELECT id, 0, 'step', 's', 'k', true, 1 FROM {s}.runs"
    )
    before = db.execute(f"SELECT status, count(*) FROM {s}.runs GROUP BY 1 ORDER BY 1").fetchall()

    app = make_app(retention=60, migrate=False)
    assert app.migrate() == [v for v, _ in ALL if v > 9]
    after = db.execute(f"SELECT status, count(*) FROM {s}.runs GROUP BY 1 ORDER BY 1").fetchall()
    assert after == before and len(after) == 6
    assert db.execute(f"SELECT count(*) FROM {s}.runs WHERE retention IS NOT NULL").fetchone() == (
        0,
    )

    @app.task(name="old")
    def old() -> None: ...

    with app.worker():
        # Wait for a sweep (the running runs' worker is gone: they are recovered, not removed).
        wait_until(
            lambda: (
                db.execute(f"SELECT count(*) FROM {s}.runs WHERE status = 'RUNNING'").fetchone()
                == (0,)
            ),
            what="a sweep",
        )
    assert db.execute(f"SELECT count(*) FROM {s}.runs").fetchone() == (3000,)
    assert db.execute(f"SELECT count(*) FROM {s}.event_log").fetchone() == (3000,)
