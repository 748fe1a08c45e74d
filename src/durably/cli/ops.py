"""``durably events``, ``workers``, ``queues`` and ``db``: everything but runs."""

from __future__ import annotations

import json
from typing import Any

import click

from ..app import App
from ..console import Console
from ..serde import dumps
from ..storage import LATEST_VERSION, MIGRATIONS, Migration
from .common import TEXT, database_options, friendly_errors, json_option, resolve_app
from .output import (
    Column,
    ProgressDisplay,
    col,
    fmt_count,
    fmt_seconds,
    fmt_time,
    print_json,
    print_table,
)

QUEUE_CAP = 10_000  # queue depths are counted up to this (a backlog of millions costs the same)
THROUGHPUT_WINDOW = 60.0  # seconds: "throughput over the last minute"


@click.group()
def events() -> None:
    """Events that durable runs wait for."""


@events.command("push")
@click.argument("key", type=TEXT)
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
    """Push event KEY with an optional JSON PAYLOAD (e.g. '{"approved": true}'): durable runs
    waiting for KEY receive it."""
    value = None if payload is None else _payload(payload)
    app = resolve_app(app_spec, database_url, schema, migrate=True)
    click.echo(f"event {app.push_event(key, value)} pushed")


def _payload(text: str) -> Any:
    """PAYLOAD parsed, and refused (usage error) unless PostgreSQL can store it as JSON."""
    try:
        value = json.loads(text)
        dumps(value)  # what the App stores; it checks the size when pushing
    except json.JSONDecodeError as exc:
        raise click.UsageError(
            f"PAYLOAD is not JSON ({exc}): quote it, e.g. '\"yes\"' or '{{}}'"
        ) from None
    except RecursionError:
        raise click.UsageError(
            "PAYLOAD is nested too deeply to read: flatten it (a few hundred levels at most)"
        ) from None
    except (TypeError, ValueError) as exc:  # NaN, Infinity, a NUL character...
        raise click.UsageError(f"PAYLOAD cannot be stored as JSON ({exc}): remove that") from None
    return value


# -- workers and queues ---------------------------------------------------------------------

WORKER_COLUMNS = [
    col("id", wrap=True),
    col("hostname", "HOST"),
    col("pid", right=True),
    col("alive"),
    Column("SLOTS", lambda w: f"{w['running']}/{w['slots']}", right=True),
    Column("DURABLE", lambda w: str(w["running_durable"]), right=True),
    Column("HEARTBEAT", lambda w: f"{fmt_seconds(w['heartbeat_age_s'])} ago"),
    col("queues", wrap=True),
    Column("STARTED", lambda w: fmt_time(w["started_at"])),
]


@click.group()
def workers() -> None:
    """Inspect workers."""


