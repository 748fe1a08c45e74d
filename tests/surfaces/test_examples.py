"""The examples run as a user would run them, each on its own schema."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT

EXPECTED = {
    "order_workflow.py": "'tracking': 'tracking-1001'",
    "agent_loop.py": "answer: Booked. Steps: found TP1234 to Lisbon for 120 EUR; booked TP1234",
    "fan_out.py": "words: 100",
}


@pytest.mark.parametrize("example", sorted(EXPECTED))
def test_example_runs(example: str, database_url: str, schema: str) -> None:
    env = {**os.environ, "DURABLY_DATABASE_URL": database_url, "DURABLY_EXAMPLES_SCHEMA": schema}
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / example)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert EXPECTED[example] in done.stdout
