"""What every ``durably`` command shares: finding the App, the database options, and turning
durably's errors into one line and an exit status."""

from __future__ import annotations

import functools
import importlib
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click
import psycopg

from ..app import App
from ..errors import DurablyError
from ..serde import check_text
from ..storage import first_line

F = TypeVar("F", bound=Callable[..., Any])

# Exit statuses: 0 done, 1 refused (or failed), 2 usage (click's own for bad arguments).
REFUSED = 1

# The largest values the database stores: run ids are bigint, event sequence numbers integer.
# Bounded here, a larger number is a usage error instead of a statement the database refuses.
RUN_ID = click.IntRange(1, 2**63 - 1)
RUN_ID_OR_ZERO = click.IntRange(0, 2**63 - 1)
SEQ = click.IntRange(0, 2**31 - 1)


class StorableText(click.ParamType):  # type: ignore[type-arg]  # generic in click 8.3+ only
    """A name or key that PostgreSQL can store and index (no NUL, no lone surrogate, at most
    1000 bytes): anything else is a usage error, before any statement runs."""

    name = "text"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        """The value, checked."""
        try:
            return check_text(str(value), repr(str(value)[:40]))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


TEXT = StorableText()


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


def refuse(message: str) -> NoReturn:
    """Say on one line why an operation was refused, and exit 1."""
    click.echo(f"refused: {message}", err=True)
    sys.exit(REFUSED)


def friendly_errors(fn: F) -> F:
    """Print durably's one-line errors instead of a traceback, and exit 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DurablyError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(REFUSED)
        except psycopg.Error as exc:
            # A statement the database refused outright (not an unreachable server: the store
            # turns that into DatabaseUnavailable): still one line, never a traceback.
            click.echo(
                f"error: the database refused the command ({first_line(exc)}); check that the "
                "schema belongs to this version of durably (`durably db status`)",
                err=True,
            )
            sys.exit(REFUSED)

    return wrapper  # type: ignore[return-value]


def database_options(fn: F) -> F:
    """``--app`` or ``--database-url``/``--schema`` for commands that only need the database."""
    fn = click.option(
        "--schema", default=None, envvar="DURABLY_SCHEMA", help="Schema of the App's tables."
    )(fn)
    fn = click.option(
        "--read-database-url",
        default=None,
        envvar="DURABLY_READ_DATABASE_URL",
        expose_value=False,  # read by resolve_app from the context: every command takes it
        callback=_remember_read_url,
        help="A read replica for listings and views (default: DURABLY_READ_DATABASE_URL).",
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


def _remember_read_url(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    ctx.meta["durably.read_url"] = value


def resolve_app(
    app_spec: str | None, database_url: str | None, schema: str | None, migrate: bool = False
) -> App:
    """The App named by ``--app``, or a bare App on ``--database-url``/``--schema``; with
    ``--read-database-url``, its views and listings read from that replica."""
    context = click.get_current_context(silent=True)
    read_url = context.meta.get("durably.read_url") if context is not None else None
    if app_spec:
        app = load_app(app_spec)
        if database_url or schema:
            raise click.UsageError("give either --app or --database-url/--schema, not both")
        if read_url:
            app.read_url = read_url
        return app
    return App(database_url, schema=schema or "durably", migrate=migrate, read_url=read_url)


def json_option(fn: F) -> F:
    """``--json``: machine-readable output with stable keys, for scripts."""
    return click.option(
        "--json", "as_json", is_flag=True, help="Print JSON (stable keys) instead of a table."
    )(fn)
