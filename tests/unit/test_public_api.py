"""The public API is a contract (DESIGN.md §3): a name added to or removed from ``durably``
must be a deliberate change of this list."""

from __future__ import annotations

import durably

PUBLIC = [
    "App",
    "Backoff",
    "BoundTask",
    "Child",
    "ChildFailed",
    "ConfigurationError",
    "DatabaseFull",
    "DatabaseUnavailable",
    "DeadlineExceeded",
    "DurableContext",
    "DurablyError",
    "LeaseLost",
    "NonDeterminismError",
    "NonRetryableError",
    "NotSerializable",
    "PayloadTooLarge",
    "Run",
    "RunCancelled",
    "RunFailed",
    "RunHandle",
    "Schedule",
    "StepFailed",
    "SyncDurableContext",
    "Task",
    "UnknownSchedule",
    "UnknownTask",
    "Worker",
    "current_run_id",
]


def test_the_public_names_are_pinned() -> None:
    assert sorted(durably.__all__) == PUBLIC


def test_every_public_name_exists_and_is_documented() -> None:
    for name in PUBLIC:
        value = getattr(durably, name)
        assert value.__doc__, f"durably.{name} has no docstring"
