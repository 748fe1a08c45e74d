"""The ``durably`` command line.

``durably worker APP`` runs a worker, ``durably dashboard`` serves the web UI, and the operator
commands (``runs``, ``events``, ``workers``, ``queues``, ``schedules``, ``db``) work on the
database alone: they print tables (drawn by rich on a terminal, plain aligned text otherwise) or
``--json`` with stable keys. Exit status: 0 done, 1 refused (or an error of durably's), 2 usage.
docs/cli.md has every command with an example.
"""

from __future__ import annotations

import logging
import sys

import click

from ..errors import ConfigurationError
from .common import TEXT, database_options, friendly_errors, load_app, resolve_app
from .ops import db, events, queues, workers
from .purge import runs_purge
from .runs import runs
from .schedules import schedules

__all__ = ["load_app", "main", "resolve_app"]


@click.group()
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def main(verbose: int) -> None:
    """durably: durable execution for Python, built entirely on PostgreSQL."""
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(
        level=max(level, logging.DEBUG), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )


runs.add_command(runs_purge)
for group in (runs, events, workers, queues, schedules, db):
    main.add_command(group)


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
    type=TEXT,
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
    from ..demo import run_demo

    run_demo()


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
    from ..dashboard import bind_problem

    if app_arg and app_spec:
        raise click.UsageError("give APP or --app, not both")
    problem = bind_problem(host, token)
    if problem is not None:
        click.echo(f"error: {problem}", err=True)
        sys.exit(2)
    try:
        from ..dashboard.server import serve
    except ImportError as exc:
        raise ConfigurationError(
            f"the dashboard needs its extra ({exc.name} is missing): "
            "pip install 'durably[dashboard]'"
        ) from None
    app = resolve_app(app_arg or app_spec, database_url, schema)
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"durably dashboard on http://{shown}:{port}/ (schema {app.schema!r})", err=True)
    serve(app, host=host, port=port, token=token, read_only=read_only)
