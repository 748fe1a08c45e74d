"""The errors durably raises. All subclass :class:`DurablyError`; each message is one line that
says what was wrong and what to do."""

from __future__ import annotations

from typing import Any

from .records import Status


class DurablyError(Exception):
    """Base class of every error durably raises."""


class ConfigurationError(DurablyError):
    """The App or worker was set up wrongly (bad URL, bad schema name, schema out of date...)."""


class DatabaseUnavailable(DurablyError):
    """The database could not be reached."""


class DatabaseFull(DatabaseUnavailable):
    """The database refused a write because its disk is full: nothing was written, and the same
    call succeeds once space is freed (workers wait and retry by themselves)."""


class NonRetryableError(DurablyError):
    """Raise it in a task to fail the run at once, without using its remaining retries."""


class NonDeterminismError(DurablyError):
    """A durable run's code no longer does what its event log recorded."""


class DeadlineExceeded(DurablyError, TimeoutError):
    """A run passed its run deadline (``execution_deadline``): it failed for good, however many
    retries it had left, and its unfinished children were cancelled."""


class NotSerializable(DurablyError, TypeError):
    """An argument or result cannot be stored as JSON."""


class PayloadTooLarge(DurablyError, ValueError):
    """An encoded argument list or result is larger than the App's payload limit."""


class UnknownTask(DurablyError, LookupError):
    """No task of that name is registered on this App."""


class UnknownSchedule(DurablyError, LookupError):
    """No schedule of that name exists in the App's schema."""


class LeaseLost(DurablyError):
    """The worker no longer holds the run: it was recovered, cancelled or retried elsewhere."""


class RunFailed(DurablyError):
    """A run ended FAILED (or CANCELLED); carries the remote error."""

    def __init__(
        self, run_id: int, error: dict[str, Any] | None, status: str = Status.FAILED
    ) -> None:
        self.run_id = run_id
        self.status = status
        err = error or {}
        self.error_type: str = str(err.get("type") or status)
        self.error_message: str = str(err.get("message") or "")
        self.remote_traceback: str | None = err.get("traceback")
        super().__init__(
            f"run {run_id} {status.lower()}: {self.error_type}: {self.error_message}".rstrip(": ")
        )


class RunCancelled(RunFailed):
    """The run was cancelled before it completed."""


class ChildFailed(DurablyError):
    """A child run of a durable run failed (or was cancelled); carries the child's error."""

    def __init__(self, message: str, child_id: int, error: dict[str, Any]) -> None:
        super().__init__(message)
        self.child_id = child_id
        self.error = error


class StepFailed(DurablyError):
    """A step of a durable run failed after its retries; recorded, so re-execution raises it
    again at the same place."""
