"""The durably web dashboard: runs, their event logs, workers and queues, served by uvicorn.

Server-rendered (Starlette and Jinja2) with a vendored htmx for live updates; no JavaScript build
step. Its dependencies are the ``dashboard`` extra (``pip install 'durably[dashboard]'``), so
this module imports them only when a server is made: the CLI can check a bind address and a
token without them.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from ..app import App

DEFAULT_HOST = "127.0.0.1"
# Clear of the 8000 and 8080 that application servers take by default.
DEFAULT_PORT = 8740
MIN_TOKEN_LENGTH = 16


def is_loopback(host: str) -> bool:
    """True for names and addresses only this machine can reach (localhost, 127/8, ::1)."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind_problem(host: str, token: str | None) -> str | None:
    """Why the dashboard must not serve on ``host`` with this token, as one line; None if it may.

    Without a token only loopback addresses are allowed: anyone who can reach the port could
    otherwise read every run's input and output, and retry or cancel runs.
    """
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        return (
            f"the access token is too short ({len(token)} characters): use at least "
            f"{MIN_TOKEN_LENGTH}, e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    if token is None and not is_loopback(host):
        return (
            f"refusing to serve the dashboard on {host} without an access token: pass --token "
            "(or set DURABLY_DASHBOARD_TOKEN), or bind 127.0.0.1"
        )
    return None


def create_app(app: App, *, token: str | None = None, read_only: bool = False) -> Starlette:
    """The dashboard of ``app`` as an ASGI application (see :mod:`durably.dashboard.server`)."""
    from .server import create_app as create

    return create(app, token=token, read_only=read_only)


def serve(app: App, **options: Any) -> None:
    """Serve the dashboard of ``app`` with uvicorn until interrupted (see
    :func:`durably.dashboard.server.serve` for the options)."""
    from .server import serve as run

    run(app, **options)


__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "MIN_TOKEN_LENGTH",
    "bind_problem",
    "create_app",
    "is_loopback",
    "serve",
]
