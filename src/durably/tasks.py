"""Task definitions, per-call options, and handles on enqueued runs."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypedDict, TypeVar

import psycopg

from . import telemetry
from .errors import RunCancelled, RunFailed
from .flow import KeySource, TaskFlow
from .records import TERMINAL, NewRun, RunState, Status
from .retry import Backoff
from .serde import Signature, check_text, encode_args

if TYPE_CHECKING:
    from .app import App

P = ParamSpec("P")
R = TypeVar("R")


class TaskOptions(TypedDict, total=False):
    """Options of ``@app.task`` and ``@app.durable_task`` (see :class:`Task`)."""

    name: str | None
    queue: str
    retries: int
    backoff: Backoff | float | None
    timeout: float | None
    execution_deadline: float | None
    schedule_timeout: float | None
    priority: int
    max_recoveries: int
    concurrency: int | None
    rate_limit: str | None
    concurrency_key: KeySource
    key_concurrency: int | None
    key_rate_limit: str | None
    key_ordered: bool
    fairness_key: KeySource
    cron: str | None
    timezone: str | None
    catch_up: str | None


@dataclass(frozen=True)
class CallOptions:
    """Per-call overrides given with :meth:`Task.options`."""

    queue: str | None = None
    priority: int | None = None
    delay: float = 0.0
    idempotency_key: str | None = None
    concurrency_key: str | None = None
    fairness_key: str | None = None
    execution_deadline: float | None = None  # None: the task's own


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


class Task(Generic[P, R]):
    """A registered function that workers run. Call it directly to run it in-process; use
    :meth:`enqueue` to have a worker run it durably."""

    def __init__(
        self,
        app: App,
        fn: Callable[P, R],
        *,
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
    ) -> None:
        if retries < 0:
            raise ValueError(f"retries={retries} is not valid: pass 0 or more")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout={timeout} is not valid: pass seconds > 0, or None")
        self.app = app
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
            from .schedules import check_declared  # schedules builds on this module

            check_declared(self)
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"<durably task {self.name!r}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call the function in this process, bypassing the queue (and, for a durable task,
        the event log: pass a context yourself)."""
        return self.fn(*args, **kwargs)

    def options(
        self,
        *,
        priority: int | None = None,
        delay: float = 0.0,
        idempotency_key: str | None = None,
        queue: str | None = None,
        concurrency_key: str | None = None,
        fairness_key: str | None = None,
        execution_deadline: float | None = None,
    ) -> BoundTask:
        """Per-call options: ``task.options(priority=5, delay=10).enqueue(...)``, or as the
        task of ``ctx.run``/``ctx.spawn`` for a child; the keys override the task's key
        functions (docs/flow-control.md), ``execution_deadline`` the task's run deadline."""
        check_execution_deadline(execution_deadline, f"{self.name}.options")
        opts = CallOptions(
            queue,
            priority,
            delay,
            idempotency_key,
            concurrency_key,
            fairness_key,
            execution_deadline,
        )
        return BoundTask(self, opts)

    def enqueue(
        self, *args: Any, connection: psycopg.Connection[Any] | None = None, **kwargs: Any
    ) -> RunHandle:
        """Enqueue one run; with ``connection=`` it is inserted in the caller's transaction."""
        return BoundTask(self, CallOptions()).enqueue(*args, connection=connection, **kwargs)

    async def enqueue_async(
        self, *args: Any, connection: psycopg.AsyncConnection[Any] | None = None, **kwargs: Any
    ) -> RunHandle:
        """Async twin of :meth:`enqueue`."""
        return await BoundTask(self, CallOptions()).enqueue_async(
            *args, connection=connection, **kwargs
        )

    def enqueue_many(self, calls: Iterable[tuple[Any, ...]]) -> list[RunHandle]:
        """Enqueue one run per tuple of positional arguments, in one round trip."""
        return BoundTask(self, CallOptions()).enqueue_many(calls)

    async def enqueue_many_async(self, calls: Iterable[tuple[Any, ...]]) -> list[RunHandle]:
        """Async twin of :meth:`enqueue_many`."""
        return await BoundTask(self, CallOptions()).enqueue_many_async(calls)

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
            args=encode_args(self.name, args, kwargs, self.app.max_payload),
            max_retries=self.retries,
            max_recoveries=self.max_recoveries,
            delay=opts.delay,
            schedule_timeout=self.schedule_timeout,
            execution_deadline=opts.execution_deadline or self.execution_deadline,
            idempotency_key=opts.idempotency_key,
            durable=self.durable,
            trace_context=trace_context,
            concurrency_key=concurrency_key,
            fairness_key=fairness_key,
            # Every run is marked, whatever limits this process declares: the workers' own
            # declarations decide which runs their claims control (docs/flow-control.md).
            flow=True,
        )


