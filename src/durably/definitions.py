"""Task definitions: a registered function and its options, as workers run it.

The client's :class:`durably.Task` builds on :class:`TaskDefinition` with the enqueue API; the
engine's services (worker, durable runtime, scheduler) see definitions only, so they sit below
the client API (CONTRIBUTING.md, "Layers").
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from . import cron as cronlib
from .flow import KeySource, TaskFlow
from .records import CallOptions, NewRun
from .retry import Backoff
from .serde import Signature, check_text, encode_args


def check_execution_deadline(value: Any, where: str) -> None:
    """Refuse an ``execution_deadline`` that is not a number of seconds > 0 (or None)."""
    valid = value is None or (
        isinstance(value, int | float) and not isinstance(value, bool) and value > 0
    )
    if not valid:
        raise ValueError(
            f"{where}: execution_deadline={value!r} is not valid: pass seconds > 0 (counted from "
            "the run's first start), or None for no run deadline"
        )


def check_retention(value: Any, where: str) -> float | None:
    """``retention`` as seconds (from seconds or a ``timedelta``), or None to keep runs until
    purged by hand; anything else is refused."""
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    valid = seconds is None or (
        isinstance(seconds, int | float) and not isinstance(seconds, bool) and seconds >= 0
    )
    if not valid:
        raise ValueError(
            f"{where}: retention={value!r} is not valid: pass a timedelta or seconds >= 0 (how "
            "long finished runs are kept), or None to keep them until purged"
        )
    return None if seconds is None else float(seconds)


class TaskDefinition:
    """A registered function that workers run, with its options (see :class:`durably.Task`)."""

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        max_payload: int,
        name: str | None = None,
        queue: str = "default",
        retries: int = 0,
        backoff: Backoff | float | None = None,
        timeout: float | None = None,
        execution_deadline: float | None = None,
        schedule_timeout: float | None = None,
        priority: int = 0,
        max_recoveries: int = 20,
        durable: bool = False,
        concurrency: int | None = None,
        rate_limit: str | None = None,
        concurrency_key: KeySource = None,
        key_concurrency: int | None = None,
        key_rate_limit: str | None = None,
        key_ordered: bool = False,
        fairness_key: KeySource = None,
        cron: str | None = None,
        timezone: str | None = None,
        catch_up: str | None = None,
        retention: timedelta | float | None = None,
    ) -> None:
        if retries < 0:
            raise ValueError(f"retries={retries} is not valid: pass 0 or more")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout={timeout} is not valid: pass seconds > 0, or None")
        self.max_payload = max_payload
        self.fn = fn
        self.name = check_text(name or f"{fn.__module__}.{fn.__qualname__}", "task name")
        self.queue = check_text(queue, f"queue of task {self.name!r}")
        self.retries = retries
        self.backoff = Backoff.coerce(backoff)
        self.timeout = timeout
        # The run deadline: seconds from the first start, across retries, recoveries and
        # suspensions (``timeout`` bounds one attempt).
        check_execution_deadline(execution_deadline, f"task {self.name!r}")
        self.execution_deadline = execution_deadline
        self.schedule_timeout = schedule_timeout
        # Seconds a finished run of this task is kept (docs/retention.md); None: until purged.
        self.retention = check_retention(retention, f"task {self.name!r}")
        self.priority = priority
        self.max_recoveries = max_recoveries
        self.is_async = inspect.iscoroutinefunction(fn)
        self.durable = durable
        self.flow = TaskFlow.declare(
            self.name,
            concurrency=concurrency,
            rate_limit=rate_limit,
            concurrency_key=concurrency_key,
            key_concurrency=key_concurrency,
            key_rate_limit=key_rate_limit,
            key_ordered=key_ordered,
            fairness_key=fairness_key,
        )
        self.signature = Signature(fn, skip_first=durable)
        # A schedule named after the task, fired by workers (docs/scheduling.md): the cron, its
        # time zone (None: UTC) and catch-up policy (None: "latest").
        self.cron = cron
        self.timezone = timezone
        self.catch_up = catch_up
        if cron is not None or timezone is not None or catch_up is not None:
            check_declared(self)

    def new_run(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        opts: CallOptions,
        trace_context: str | None = None,
    ) -> NewRun:
        """Check and encode one call into a row to insert (``trace_context``: see
        :func:`durably.telemetry.carrier`)."""
        try:
            self.signature.check_call(args, kwargs)
        except TypeError as exc:
            raise TypeError(f"{self.name}: {exc}") from None
        if opts.delay < 0:
            raise ValueError(f"delay={opts.delay} is not valid: pass seconds >= 0")
        if opts.idempotency_key is not None:
            check_text(opts.idempotency_key, f"{self.name}: the idempotency key")
        if opts.queue is not None:
            check_text(opts.queue, f"{self.name}: the queue name")
        concurrency_key, fairness_key = self.flow.keys(
            self.name, (self.signature, args, kwargs), (opts.concurrency_key, opts.fairness_key)
        )
        queue = opts.queue or self.queue
        return NewRun(
            task=self.name,
            queue=queue,
            priority=self.priority if opts.priority is None else opts.priority,
            args=encode_args(self.name, args, kwargs, self.max_payload),
            max_retries=self.retries,
            max_recoveries=self.max_recoveries,
            delay=opts.delay,
            schedule_timeout=self.schedule_timeout,
            execution_deadline=opts.execution_deadline or self.execution_deadline,
            retention=self.retention,
            idempotency_key=opts.idempotency_key,
            durable=self.durable,
            trace_context=trace_context,
            concurrency_key=concurrency_key,
            fairness_key=fairness_key,
            # Every run is marked, whatever limits this process declares: the workers' own
            # declarations decide which runs their claims control (docs/flow-control.md).
            flow=True,
        )


class Bound:
    """A task definition with per-call options (the base of :class:`durably.BoundTask`)."""

    def __init__(self, task: TaskDefinition, opts: CallOptions) -> None:
        self.task = task
        self.opts = opts


def check_declared(task: TaskDefinition) -> None:
    """Check ``cron=`` (and ``timezone=``, ``catch_up=``) of ``@app.task`` at registration."""
    if task.cron is None:
        raise ValueError(
            f"timezone= and catch_up= of task {task.name!r} only apply with cron=: add "
            "cron='...' or remove them"
        )
    cronlib.parse(task.cron)
    cronlib.zone(task.timezone or "UTC")
    cronlib.check_catch_up(task.catch_up or cronlib.DEFAULT_CATCH_UP)
    try:
        task.signature.check_call((), {})
    except TypeError:
        required = [
            p.name
            for i, p in enumerate(task.signature.signature.parameters.values())
            if p.default is p.empty
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
            and not (i == 0 and task.durable)
        ]
        raise ValueError(
            f"task {task.name!r} cannot take cron=: it has arguments without defaults "
            f"({', '.join(required)}); give them defaults, or use app.schedule(task, cron, "
            "args=...)"
        ) from None
