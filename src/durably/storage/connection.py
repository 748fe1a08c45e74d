"""Connections: URLs, the pools' settings, which errors are the connection's, and whose an
exception raised inside a ``ctx.transaction`` is."""

from __future__ import annotations

import os
import re
from typing import Any

import psycopg
import psycopg.errors
from psycopg import conninfo
from psycopg.pq import TransactionStatus

from ..errors import ConfigurationError, DatabaseFull, DatabaseUnavailable

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,40}$")
_PASSWORD = re.compile(r"(://[^:/@\s]*):[^@\s]*@")


def check_schema_name(schema: str) -> str:
    """Schema names are plain lowercase identifiers, so they never need escaping."""
    if not _SCHEMA_NAME.match(schema):
        raise ConfigurationError(
            f"schema name {schema!r} is not valid: use lowercase letters, digits and _ "
            "(at most 41 characters, not starting with a digit)"
        )
    return schema


def describe_url(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        info = conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<malformed URL>"
    user, host = info.get("user") or "", info.get("host") or "localhost"
    return f"postgresql://{user}@{host}:{info.get('port') or 5432}/{info.get('dbname') or ''}"


def _redact(text: str) -> str:
    return _PASSWORD.sub(r"\1:***@", text)


def _check_url(url: str) -> None:
    try:
        conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        first = _redact(str(exc).splitlines()[0])
        raise ConfigurationError(
            f"the database URL is malformed ({first}): expected postgresql://user@host:port/dbname"
        ) from None


# SQLSTATEs of the connection or the server's state rather than of the statement: connection
# exceptions (08), insufficient resources such as a full disk (53), and the server shutting down
# or restarting (57P01-57P03). A statement that failed with one of these may succeed later.
_TRANSIENT_STATES = ("08", "53", "57P01", "57P02", "57P03")


def first_line(exc: BaseException) -> str:
    """An error as one line: psycopg's messages carry DETAIL and HINT lines of their own."""
    try:
        text = str(exc).strip()
    except Exception:  # a task's exception may refuse to be printed
        text = ""
    return " ".join(text.splitlines()[0].split()) if text else type(exc).__name__


def out_of_space(exc: psycopg.errors.DiskFull) -> DatabaseFull:
    """psycopg's DiskFull as one line that says what happened and what to do."""
    return DatabaseFull(
        f"the database is out of disk space ({first_line(exc)}): nothing was written; free "
        "space on the database server, then try again"
    )


def is_transient(exc: BaseException) -> bool:
    """True for errors of the database connection or server, not of the statement: worth
    retrying, and no fault of the task. (A lost reply may hide a statement that committed.)"""
    if isinstance(exc, psycopg.InterfaceError | DatabaseUnavailable | OSError):
        return True
    if isinstance(exc, psycopg.OperationalError):
        state = exc.sqlstate
        return state is None or state.startswith(_TRANSIENT_STATES)
    return False


def pool_kwargs() -> dict[str, Any]:
    # Named after the process, so pg_stat_activity (and an audit) can tell who wrote what.
    return {"autocommit": True, "application_name": f"durably pid {os.getpid()}"}


async def connect(url: str, **kwargs: Any) -> psycopg.AsyncConnection[Any]:
    """Open one autocommit connection, turning psycopg's failure into one readable line."""
    _check_url(url)
    try:
        return await psycopg.AsyncConnection.connect(
            url, autocommit=True, connect_timeout=10, **kwargs
        )
    except psycopg.OperationalError as exc:
        reason = _redact(first_line(exc))
        raise DatabaseUnavailable(
            f"cannot connect to {describe_url(url)}: {reason}; check the URL "
            "(DURABLY_DATABASE_URL or DATABASE_URL) and that the server is running"
        ) from None


class UserCodeFailed(Exception):
    """The exception ``error`` that the function of a ``ctx.transaction`` raised, carried past
    the engine's handling of its own connection errors, which must not take it for one of them:
    an ``OSError`` of the user's (a refused connection to some gateway) is the workflow's to see.
    """

    def __init__(self, error: Exception) -> None:
        super().__init__(first_line(error))
        self.error = error


def blame(
    conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any], exc: Exception
) -> Exception:
    """Whose is an exception of the function of a ``ctx.transaction``? The engine's when the
    connection it handed over was lost (``conn.broken``), or when a statement on it failed
    for a reason of the server's state (a full disk, a shutdown: the transaction is aborted and
    the engine cannot record anything either); then the run is handed back to resume later, as
    for any of the engine's statements. Anything else is the user's: returned wrapped in
    :class:`UserCodeFailed`, for the workflow to see as it was raised."""
    if conn.broken:
        return DatabaseUnavailable(
            f"the connection of ctx.transaction was lost ({first_line(exc)}); the run resumes "
            "from its log when the database is back"
        )
    aborted = conn.info.transaction_status == TransactionStatus.INERROR
    if aborted and isinstance(exc, psycopg.Error) and is_transient(exc):
        return exc
    return UserCodeFailed(exc)
