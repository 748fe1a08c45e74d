"""``durably runs``, driven as a user would against the real database and a real worker: list
with each filter and page by page, show a durable run with its children and event log, retry,
replay, fork, cancel, and the bulk retry and cancel with their confirmation."""

from __future__ import annotations

import json
import re
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

import durably
from durably.console import Console
from tests.cli_support import Cli, cli, run_in_terminal, run_script, script_env
from tests.helpers import wait_until

__all__ = ["cli"]  # the fixture, imported for the tests below


def ids(result: Any) -> list[int]:
    """The run ids of a ``--json`` listing."""
    assert result.exit_code == 0, result.output
    return [row["id"] for row in json.loads(result.stdout)]


def age(db: psycopg.Connection[Any], schema: str, run_id: int, hours: float) -> None:
    """Make a run look as if it was created ``hours`` ago (the database clock)."""
    db.execute(
        f'UPDATE "{schema}".runs SET created_at = now() - make_interval(secs => %s) WHERE id = %s',
        (hours * 3600, run_id),
    )


# -- list ---------------------------------------------------------------------------------


def test_list_filters_by_status_task_and_queue(cli: Cli, app: durably.App) -> None:
    @app.task(name="alpha")
    def alpha(n: int) -> None:
        pass

    @app.task(name="beta")
    def beta() -> None:
        pass

    a1 = alpha.enqueue(1)
    b1 = beta.options(queue="other").enqueue()
    a2 = alpha.enqueue(2)
    b2 = beta.enqueue()
    assert app.cancel(a2.id)

    assert ids(cli("runs", "list", "--json")) == [b2.id, a2.id, b1.id, a1.id]
    assert ids(cli("runs", "list", "--json", "--task", "alpha")) == [a2.id, a1.id]
    assert ids(cli("runs", "list", "--json", "--queue", "other")) == [b1.id]
    assert ids(cli("runs", "list", "--json", "--status", "queued")) == [b2.id, b1.id, a1.id]
    assert ids(cli("runs", "list", "--json", "--status", "CANCELLED")) == [a2.id]
    # Several statuses: repeated, or separated by commas.
    both = [b2.id, a2.id, b1.id, a1.id]
    assert ids(cli("runs", "list", "--json", "--status", "queued,cancelled")) == both
    assert ids(cli("runs", "list", "--json", "--status", "QUEUED", "--status", "CANCELLED")) == both
    combined = cli(
        "runs", "list", "--json", "--status", "queued", "--task", "beta", "--queue", "default"
    )
    assert ids(combined) == [b2.id]

    row = json.loads(cli("runs", "list", "--json", "--task", "alpha").stdout)[1]
    assert (row["task"], row["queue"], row["status"], row["attempt"]) == (
        "alpha",
        "default",
        "QUEUED",
        0,
    )
    assert json.loads(row["args_preview"]) == {"args": [1], "kwargs": {}}
    assert datetime.fromisoformat(row["created_at"]).utcoffset() == timedelta(0)

    table = cli("runs", "list", "--task", "alpha")
    assert table.exit_code == 0, table.output
    header, *lines = table.stdout.splitlines()
    assert header.split() == [
        "ID",
        "TASK",
        "QUEUE",
        "STATUS",
        "ATTEMPTS",
        "CREATED",
        "DUE",
        "TOOK",
        "ERROR",
    ]
    assert [line.split()[:5] for line in lines] == [
        [str(a2.id), "alpha", "default", "CANCELLED", "0"],
        [str(a1.id), "alpha", "default", "QUEUED", "0"],
    ]


