"""With no database URL, durably starts an embedded PostgreSQL shared by every process."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from durably import embedded


@pytest.fixture
def embedded_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    pgdata = tmp_path / "pg"
    monkeypatch.setenv("DURABLY_EMBEDDED_DIR", str(pgdata))
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DURABLY_DATABASE_URL")}
    yield env
    embedded.stop()


def test_demo_runs_on_the_embedded_server_shared_across_processes(
    embedded_env: dict[str, str],
) -> None:
    outputs = []
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-m", "durably", "demo"],
            env=embedded_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        outputs.append(done.stdout)
    first, second = (out.splitlines()[0] for out in outputs)
    assert first.startswith("database: postgresql://") and first == second
    for out in outputs:
        assert "worker A died (SIGKILL)" in out
        assert "payment performed 1 time(s); confirmation sent 1 time(s)." in out
    assert (Path(embedded_env["DURABLY_EMBEDDED_DIR"]) / "postmaster.pid").exists()
