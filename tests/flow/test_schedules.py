"""Schedules against the real PostgreSQL: one run per tick with several worker processes racing
for it, catch-up after downtime per policy, pause and resume, declared crons across worker
starts, the CLI, and one-line errors for bad input."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import psycopg
import pytest

import durably
from durably.cron import iso_utc, zone
from durably.schedules import CATCH_UP, fire_time
from tests.apps import cron_app
from tests.cli_support import Cli, cli  # noqa: F401 (fixture)
from tests.helpers import WorkerProcess, wait_until

SECOND = timedelta(seconds=1)


def db_now(db: psycopg.Connection[Any]) -> datetime:
    row = db.execute("SELECT now()").fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def fired(db: psycopg.Connection[Any], schema: str, name: str) -> list[tuple[datetime, datetime]]:
    """(fire time, created_at) of each run schedule ``name`` enqueued, by fire time."""
    rows = db.execute(
        f'SELECT idempotency_key, created_at FROM "{schema}".runs WHERE idempotency_key LIKE %s',
        (f"schedule:{name}:%",),
    ).fetchall()
    found = [(fire_time(key), at) for key, at in rows]
    return sorted((t, at) for t, at in found if t is not None)


def times(db: psycopg.Connection[Any], schema: str, name: str) -> list[datetime]:
    return [t for t, _ in fired(db, schema, name)]


def consecutive(ticks: list[datetime], step: timedelta = SECOND) -> bool:
    return all(b - a == step for a, b in pairwise(ticks))


@pytest.fixture
def noop(app: durably.App) -> durably.Task[..., Any]:
    """The client side of tests/apps/cron_app.py's ``noop`` task."""
    return app.task(name="noop")(cron_app.noop.fn)


# -- exactly once per tick ----------------------------------------------------------------------


def test_a_cron_fires_exactly_once_per_tick_with_three_workers(
    database_url: str, schema: str, db: psycopg.Connection[Any]
) -> None:
    env = {"DURABLY_TEST_CRON": "* * * * * *"}  # every second, declared by @app.task(cron=)
    with ExitStack() as stack:
        workers = [
            stack.enter_context(WorkerProcess(database_url, schema, "cron_app", env=env))
            for _ in range(3)
        ]
        for worker in workers:
            worker.wait_for_line("serving queues")
        started = db_now(db)
        wait_until(
            lambda: len([t for t in times(db, schema, "tick") if t > started]) >= 7,
            timeout=30,
            what="7 ticks fired with three workers running",
        )
        for worker in workers:
            worker.kill()
    runs = fired(db, schema, "tick")
    ticks = [t for t, _ in runs]
    assert len(ticks) == len(set(ticks)) >= 7  # one run per fire time
    assert consecutive(ticks), ticks  # no gaps
    total = db.execute(f"SELECT count(*) FROM \"{schema}\".runs WHERE task = 'tick'").fetchone()
    assert total == (len(ticks),)  # no run without its tick's key
    # Each tick was moved on by exactly one worker: the others matched nothing and wrote nothing.
    # (A worker killed between its commit and its log line may not have logged the last one.)
    logged = [
        t for w in workers for t in re.findall(r"schedule 'tick' fired tick (\S+):", w.output())
    ]
    assert len(logged) == len(set(logged))
    assert {iso_utc(t) for t in ticks[:-1]} <= set(logged)
    assert max(at - t for t, at in runs) < 3 * SECOND  # enqueued about when due


# -- catch-up after downtime --------------------------------------------------------------------


def test_ticks_missed_while_no_worker_ran_follow_the_catch_up_policy(
    database_url: str,
    schema: str,
    db: psycopg.Connection[Any],
    app: durably.App,
    noop: durably.Task[..., Any],
) -> None:
    made = {p: app.schedule(noop, "* * * * * *", (p,), name=p, catch_up=p) for p in CATCH_UP}
    first = {p: s.next_fire_at for p, s in made.items()}
    # Downtime: no worker runs while at least three ticks of each schedule come due.
    last_first = max(t for t in first.values() if t is not None)
    wait_until(lambda: db_now(db) >= last_first + 2.5 * SECOND, what="three missed ticks")
    assert all(times(db, schema, p) == [] for p in CATCH_UP)
    with WorkerProcess(database_url, schema, "cron_app") as worker:
        worker.wait_for_line("serving queues")
        restarted = db_now(db)
        wait_until(
            lambda: all([t for t in times(db, schema, p) if t > restarted][2:] for p in CATCH_UP),
            timeout=20,
            what="three ticks fired after the restart",
        )
    row = db.execute(f'SELECT started_at FROM "{schema}".workers').fetchone()
    assert row is not None
    started = row[0]
    for policy in CATCH_UP:
        ticks = times(db, schema, policy)
        assert consecutive(ticks), (policy, ticks)  # no gap once a worker runs
    # all: every missed tick has its run, from the first one due.
    assert times(db, schema, "all")[0] == first["all"]
    # latest: one run for the missed ticks, the most recent one due at the worker's first pass.
    (fire_time, created), *_ = fired(db, schema, "latest")
    first_latest = first["latest"]
    assert first_latest is not None
    assert fire_time >= first_latest + 2 * SECOND  # at least two ticks skipped
    assert fire_time <= created < fire_time + SECOND
    assert len([t for t in times(db, schema, "latest") if t < started]) <= 1
    # none: no run for any tick due before the worker started; it resumed from the next one.
    assert times(db, schema, "none")[0] > started


