"""The ``durably`` command line."""

from __future__ import annotations

import functools
import importlib
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from .app import App
from .errors import ConfigurationError, DurablyError
from .store import LATEST_VERSION, MIGRATIONS

F = TypeVar("F", bound=Callable[..., Any])


def load_app(spec: str) -> App:
    """Import ``module:attribute`` and return the App it names."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise click.UsageError(
            f"APP must look like module:attribute (e.g. myapp:app), not {spec!r}"
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.UsageError(f"cannot import {module_name!r} for APP {spec!r}: {exc}") from None
    app = getattr(module, attr, None)
    if not isinstance(app, App):
        raise click.UsageError(f"{spec!r} is not a durably.App (found {type(app).__name__})")
    return app


def friendly_errors(fn: F) -> F:
    """Print durably's one-line errors instead of a traceback, and exit 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DurablyError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


def database_options(fn: F) -> F:
    """``--app`` or ``--database-url``/``--schema`` for commands that only need the database."""
    fn = click.option(
        "--schema", default=None, envvar="DURABLY_SCHEMA", help="Schema of the App's tables."
    )(fn)
    fn = click.option(
        "--database-url",
        default=None,
        help="PostgreSQL URL (default: DURABLY_DATABASE_URL, DATABASE_URL, else embedded).",
    )(fn)
    fn = click.option(
        "--app",
        "app_spec",
        default=None,
        envvar="DURABLY_APP",
        help="module:attribute naming an App.",
    )(fn)
    return fn


def resolve_app(
    app_spec: str | None, database_url: str | None, schema: str | None, migrate: bool = False
) -> App:
    """The App named by ``--app``, or a bare App on ``--database-url``/``--schema``."""
    if app_spec:
        app = load_app(app_spec)
        if database_url or schema:
            raise click.UsageError("give either --app or --database-url/--schema, not both")
        return app
    return App(database_url, schema=schema or "durably", migrate=migrate)


def emit(rows: list[dict[str, Any]], as_json: bool, columns: list[str]) -> None:
    """Print rows as JSON lines or as an aligned table."""
    if as_json:
        click.echo(json.dumps(rows, default=str, indent=2))
        return
    if not rows:
        click.echo("(none)")
        return
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


@click.group()
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def main(verbose: int) -> None:
    """durably: durable execution for Python, built entirely on PostgreSQL."""
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(
        level=max(level, logging.DEBUG), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )


@main.command()
@click.argument("app_spec", metavar="APP")
@click.option(
    "--slots", default=10, show_default=True, help="Runs executing at once in this process."
)
@click.option(
    "--durable-slots",
    default=100,
    show_default=True,
    help="Durable runs executing at once in this process (a pool of their own).",
)
@click.option(
    "--evict-after",
    default=5.0,
    show_default=True,
    help="Seconds a waiting durable run keeps its slot before it is suspended.",
)
@click.option(
    "--queue",
    "queues",
    multiple=True,
    help="Queue to serve (repeatable; default: all the App's queues).",
)
@click.option(
    "--poll-interval", default=1.0, show_default=True, help="Seconds between polls when idle."
)
@click.option(
    "--lease", default=30.0, show_default=True, help="Seconds a claim lasts without heartbeat."
)
@click.option(
    "--grace-period", default=30.0, show_default=True, help="Seconds running tasks get on shutdown."
)
@friendly_errors
def worker(
    app_spec: str,
    slots: int,
    durable_slots: int,
    evict_after: float,
    queues: tuple[str, ...],
    poll_interval: float,
    lease: float,
    grace_period: float,
) -> None:
    """Run a worker for APP (module:attribute) until SIGTERM or Ctrl-C."""
    app = load_app(app_spec)
    if logging.getLogger().level > logging.INFO:
        logging.getLogger("durably").setLevel(logging.INFO)
    app.run_worker(
        slots=slots,
        durable_slots=durable_slots,
        evict_after=evict_after,
        queues=list(queues) or None,
        poll_interval=poll_interval,
        lease=lease,
        grace_period=grace_period,
    )


@main.command()
@friendly_errors
def demo() -> None:
    """Kill a worker mid-workflow and watch another resume it (the guide's order demo)."""
    from .demo import run_demo

    run_demo()


@main.group()
def db() -> None:
    """Schema migrations."""


@db.command("migrate")
@database_options
@friendly_errors
def db_migrate(app_spec: str | None, database_url: str | None, schema: str | None) -> None:
    """Apply pending migrations."""
    app = resolve_app(app_spec, database_url, schema)
    done = app.call(_migrate(app))
    click.echo(f"applied {len(done)} migration(s): {done}" if done else "schema is up to date")