def test_list_filters_by_time_range(
    cli: Cli, app: durably.App, db: psycopg.Connection[Any], schema: str
) -> None:
    @app.task(name="idle")
    def idle() -> None:
        pass

    old, middle, new = idle.enqueue(), idle.enqueue(), idle.enqueue()
    age(db, schema, old.id, 30)  # yesterday
    age(db, schema, middle.id, 3)
    now = db.execute("SELECT now()").fetchone()[0]  # type: ignore[index]

    assert ids(cli("runs", "list", "--json", "--since", "1h")) == [new.id]
    assert ids(cli("runs", "list", "--json", "--since", "1d")) == [new.id, middle.id]
    assert ids(cli("runs", "list", "--json", "--until", "2h")) == [middle.id, old.id]
    assert ids(cli("runs", "list", "--json", "--since", "1d", "--until", "1h30m")) == [middle.id]
    assert ids(cli("runs", "list", "--json", "--since", "2w", "--until", "90000s")) == [old.id]
    # ISO times: with an offset, or naive (read as UTC).
    hour_ago = (now - timedelta(hours=1)).isoformat()
    assert ids(cli("runs", "list", "--json", "--since", hour_ago)) == [new.id]
    utc_naive = (now - timedelta(hours=4)).astimezone(UTC).replace(tzinfo=None)
    until = cli("runs", "list", "--json", "--until", utc_naive.isoformat())
    assert ids(until) == [old.id]


def run_at_and_now(db: psycopg.Connection[Any], schema: str, run_id: int) -> tuple[datetime, Any]:
    """A run's run_at and the database's clock."""
    row = db.execute(f'SELECT run_at, now() FROM "{schema}".runs WHERE id = %s', (run_id,))
    found = row.fetchone()
    assert found is not None
    return found[0], found[1]


def test_list_shows_delayed_runs_with_when_they_are_due_and_filters_them(
    cli: Cli, app: durably.App, db: psycopg.Connection[Any], schema: str
) -> None:
    @app.task(name="idle")
    def idle(n: int) -> None:
        pass

    due = idle.enqueue(1)
    later = idle.options(delay=250).enqueue(2)
    elsewhere = idle.options(delay=3600, queue="reports").enqueue(3)
    was_delayed = idle.options(delay=600).enqueue(4)
    # Its time came: still QUEUED, but due, so no longer delayed.
    db.execute(
        f"UPDATE \"{schema}\".runs SET run_at = now() - interval '5 seconds' WHERE id = %s",
        (was_delayed.id,),
    )
    cancelled = idle.options(delay=60).enqueue(5)
    assert app.cancel(cancelled.id)

    assert ids(cli("runs", "list", "--json", "--status", "delayed")) == [elsewhere.id, later.id]
    assert ids(cli("runs", "list", "--json", "--status", "DELAYED", "--queue", "default")) == [
        later.id
    ]
    # With other statuses: those runs, and the queued ones that are not due yet.
    mixed = cli("runs", "list", "--json", "--status", "delayed,cancelled")
    assert ids(mixed) == [cancelled.id, elsewhere.id, later.id]
    # QUEUED takes every queued run, delayed or not.
    queued = [was_delayed.id, elsewhere.id, later.id, due.id]
    assert ids(cli("runs", "list", "--json", "--status", "queued,delayed")) == queued
    assert ids(cli("runs", "list", "--json", "--status", "queued")) == queued

    rows = {row["id"]: row for row in json.loads(cli("runs", "list", "--json").stdout)}
    run_at, _ = run_at_and_now(db, schema, later.id)
    assert datetime.fromisoformat(rows[later.id]["run_at"]) == run_at
    assert 240 < rows[later.id]["due_in_s"] <= 250
    assert 3590 < rows[elsewhere.id]["due_in_s"] <= 3600
    for other in (due, was_delayed, cancelled):
        assert rows[other.id]["due_in_s"] is None
        assert datetime.fromisoformat(rows[other.id]["run_at"]).utcoffset() == timedelta(0)

    table = cli("runs", "list")
    assert table.exit_code == 0, table.output
    header, *lines = table.stdout.splitlines()
    assert header.split()[5:8] == ["CREATED", "DUE", "TOOK"]
    start = header.index("DUE")
    due_cells = {int(line.split()[0]): line[start:].split("  ")[0].strip() for line in lines}
    assert re.fullmatch(r"in 4m[01]\ds", due_cells[later.id]), due_cells
    assert re.fullmatch(r"in (59m[45]\ds|1h00m)", due_cells[elsewhere.id]), due_cells
    assert due_cells[due.id] == due_cells[was_delayed.id] == due_cells[cancelled.id] == "-"


