"""Task definitions, per-call options, and handles on enqueued runs."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import fields, replace
from datetime import timedelta
from typing import Any, Generic, ParamSpec, Protocol, TypedDict, TypeVar

import psycopg

from . import telemetry
from .definitions import Bound, TaskDefinition, check_execution_deadline
from .errors import RunCancelled, RunFailed
from .flow import KeySource
from .notify import Waiters
from .records import TERMINAL, CallOptions, NewRun, RunState, Status
from .retry import Backoff
from .storage import Store

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


class App(Protocol):
    """What tasks and run handles need of the App they belong to (:class:`durably.App`)."""

    @property
    def schema(self) -> str: ...
    @property
    def max_payload(self) -> int: ...
    @property
    def retention(self) -> float | None: ...
    @property
    def registry(self) -> Mapping[str, Task[Any, Any]]: ...
    async def store(self) -> Store: ...
    async def waiters(self) -> Waiters: ...
    def call(self, coro: Coroutine[Any, Any, T]) -> T: ...
    def cancel(self, run_id: int) -> bool: ...
    async def cancel_async(self, run_id: int) -> bool: ...


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
    retention: timedelta | float | None


class Task(TaskDefinition, Generic[P, R]):
    """A registered function that workers run. Call it directly to run it in-process; use
    :meth:`enqueue` to have a worker run it durably."""

    def __init__(self, app: App, fn: Callable[P, R], **options: Any) -> None:
        options.setdefault("retention", app.retention)
        super().__init__(fn, max_payload=app.max_payload, **options)
        self.app = app
        self.fn: Callable[P, R] = fn
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


class BoundTask(Bound):
    """A task with per-call options applied (see :meth:`Task.options`)."""

    def __init__(self, task: Task[Any, Any], opts: CallOptions) -> None:
        super().__init__(task, opts)
        self.task: Task[Any, Any] = task

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
