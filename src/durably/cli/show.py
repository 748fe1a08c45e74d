"""``durably runs show``: one run in full, its children and its event log, paged."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import click

from ..app import App
from ..console import Console
from ..records import Status
from .common import (
    RUN_ID_OR_ZERO,
    SEQ,
    database_options,
    friendly_errors,
    json_option,
    refuse,
    resolve_app,
)
from .output import (
    Column,
    col,
    fmt_due,
    fmt_seconds,
    fmt_time,
    fmt_value,
    print_fields,
    print_json,
    print_table,
)

SHOW_LIMIT = 65536  # characters of one payload shown as text; --json shows all of it
COMPACT = 120  # payloads up to this long stay on their field's line


def missing(app: App, run_id: int) -> str:
    """The refusal for an unknown run id."""
    return f"run {run_id} does not exist in schema {app.schema!r}: durably runs list shows its runs"


@click.command("show")
@click.argument("run_id", type=int)
@database_options
@click.option(
    "--events-from",
    type=SEQ,
    default=0,
    show_default=True,
    help="First event (sequence number) of the log to show.",
)
@click.option(
    "--events-limit",
    type=click.IntRange(1, 10_000),
    default=100,
    show_default=True,
    help="Events of the log to show.",
)
@click.option(
    "--children-after",
    type=RUN_ID_OR_ZERO,
    default=0,
    help="Show the children after this run id (the next page).",
)
@click.option(
    "--children-limit",
    type=click.IntRange(1, 1000),
    default=50,
    show_default=True,
    help="Children to show.",
)
@click.option(
    "--event",
    "event_seq",
    type=SEQ,
    default=None,
    help="Show this one event of the log in full (input, result, error).",
)
@json_option
@friendly_errors
def show_command(
    run_id: int,
    app_spec: str | None,
    database_url: str | None,
    schema: str | None,
    events_from: int,
    events_limit: int,
    children_after: int,
    children_limit: int,
    event_seq: int | None,
    as_json: bool,
) -> None:
    """Show one run: input, output or error with its traceback, attempts, parent and children,
    and its event log (each event's kind, name, key, result and times)."""
    app = resolve_app(app_spec, database_url, schema, migrate=True)
    detail = Console(app).run_detail(run_id)
    if detail is None:
        refuse(missing(app, run_id))
    if event_seq is not None:
        show_event(app, detail, event_seq, as_json)
        return
    events = Console(app).events_page(run_id, events_from, events_limit + 1)
    children = Console(app).children_page(run_id, children_after, children_limit + 1)
    shown = Shown(detail, events[:events_limit], children[:children_limit])
    shown.next_events = events[-1]["seq"] if len(events) > events_limit else None
    shown.next_children = children[-2]["id"] if len(children) > children_limit else None
    if as_json:
        print_json(shown.as_json())
    else:
        shown.print()


class Shown:
    """A run, one page of its children and one page of its event log."""

    def __init__(
        self, run: dict[str, Any], events: list[dict[str, Any]], children: list[dict[str, Any]]
    ) -> None:
        self.run = run
        self.events = events
        self.children = children
        self.next_events: int | None = None
        self.next_children: int | None = None

    def as_json(self) -> dict[str, Any]:
        """The run's columns, its counts, and the pages, with the keys of the next pages."""
        counts = {"events": "event_count", "children": "child_count"}
        out = {counts.get(k, k): v for k, v in self.run.items() if k != "db_now"}
        out["archived_event_count"] = out.pop("archived_events")
        return {
            **out,
            "children": self.children,
            "next_children_after": self.next_children,
            "event_log": self.events,
            "next_events_from": self.next_events,
        }

    def print(self) -> None:
        """The run as ``name: value`` lines, then its payloads, children and event log."""
        print_fields(run_fields(self.run))
        print_payloads(self.run)
        if self.children or self.run["children"]:
            click.echo(f"\nchildren ({self.run['children']}):")
            print_table(self.children, CHILD_COLUMNS)
            if self.next_children is not None:
                click.echo(f"more children: --children-after {self.next_children}")
        if self.run["durable"] or self.events:
            click.echo(f"\n{self._log_title()}:")
            print_table(self.events, EVENT_COLUMNS, empty="(no events yet)")
            if self.next_events is not None:
                click.echo(f"more events: --events-from {self.next_events}")

    def _log_title(self) -> str:
        total, archived = self.run["events"], self.run["archived_events"]
        title = f"event log ({total} event{'s' if total != 1 else ''}"
        if self.events and len(self.events) < total:
            title += f", showing {self.events[0]['seq']}-{self.events[-1]['seq']}"
        if archived:
            title += f"; {archived} more archived by replays"
        return title + ")"


def _took(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return "-"
    return fmt_seconds((end - start).total_seconds())


def _waiting_for(run: dict[str, Any]) -> str | None:
    if run["status"] != Status.WAITING:
        return None
    waits = []
    if run["wait_children"]:
        waits.append("children " + ", ".join(str(c) for c in run["wait_children"]))
    if run["wait_event"] is not None:
        waits.append(f"event {run['wait_event']!r}")
    if run["wake_at"] is not None:
        waits.append(f"a timer until {fmt_time(run['wake_at'])}")
    return " or ".join(waits) or "-"


def _due(run: dict[str, Any]) -> str:
    """When a QUEUED run is (or was) due, and how far from now that is (database clock)."""
    when = fmt_time(run["run_at"], ms=True)
    if run["due_in_s"] is not None:
        return f"{when} (due {fmt_due(run['due_in_s'])})"
    return f"{when} (due {fmt_seconds((run['db_now'] - run['run_at']).total_seconds())} ago)"


def run_fields(run: dict[str, Any]) -> list[tuple[str, str]]:
    """The run's summary, one ``name: value`` line each."""
    delayed = " (delayed)" if run["due_in_s"] is not None else ""
    fields = [
        ("id", str(run["id"])),
        ("task", run["task"]),
        ("durable", fmt_value(run["durable"])),
        ("queue", run["queue"]),
        ("status", run["status"] + delayed),
        ("priority", str(run["priority"])),
        ("attempts", str(run["attempt"])),
        ("failures", f"{run['failures']} (retries allowed: {run['max_retries']})"),
        ("recoveries", f"{run['recoveries']} (of at most {run['max_recoveries']})"),
        ("worker", fmt_value(run["worker_id"])),
        ("idempotency_key", fmt_value(run["idempotency_key"])),
    ]
    # Flow-control keys only when set: most runs have none, and "-" twice would be noise.
    fields += [(k, run[k]) for k in ("concurrency_key", "fairness_key") if run[k] is not None]
    if run["parent_id"] is not None:
        fields.append(("parent", f"run {run['parent_id']} (its event {run['parent_seq']})"))
    waiting = _waiting_for(run)
    if waiting is not None:
        fields.append(("waiting for", waiting))
    end = run["finished_at"] or (run["db_now"] if run["started_at"] else None)
    fields += [
        ("created_at", fmt_time(run["created_at"], ms=True)),
        *([("run_at", _due(run))] if run["status"] == Status.QUEUED else []),
        ("started_at", fmt_time(run["started_at"], ms=True)),
        ("finished_at", fmt_time(run["finished_at"], ms=True)),
        ("took", _took(run["started_at"], end)),
    ]
    return fields


def payload_text(value: Any) -> str:
    """A JSON payload as text: on one line when short, else indented; cut at SHOW_LIMIT."""
    text = json.dumps(value, ensure_ascii=False)
    if len(text) > COMPACT:
        text = json.dumps(value, ensure_ascii=False, indent=2)
    if len(text) > SHOW_LIMIT:
        text = text[:SHOW_LIMIT] + f"\n... ({len(text)} characters; --json shows all of it)"
    return text


def _print_payload(name: str, value: Any) -> None:
    text = payload_text(value)
    click.echo(f"{name}: {text}" if "\n" not in text else f"{name}:\n{text}")


def print_error(error: dict[str, Any]) -> None:
    """``error: Type: message``, then the remote traceback."""
    click.echo(f"error: {error.get('type')}: {error.get('message')}")
    if error.get("traceback"):
        click.echo(str(error["traceback"]).rstrip())


def print_payloads(run: dict[str, Any]) -> None:
    """The run's input, then its output or its error."""
    _print_payload("input", run["args"])
    if run["status"] == Status.COMPLETED:
        _print_payload("output", run["result"])
    if run["error"]:
        print_error(run["error"])


def _event_result(e: dict[str, Any]) -> str:
    parts = []
    if e["child_id"] is not None:
        parts.append(f"run {e['child_id']} ({e['child_status'] or 'gone'})")
    if e["event_id"] is not None:
        parts.append(f"event {e['event_id']}")
    if e["error_type"]:
        parts.append(f"{e['error_type']}: {e['error_message'] or ''}")
    elif not e["done"]:
        until = f" until {fmt_time(e['wake_at'])}" if e["wake_at"] else ""
        parts.append(f"pending{until}")
    elif e["result_preview"] is not None:
        parts.append(e["result_preview"])
    return " ".join(parts)


CHILD_COLUMNS = [
    col("id", right=True),
    col("task"),
    col("status"),
    Column("EVENT", lambda c: fmt_value(c["parent_seq"]), right=True),
    Column("ATTEMPTS", lambda c: str(c["attempt"]), right=True),
    Column("CREATED", lambda c: fmt_time(c["created_at"])),
    Column("FINISHED", lambda c: fmt_time(c["finished_at"])),
    col("error_type", "ERROR", wrap=True),
]

EVENT_COLUMNS = [
    col("seq", right=True),
    col("kind"),
    col("name"),
    Column("KEY", lambda e: str(e["key"])[:12]),
    Column("RESULT", _event_result, wrap=True),
    Column("RECORDED", lambda e: fmt_time(e["created_at"], ms=True)),
    Column("COMPLETED", lambda e: fmt_time(e["completed_at"], ms=True)),
    Column("TOOK", lambda e: _took(e["created_at"], e["completed_at"]), right=True),
]


def show_event(app: App, run: dict[str, Any], seq: int, as_json: bool) -> None:
    """One entry of the run's event log in full."""
    event = Console(app).event_detail(run["id"], seq)
    if event is None:
        refuse(
            f"run {run['id']} has no event {seq}: it has {run['events']} event(s), numbered from 0"
        )
    if as_json:
        print_json(event)
        return
    skip = ("input", "result", "error", "created_at", "completed_at", "wake_at")
    fields = [(k, fmt_value(v)) for k, v in event.items() if k not in skip]
    fields += [
        ("wake_at", fmt_time(event["wake_at"], ms=True)),
        ("created_at", fmt_time(event["created_at"], ms=True)),
        ("completed_at", fmt_time(event["completed_at"], ms=True)),
        ("took", _took(event["created_at"], event["completed_at"])),
    ]
    print_fields(fields)
    _print_payload("input", event["input"])
    if event["error"]:
        print_error(event["error"])
    elif event["done"]:
        _print_payload("result", event["result"])
