"""durably: durable execution for Python, built entirely on PostgreSQL."""

from .app import App
from .errors import (
    ChildFailed,
    ConfigurationError,
    DatabaseUnavailable,
    DurablyError,
    LeaseLost,
    NonDeterminismError,
    NonRetryableError,
    NotSerializable,
    PayloadTooLarge,
    RunCancelled,
    RunFailed,
    UnknownTask,
)
from .retry import Backoff
from .tasks import BoundTask, Run, RunHandle, Task
from .worker import Worker

__all__ = [
    "App",
    "Backoff",
    "BoundTask",
    "ChildFailed",
    "ConfigurationError",
    "DatabaseUnavailable",
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
    "Task",
    "UnknownTask",
    "Worker",
]