def test_bulk_cancel_of_delayed_runs(cli: Cli, app: durably.App) -> None:
    @app.task(name="idle")
    def idle() -> None:
        pass

    now = idle.enqueue()
    later = [idle.options(delay=600).enqueue() for _ in range(2)]
    done = cli("runs", "cancel", "--status", "delayed", "--yes")
    assert done.exit_code == 0, done.output
    assert done.stdout.splitlines() == ["2 runs match (status DELAYED)", "cancelled 2 runs"]
    assert statuses(later) == ["CANCELLED"] * 2
    assert now.status() == "QUEUED"
    # A delayed run is a queued one: retry does not apply to it.
    wrong = cli("runs", "retry", "--status", "delayed", "--yes")
    assert wrong.exit_code == 2
    assert "DELAYED: retry applies only to FAILED, CANCELLED runs" in wrong.stderr


def test_list_pages_with_before(cli: Cli, app: durably.App) -> None:
    @app.task(name="idle")
    def idle(n: int) -> None:
        pass

    handles = idle.enqueue_many([(n,) for n in range(7)])
    newest_first = [h.id for h in reversed(handles)]

    first = cli("runs", "list", "--json", "--limit", "3")
    assert ids(first) == newest_first[:3]
    assert first.stderr.strip() == f"next page: --before {newest_first[2]}"
    second = cli("runs", "list", "--json", "--limit", "3", "--before", str(newest_first[2]))
    assert ids(second) == newest_first[3:6]
    assert second.stderr.strip() == f"next page: --before {newest_first[5]}"
    last = cli("runs", "list", "--limit", "3", "--before", str(newest_first[5]))
    assert last.exit_code == 0, last.output
    assert [line.split()[0] for line in last.stdout.splitlines()[1:]] == [str(newest_first[6])]
    assert last.stderr == ""  # no page after the last


def test_list_usage_errors_exit_2(cli: Cli) -> None:
    for args, expected in [
        (["--status", "DONE"], "'DONE' is not a status: use one or more of QUEUED"),
        (["--since", "yesterday"], "'yesterday' is neither a duration (15m, 2h, 1d, 1h30m) nor"),
        (["--limit", "0"], "Invalid value for '--limit'"),
        (["--before", "x"], "Invalid value for '--before'"),
    ]:
        result = cli("runs", "list", *args)
        assert result.exit_code == 2, (args, result.output)
        assert expected in result.stderr, result.stderr
        assert result.stdout == ""


# -- show ---------------------------------------------------------------------------------


def register_flow(app: durably.App, step_calls: list[int]) -> Any:
    """A durable task with a step and three children (one by ctx.run, two by ctx.gather)."""

    @app.task(name="charge")
    def charge(order: str, amount: int) -> dict[str, Any]:
        return {"order": order, "charged": amount}

    @app.task(name="echo")
    def echo(x: int) -> int:
        return x

    def add(a: int, b: int) -> int:
        step_calls.append(a + b)
        return a + b

    @app.durable_task(name="order_flow")
    async def order_flow(ctx: durably.DurableContext, order: str) -> dict[str, Any]:
        receipt = await ctx.run(charge, order, 100)
        a, b = await ctx.gather(ctx.spawn(echo, 20), ctx.spawn(echo, 22))
        total = await ctx.step(add, a, b)
        return {"receipt": receipt, "total": total}

    return order_flow


