"""Helpers for the CLI tests: the command in this process (click's CliRunner), the installed
``durably`` console script in a real process, and that script in a pseudo-terminal (where the
tables and progress bars are drawn by rich)."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from durably.cli import main

DURABLY = Path(sys.executable).with_name("durably")  # the console script pip installed

Cli = Callable[..., Result]


@pytest.fixture
def cli(database_url: str, schema: str) -> Cli:
    """Invoke ``durably <args> --database-url URL --schema S`` in this process; ``input=`` is
    what the user types."""

    def invoke(*args: str, input: str | None = None) -> Result:
        where = ["--database-url", database_url, "--schema", schema]
        return CliRunner().invoke(main, [*args, *where], input=input)

    return invoke


def script_env(database_url: str, schema: str) -> dict[str, str]:
    """The environment a user's shell would give the script: the database in variables."""
    env = {**os.environ, "DURABLY_DATABASE_URL": database_url, "DURABLY_SCHEMA": schema}
    env.pop("DURABLY_APP", None)
    return env


def run_script(
    *args: str, env: dict[str, str], input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """The ``durably`` console script in a real process, its output captured (not a terminal)."""
    return subprocess.run(
        [str(DURABLY), *args], capture_output=True, text=True, env=env, input=input, timeout=60
    )


def run_in_terminal(*args: str, env: dict[str, str], timeout: float = 60) -> tuple[int, str]:
    """The console script with stdout and stderr on a pseudo-terminal 120 columns wide, as in a
    user's shell; returns its exit status and everything it wrote (escape codes included)."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [str(DURABLY), *args],
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=follower,
        env={**env, "COLUMNS": "120", "LINES": "40", "TERM": "xterm", "PYTHONIOENCODING": "utf-8"},
    )
    os.close(follower)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.5)
        if not ready:
            if proc.poll() is not None:
                break
            continue
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the process closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    return proc.wait(timeout), b"".join(chunks).decode("utf-8", "replace")