def test_catch_up_policies_after_years_of_downtime(
    app: durably.App, schema: str, db: psycopg.Connection[Any]
) -> None:
    @app.task(name="new_year")
    def new_year() -> None:
        pass

    for policy in CATCH_UP:
        app.schedule(new_year, "0 0 1 1 *", name=f"y-{policy}", catch_up=policy)
    # As if no worker had run since before the last three New Year's Days.
    year = db_now(db).year
    db.execute(
        f'UPDATE "{schema}".schedules SET next_fire_at = %s',
        (datetime(year - 2, 1, 1, tzinfo=UTC),),
    )
    with app.worker():
        wait_until(
            lambda: all((s.next_fire_at or datetime.min.replace(tzinfo=UTC)).year == year + 1
                        for s in app.schedules()),
            what="every schedule moved on to next year",
        )  # fmt: skip
    new_years = [datetime(y, 1, 1, tzinfo=UTC) for y in (year - 2, year - 1, year)]
    assert times(db, schema, "y-all") == new_years
    assert times(db, schema, "y-latest") == new_years[-1:]
    # Months late, so not on time: "none" enqueues nothing and waits for the next one.
    assert times(db, schema, "y-none") == []
    listed = {s.name: s for s in app.schedules()}
    assert listed["y-latest"].last_fired_at == new_years[-1]
    assert listed["y-none"].last_fired_at is None


# -- pause, resume, delete, list ----------------------------------------------------------------


def test_pause_stops_firing_and_resume_fires_from_the_next_tick(
    app: durably.App, schema: str, db: psycopg.Connection[Any], noop: durably.Task[..., Any]
) -> None:
    schedule = app.schedule(noop, "* * * * * *", ("p",), name="pulse")
    with app.worker():
        wait_until(lambda: len(times(db, schema, "pulse")) >= 2, what="two ticks")
        paused = schedule.pause()
        assert paused.paused and paused.next_fire_at is None
        paused_at = db_now(db)
        wait_until(lambda: db_now(db) >= paused_at + 2.5 * SECOND, what="two ticks paused")
        assert all(t <= paused_at for t in times(db, schema, "pulse"))  # nothing fired
        resumed = app.resume_schedule("pulse")
        resumed_at = db_now(db)
        assert not resumed.paused and resumed.next_fire_at is not None
        assert resumed_at - SECOND < resumed.next_fire_at <= resumed_at + SECOND
        wait_until(
            lambda: times(db, schema, "pulse")[-1] > resumed.next_fire_at,  # type: ignore[operator]
            what="ticks after the resume",
        )
    ticks = times(db, schema, "pulse")
    after = [t for t in ticks if t > paused_at]
    # The paused time is not caught up: the first tick after the pause is the resumed one.
    assert after[0] == resumed.next_fire_at and consecutive(after)
    again = app.resume_schedule("pulse")  # already active: left as it is
    assert not again.paused and again.updated_at == resumed.updated_at