def test_show_a_durable_run_with_children_and_its_event_log(cli: Cli, app: durably.App) -> None:
    order_flow = register_flow(app, [])
    with app.worker(slots=2, durable_slots=2):
        handle = order_flow.enqueue("o-1")
        assert handle.result(timeout=30) == {
            "receipt": {"order": "o-1", "charged": 100},
            "total": 42,
        }
    children = Console(app).children_page(handle.id)
    log = app.event_log(handle.id)

    shown = cli("runs", "show", str(handle.id))
    assert shown.exit_code == 0, shown.output
    lines = shown.stdout.splitlines()
    for expected in ("task: order_flow", "durable: yes", "status: COMPLETED", "attempts: 1"):
        assert expected in lines
    assert 'input: {"args": ["o-1"], "kwargs": {}}' in lines
    (output,) = [line for line in lines if line.startswith("output: ")]
    assert json.loads(output.removeprefix("output: ")) == {
        "receipt": {"order": "o-1", "charged": 100},
        "total": 42,
    }
    assert "children (3):" in lines
    child_rows = lines[lines.index("children (3):") + 2 : lines.index("children (3):") + 5]
    # gather spawns its two children concurrently: either may get the lower id
    assert [row.split()[:4] for row in child_rows] == [
        [str(c["id"]), c["task"], "COMPLETED", str(c["parent_seq"])] for c in children
    ]
    assert [c["task"] for c in children] == ["charge", "echo", "echo"]
    assert "event log (4 events):" in lines
    start = lines.index("event log (4 events):")
    assert lines[start + 1].split() == [
        "SEQ",
        "KIND",
        "NAME",
        "KEY",
        "RESULT",
        "RECORDED",
        "COMPLETED",
        "TOOK",
    ]
    events = lines[start + 2 : start + 6]
    assert [e.split()[:4] for e in events] == [
        [str(entry["seq"]), entry["kind"], entry["name"], entry["key"][:12]] for entry in log
    ]
    assert f'run {log[0]["child_id"]} (COMPLETED) {{"order": "o-1", "charged": 100}}' in events[0]
    assert events[3].split()[4] == "42"  # the step's result
    times = re.findall(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}", events[3])
    assert len(times) == 2  # recorded and completed, to the millisecond

    as_json = json.loads(cli("runs", "show", str(handle.id), "--json").stdout)
    assert (as_json["id"], as_json["status"], as_json["durable"]) == (handle.id, "COMPLETED", True)
    assert as_json["result"] == {"receipt": {"order": "o-1", "charged": 100}, "total": 42}
    assert (as_json["event_count"], as_json["child_count"]) == (4, 3)
    assert [c["id"] for c in as_json["children"]] == [c["id"] for c in children]
    assert as_json["next_children_after"] is None and as_json["next_events_from"] is None
    got = as_json["event_log"]
    assert [(e["seq"], e["kind"], e["name"], e["key"]) for e in got] == [
        (e["seq"], e["kind"], e["name"], e["key"]) for e in log
    ]
    assert [e["child_id"] for e in got] == [e["child_id"] for e in log]
    assert sorted(e["child_id"] for e in got[:3]) == [c["id"] for c in children]
    assert got[3]["result_preview"] == "42" and got[3]["done"] is True
    assert datetime.fromisoformat(got[3]["completed_at"]) >= datetime.fromisoformat(
        got[3]["created_at"]
    )


def test_show_pages_a_long_event_log_and_opens_one_event(cli: Cli, app: durably.App) -> None:
    def square(n: int) -> int:
        return n * n

    @app.durable_task(name="many_steps")
    async def many_steps(ctx: durably.DurableContext, count: int) -> int:
        return sum([await ctx.step(square, n) for n in range(count)])

    with app.worker(durable_slots=1):
        handle = many_steps.enqueue(12)
        assert handle.result(timeout=30) == sum(n * n for n in range(12))

    page = json.loads(
        cli(
            "runs", "show", str(handle.id), "--json", "--events-from", "4", "--events-limit", "5"
        ).stdout
    )
    assert [e["seq"] for e in page["event_log"]] == [4, 5, 6, 7, 8]
    assert [e["result_preview"] for e in page["event_log"]] == ["16", "25", "36", "49", "64"]
    assert page["next_events_from"] == 9 and page["event_count"] == 12

    text = cli("runs", "show", str(handle.id), "--events-from", "9", "--events-limit", "2")
    assert "event log (12 events, showing 9-10):" in text.stdout.splitlines()
    assert "more events: --events-from 11" in text.stdout.splitlines()

    one = cli("runs", "show", str(handle.id), "--event", "3")
    assert one.exit_code == 0, one.output
    fields = one.stdout.splitlines()
    assert {"seq: 3", "kind: step", "done: yes", "result: 9"} <= set(fields)
    assert any(f.startswith("name: ") and f.endswith(".square") for f in fields)  # its qualname
    assert "input: [3]" in fields  # the step's arguments
    assert (
        json.loads(cli("runs", "show", str(handle.id), "--event", "3", "--json").stdout)["result"]
        == 9
    )
    beyond = cli("runs", "show", str(handle.id), "--event", "12")
    assert beyond.exit_code == 1
    assert (
        beyond.stderr.strip()
        == f"refused: run {handle.id} has no event 12: it has 12 event(s), numbered from 0"
    )


