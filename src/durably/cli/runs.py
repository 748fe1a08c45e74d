"""``durably runs``: list and act on runs, one by id or many by filter."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import click

from ..app import App
from ..console import Console
from ..records import DELAYED, ENDED, NOT_ENDED, RETRYABLE, Status
from .common import (
    RUN_ID,
    SEQ,
    database_options,
    friendly_errors,
    json_option,
    refuse,
    resolve_app,
)
from .filters import Moment, RunFilter, filter_options, run_filter
from .output import (
    Column,
    ProgressDisplay,
    col,
    fmt_due,
    fmt_seconds,
    fmt_time,
    plural,
    print_json,
    print_table,
)
from .show import missing, show_command

BULK_PAGE = 100  # runs read and acted on per round of a bulk action


@click.group()
def runs() -> None:
    """Inspect and act on runs."""


runs.add_command(show_command)


def _error(row: dict[str, Any]) -> str:
    if not row.get("error_type"):
        return ""
    return f"{row['error_type']}: {row.get('error_message') or ''}".rstrip(": ")


RUN_COLUMNS = [
    col("id", right=True),
    col("task"),
    col("queue"),
    col("status"),
    Column("ATTEMPTS", lambda r: str(r["attempt"]), right=True),
    Column("CREATED", lambda r: fmt_time(r["created_at"])),
    Column("DUE", lambda r: fmt_due(r["due_in_s"])),
    Column("TOOK", lambda r: fmt_seconds(r["duration_s"]) if r["started_at"] else "-", True),
    Column("ERROR", _error, wrap=True),
]


@runs.command("list")
@database_options
@filter_options
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option(
    "--before",
    "before_id",
    type=RUN_ID,
    default=None,
    help="Only runs older than this id: the next page (the command prints it).",
)
@json_option
@friendly_errors
def runs_list(
    app_spec: str | None,
    database_url: str | None,
    schema: str | None,
    statuses: tuple[str, ...],
    task: str | None,
    queue: str | None,
    since: Moment | None,
    until: Moment | None,
    limit: int,
    before_id: int | None,
    as_json: bool,
) -> None:
    """List runs, newest first, a page at a time."""
    app = resolve_app(app_spec, database_url, schema, migrate=True)
    chosen = run_filter(statuses, task, queue, since, until)
    rows = Console(app).runs_page(**chosen.query(), limit=limit + 1, before_id=before_id)
    page = rows[:limit]
    if as_json:
        print_json(page)
    else:
        print_table(page, RUN_COLUMNS)
    if len(rows) > limit:
        click.echo(f"next page: --before {page[-1]['id']}", err=True)


# -- actions ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Action:
    """An operator action: which statuses it applies to and how to say what it did."""

    name: str
    statuses: tuple[str, ...]
    done: str  # "run 42 <done>"
    rule: str  # why a run in another status is refused
    summary: str = ""  # what a bulk action did to "{runs}"

    def did(self, count: int) -> str:
        """What the bulk action did to ``count`` runs."""
        return self.summary.format(runs=plural(count, "run"))


ACTIONS = {
    "retry": Action(
        "retry",
        RETRYABLE,
        "queued again",
        "only a FAILED or CANCELLED run can be retried",
        "queued {runs} again",
    ),
    "replay": Action(
        "replay",
        ENDED,
        "replaying from scratch",
        "only a run that has ended (COMPLETED, FAILED or CANCELLED) can be replayed",
    ),
    "cancel": Action(
        "cancel",
        NOT_ENDED,
        "cancelled",
        "it has already ended, so there is nothing to cancel",
        "cancelled {runs}",
    ),
}


def _perform(app: App, name: str, run_id: int) -> bool:
    return {"retry": app.retry, "replay": app.replay, "cancel": app.cancel}[name](run_id)


def _what_now(name: str, run_id: int, status: str) -> str:
    """What an operator can do instead, after a refusal."""
    if status in NOT_ENDED:
        return f"wait for it to end, or cancel it first (durably runs cancel {run_id})"
    if name == "retry" and status == Status.COMPLETED:
        return f"to run it again from scratch: durably runs replay {run_id}"
    return f"to run it again: durably runs retry {run_id}"


def explain_refusal(app: App, name: str, run_id: int) -> str:
    """Why ``name`` did nothing to ``run_id``, and what to do instead (one line)."""
    detail = Console(app).run_detail(run_id)
    if detail is None:
        return missing(app, run_id)
    status = str(detail["status"])
    return f"run {run_id} is {status}: {ACTIONS[name].rule}; {_what_now(name, run_id, status)}"


def act_on_one(app: App, name: str, run_id: int) -> None:
    """Do ``name`` to one run, or refuse (exit 1) saying why."""
    if not _perform(app, name, run_id):
        refuse(explain_refusal(app, name, run_id))
    click.echo(f"run {run_id} {ACTIONS[name].done}")


def act(
    name: str, run_id: int | None, chosen: RunFilter, yes: bool, app_args: tuple[str | None, ...]
) -> None:
    """One run by id, or every run matching the filters (bulk)."""
    if run_id is not None and not chosen.empty:
        raise click.UsageError(f"give a RUN_ID or filters to {name} many runs, not both")
    if run_id is None and chosen.empty:
        raise click.UsageError(
            f"give a RUN_ID, or filters (--status, --task, --queue, --since, --until) to {name} "
            f"many runs at once: a bulk {name} of every run is refused"
        )
    app_spec, database_url, schema = app_args
    app = resolve_app(app_spec, database_url, schema, migrate=True)
    if run_id is not None:
        act_on_one(app, name, run_id)
    else:
        act_in_bulk(app, ACTIONS[name], chosen, yes)


# -- bulk ----------------------------------------------------------------------------------


def _applicable(action: Action, chosen: RunFilter) -> tuple[str, ...]:
    """The statuses to act on: the ones asked for, all of which the action must apply to."""
    # DELAYED runs are QUEUED ones: cancel takes them, retry does not.
    wrong = [
        s
        for s in chosen.statuses
        if s not in action.statuses and not (s == DELAYED and Status.QUEUED in action.statuses)
    ]
    if wrong:
        raise click.BadParameter(
            f"{' and '.join(wrong)}: {action.name} applies only to {', '.join(action.statuses)} "
            "runs; leave --status out to take all of those",
            param_hint="--status",
        )
    return chosen.statuses or action.statuses


def _confirmed(action: Action, count: int) -> bool:
    try:
        return click.confirm(f"{action.name.capitalize()} {plural(count, 'run')}?", default=False)
    except click.Abort:  # no answer at all: stdin closed
        click.echo("", err=True)
        return False


def act_in_bulk(app: App, action: Action, chosen: RunFilter, yes: bool) -> None:
    """Count the matching runs, ask, then act on them in pages, oldest first."""
    statuses = _applicable(action, chosen)
    query = chosen.query(statuses)
    found = Console(app).runs_count(**query)
    shown = RunFilter(statuses, chosen.task, chosen.queue, chosen.since, chosen.until).describe()
    if not found["runs"]:
        click.echo(f"no run matches ({shown}): nothing to {action.name}")
        return
    click.echo(f"{plural(found['runs'], 'run')} match ({shown})")
    if not yes and not _confirmed(action, found["runs"]):
        refuse(f"not confirmed, nothing was changed (answer y, or pass --yes to {action.name})")
    changed, seen = _bulk_pages(app, action, query, found)
    summary = action.did(changed)
    if seen > changed:
        summary += (
            f"; {seen - changed} had changed meanwhile (another {action.name}, a worker, or a "
            "parent's action reached them first)"
        )
    click.echo(summary)


def _bulk_pages(
    app: App, action: Action, query: dict[str, Any], found: dict[str, Any]
) -> tuple[int, int]:
    """Act on the matching runs from ``min_id`` to ``max_id``, a page at a time, oldest first
    (so a parent is cancelled or retried before its children); returns (changed, seen)."""
    cursor, last = int(found["min_id"]) - 1, int(found["max_id"])
    changed = seen = 0
    with ProgressDisplay(f"{action.name}", int(found["runs"])) as progress:
        try:
            while cursor < last:
                page = Console(app).runs_page(**query, after_id=cursor, limit=BULK_PAGE, preview=0)
                ids = sorted(r["id"] for r in page if r["id"] <= last)
                if not ids:
                    break
                changed += sum(_perform(app, action.name, run_id) for run_id in ids)
                seen += len(ids)
                cursor = ids[-1]
                progress.advance(len(ids), f"(up to run {cursor})")
        except KeyboardInterrupt:
            click.echo(
                f"interrupted: {action.did(changed)}; the others are unchanged",
                err=True,
            )
            sys.exit(1)
    return changed, seen


def _bulk_command(name: str, doc: str) -> click.Command:
    @click.argument("run_id", type=int, required=False)
    @database_options
    @filter_options
    @click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation (bulk only).")
    @friendly_errors
    def command(
        run_id: int | None,
        app_spec: str | None,
        database_url: str | None,
        schema: str | None,
        statuses: tuple[str, ...],
        task: str | None,
        queue: str | None,
        since: Moment | None,
        until: Moment | None,
        yes: bool,
    ) -> None:
        chosen = run_filter(statuses, task, queue, since, until)
        act(name, run_id, chosen, yes, (app_spec, database_url, schema))

    command.__doc__ = doc
    return click.command(name)(command)


runs.add_command(
    _bulk_command(
        "retry",
        "Queue a FAILED or CANCELLED run again, keeping its event log (a durable run resumes "
        "after its last checkpoint). With filters instead of RUN_ID: every failed or cancelled "
        "run that matches, after confirmation.",
    )
)
runs.add_command(
    _bulk_command(
        "cancel",
        "Cancel a run that has not ended, and every unfinished run below it. With filters "
        "instead of RUN_ID: every queued, running or waiting run that matches, after "
        "confirmation.",
    )
)


@runs.command("replay")
@click.argument("run_id", type=int)
@database_options
@friendly_errors
def runs_replay(
    run_id: int, app_spec: str | None, database_url: str | None, schema: str | None
) -> None:
    """Run an ended run again from scratch (its event log is archived, kept for audit)."""
    act_on_one(resolve_app(app_spec, database_url, schema, migrate=True), "replay", run_id)


@runs.command("fork")
@click.argument("run_id", type=int)
@click.option(
    "--at-event",
    type=SEQ,
    required=True,
    help="Copy events 0 to N-1 of the log; the new run executes live from event N.",
)
@database_options
@friendly_errors
def runs_fork(
    run_id: int, at_event: int, app_spec: str | None, database_url: str | None, schema: str | None
) -> None:
    """Start a new run of a durable run's task and input whose event log begins with the first
    N events of RUN_ID's; RUN_ID itself is untouched."""
    app = resolve_app(app_spec, database_url, schema, migrate=True)
    detail = Console(app).run_detail(run_id)
    if detail is None:
        refuse(missing(app, run_id))
    if not detail["durable"]:
        refuse(f"run {run_id} ({detail['task']}) is not a durable run: it has no event log to fork")
    if at_event > detail["events"]:
        refuse(
            f"run {run_id} has {detail['events']} event(s): give --at-event from 0 to "
            f"{detail['events']} (durably runs show {run_id} lists them)"
        )
    forked = app.fork(run_id, at_event)
    click.echo(f"forked run {run_id} at event {at_event} as run {forked.id}")
