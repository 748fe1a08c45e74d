"""The short chaos run on every change: a minute of every fault against a private PostgreSQL,
then every invariant of tests/chaos/checker.py. The long run is ``python -m bench.chaos``."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.harness import Chaos, Config


@pytest.mark.timeout(400)
def test_nothing_is_lost_or_recorded_twice_under_faults(tmp_path: Path) -> None:
    config = Config(items=300, duration=60, workers=3, restarts=1, seed=7)
    result = Chaos(config, tmp_path, say=print).run()
    assert result.report.completed == result.report.runs > config.items  # orders and children
    assert sum(result.faults.values()) >= 40, result.faults
    assert {"kill", "freeze", "restart", "terminate"} <= set(result.faults), result.faults
    assert result.problems() == []
