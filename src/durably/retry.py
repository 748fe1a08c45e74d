"""Backoff policies: how long a failed run waits before its next attempt."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Delay before retry number ``n`` (1-based): ``base * factor**(n-1)``, capped at ``max``.

    With ``jitter`` the delay is drawn uniformly from ``[delay/2, delay]`` so that runs failing
    together do not retry together.
    """

    base: float = 1.0
    factor: float = 2.0
    max: float = 60.0
    jitter: bool = True

    @classmethod
    def exponential(
        cls, base: float = 1.0, factor: float = 2.0, max: float = 60.0, jitter: bool = True
    ) -> Backoff:
        """Exponential backoff (the default policy)."""
        return cls(base=base, factor=factor, max=max, jitter=jitter)

    @classmethod
    def constant(cls, seconds: float) -> Backoff:
        """The same delay before every retry; ``0`` retries at once."""
        return cls(base=seconds, factor=1.0, max=seconds, jitter=False)

    def delay(self, retry_number: int) -> float:
        """Seconds to wait before retry ``retry_number`` (1 for the first retry)."""
        raw = min(self.max, self.base * self.factor ** max(0, retry_number - 1))
        if self.jitter:
            return random.uniform(raw / 2, raw)
        return raw

    @classmethod
    def coerce(cls, value: Backoff | float | int | None) -> Backoff:
        """Accept a policy, a number of seconds (constant), or None (the default)."""
        if value is None:
            return cls()
        if isinstance(value, Backoff):
            return value
        if isinstance(value, int | float) and value >= 0:
            return cls.constant(float(value))
        raise TypeError(
            f"backoff={value!r} is not valid: "
            "pass seconds (>= 0) or durably.Backoff.exponential(...)"
        )
