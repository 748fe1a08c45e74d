"""The ``durably`` command line against the real database: db, runs, workers, queues, and how it
reports bad input (one ``error:`` line, or a usage message)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result

import durably
from durably.cli import main
from durably.store import LATEST_VERSION, MIGRATIONS
from tests.helpers import ROOT


@pytest.fixture
def cli(database_url: str, schema: str) -> Callable[..., Result]:
    """Invoke ``durably <args> --database-url URL --schema S`` in this process."""

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(main, [*args, "--database-url", database_url, "--schema", schema])

    return invoke


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
    cli: Callable[..., Result], db: psycopg.Connection[Any], schema: str
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


def test_db_sql_prints_the_pending_sql_for_a_dba(
    cli: Callable[..., Result], db: psycopg.Connection[Any], schema: str
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


def test_runs_list_json(cli: Callable[..., Result], app: durably.App) -> None:
    @app.task(name="alpha")
    def alpha(n: int) -> None:
        pass

    @app.task(name="beta")
    def beta() -> None:
        pass

    a1 = alpha.enqueue(1)
    b1 = beta.options(queue="other").enqueue()
    a2 = alpha.enqueue(2)
    assert app.cancel(a2.id)

    listed = cli("runs", "list", "--json")
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    assert [r["id"] for r in rows] == [a2.id, b1.id, a1.id]
    assert rows[2]["task"] == "alpha" and rows[2]["args"] == {"args": [1], "kwargs": {}}
    assert rows[1]["queue"] == "other"

    by_task = json.loads(cli("runs", "list", "--json", "--task", "alpha").stdout)
    assert [r["id"] for r in by_task] == [a2.id, a1.id]
    by_status = json.loads(cli("runs", "list", "--json", "--status", "queued").stdout)
    assert [r["id"] for r in by_status] == [b1.id, a1.id]
    limited = json.loads(cli("runs", "list", "--json", "--limit", "1").stdout)
    assert [r["id"] for r in limited] == [a2.id]

    table = cli("runs", "list")
    assert table.exit_code == 0
    header, *lines = table.stdout.splitlines()
    assert header.split() == ["ID", "TASK", "QUEUE", "STATUS", "ATTEMPT", "CREATED_AT"]
    assert [line.split()[:4] for line in lines] == [
        [str(a2.id), "alpha", "default", "CANCELLED"],
        [str(b1.id), "beta", "other", "QUEUED"],
        [str(a1.id), "alpha", "default", "QUEUED"],
    ]


def test_runs_list_on_an_empty_schema(cli: Callable[..., Result]) -> None:
    listed = cli("runs", "list")
    assert (listed.exit_code, listed.stdout.strip()) == (0, "(none)")
    assert json.loads(cli("runs", "list", "--json").stdout) == []


def test_runs_show(cli: Callable[..., Result], app: durably.App) -> None:
    @app.task(name="explode")
    def explode(reason: str) -> None:
        raise ValueError(reason)

    @app.task(name="idle")
    def idle() -> None:
        pass

    queued = idle.options(idempotency_key="idle-1").enqueue()
    shown = cli("runs", "show", str(queued.id))
    assert shown.exit_code == 0, shown.output
    assert "status: QUEUED" in shown.stdout.splitlines()
    assert "task: idle" in shown.stdout.splitlines()
    assert "idempotency_key: idle-1" in shown.stdout.splitlines()

    as_json = json.loads(cli("runs", "show", str(queued.id), "--json").stdout)
    assert (as_json["id"], as_json["status"], as_json["task"]) == (queued.id, "QUEUED", "idle")

    failed = explode.enqueue("the reactor is on fire")
    with app.worker(slots=1), pytest.raises(durably.RunFailed):
        failed.result(timeout=10)
    shown = cli("runs", "show", str(failed.id))
    assert shown.exit_code == 0, shown.output
    assert "status: FAILED" in shown.stdout
    assert "error: ValueError: the reactor is on fire" in shown.stdout
    assert "Traceback (most recent call last)" in shown.stdout  # the remote traceback

    missing = cli("runs", "show", "999999")
    assert missing.exit_code == 1
    assert missing.stderr.strip() == (f"error: run 999999 does not exist in schema {app.schema!r}")


def test_runs_cancel(cli: Callable[..., Result], app: durably.App) -> None:
    @app.task(name="idle")
    def idle() -> None:
        pass

    handle = idle.enqueue()
    cancelled = cli("runs", "cancel", str(handle.id))
    assert cancelled.exit_code == 0, cancelled.output
    assert f"run {handle.id} cancelled" in cancelled.stdout
    assert handle.status() == "CANCELLED"

    again = cli("runs", "cancel", str(handle.id))
    assert again.exit_code == 1
    assert "already ended" in again.stderr
    assert handle.status() == "CANCELLED"

    unknown = cli("runs", "cancel", "999999")
    assert unknown.exit_code == 1


# -- workers and queues --------------------------------------------------------------------


def test_workers_list(cli: Callable[..., Result], app: durably.App) -> None:
    @app.task(name="idle")
    def idle() -> None:
        pass

    assert cli("workers", "list").stdout.strip() == "(none)"
    with app.worker(slots=3) as worker:
        listed = cli("workers", "list", "--json")
        assert listed.exit_code == 0, listed.output
        rows = json.loads(listed.stdout)
        assert len(rows) == 1
        row = rows[0]
        assert (row["id"], row["pid"], row["slots"]) == (worker.id, os.getpid(), 3)
        assert row["tasks"] == ["idle"] and row["queues"] == ["default"]
        assert row["stopped_at"] is None and row["running"] == 0
        table = cli("workers", "list")
        assert worker.id in table.stdout
    stopped = json.loads(cli("workers", "list", "--json").stdout)
    assert stopped[0]["id"] == worker.id and stopped[0]["stopped_at"] is not None


def test_queues_list(cli: Callable[..., Result], app: durably.App) -> None:
    @app.task(name="idle")
    def idle() -> None:
        pass

    assert cli("queues", "list").stdout.strip() == "(none)"
    idle.enqueue()
    idle.enqueue()
    idle.options(queue="reports").enqueue()
    idle.options(delay=3600).enqueue()
    listed = cli("queues", "list", "--json")
    assert listed.exit_code == 0, listed.output
    rows = {r["queue"]: r for r in json.loads(listed.stdout)}
    assert set(rows) == {"default", "reports"}
    default = rows["default"]
    assert (default["queued"], default["running"], default["waiting"]) == (3, 0, 0)
    assert default["no_worker"] == 3  # no worker is alive to serve them
    assert default["oldest_age_s"] is not None and default["oldest_age_s"] >= 0
    assert rows["reports"]["queued"] == 1

    table = cli("queues", "list")
    assert table.stdout.splitlines()[0].split() == [
        "QUEUE",
        "QUEUED",
        "RUNNING",
        "WAITING",
        "OLDEST_AGE_S",
        "NO_WORKER",
    ]


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


def test_durable_run_commands(app: durably.App, cli: Callable[..., Result]) -> None:
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
