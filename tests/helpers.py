"""Helpers shared by tests: waiting on conditions with a deadline, and worker processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent


def wait_until(
    condition: Callable[[], T],
    timeout: float = 20.0,
    interval: float = 0.02,
    what: str = "condition",
) -> T:
    """Poll ``condition`` until it returns a truthy value; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class WorkerProcess:
    """``durably worker tests.apps.<module>:app`` in a subprocess, on the test's schema."""

    def __init__(
        self,
        url: str,
        schema: str,
        module: str = "queue_app",
        *args: str,
        env: dict[str, str] | None = None,
    ) -> None:
        full_env = {
            **os.environ,
            "DURABLY_DATABASE_URL": url,
            "DURABLY_TEST_SCHEMA": schema,
            "PYTHONPATH": str(ROOT),
            **(env or {}),
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "durably", "worker", f"tests.apps.{module}:app", *args],
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def wait_for_line(self, text: str, timeout: float = 20.0) -> str:
        """Wait until the worker printed a line containing ``text``; return that line."""

        def found() -> str | None:
            return next((line for line in self.lines if text in line), None)

        line = wait_until(found, timeout, what=f"worker output {text!r}")
        assert line is not None
        return line

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def wait(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout)

    def output(self) -> str:
        self._reader.join(5)
        return "".join(self.lines)

    def __enter__(self) -> WorkerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
