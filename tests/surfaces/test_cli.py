"""The ``durably`` command line against the real database: db, runs, workers, queues, and how it
reports bad input (one ``error:`` line, or a usage message)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from datetime import datetime
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

import durably
from durably.cli import main
from durably.storage import LATEST_VERSION, MIGRATIONS
from tests.cli_support import DURABLY, Cli, cli
from tests.helpers import ROOT, wait_until

__all__ = ["cli"]  # the fixture, imported for the tests below


def run_module(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m durably <args>`` in a real process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for name in ("DURABLY_APP", "DURABLY_SCHEMA"):
        env.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "durably", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def schema_exists(db: psycopg.Connection[Any], schema: str) -> bool:
    row = db.execute("SELECT to_regnamespace(%s) IS NOT NULL", (schema,)).fetchone()
    return bool(row and row[0])


# -- db ------------------------------------------------------------------------------------


def test_db_status_shows_pending_then_applied(
    cli: Cli, db: psycopg.Connection[Any], schema: str
) -> None:
    fresh = cli("db", "status")
    assert fresh.exit_code == 0, fresh.output
    assert "0001_queue: pending" in fresh.stdout
    assert f"schema '{schema}' at version 0" in fresh.stdout
    assert not schema_exists(db, schema)  # looking changes nothing

    migrated = cli("db", "migrate")
    assert migrated.exit_code == 0, migrated.output
    versions = [m.version for m in MIGRATIONS]
    assert f"applied {len(versions)} migration(s): {versions}" in migrated.stdout

    applied = cli("db", "status")
    assert applied.exit_code == 0, applied.output
    assert "0001_queue: applied" in applied.stdout
    assert "pending" not in applied.stdout
    needs = f"at version {LATEST_VERSION}; this durably needs {LATEST_VERSION}"
    assert f"schema '{schema}' {needs}" in applied.stdout

    again = cli("db", "migrate")
    assert again.exit_code == 0, again.output
    assert "schema is up to date" in again.stdout


def test_db_migrate_shows_progress_and_status_as_json(
    cli: Cli, db: psycopg.Connection[Any], schema: str
) -> None:
    pending = json.loads(cli("db", "status", "--json").stdout)
    assert pending == {
        "schema": schema,
        "version": 0,
        "needs": LATEST_VERSION,
        "migrations": [
            {"version": m.version, "name": m.name, "applied": False} for m in MIGRATIONS
        ],
    }
    migrated = cli("db", "migrate")
    assert migrated.exit_code == 0, migrated.output
    total = len(MIGRATIONS)
    steps = [
        f"migrating: {i}/{total} applying {m.version:04d}_{m.name}"
        for i, m in enumerate(MIGRATIONS)
    ]
    assert migrated.stderr.splitlines() == [*steps, f"migrating: {total}/{total} done"]
    applied = json.loads(cli("db", "status", "--json").stdout)
    assert applied["version"] == LATEST_VERSION
    assert all(m["applied"] for m in applied["migrations"])
    assert cli("db", "migrate").stderr == ""  # nothing to apply, nothing to show


def test_db_commands_with_an_app_never_migrate_on_opening(
    db: psycopg.Connection[Any], schema: str, database_url: str
) -> None:
    env = {**os.environ, "DURABLY_DATABASE_URL": database_url, "DURABLY_TEST_SCHEMA": schema}
    env["PYTHONPATH"] = str(ROOT)
    status = subprocess.run(
        [str(DURABLY), "db", "status", "--app", "tests.apps.queue_app:app"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert status.returncode == 0, status.stderr
    assert f"schema '{schema}' at version 0" in status.stdout
    assert not schema_exists(db, schema)


def test_db_sql_prints_the_pending_sql_for_a_dba(
    cli: Cli, db: psycopg.Connection[Any], schema: str
) -> None:
    printed = cli("db", "sql")
    assert printed.exit_code == 0, printed.output
    sql = printed.stdout
    assert "CREATE TABLE" in sql
    assert f'CREATE TABLE "{schema}".runs' in sql
    assert "-- 0001_queue" in sql
    assert not schema_exists(db, schema)  # printed, not run

    # A DBA runs it by hand; durably then sees the schema as migrated.
    db.execute(sql.encode())
    status = cli("db", "status")
    assert "0001_queue: applied" in status.stdout
    assert "schema is up to date" in cli("db", "migrate").stdout
    assert "-- 0001_queue" not in cli("db", "sql").stdout


# -- runs ----------------------------------------------------------------------------------


def test_runs_list_on_an_empty_schema(cli: Cli) -> None:
    listed = cli("runs", "list")
    assert (listed.exit_code, listed.stdout.strip()) == (0, "(none)")
    assert json.loads(cli("runs", "list", "--json").stdout) == []


# -- workers and queues --------------------------------------------------------------------


def test_workers_list(cli: Cli, app: durably.App) -> None:
    gate = threading.Event()

    @app.task(name="hold")
    def hold() -> None:
        gate.wait(30)

    assert cli("workers", "list").stdout.strip() == "(none)"
    with app.worker(slots=3, durable_slots=5) as worker:
        handle = hold.enqueue()
        wait_until(lambda: handle.status() == "RUNNING", what="the run to start")
        listed = cli("workers", "list", "--json")
        assert listed.exit_code == 0, listed.output
        (row,) = json.loads(listed.stdout)
        assert (row["id"], row["pid"], row["slots"]) == (worker.id, os.getpid(), 3)
        assert row["tasks"] == ["hold"] and row["queues"] == ["default"]
        assert row["alive"] is True and row["stopped_at"] is None
        assert (row["running"], row["running_durable"]) == (1, 0)  # one slot in use
        assert 0 <= row["heartbeat_age_s"] < 30
        datetime.fromisoformat(row["heartbeat_at"])

        table = cli("workers", "list")
        header, line = table.stdout.splitlines()
        assert header.split() == [
            "ID", "HOST", "PID", "ALIVE", "SLOTS", "DURABLE", "HEARTBEAT", "QUEUES", "STARTED",
        ]  # fmt: skip
        assert line.split()[:6] == [worker.id, row["hostname"], str(os.getpid()), "yes", "1/3", "0"]
        gate.set()
        handle.result(timeout=10)
    stopped = json.loads(cli("workers", "list", "--json").stdout)
    assert stopped[0]["id"] == worker.id and stopped[0]["alive"] is False
    assert stopped[0]["stopped_at"] is not None
    assert cli("workers", "list", "--alive").stdout.strip() == "(none)"


def test_queues_list(cli: Cli, app: durably.App) -> None:
    @app.task(name="idle")
    def idle() -> None:
        pass

    @app.task(name="boom", queue="reports")
    def boom() -> None:
        raise RuntimeError("no")

    assert cli("queues", "list").stdout.strip() == "(none)"
    with app.worker(slots=2):
        idle.enqueue().result(timeout=10)
        idle.enqueue().result(timeout=10)
        with pytest.raises(durably.RunFailed):
            boom.enqueue().result(timeout=10)
    idle.enqueue()
    idle.enqueue()
    idle.options(delay=3600).enqueue()
    listed = cli("queues", "list", "--json")
    assert listed.exit_code == 0, listed.output
    rows = {r["queue"]: r for r in json.loads(listed.stdout)}
    assert set(rows) == {"default", "reports"}
    default = rows["default"]
    assert (default["queued"], default["delayed"], default["running"], default["waiting"]) == (
        2,
        1,
        0,
        0,
    )
    assert default["no_worker"] == 3  # the worker stopped: no live one serves them
    assert default["oldest_queued_s"] is not None and default["oldest_queued_s"] >= 0
    assert (default["completed"], default["failed"]) == (2, 0)  # in the last minute
    assert (rows["reports"]["completed"], rows["reports"]["failed"]) == (0, 1)

    table = cli("queues", "list")
    header, *lines = table.stdout.splitlines()
    assert header.split() == [
        "QUEUE", "QUEUED", "DELAYED", "RUNNING", "WAITING", "OLDEST", "NO", "WORKER",
        "DONE/MIN", "FAILED/MIN",
    ]  # fmt: skip
    assert lines[0].split()[:5] == ["default", "2", "1", "0", "0"]
    assert lines[0].split()[-3:] == ["3", "2", "0"]


def test_events_push(cli: Cli, app: durably.App) -> None:
    @app.durable_task(name="approval")
    async def approval(ctx: durably.DurableContext) -> Any:
        return await ctx.wait_for_event("approve:1")

    with app.worker(durable_slots=1, evict_after=0.1):
        handle = approval.enqueue()
        wait_until(lambda: handle.status() == "WAITING", what="the run to suspend")
        shown = cli("runs", "show", str(handle.id))
        assert "waiting for: event 'approve:1'" in shown.stdout.splitlines()
        pushed = cli("events", "push", "approve:1", '{"by": "ann"}')
        assert pushed.exit_code == 0, pushed.output
        assert re.fullmatch(r"event \d+ pushed", pushed.stdout.strip())
        assert handle.result(timeout=20) == {"by": "ann"}
    bad = cli("events", "push", "k", "{not json")
    assert bad.exit_code == 2
    assert "PAYLOAD is not JSON" in bad.stderr


# -- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("not a url = =", "error: the database URL is malformed"),
        ("postgresql://postgres:hunter2@127.0.0.1:1/postgres", "error: cannot connect to"),
    ],
)
def test_bad_database_url_prints_one_error_line(url: str, expected: str) -> None:
    for args in (["runs", "list"], ["db", "status"], ["workers", "list"]):
        result = CliRunner().invoke(main, [*args, "--database-url", url])
        assert result.exit_code == 1, (args, result.output)
        assert result.stdout == ""
        lines = result.stderr.splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith(expected), lines
        assert "hunter2" not in result.stderr
        assert result.exception is None or isinstance(result.exception, SystemExit)


def test_bad_schema_option_prints_one_error_line(database_url: str) -> None:
    result = CliRunner().invoke(
        main, ["runs", "list", "--database-url", database_url, "--schema", "Bad-Name"]
    )
    assert result.exit_code == 1
    assert result.stderr.startswith("error: schema name 'Bad-Name' is not valid")
    assert len(result.stderr.splitlines()) == 1


def test_malformed_database_url_in_a_real_process() -> None:
    done = run_module("runs", "list", "--database-url", "not a url = =")
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        'error: the database URL is malformed (missing "=" after "not" in connection info '
        "string): expected postgresql://user@host:port/dbname"
    ]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("nocolon", "APP must look like module:attribute"),
        (":app", "APP must look like module:attribute"),
        ("no_such_module_xyz:app", "cannot import 'no_such_module_xyz'"),
        ("json:dumps", "is not a durably.App (found function)"),
        ("json:no_such_attribute", "is not a durably.App (found NoneType)"),
    ],
)
def test_worker_with_a_bad_app_spec_exits_2(spec: str, expected: str) -> None:
    result = CliRunner().invoke(main, ["worker", spec])
    assert result.exit_code == 2, result.output
    assert "Usage: " in result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.output


def test_worker_options_reach_the_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setattr(durably.App, "run_worker", lambda self, **options: seen.update(options))
    args = ["worker", "tests.apps.queue_app:app", "--slots", "3", "--durable-slots", "7"]
    result = CliRunner().invoke(main, [*args, "--evict-after", "0.5", "--queue", "q1"])
    assert result.exit_code == 0, result.output
    assert seen["slots"] == 3 and seen["durable_slots"] == 7 and seen["evict_after"] == 0.5
    assert seen["queues"] == ["q1"]


def test_worker_with_a_bad_app_spec_in_a_real_process() -> None:
    done = run_module("worker", "nocolon")
    assert done.returncode == 2
    assert "Usage: " in done.stderr and "APP must look like module:attribute" in done.stderr
    assert "Traceback" not in done.stderr


def test_module_entry_point_lists_runs_as_json(
    app: durably.App, database_url: str, schema: str
) -> None:
    @app.task(name="idle")
    def idle() -> None:
        pass

    handle = idle.enqueue()
    done = run_module("runs", "list", "--json", "--database-url", database_url, "--schema", schema)
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert [(r["id"], r["task"], r["status"]) for r in rows] == [(handle.id, "idle", "QUEUED")]


def test_durable_run_commands(app: durably.App, cli: Cli) -> None:
    fail = {"on": True}

    def work(x: int) -> int:
        return x + 1

    @app.durable_task(name="cli_flow")
    async def cli_flow(ctx: durably.DurableContext) -> int:
        value = int(await ctx.step(work, 1))
        approval = await ctx.wait_for_event("cli:approve")
        if fail["on"]:
            raise RuntimeError("not yet")
        return value + int(approval["n"])

    with app.worker(durable_slots=1):
        handle = cli_flow.enqueue()
        pushed = cli("events", "push", "cli:approve", '{"n": 40}')
        assert pushed.exit_code == 0 and "pushed" in pushed.output
        with pytest.raises(durably.RunFailed):
            handle.result(timeout=20)
        shown = cli("runs", "show", str(handle.id), "--json")
        assert shown.exit_code == 0
        log = json.loads(shown.output)["event_log"]
        assert [e["kind"] for e in log] == ["step", "event"]
        assert cli("runs", "replay", "999999").exit_code == 1
        fail["on"] = False
        retried = cli("runs", "retry", str(handle.id))
        assert retried.exit_code == 0, retried.output
        assert handle.result(timeout=20) == 42
        refused = cli("runs", "retry", str(handle.id))
        assert refused.exit_code == 1 and "refused" in refused.output
        forked = cli("runs", "fork", str(handle.id), "--at-event", "2")
        assert forked.exit_code == 0, forked.output
        fork_id = int(forked.output.split()[-1])
        assert app.handle(fork_id).result(timeout=20) == 42
    assert cli("events", "push", "k", "{not json").exit_code == 2