def test_list_update_and_delete(app: durably.App, noop: durably.Task[..., Any]) -> None:
    assert app.schedules() == []
    nightly = app.schedule(noop, "0 3 * * *", name="nightly", timezone="Europe/Paris")
    hourly = app.schedule("noop", "@hourly", kwargs={"label": "h"}, catch_up="all")
    assert hourly.name.startswith("noop:")  # the task's name and a digest of its arguments
    assert [s.name for s in app.schedules()] == sorted(["nightly", hourly.name])
    assert nightly.next_fire_at is not None
    local = nightly.next_fire_at.astimezone(zone("Europe/Paris"))
    assert (local.hour, local.minute) == (3, 0)
    assert (hourly.kwargs, hourly.args, hourly.catch_up) == ({"label": "h"}, [], "all")
    # The same task and arguments again: the same schedule, updated.
    again = app.schedule("noop", "*/30 * * * *", kwargs={"label": "h"})
    assert again.name == hourly.name and again.cron == "*/30 * * * *"
    assert again.created_at == hourly.created_at
    # Unchanged cron: the next tick is kept; a changed cron moves it.
    kept = app.schedule(noop, "0 3 * * *", ("other",), name="nightly", timezone="Europe/Paris")
    assert (kept.next_fire_at, kept.args) == (nightly.next_fire_at, ["other"])
    moved = app.schedule(noop, "0 4 * * *", name="nightly", timezone="Europe/Paris")
    assert moved.next_fire_at != nightly.next_fire_at
    # A paused schedule stays paused when updated.
    app.pause_schedule("nightly")
    assert app.schedule(noop, "0 5 * * *", name="nightly").paused
    got = app.get_schedule("nightly")
    assert got is not None and got.paused and got.next_fire_at is None
    assert app.delete_schedule("nightly") is True
    assert app.delete_schedule("nightly") is False
    assert app.get_schedule("nightly") is None
    assert again.delete() is True and app.schedules() == []


def test_schedules_cli(cli: Cli, app: durably.App, noop: durably.Task[..., Any]) -> None:  # noqa: F811
    assert cli("schedules", "list").stdout.strip() == "(none)"
    app.schedule(noop, "*/5 * * * *", ("x",), name="five")
    listed = cli("schedules", "list", "--json")
    assert listed.exit_code == 0, listed.output
    (row,) = json.loads(listed.stdout)
    assert (row["name"], row["task"], row["cron"], row["args"]) == (
        "five",
        "noop",
        "*/5 * * * *",
        ["x"],
    )
    assert (row["paused"], row["catch_up"], row["declared"]) == (False, "latest", False)
    datetime.fromisoformat(row["next_fire_at"])
    table = cli("schedules", "list").stdout.splitlines()
    assert table[0].split()[:4] == ["NAME", "TASK", "CRON", "TZ"]
    assert table[1].split()[:2] == ["five", "noop"] and "active" in table[1]

    paused = cli("schedules", "pause", "five")
    assert (paused.exit_code, paused.stdout.strip()) == (0, "schedule 'five' paused")
    assert "paused" in cli("schedules", "list").stdout
    resumed = cli("schedules", "resume", "five")
    assert resumed.exit_code == 0 and "schedule 'five' resumed: next tick" in resumed.stdout
    deleted = cli("schedules", "delete", "five")
    assert (deleted.exit_code, deleted.stdout.strip()) == (0, "schedule 'five' deleted")
    for action in ("pause", "resume", "delete"):
        refused = cli("schedules", action, "five")
        assert refused.exit_code == 1
        assert refused.stderr.startswith("refused: no schedule named 'five'")


# -- declared with cron= ----------------------------------------------------------------------


def test_a_durable_task_on_a_cron(
    app: durably.App, schema: str, db: psycopg.Connection[Any]
) -> None:
    @app.durable_task(name="report", cron="* * * * * *")
    async def report(ctx: durably.DurableContext, region: str = "eu") -> str:
        stamp = await ctx.now()
        return f"{region} {stamp.year}"

    with app.worker():
        done = wait_until(
            lambda: [r for r in app.list_runs(task="report") if r.status == "COMPLETED"],
            what="a completed run of the durable cron task",
        )
    assert done[0].result.startswith("eu ")
    assert done[0].idempotency_key is not None
    assert done[0].idempotency_key.startswith("schedule:report:")
    (declared,) = app.schedules()
    assert (declared.name, declared.declared, declared.task) == ("report", True, "report")


