"""durably: durable execution for Python, built entirely on PostgreSQL."""

from .app import App
from .context import Child, DurableContext, SyncDurableContext, current_run_id
from .errors import (
    ChildFailed,
    ConfigurationError,
    DatabaseFull,
    DatabaseUnavailable,
    DurablyError,
    LeaseLost,
    NonDeterminismError,
    NonRetryableError,
    NotSerializable,
    PayloadTooLarge,
    RunCancelled,
    RunFailed,
    StepFailed,
    UnknownTask,
)
from .retry import Backoff
from .tasks import BoundTask, Run, RunHandle, Task
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
    "StepFailed",
    "SyncDurableContext",
    "Task",
    "UnknownTask",
    "Worker",
    "current_run_id",
]