@workers.command("list")
@database_options
@click.option("--alive", is_flag=True, help="Only workers that have not stopped.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True)
@json_option
@friendly_errors
def workers_list(
    app_spec: str | None,
    database_url: str | None,
    schema: str | None,
    alive: bool,
    limit: int,
    as_json: bool,
) -> None:
    """Workers, live ones first: slots in use (task runs held out of the task slots, durable
    runs held), and the age of the last heartbeat on the database clock."""
    app = resolve_app(app_spec, database_url, schema, migrate=True)
    rows = [w for w in Console(app).workers_overview(limit) if w["alive"] or not alive]
    if as_json:
        print_json(rows)
    else:
        print_table(rows, WORKER_COLUMNS)


def _capped(key: str, header: str | None = None) -> Column:
    return Column(header or key.upper(), lambda q: fmt_count(q[key], QUEUE_CAP), right=True)


QUEUE_COLUMNS = [
    col("queue"),
    _capped("queued"),
    _capped("delayed"),
    _capped("running"),
    _capped("waiting"),
    Column("OLDEST", lambda q: fmt_seconds(q["oldest_queued_s"]), right=True),
    _capped("no_worker", "NO WORKER"),
    Column("DONE/MIN", lambda q: str(q["completed"]), right=True),
    Column("FAILED/MIN", lambda q: str(q["failed"]), right=True),
]


@click.group()
def queues() -> None:
    """Inspect queues."""


@queues.command("list")
@database_options
@json_option
@friendly_errors
def queues_list(
    app_spec: str | None, database_url: str | None, schema: str | None, as_json: bool
) -> None:
    """Per queue: runs queued (due now), delayed, running and waiting (counts stop at 10000),
    the age of the oldest due run, queued runs no live worker serves, and the runs completed
    and failed in the last minute."""
    app = resolve_app(app_spec, database_url, schema, migrate=True)
    rows = Console(app).queues_overview(THROUGHPUT_WINDOW, QUEUE_CAP)
    if as_json:
        print_json(rows)
    else:
        print_table(rows, QUEUE_COLUMNS)


# -- db -------------------------------------------------------------------------------------


@click.group()
def db() -> None:
    """Schema migrations."""


class MigrationProgress:
    """Shows each migration as it starts (one can build an index on a big table for minutes)."""

    def __init__(self) -> None:
        self.display: ProgressDisplay | None = None

    def step(self, migration: Migration, index: int, total: int) -> None:
        """Called by the store before it applies ``migration``, the ``index``-th of ``total``."""
        if self.display is None:
            self.display = ProgressDisplay("migrating", total).__enter__()
        self.display.update(index, f"applying {migration.version:04d}_{migration.name}")

    def finish(self) -> None:
        """All migrations applied (or none were pending)."""
        if self.display is not None:
            self.display.update(self.display.total, "done")
            self.display.__exit__(None, None, None)


def _db_app(app_spec: str | None, database_url: str | None, schema: str | None) -> App:
    # Never migrate on opening, even an App that migrates by itself: `db status` and `db sql`
    # must show the schema as it is, and `db migrate` shows each migration as it applies it.
    app = resolve_app(app_spec, database_url, schema)
    app.auto_migrate = False
    return app


async def _migrate(app: App, progress: MigrationProgress) -> list[int]:
    return await (await app.store()).migrate(progress.step)


@db.command("migrate")
@database_options
@friendly_errors
def db_migrate(app_spec: str | None, database_url: str | None, schema: str | None) -> None:
    """Apply pending migrations (in one transaction, under a lock: safe with workers running)."""
    app = _db_app(app_spec, database_url, schema)
    progress = MigrationProgress()
    try:
        done = app.call(_migrate(app, progress))
    finally:
        progress.finish()
    click.echo(f"applied {len(done)} migration(s): {done}" if done else "schema is up to date")


async def _applied(app: App) -> list[int]:
    return await (await app.store()).applied_versions()


@db.command("status")
@database_options
@json_option
@friendly_errors
def db_status(
    app_spec: str | None, database_url: str | None, schema: str | None, as_json: bool
) -> None:
    """Show applied and pending migrations."""
    app = _db_app(app_spec, database_url, schema)
    applied = set(app.call(_applied(app)))
    version = max(applied) if applied else 0
    if as_json:
        print_json(_status_json(app, applied, version))
        return
    for m in MIGRATIONS:
        click.echo(f"{m.version:04d}_{m.name}: {'applied' if m.version in applied else 'pending'}")
    click.echo(f"schema {app.schema!r} at version {version}; this durably needs {LATEST_VERSION}")


def _status_json(app: App, applied: set[int], version: int) -> dict[str, Any]:
    return {
        "schema": app.schema,
        "version": version,
        "needs": LATEST_VERSION,
        "migrations": [
            {"version": m.version, "name": m.name, "applied": m.version in applied}
            for m in MIGRATIONS
        ],
    }


async def _pending_sql(app: App) -> str:
    return await (await app.store()).pending_sql()


@db.command("sql")
@database_options
@friendly_errors
def db_sql(app_spec: str | None, database_url: str | None, schema: str | None) -> None:
    """Print the SQL of pending migrations (for a DBA to review or run)."""
    app = _db_app(app_spec, database_url, schema)
    click.echo(app.call(_pending_sql(app)), nl=False)