def test_show_a_delayed_run_its_due_time_and_its_flow_control_keys(
    cli: Cli, app: durably.App, db: psycopg.Connection[Any], schema: str
) -> None:
    @app.task(name="idle")
    def idle() -> None:
        pass

    later = idle.options(delay=250).enqueue()
    due = idle.enqueue()
    db.execute(
        f'UPDATE "{schema}".runs SET concurrency_key = %s, fairness_key = %s WHERE id = %s',
        ("customer-7", "tenant-a", later.id),
    )
    run_at, _ = run_at_and_now(db, schema, later.id)

    shown = cli("runs", "show", str(later.id))
    assert shown.exit_code == 0, shown.output
    lines = shown.stdout.splitlines()
    assert {
        "status: QUEUED (delayed)",
        "concurrency_key: customer-7",
        "fairness_key: tenant-a",
    } <= (set(lines))
    (when,) = [line for line in lines if line.startswith("run_at: ")]
    stamp = run_at.astimezone(UTC).isoformat(sep=" ", timespec="milliseconds")[:-6]
    assert re.fullmatch(rf"run_at: {re.escape(stamp)} \(due in 4m[01]\ds\)", when), when
    as_json = json.loads(cli("runs", "show", str(later.id), "--json").stdout)
    assert datetime.fromisoformat(as_json["run_at"]) == run_at
    assert 240 < as_json["due_in_s"] <= 250
    assert (as_json["concurrency_key"], as_json["fairness_key"]) == ("customer-7", "tenant-a")

    # A queued run that is due: how long it has waited, no delay, no keys.
    shown = cli("runs", "show", str(due.id))
    assert shown.exit_code == 0, shown.output
    lines = shown.stdout.splitlines()
    assert "status: QUEUED" in lines
    (when,) = [line for line in lines if line.startswith("run_at: ")]
    assert re.fullmatch(r"run_at: [\d-]+ [\d:.]+ \(due \d+\.\d\ds ago\)", when), when
    assert "concurrency_key" not in shown.stdout and "fairness_key" not in shown.stdout
    as_json = json.loads(cli("runs", "show", str(due.id), "--json").stdout)
    assert as_json["due_in_s"] is None and as_json["concurrency_key"] is None


def test_show_a_failed_run_and_an_unknown_one(cli: Cli, app: durably.App) -> None:
    @app.task(name="explode")
    def explode(reason: str) -> None:
        raise ValueError(reason)

    @app.task(name="idle")
    def idle() -> None:
        pass

    queued = idle.options(idempotency_key="idle-1").enqueue()
    shown = cli("runs", "show", str(queued.id))
    assert shown.exit_code == 0, shown.output
    assert {"status: QUEUED", "task: idle", "idempotency_key: idle-1", "durable: no"} <= set(
        shown.stdout.splitlines()
    )
    assert "event log" not in shown.stdout and "children" not in shown.stdout

    failed = explode.enqueue("the reactor is on fire")
    with app.worker(slots=1), pytest.raises(durably.RunFailed):
        failed.result(timeout=10)
    shown = cli("runs", "show", str(failed.id))
    assert shown.exit_code == 0, shown.output
    assert "status: FAILED" in shown.stdout.splitlines()
    assert "failures: 1 (retries allowed: 0)" in shown.stdout.splitlines()
    assert "error: ValueError: the reactor is on fire" in shown.stdout.splitlines()
    assert "Traceback (most recent call last)" in shown.stdout  # the remote traceback
    error = json.loads(cli("runs", "show", str(failed.id), "--json").stdout)["error"]
    assert error["type"] == "ValueError"
    assert "ValueError: the reactor is on fire" in error["traceback"]

    missing = cli("runs", "show", "999999")
    assert missing.exit_code == 1
    assert missing.stderr.strip() == (
        f"refused: run 999999 does not exist in schema {app.schema!r}: "
        "durably runs list shows its runs"
    )