class BoundTask:
    """A task with per-call options applied (see :meth:`Task.options`)."""

    def __init__(self, task: Task[Any, Any], opts: CallOptions) -> None:
        self.task = task
        self.opts = opts

    def options(self, **changes: Any) -> BoundTask:
        """Change more options."""
        known = [f.name for f in fields(CallOptions)]
        unknown = sorted(set(changes) - set(known))
        if unknown:
            raise TypeError(
                f"{self.task.name}.options: no option {unknown[0]!r}; the options are "
                + ", ".join(known)
            )
        check_execution_deadline(changes.get("execution_deadline"), f"{self.task.name}.options")
        return BoundTask(self.task, replace(self.opts, **changes))

    def enqueue(
        self, *args: Any, connection: psycopg.Connection[Any] | None = None, **kwargs: Any
    ) -> RunHandle:
        """Enqueue one run (see :meth:`Task.enqueue`)."""
        app = self.task.app
        with telemetry.enqueue_span(self.task.name):
            run = self.task.new_run(args, kwargs, self.opts, telemetry.carrier())
            if connection is not None:
                if not isinstance(connection, psycopg.Connection):
                    raise TypeError(
                        "enqueue(connection=...) takes a psycopg.Connection; "
                        "use enqueue_async(connection=...) for an AsyncConnection"
                    )
                ids = app.call(app.store()).enqueue_sync([run], connection)
            else:
                ids = app.call(self._insert([run]))
        return RunHandle(app, ids[0], self.task)

    async def _insert(self, runs: list[NewRun]) -> list[int]:
        return await (await self.task.app.store()).enqueue(runs)

    async def enqueue_async(
        self, *args: Any, connection: psycopg.AsyncConnection[Any] | None = None, **kwargs: Any
    ) -> RunHandle:
        """Async twin of :meth:`enqueue`."""
        with telemetry.enqueue_span(self.task.name):
            run = self.task.new_run(args, kwargs, self.opts, telemetry.carrier())
            store = await self.task.app.store()
            ids = await store.enqueue([run], connection)
        return RunHandle(self.task.app, ids[0], self.task)

    def _new_runs(self, calls: Iterable[tuple[Any, ...]]) -> list[NewRun]:
        runs = []
        trace_context = telemetry.carrier()  # the same enqueue span for the whole batch
        for i, call in enumerate(calls):
            if not isinstance(call, tuple):
                raise TypeError(
                    f"{self.task.name}.enqueue_many: item {i} is a {type(call).__name__}, "
                    "expected a tuple of positional arguments, e.g. (order_id, amount)"
                )
            runs.append(self.task.new_run(call, {}, self.opts, trace_context))
        return runs

    def enqueue_many(self, calls: Iterable[tuple[Any, ...]]) -> list[RunHandle]:
        """Enqueue many runs in one round trip."""
        batch = list(calls)
        with telemetry.enqueue_span(self.task.name, len(batch)):
            runs = self._new_runs(batch)
            if not runs:
                return []
            ids = self.task.app.call(self._insert(runs))
        return [RunHandle(self.task.app, i, self.task) for i in ids]

    async def enqueue_many_async(self, calls: Iterable[tuple[Any, ...]]) -> list[RunHandle]:
        """Async twin of :meth:`enqueue_many`."""
        batch = list(calls)
        with telemetry.enqueue_span(self.task.name, len(batch)):
            runs = self._new_runs(batch)
            if not runs:
                return []
            store = await self.task.app.store()
            ids = await store.enqueue(runs)
        return [RunHandle(self.task.app, i, self.task) for i in ids]


class RunHandle:
    """A handle on one run: its id, status, result, and cancellation."""

    def __init__(self, app: App, run_id: int, task: Task[Any, Any] | None = None) -> None:
        self.app = app
        self.id = run_id
        self._task = task

    def __repr__(self) -> str:
        return f"<RunHandle {self.id}>"

    def status(self) -> str:
        """The run's current status (QUEUED, RUNNING, WAITING, COMPLETED, FAILED, CANCELLED)."""
        return self.app.call(self.status_async())

    async def status_async(self) -> str:
        """Async twin of :meth:`status`."""
        state = await (await self.app.store()).run_state(self.id)
        if state is None:
            raise LookupError(f"run {self.id} does not exist in schema {self.app.schema!r}")
        return state.status

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the run to end and return its result; raises :class:`RunFailed` when it
        failed (or :class:`RunCancelled`) and :class:`TimeoutError` after ``timeout`` seconds."""
        return self.app.call(self.result_async(timeout))

    async def result_async(self, timeout: float | None = None) -> Any:
        """Async twin of :meth:`result`: waits on notifications, re-checking now and then."""
        store = await self.app.store()
        waiters = await self.app.waiters()
        deadline = None if timeout is None else time.monotonic() + timeout
        token = f"done:{self.id}"
        while True:
            fut = waiters.watch(token)
            try:
                state = await store.run_state(self.id)
                if state is None:
                    raise LookupError(f"run {self.id} does not exist in schema {self.app.schema!r}")
                if state.status in TERMINAL:
                    return self._outcome(state)
                wait = 5.0 if deadline is None else min(5.0, deadline - time.monotonic())
                if wait <= 0:
                    raise TimeoutError(f"run {self.id} is still {state.status} after {timeout}s")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(fut, wait)
            finally:
                waiters.unwatch(token, fut)

    def _outcome(self, state: RunState) -> Any:
        if state.status == Status.COMPLETED:
            task = self._task or self.app.registry.get(state.task)
            return state.result if task is None else task.signature.decode_result(state.result)
        if state.status == Status.CANCELLED:
            raise RunCancelled(self.id, state.error, state.status)
        raise RunFailed(self.id, state.error, state.status)

    def cancel(self) -> bool:
        """Cancel the run (and stop it if running); False when it had already ended."""
        return self.app.cancel(self.id)

    async def cancel_async(self) -> bool:
        """Async twin of :meth:`cancel`."""
        return await self.app.cancel_async(self.id)
