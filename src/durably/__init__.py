"""durably: durable execution for Python, built entirely on PostgreSQL."""

from .app import App
from .context import Child, DurableContext, SyncDurableContext, current_run_id
from .errors import (
    ChildFailed,
    ConfigurationError,
    DatabaseFull,
    DatabaseUnavailable,
    DeadlineExceeded,
    DurablyError,
    LeaseLost,
    NonDeterminismError,
    NonRetryableError,
    NotSerializable,
    PayloadTooLarge,
    RunCancelled,
    RunFailed,
    StepFailed,
    UnknownSchedule,
    UnknownTask,
)
from .records import Run
from .retry import Backoff
from .schedules import Schedule
from .tasks import BoundTask, RunHandle, Task
from .worker import Worker

__all__ = [
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