def test_declared_schedules_follow_the_code_across_worker_starts(
    make_app: Callable[..., durably.App], schema: str, db: psycopg.Connection[Any]
) -> None:
    def worker_pass(app: durably.App, noop: durably.Task[..., Any]) -> None:
        """Run a worker until its scheduler has declared and fired (a 'probe' schedule)."""
        app.schedule(noop, "* * * * * *", name="probe")
        with app.worker():
            start = db_now(db)
            wait_until(lambda: times(db, schema, "probe")[-1:] > [start], what="a probe tick")

    def nightly_next() -> datetime | None:
        row = db.execute(
            f"SELECT next_fire_at FROM \"{schema}\".schedules WHERE name = 'nightly'"
        ).fetchone()
        return None if row is None else row[0]

    first = make_app()
    first.task(name="nightly", cron="0 3 * * *")(lambda: None)
    worker_pass(first, first.task(name="noop")(cron_app.noop.fn))
    declared = first.get_schedule("nightly")
    assert declared is not None and declared.declared and declared.cron == "0 3 * * *"
    # A worker starting with the same code keeps the schedule's next tick: it may be overdue,
    # and the catch-up policy (not a restart) decides what happens to it.
    marker = datetime(2100, 1, 1, tzinfo=UTC)
    db.execute(
        f"UPDATE \"{schema}\".schedules SET next_fire_at = %s WHERE name = 'nightly'", (marker,)
    )
    worker_pass(first, first.registry["noop"])
    assert nightly_next() == marker
    # app.schedule leaves a declared schedule to the code.
    with pytest.raises(ValueError, match=r"is declared by @app\.task"):
        first.schedule("noop", "* * * * *", name="nightly")

    changed = make_app()
    changed.task(name="nightly", cron="0 4 * * *")(lambda: None)
    worker_pass(changed, changed.task(name="noop")(cron_app.noop.fn))
    moved = nightly_next()
    assert moved is not None and moved != marker and (moved.hour, moved.minute) == (4, 0)

    removed = make_app()
    removed.task(name="nightly")(lambda: None)  # cron= taken away
    worker_pass(removed, removed.task(name="noop")(cron_app.noop.fn))
    assert nightly_next() is None


# -- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cron", "expected"),
    [
        ("* * *", r"has 3 fields: give 5 .* or 6 \(seconds first\), e.g. '\*/5 \* \* \* \*'"),
        ("61 * * * *", "minute value 61 is out of range 0-59"),
        ("* * * * * * *", "has 7 fields"),
        ("0 0 30 feb *", "never fires"),
        ("@sometimes", "unknown shorthand"),
    ],
)
def test_a_bad_cron_is_refused_in_one_line(
    app: durably.App, noop: durably.Task[..., Any], cron: str, expected: str
) -> None:
    with pytest.raises(ValueError, match=expected) as raised:
        app.schedule(noop, cron)
    assert "\n" not in str(raised.value)
    with pytest.raises(ValueError, match=expected):
        app.task(name="bad_cron", cron=cron)(lambda: None)


def test_bad_schedule_input_is_refused_in_one_line(
    app: durably.App, noop: durably.Task[..., Any]
) -> None:
    with pytest.raises(ValueError, match="timezone 'Mars/Olympus' is not known: pass an IANA"):
        app.schedule(noop, "* * * * *", timezone="Mars/Olympus")
    with pytest.raises(ValueError, match="catch_up='sometimes' is not valid: pass 'latest'"):
        app.schedule(noop, "* * * * *", catch_up="sometimes")
    with pytest.raises(durably.UnknownTask, match="no task named 'nope'"):
        app.schedule("nope", "* * * * *")
    with pytest.raises(TypeError, match="noop"):
        app.schedule(noop, "* * * * *", ("a", "b"))
    with pytest.raises(durably.NotSerializable, match="argument 1"):
        app.schedule(noop, "* * * * *", (object(),))
    with pytest.raises(durably.UnknownSchedule, match="no schedule named 'nope'"):
        app.pause_schedule("nope")
    with pytest.raises(durably.UnknownSchedule, match="no schedule named 'nope'"):
        app.resume_schedule("nope")
    assert app.delete_schedule("nope") is False


def test_bad_cron_task_options_are_refused_at_registration(app: durably.App) -> None:
    with pytest.raises(ValueError, match=r"task 'charge' cannot take cron=: .* \(order_id\)"):
        app.task(name="charge", cron="* * * * *")(lambda order_id: None)
    with pytest.raises(ValueError, match=r"cannot take cron=: .* \(order_id\)"):

        @app.durable_task(name="flow", cron="* * * * *")
        def flow(ctx: durably.SyncDurableContext, order_id: str) -> None: ...

    with pytest.raises(ValueError, match="only apply with cron="):
        app.task(name="tz", timezone="UTC")(lambda: None)
    with pytest.raises(ValueError, match="timezone 'Nowhere' is not known"):
        app.task(name="tz", cron="@daily", timezone="Nowhere")(lambda: None)
    with pytest.raises(ValueError, match="catch_up='often' is not valid"):
        app.task(name="cu", cron="@daily", catch_up="often")(lambda: None)
    assert app.registry == {}