# -- retry, replay, fork, cancel ------------------------------------------------------------


def test_retry_a_failed_run_then_it_completes(cli: Cli, app: durably.App) -> None:
    broken = {"yes": True}

    @app.task(name="flaky")
    def flaky(tag: str) -> str:
        if broken["yes"]:
            raise ValueError(f"card declined for {tag}")
        return f"ok: {tag}"

    with app.worker(slots=1):
        handle = flaky.enqueue("t-1")
        with pytest.raises(durably.RunFailed):
            handle.result(timeout=10)
        broken["yes"] = False  # the fix is deployed
        retried = cli("runs", "retry", str(handle.id))
        assert retried.exit_code == 0, retried.output
        assert retried.stdout.strip() == f"run {handle.id} queued again"
        assert handle.result(timeout=10) == "ok: t-1"

        again = cli("runs", "retry", str(handle.id))
        assert again.exit_code == 1
        assert again.stderr.strip() == (
            f"refused: run {handle.id} is COMPLETED: only a FAILED or CANCELLED run can be "
            f"retried; to run it again from scratch: durably runs replay {handle.id}"
        )
        replayed = cli("runs", "replay", str(handle.id))
        assert replayed.exit_code == 0, replayed.output
        assert replayed.stdout.strip() == f"run {handle.id} replaying from scratch"
        wait_until(lambda: handle.status() == "COMPLETED", what="the replay to complete")
    assert cli("runs", "retry", "999999").exit_code == 1
    assert cli("runs", "replay", "999999").exit_code == 1


def test_retry_replay_and_cancel_are_refused_on_a_running_or_finished_run(
    cli: Cli, app: durably.App
) -> None:
    gate = threading.Event()

    @app.task(name="blocker")
    def blocker() -> str:
        gate.wait(30)
        return "released"

    with app.worker(slots=1):
        handle = blocker.enqueue()
        wait_until(lambda: handle.status() == "RUNNING", what="the run to start")
        for verb in ("retry", "replay"):
            refused = cli("runs", verb, str(handle.id))
            assert refused.exit_code == 1, refused.output
            assert refused.stderr.startswith(f"refused: run {handle.id} is RUNNING: only ")
            assert refused.stderr.rstrip().endswith(
                f"wait for it to end, or cancel it first (durably runs cancel {handle.id})"
            )
            assert len(refused.stderr.splitlines()) == 1
        assert handle.status() == "RUNNING"  # nothing changed
        gate.set()
        assert handle.result(timeout=10) == "released"
    finished = cli("runs", "cancel", str(handle.id))
    assert finished.exit_code == 1
    assert finished.stderr.strip() == (
        f"refused: run {handle.id} is COMPLETED: it has already ended, so there is nothing to "
        f"cancel; to run it again: durably runs retry {handle.id}"
    )


def test_cancel_one_run(cli: Cli, app: durably.App) -> None:
    @app.task(name="idle")
    def idle() -> None:
        pass

    handle = idle.enqueue()
    cancelled = cli("runs", "cancel", str(handle.id))
    assert cancelled.exit_code == 0, cancelled.output
    assert cancelled.stdout.strip() == f"run {handle.id} cancelled"
    assert handle.status() == "CANCELLED"
    again = cli("runs", "cancel", str(handle.id))
    assert again.exit_code == 1 and "it has already ended" in again.stderr
    unknown = cli("runs", "cancel", "999999")
    assert unknown.exit_code == 1 and "does not exist" in unknown.stderr