async def _migrate(app: App) -> list[int]:
    return await (await app.store()).migrate()


@db.command("status")
@database_options
@friendly_errors
def db_status(app_spec: str | None, database_url: str | None, schema: str | None) -> None:
    """Show applied and pending migrations."""
    app = resolve_app(app_spec, database_url, schema)
    applied = set(app.call(_applied(app)))
    for m in MIGRATIONS:
        click.echo(f"{m.version:04d}_{m.name}: {'applied' if m.version in applied else 'pending'}")
    version = max(applied) if applied else 0
    click.echo(f"schema {app.schema!r} at version {version}; this durably needs {LATEST_VERSION}")


async def _applied(app: App) -> list[int]:
    return await (await app.store()).applied_versions()


@db.command("sql")
@database_options
@friendly_errors
def db_sql(app_spec: str | None, database_url: str | None, schema: str | None) -> None:
    """Print the SQL of pending migrations (for a DBA to review or run)."""
    app = resolve_app(app_spec, database_url, schema)
    click.echo(app.call(_pending_sql(app)), nl=False)


async def _pending_sql(app: App) -> str:
    return await (await app.store()).pending_sql()


@main.group()
def runs() -> None:
    """Inspect and act on runs."""


@runs.command("list")
@database_options
@click.option(
    "--status", default=None, help="QUEUED, RUNNING, WAITING, COMPLETED, FAILED or CANCELLED."
)
@click.option("--task", default=None)
@click.option("--queue", default=None)
@click.option("--limit", default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@friendly_errors
def runs_list(
    app_spec: str | None,
    database_url: str | None,
    schema: str | None,
    status: str | None,
    task: str | None,
    queue: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List runs, newest first."""
    app = resolve_app(app_spec, database_url, schema, migrate=True)
    found = app.list_runs(
        status=status.upper() if status else None, task=task, queue=queue, limit=limit
    )
    rows = [r.__dict__ for r in found]
    emit(rows, as_json, ["id", "task", "queue", "status", "attempt", "created_at"])


@runs.command("show")
@click.argument("run_id", type=int)
@database_options
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def runs_show(
    run_id: int, app_spec: str | None, database_url: str | None, schema: str | None, as_json: bool
) -> None:
    """Show one run: input, output or error, attempts."""
    app = resolve_app(app_spec, database_url, schema, migrate=True)
    run = app.get_run(run_id)
    if run is None:
        raise ConfigurationError(f"run {run_id} does not exist in schema {app.schema!r}")
    log = app.event_log(run_id)
    if as_json:
        click.echo(json.dumps({**run.__dict__, "event_log": log}, default=str, indent=2))
        return
    for key, value in run.__dict__.items():
        if key == "error" and value:
            click.echo(f"error: {value.get('type')}: {value.get('message')}")
            if value.get("traceback"):
                click.echo(value["traceback"].rstrip())
        else:
            click.echo(f"{key}: {value}")
    if log:
        click.echo("event log:")
        emit(
            log, False, ["seq", "kind", "name", "child_id", "done", "result", "error", "created_at"]
        )


@runs.command("retry")
@click.argument("run_id", type=int)
@database_options
@friendly_errors
def runs_retry(
    run_id: int, app_spec: str | None, database_url: str | None, schema: str | None
) -> None:
    """Queue a failed or cancelled run again; a durable run resumes from its event log."""
    app = resolve_app(app_spec, database_url, schema, migrate=True)
    _done(
        app.retry(run_id), f"run {run_id} queued again", f"run {run_id} is not failed or cancelled"
    )


@runs.command("replay")
@click.argument("run_id", type=int)
@database_options
@friendly_errors
def runs_replay(
    run_id: int, app_spec: str | None, database_url: str | None, schema: str | None
) -> None:
    """Run a finished run again from scratch (its event log is archived)."""
    app = resolve_app(app_spec, database_url, schema, migrate=True)
    _done(
        app.replay(run_id), f"run {run_id} replaying from scratch", f"run {run_id} has not finished"
    )


@runs.command("fork")
@click.argument("run_id", type=int)
@click.option("--at-event", type=int, required=True, help="How many events of the log to copy.")
@database_options
@friendly_errors
def runs_fork(
    run_id: int, at_event: int, app_spec: str | None, database_url: str | None, schema: str | None
) -> None:
    """Start a new run whose event log begins with the first N events of RUN_ID."""
    app = resolve_app(app_spec, database_url, schema, migrate=True)
    click.echo(f"forked run {run_id} at event {at_event} as run {app.fork(run_id, at_event).id}")


def _done(ok: bool, success: str, refused: str) -> None:
    if not ok:
        click.echo(f"refused: {refused}", err=True)
        sys.exit(1)
    click.echo(success)


@runs.command("cancel")
@click.argument("run_id", type=int)
@database_options
@friendly_errors
def runs_cancel(
    run_id: int, app_spec: str | None, database_url: str | None, schema: str | None
) -> None:
    """Cancel a run that has not ended."""
    app = resolve_app(app_spec, database_url, schema, migrate=True)
    if not app.cancel(run_id):
        click.echo(
            f"run {run_id} was not cancelled: it does not exist or has already ended", err=True
        )
        sys.exit(1)
    click.echo(f"run {run_id} cancelled")


@main.group()
def events() -> None:
    """Events that durable runs wait for."""


@events.command("push")
@click.argument("key")
@click.argument("payload", required=False)
@database_options
@friendly_errors
def events_push(
    key: str,
    payload: str | None,
    app_spec: str | None,
    database_url: str | None,
    schema: str | None,
) -> None:
    """Push event KEY with an optional JSON PAYLOAD (e.g. '{"approved": true}')."""
    try:
        value = None if payload is None else json.loads(payload)
    except json.JSONDecodeError as exc:
        raise click.UsageError(
            f"PAYLOAD is not JSON ({exc}): quote it, e.g. '\"yes\"' or '{{}}'"
        ) from None
    app = resolve_app(app_spec, database_url, schema, migrate=True)
    click.echo(f"event {app.push_event(key, value)} pushed")


@main.group()
def workers() -> None:
    """Inspect workers."""


@workers.command("list")
@database_options
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def workers_list(
    app_spec: str | None, database_url: str | None, schema: str | None, as_json: bool
) -> None:
    """Workers, newest first: alive or stopped, slots in use, last heartbeat."""
    app = resolve_app(app_spec, database_url, schema, migrate=True)
    rows = app.call(_fetch(app, "workers_list", {"limit": 100}))
    keys = [
        "id",
        "hostname",
        "pid",
        "queues",
        "tasks",
        "slots",
        "started_at",
        "heartbeat_at",
        "stopped_at",
        "running",
    ]
    emit(
        [dict(zip(keys, r, strict=True)) for r in rows],
        as_json,
        ["id", "hostname", "pid", "slots", "running", "heartbeat_at", "stopped_at"],
    )


@main.group()
def queues() -> None:
    """Inspect queues."""


@queues.command("list")
@database_options
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def queues_list(
    app_spec: str | None, database_url: str | None, schema: str | None, as_json: bool
) -> None:
    """Depth of each queue by status, age of its oldest due run, and queued runs no live worker
    knows the task of (they wait for a worker that does)."""
    app = resolve_app(app_spec, database_url, schema, migrate=True)
    rows = app.call(_fetch(app, "queues_list", None))
    keys = ["queue", "queued", "running", "waiting", "oldest_age_s", "no_worker"]
    emit([dict(zip(keys, r, strict=True)) for r in rows], as_json, keys)


async def _fetch(app: App, name: str, params: dict[str, Any] | None) -> list[tuple[Any, ...]]:
    return await (await app.store()).fetch(name, params)


@main.command()
@click.argument("app_arg", metavar="[APP]", required=False)
@database_options
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8740, show_default=True, type=int, help="Port to listen on.")
@click.option(
    "--token",
    default=None,
    envvar="DURABLY_DASHBOARD_TOKEN",
    help="Access token every request must carry (needed to listen beyond 127.0.0.1).",
)
@click.option("--read-only", is_flag=True, help="Hide and refuse retry, replay, fork and cancel.")
@friendly_errors
def dashboard(
    app_arg: str | None,
    app_spec: str | None,
    database_url: str | None,
    schema: str | None,
    host: str,
    port: int,
    token: str | None,
    read_only: bool,
) -> None:
    """Serve the web dashboard for APP (module:attribute), or for --database-url/--schema."""
    from .dashboard import bind_problem

    if app_arg and app_spec:
        raise click.UsageError("give APP or --app, not both")
    problem = bind_problem(host, token)
    if problem is not None:
        click.echo(f"error: {problem}", err=True)
        sys.exit(2)
    try:
        from .dashboard.server import serve
    except ImportError as exc:
        raise ConfigurationError(
            f"the dashboard needs its extra ({exc.name} is missing): "
            "pip install 'durably[dashboard]'"
        ) from None
    app = resolve_app(app_arg or app_spec, database_url, schema)
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"durably dashboard on http://{shown}:{port}/ (schema {app.schema!r})", err=True)
    serve(app, host=host, port=port, token=token, read_only=read_only)
