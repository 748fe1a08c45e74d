"""PostgreSQL itself crashes (stop -m immediate) and comes back while a worker is busy: every run
still ends, none is lost. Runs against a private server this test starts and deletes."""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

import durably
from tests.apps import queue_app
from tests.chaos.server import PrivateServer
from tests.helpers import WorkerProcess, wait_until


@pytest.fixture
def private_server() -> Iterator[PrivateServer]:
    with tempfile.TemporaryDirectory(prefix="durably-pg-") as tmp:
        server = PrivateServer(Path(tmp) / "pg")
        try:
            yield server
        finally:
            server.server.cleanup()


def test_runs_survive_a_database_crash(private_server: PrivateServer) -> None:
    url, schema = private_server.url, "restart"
    app = durably.App(url, schema=schema)
    # The task body writes to the database too, so it fails while the server is down: retries
    # let it succeed once the server is back.
    app.task(name="effect", retries=20)(queue_app.effect.fn)
    app.migrate()
    with psycopg.connect(url, autocommit=True) as conn:
        queue_app.create_effects(conn, schema)
    handles = app.registry["effect"].enqueue_many([(f"r{i}", 0.01) for i in range(300)])
    app.close()

    def statuses() -> Counter[str]:
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=2) as conn:
                rows = conn.execute(f'SELECT status FROM "{schema}".runs').fetchall()
        except psycopg.OperationalError:
            return Counter()
        return Counter(r[0] for r in rows)

    with WorkerProcess(url, schema, "queue_app", "--slots", "4", "--lease", "5") as worker:
        wait_until(lambda: statuses()["COMPLETED"] >= 50, timeout=60, what="some runs done")
        private_server.crash_and_restart()
        worker.wait_for_line("listener connection lost")  # the worker did see the crash
        wait_until(lambda: statuses()["COMPLETED"] == 300, timeout=90, what="every run done")
        assert worker.proc.poll() is None, "the worker survived the crash"
    with psycopg.connect(url, autocommit=True) as conn:
        tags = Counter(r[0] for r in conn.execute(f'SELECT tag FROM "{schema}".effects'))
    assert set(tags) == {f"r{i}" for i in range(300)}, "no run lost"
    assert len(handles) == 300