def test_fork_at_an_event(cli: Cli, app: durably.App) -> None:
    step_calls: list[int] = []
    order_flow = register_flow(app, step_calls)
    with app.worker(slots=2, durable_slots=2):
        source = order_flow.enqueue("o-9")
        expected = {"receipt": {"order": "o-9", "charged": 100}, "total": 42}
        assert source.result(timeout=30) == expected
        assert step_calls == [42]

        forked = cli("runs", "fork", str(source.id), "--at-event", "3")
        assert forked.exit_code == 0, forked.output
        match = re.fullmatch(
            rf"forked run {source.id} at event 3 as run (\d+)", forked.stdout.strip()
        )
        assert match, forked.stdout
        fork = app.handle(int(match[1]))
        assert fork.result(timeout=30) == expected
    assert step_calls == [42, 42]  # the fork executed its event 3 (the step) live, once
    source_log, fork_log = app.event_log(source.id), app.event_log(fork.id)
    assert [e["key"] for e in fork_log] == [e["key"] for e in source_log]
    assert [e["child_id"] for e in fork_log[:3]] == [e["child_id"] for e in source_log[:3]]
    assert [e["attempt"] for e in fork_log] == [0, 0, 0, 1]  # three copied, one recorded

    too_far = cli("runs", "fork", str(source.id), "--at-event", "5")
    assert too_far.exit_code == 1
    assert too_far.stderr.startswith(
        f"refused: run {source.id} has 4 event(s): give --at-event from 0 to 4"
    )
    child = Console(app).children_page(source.id)[0]["id"]
    not_durable = cli("runs", "fork", str(child), "--at-event", "0")
    assert not_durable.exit_code == 1
    assert "is not a durable run: it has no event log to fork" in not_durable.stderr
    assert cli("runs", "fork", "999999", "--at-event", "0").exit_code == 1
    missing_option = cli("runs", "fork", str(source.id))
    assert missing_option.exit_code == 2 and "Missing option '--at-event'" in missing_option.stderr
    negative = cli("runs", "fork", str(source.id), "--at-event", "-1")
    assert negative.exit_code == 2


# -- bulk ---------------------------------------------------------------------------------


def statuses(handles: list[durably.RunHandle]) -> list[str]:
    """The current status of each run."""
    return [h.status() for h in handles]


def test_bulk_cancel_asks_first(cli: Cli, app: durably.App) -> None:
    @app.task(name="report")
    def report(n: int) -> None:
        pass

    @app.task(name="email")
    def email(n: int) -> None:
        pass

    reports = report.enqueue_many([(n,) for n in range(5)])
    emails = email.enqueue_many([(n,) for n in range(2)])
    assert app.cancel(reports[0].id)  # already ended: not counted
    pending = reports[1:]

    declined = cli("runs", "cancel", "--status", "QUEUED", "--task", "report", input="n\n")
    assert declined.exit_code == 1
    assert "4 runs match (status QUEUED, task report)" in declined.stdout
    assert "Cancel 4 runs? [y/N]" in declined.stdout
    assert declined.stderr.strip() == (
        "refused: not confirmed, nothing was changed (answer y, or pass --yes to cancel)"
    )
    assert statuses(pending + emails) == ["QUEUED"] * 6  # nothing changed

    no_answer = cli("runs", "cancel", "--task", "report")  # stdin closed: no is the answer
    assert no_answer.exit_code == 1
    assert statuses(pending) == ["QUEUED"] * 4

    accepted = cli("runs", "cancel", "--status", "QUEUED", "--task", "report", input="y\n")
    assert accepted.exit_code == 0, accepted.output
    assert accepted.stdout.splitlines()[-1] == "cancelled 4 runs"
    assert accepted.stderr.splitlines()[-1].startswith("cancel: 4/4")  # the progress
    assert statuses(pending) == ["CANCELLED"] * 4
    assert statuses(emails) == ["QUEUED"] * 2  # another task: untouched

    nothing = cli("runs", "cancel", "--task", "report", "--yes")
    assert nothing.exit_code == 0
    assert nothing.stdout.strip() == (
        "no run matches (status QUEUED or RUNNING or WAITING, task report): nothing to cancel"
    )


