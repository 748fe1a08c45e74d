"""Records: the typed values that travel between durably's layers.

The bottom rung of the ladder (see CONTRIBUTING.md): statuses, outcome kinds, and the rows the
storage layer takes and returns. Nothing here imports another durably module but
:mod:`durably.errors`, so every layer may use these names.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    """A run's status, as stored in ``runs.status``. A ``StrEnum``: it compares equal to, and
    serialises as, the plain string."""

    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    WAITING = "WAITING"  # a durable run suspended until a child, a timer or an event
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


# Status by its stored text: a dict lookup, cheaper than calling the enum on every row.
STATUS_OF: dict[str, Status] = {s.value: s for s in Status}
TERMINAL: frozenset[Status] = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED})
UNFINISHED: frozenset[Status] = frozenset(set(Status) - TERMINAL)
# The same sets in display order, and the runs an operator's retry accepts (as its SQL does).
ENDED: tuple[Status, ...] = tuple(s for s in Status if s in TERMINAL)
NOT_ENDED: tuple[Status, ...] = tuple(s for s in Status if s not in TERMINAL)
RETRYABLE: tuple[Status, ...] = (Status.FAILED, Status.CANCELLED)
# Not a status: the operator views' name for a QUEUED run that is not due yet.
DELAYED = "DELAYED"


class OutcomeKind(StrEnum):
    """How an attempt ended, as the recorder writes it."""

    OK = "ok"  # completed with a result
    RETRY = "retry"  # failed, and will run again after a delay
    FAIL = "fail"  # failed for good
    RELEASE = "release"  # handed back: the database went away, the run resumes elsewhere


# The id of the run whose code the current asyncio task (or thread) executes, if any.
CURRENT_RUN: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "durably_current_run", default=None
)


class Suspend(BaseException):
    """Raised through user code to unwind a durable run that waits too long: a BaseException so
    that ``except Exception`` in user code does not swallow it."""

    def __init__(self, wake_in: float | None, children: list[int], event: str | None) -> None:
        super().__init__("suspended")
        self.wake_in = wake_in
        self.children = children
        self.event = event


@dataclass(frozen=True)
class NewRun:
    """A run to insert: everything enqueue decided, arguments already encoded as JSON."""

    task: str
    queue: str
    priority: int
    args: str
    max_retries: int
    max_recoveries: int
    delay: float
    schedule_timeout: float | None
    idempotency_key: str | None
    durable: bool = False
    trace_context: str | None = None  # JSON: the enqueuer's trace (telemetry.carrier)
    concurrency_key: str | None = None
    fairness_key: str | None = None
    flow: bool = False  # under flow control: claimed by the controlled claim
    execution_deadline: float | None = None  # seconds from the first start to the run deadline
    retention: float | None = None  # seconds the run is kept once finished; None: until purged


@dataclass(frozen=True)
class CallOptions:
    """Per-call overrides given with ``task.options(...)``."""

    queue: str | None = None
    priority: int | None = None
    delay: float = 0.0
    idempotency_key: str | None = None
    concurrency_key: str | None = None
    fairness_key: str | None = None
    execution_deadline: float | None = None  # None: the task's own


@dataclass(frozen=True)
class Outcome:
    """How one attempt ended, ready to be written by the recorder."""

    run_id: int
    attempt: int
    kind: OutcomeKind
    result: str | None = None  # JSON
    error: str | None = None  # JSON
    delay: float = 0.0  # before the next attempt, for RETRY and RELEASE


@dataclass(frozen=True)
class Fence:
    """Who may write for a run: the attempt and the worker that hold its lease. Every write of a
    run's attempt carries it; a write whose fence no longer matches changes nothing."""

    run_id: int
    attempt: int
    worker_id: str


@dataclass(slots=True)  # one per claimed run: no frozen dataclass's per-field setattr cost
class ClaimedRun:
    """One run a claim handed to a worker."""

    run_id: int
    task: str
    args: Any
    attempt: int
    failures: int
    max_retries: int
    has_log: bool
    trace_context: Any
    deadline_in: float | None  # seconds from the claim to the run deadline, if it has one


