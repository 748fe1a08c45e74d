"""``durably schedules``: list, pause, resume and delete schedules (docs/scheduling.md)."""

from __future__ import annotations

import json
from typing import Any

import click

from ..app import App
from ..errors import UnknownSchedule
from .common import TEXT, database_options, friendly_errors, json_option, refuse, resolve_app
from .output import Column, col, fmt_time, print_json, print_table


def _state(row: dict[str, Any]) -> str:
    return "paused" if row["paused"] else "active"


def _arguments(row: dict[str, Any]) -> str:
    """The run's arguments as a call would show them, values in JSON: ``"eu", days=7``."""
    parts = [json.dumps(a) for a in row["args"]]
    parts += [f"{k}={json.dumps(v)}" for k, v in row["kwargs"].items()]
    return ", ".join(parts) or "-"


SCHEDULE_COLUMNS = [
    col("name", wrap=True),
    col("task", wrap=True),
    col("cron"),
    col("timezone", "TZ"),
    Column("ARGS", _arguments, wrap=True),
    col("catch_up", "CATCH-UP"),
    Column("STATE", _state),
    Column("NEXT", lambda r: fmt_time(r["next_fire_at"])),
    Column("LAST FIRED", lambda r: fmt_time(r["last_fired_at"])),
    col("last_run_id", "LAST RUN", right=True),
]


@click.group()
def schedules() -> None:
    """Tasks enqueued on a cron: list, pause, resume, delete."""


@schedules.command("list")
@database_options
@json_option
@friendly_errors
def schedules_list(
    app_spec: str | None, database_url: str | None, schema: str | None, as_json: bool
) -> None:
    """Every schedule: its task, cron and time zone, arguments, catch-up policy, whether it is
    paused, its next tick and the last tick it enqueued (times in UTC)."""
    app = resolve_app(app_spec, database_url, schema, migrate=True)
    rows = [s.as_dict() for s in app.schedules()]
    if as_json:
        print_json(rows)
    else:
        print_table(rows, SCHEDULE_COLUMNS)


def _unknown(app: App, name: str) -> str:
    return f"no schedule named {name!r} in schema {app.schema!r}: durably schedules list shows them"


@schedules.command("pause")
@click.argument("name", type=TEXT)
@database_options
@friendly_errors
def schedules_pause(
    name: str, app_spec: str | None, database_url: str | None, schema: str | None
) -> None:
    """Stop firing schedule NAME until it is resumed."""
    app = resolve_app(app_spec, database_url, schema, migrate=True)
    try:
        app.pause_schedule(name)
    except UnknownSchedule:
        refuse(_unknown(app, name))
    click.echo(f"schedule {name!r} paused")


@schedules.command("resume")
@click.argument("name", type=TEXT)
@database_options
@friendly_errors
def schedules_resume(
    name: str, app_spec: str | None, database_url: str | None, schema: str | None
) -> None:
    """Fire schedule NAME again from its next tick (the paused time is not caught up)."""
    app = resolve_app(app_spec, database_url, schema, migrate=True)
    try:
        resumed = app.resume_schedule(name)
    except UnknownSchedule:
        refuse(_unknown(app, name))
    click.echo(f"schedule {name!r} resumed: next tick {fmt_time(resumed.next_fire_at)} UTC")


@schedules.command("delete")
@click.argument("name", type=TEXT)
@database_options
@friendly_errors
def schedules_delete(
    name: str, app_spec: str | None, database_url: str | None, schema: str | None
) -> None:
    """Delete schedule NAME (the runs it enqueued stay). A schedule declared with cron= comes
    back when a worker starts: remove cron= from the task instead."""
    app = resolve_app(app_spec, database_url, schema, migrate=True)
    if not app.delete_schedule(name):
        refuse(_unknown(app, name))
    click.echo(f"schedule {name!r} deleted")
