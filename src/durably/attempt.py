"""One claimed attempt of a run, from its claim to its recorded outcome, and how an attempt that
failed becomes the outcome to record."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from . import telemetry
from .definitions import TaskDefinition
from .errors import (
    DatabaseUnavailable,
    NonDeterminismError,
    NonRetryableError,
    NotSerializable,
    PayloadTooLarge,
)
from .records import Outcome, OutcomeKind
from .serde import error_json
from .storage import first_line

log = logging.getLogger("durably.worker")

# Errors that fail a run at once: retrying would raise them again.
_FINAL = (NonRetryableError, NotSerializable, PayloadTooLarge, NonDeterminismError)


@dataclass
class Attempt:
    """One claimed attempt, from claim to recorded outcome."""

    run_id: int
    attempt: int
    task: TaskDefinition
    args: Any
    failures: int
    max_retries: int
    has_log: bool
    trace_context: Any = None  # the enqueuer's trace, continued by this attempt's span
    deadline_in: float | None = None  # seconds from the claim to the run deadline, if any
    future: asyncio.Task[None] | None = None
    claimed_at: float = field(default_factory=time.monotonic)
    abandoned: bool = False
    slot_freed: bool = False

    def time_limit(self) -> tuple[float | None, bool]:
        """The attempt's timeout: the task's, or the time left to the run deadline when that is
        sooner (then True: reaching it fails the run for good, it is not retried)."""
        timeout = self.task.timeout
        if self.deadline_in is None:
            return timeout, False
        left = self.deadline_in - (time.monotonic() - self.claimed_at)
        if timeout is None or left <= timeout:
            return left, True
        return timeout, False

    def fields(self, worker_id: str) -> dict[str, Any]:
        """Structured fields of a log record about this attempt (``record.run_id`` etc.)."""
        return {
            "run_id": self.run_id,
            "task": self.task.name,
            "attempt": self.attempt,
            "worker": worker_id,
        }

    def failed(self, exc: BaseException, worker_id: str) -> Outcome:
        """The outcome of an attempt whose task raised ``exc``: retried after its backoff while
        retries are left and the error is not final, else failed for good."""
        error = error_json(exc)
        # A refused value would be refused again (same code, same value): no retry.
        final = isinstance(exc, _FINAL) or self.failures >= self.max_retries
        log.info(
            "run %s (%s) attempt %s failed: %s",
            self.run_id,
            self.task.name,
            self.attempt,
            first_line(exc),
            extra=self.fields(worker_id),
        )
        telemetry.fail(exc, "fail" if final else "retry")
        if final:
            return Outcome(self.run_id, self.attempt, OutcomeKind.FAIL, error=error)
        delay = self.task.backoff.delay(self.failures + 1)
        return Outcome(self.run_id, self.attempt, OutcomeKind.RETRY, error=error, delay=delay)

    def released(self, exc: BaseException, worker_id: str) -> Outcome:
        """The engine lost the database mid-attempt (not the task's fault): hand the run back
        to resume from its log, as after a lost worker, without spending a retry."""
        reason = first_line(exc)
        log.warning(
            "run %s attempt %s lost the database (%s); handing it back",
            self.run_id,
            self.attempt,
            reason,
            extra=self.fields(worker_id),
        )
        telemetry.fail(exc, "release")
        lost = DatabaseUnavailable(f"the attempt lost the database: {reason}")
        return Outcome(self.run_id, self.attempt, OutcomeKind.RELEASE, error=error_json(lost))
