"""The short chaos run on every change: a minute of every fault, in volume mode, against a
private PostgreSQL, then every invariant of tests/chaos/checker.py. The long run is
``python -m bench.chaos``."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.harness import Chaos, Config


@pytest.mark.timeout(400)
def test_nothing_is_lost_or_recorded_twice_under_faults(tmp_path: Path) -> None:
    # Volume mode: bursts of 1,500 runs orphaned or expiring together (over the ~1,200 that once
    # stopped every sweep), transactions open longer than the lease, dataclass step results.
    config = Config(
        items=300,
        duration=60,
        workers=3,
        restarts=1,
        seed=7,
        volume=True,
        burst_size=1500,
        burst_every=(12.0, 20.0),
    )
    result = Chaos(config, tmp_path, say=print).run()
    report = result.report
    assert report.completed + report.expected_failures == report.runs > config.items
    assert sum(result.faults.values()) >= 40, result.faults
    assert {"kill", "freeze", "restart", "terminate"} <= set(result.faults), result.faults
    assert {"orphans", "expiries"} <= set(result.faults), result.faults
    assert result.bursts["expire"] >= config.burst_size, result.bursts
    assert result.problems() == []
