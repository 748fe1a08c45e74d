"""Retry backoff: exponential with a cap, jitter in [delay/2, delay], constants, bad values."""

from __future__ import annotations

import pytest

from durably import Backoff


def test_exponential_doubles_up_to_its_cap() -> None:
    policy = Backoff.exponential(base=0.5, factor=2.0, max=3.0, jitter=False)
    assert [policy.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_jitter_stays_within_half_and_the_whole_delay() -> None:
    policy = Backoff.exponential(base=4.0, factor=1.0, max=4.0, jitter=True)
    delays = [policy.delay(1) for _ in range(500)]
    assert all(2.0 <= d <= 4.0 for d in delays)
    assert max(delays) - min(delays) > 1.0, "jitter spreads retries out"


def test_a_number_is_a_constant_backoff_and_none_the_default() -> None:
    assert Backoff.coerce(0).delay(7) == 0.0
    assert Backoff.coerce(2.5).delay(3) == 2.5
    assert Backoff.coerce(None) == Backoff()


@pytest.mark.parametrize("bad", [-1, "1s", [1]])
def test_a_bad_backoff_is_refused_in_one_line(bad: object) -> None:
    with pytest.raises(TypeError, match=r"backoff=.* is not valid") as e:
        Backoff.coerce(bad)  # type: ignore[arg-type]  # the wrong types are the point
    assert "\n" not in str(e.value)