def test_bulk_cancel_acts_in_pages_and_reaches_running_and_waiting_runs(
    cli: Cli, app: durably.App
) -> None:
    gate = threading.Event()

    @app.task(name="hold")
    def hold() -> None:
        gate.wait(30)

    @app.task(name="backlog", queue="later")
    def backlog(n: int) -> None:
        pass

    @app.durable_task(name="waiter")
    async def waiter(ctx: durably.DurableContext) -> Any:
        return await ctx.wait_for_event("never")

    # The worker serves only "default": the backlog stays queued, and no run is claimed while
    # the bulk cancel goes on.
    queued = backlog.enqueue_many([(n,) for n in range(248)])
    with app.worker(slots=2, durable_slots=1, evict_after=0.1, queues=["default"]):
        running = [hold.enqueue(), hold.enqueue()]
        waiting = waiter.enqueue()
        wait_until(lambda: waiting.status() == "WAITING", what="the durable run to suspend")
        wait_until(lambda: statuses(running) == ["RUNNING"] * 2, what="the runs to start")
        done = cli("runs", "cancel", "--since", "1h", "--yes")
        assert done.exit_code == 0, done.output
        assert done.stdout.splitlines() == [
            "251 runs match (status QUEUED or RUNNING or WAITING, created since 1h ago)",
            "cancelled 251 runs",
        ]
        progress = done.stderr.splitlines()
        assert [line.split()[1] for line in progress] == ["100/251", "200/251", "251/251"]
        gate.set()
    assert set(statuses([*queued, *running, waiting])) == {"CANCELLED"}


def test_bulk_retry_of_failed_runs(cli: Cli, app: durably.App) -> None:
    broken = {"yes": True}

    @app.task(name="fragile")
    def fragile(n: int) -> int:
        if broken["yes"]:
            raise RuntimeError("dependency down")
        return n

    @app.task(name="other")
    def other() -> None:
        raise RuntimeError("stays failed")

    with app.worker(slots=4):
        handles = fragile.enqueue_many([(n,) for n in range(3)])
        bystander = other.enqueue()
        for h in [*handles, bystander]:
            with pytest.raises(durably.RunFailed):
                h.result(timeout=10)
        broken["yes"] = False
        wrong = cli("runs", "retry", "--task", "fragile", "--status", "QUEUED", "--yes")
        assert wrong.exit_code == 2
        assert "QUEUED: retry applies only to FAILED, CANCELLED runs" in wrong.stderr
        retried = cli("runs", "retry", "--task", "fragile", "--status", "failed", "--yes")
        assert retried.exit_code == 0, retried.output
        assert retried.stdout.splitlines() == [
            "3 runs match (status FAILED, task fragile)",
            "queued 3 runs again",
        ]
        assert [h.result(timeout=10) for h in handles] == [0, 1, 2]
    assert bystander.status() == "FAILED"


def test_bulk_actions_need_a_filter_or_an_id_not_both(cli: Cli, app: durably.App) -> None:
    @app.task(name="idle")
    def idle() -> None:
        pass

    handle = idle.enqueue()
    for verb in ("cancel", "retry"):
        bare = cli("runs", verb)
        assert bare.exit_code == 2
        assert f"a bulk {verb} of every run is refused" in bare.stderr
        both = cli("runs", verb, str(handle.id), "--task", "idle")
        assert both.exit_code == 2
        assert f"give a RUN_ID or filters to {verb} many runs, not both" in both.stderr
    assert handle.status() == "QUEUED"


# -- the console script, in a real process and in a terminal --------------------------------


def test_console_script_shows_a_run_and_draws_tables_and_progress_in_a_terminal(
    app: durably.App, database_url: str, schema: str
) -> None:
    @app.task(name="idle")
    def idle(n: int) -> None:
        pass

    handles = idle.enqueue_many([(n,) for n in range(3)])
    env = script_env(database_url, schema)
    shown = run_script("runs", "show", str(handles[0].id), "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["args"] == {"args": [0], "kwargs": {}}

    status, screen = run_in_terminal("runs", "list", env=env)
    assert status == 0, screen
    assert "─" * 20 in screen  # rich's rule under the header: a drawn table
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen)  # without colours and cursor moves
    assert re.search(r"ID\s+TASK\s+QUEUE\s+STATUS", plain)

    status, screen = run_in_terminal("runs", "cancel", "--task", "idle", "--yes", env=env)
    assert status == 0, screen
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen)
    assert "━" in plain and "3/3" in plain  # rich's progress bar, complete
    assert "cancelled 3 runs" in plain
    assert statuses(handles) == ["CANCELLED"] * 3

    declined = run_script("runs", "retry", "--task", "idle", env=env, input="n\n")
    assert declined.returncode == 1
    assert statuses(handles) == ["CANCELLED"] * 3