@dataclass(frozen=True)
class Claim:
    """What one claim statement did: the runs it handed over, and how many waiting runs whose
    timer was due it queued again (the next claim may take those)."""

    runs: list[ClaimedRun]
    woken: int


@dataclass(frozen=True)
class TaskRules:
    """One controlled task's limits, as the flow-control claim keeps them."""

    task: str
    concurrency: int | None
    rate_count: int | None  # starts per window of windows['t:<task>']
    key_concurrency: int | None
    key_rate_count: int | None  # starts per key per window of windows['k:<task>']
    ordered: bool
    fair: bool


@dataclass(frozen=True)
class QueueRules:
    """One limited queue's limits."""

    queue: str
    concurrency: int | None
    rate_count: int | None  # starts per window of windows['q:<queue>']


@dataclass(frozen=True)
class FlowRules:
    """One slot pool's flow control: its controlled tasks and limited queues, the tasks it
    claims freely beside them, and every rate window's length in seconds by rule name
    (``t:<task>``, ``k:<task>``, ``q:<queue>``)."""

    tasks: tuple[TaskRules, ...]
    queues: tuple[QueueRules, ...]
    free: tuple[str, ...]
    windows: dict[str, float]


@dataclass(frozen=True)
class RunState:
    """What a handle needs to know of a run: its status and, once ended, its outcome."""

    status: Status
    result: Any
    error: dict[str, Any] | None
    task: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", Status(self.status))  # the database gives a str


@dataclass(frozen=True)
class ChildEnd:
    """A child run's status and outcome, as its parent sees it."""

    status: Status
    result: Any
    error: dict[str, Any] | None

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", Status(self.status))  # the database gives a str

    @property
    def ended(self) -> bool:
        """True once the child is terminal."""
        return self.status in TERMINAL


@dataclass(frozen=True)
class LogWrite:
    """One entry to append to a run's event log, input and result already encoded as JSON."""

    seq: int
    kind: str
    name: str
    key: str
    input: str
    result: str | None = None
    error: str | None = None
    sleep: float | None = None  # seconds: a timer's length, or an event wait's timeout
    done: bool = False


@dataclass(frozen=True)
class Appended:
    """An entry as stored: its result as the database gives it back, and the seconds left until
    its wake time (database clock), for timers and event waits."""

    result: Any
    wake_in: float | None


@dataclass(frozen=True)
class TakenEvent:
    """An event a waiting entry took."""

    id: int
    payload: Any


@dataclass
class Entry:
    """One recorded operation of a durable run, as loaded from its event log."""

    seq: int
    kind: str
    name: str
    key: str
    input: Any
    result: Any
    error: dict[str, Any] | None
    child_id: int | None
    event_id: int | None
    wake_in: float | None
    done: bool
    child_status: str | None = None
    child_result: Any = None
    child_error: dict[str, Any] | None = None


@dataclass(frozen=True)
class Run:
    """A snapshot of one run as stored."""

    id: int
    task: str
    queue: str
    status: Status
    priority: int
    args: dict[str, Any]
    result: Any
    error: dict[str, Any] | None
    attempt: int
    failures: int
    max_retries: int
    recoveries: int
    idempotency_key: str | None
    run_at: datetime
    worker_id: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", Status(self.status))  # the database gives a str


@dataclass(frozen=True)
class ScheduleRow:
    """A schedule as stored; ``args`` is the payload ``{"args": [...], "kwargs": {...}}``."""

    name: str
    task: str
    cron: str
    timezone: str
    args: dict[str, Any]
    catch_up: str
    declared: bool
    paused: bool
    next_fire_at: datetime | None
    last_fired_at: datetime | None
    last_run_id: int | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class ScheduleSpec:
    """A schedule to create or update: its input already encoded as JSON."""

    name: str
    task: str
    cron: str
    timezone: str
    args: str
    catch_up: str
    next_fire_at: datetime


@dataclass(frozen=True)
class DueSchedule:
    """A schedule the scheduler read: due when ``wait_s`` <= 0 (database clock)."""

    name: str
    task: str
    cron: str
    timezone: str
    args: dict[str, Any]
    catch_up: str
    next_fire_at: datetime
    now: datetime
    wait_s: float
    missed: bool  # no worker ran when it came due, or it is long overdue
