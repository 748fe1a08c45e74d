"""DurableContext: how a durable task checkpoints its progress in its event log.

Every operation (a step, a child run, a sleep, an event wait, a recorded value) takes the next
sequence number. On the first execution it does the work and appends the outcome to the log; when
the run executes again (after a crash, a retry or a suspension) the function runs from the top
and each operation whose sequence number is already in the log returns the recorded outcome
without doing the work again. Each entry carries a key, a hash of (kind, name, input): if the code
now does something else at that position, the run fails with NonDeterminismError.

A wait that is not satisfied within ``evict_after`` seconds raises :class:`Suspend`: the worker
marks the run WAITING and frees its slot; a child's end, the timer or the event queues it again.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import hashlib
import inspect
import json
import random as _random
import uuid
from collections.abc import Awaitable, Callable, Generator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import pydantic

from . import telemetry
from .definitions import Bound, TaskDefinition
from .errors import ChildFailed, NonDeterminismError, NotSerializable, StepFailed
from .records import CURRENT_RUN, CallOptions, Entry, Status
from .serde import (
    ReturnType,
    as_stored,
    check_text,
    dumps,
    encode_value,
    error_dict,
    first_problem,
    return_type,
)

if TYPE_CHECKING:
    from .durable import DurableRun

T = TypeVar("T")
_step_key: contextvars.ContextVar[str | None] = contextvars.ContextVar("durably_step", default=None)


def current_run_id() -> int | None:
    """Inside a task (or durable task) executed by a worker: the id of its run, e.g. to key an
    external side effect so that at-least-once execution applies it once. None elsewhere."""
    return CURRENT_RUN.get()


def operation_key(kind: str, name: str, input_json: str) -> str:
    """The key of an operation: a hash of its kind, target name and canonical JSON input."""
    return hashlib.sha256(f"{kind}\0{name}\0{input_json}".encode()).hexdigest()[:32]


def canonical(value: Any) -> str:
    """Canonical JSON (sorted keys), so equal inputs give equal keys."""
    return dumps(value, sort_keys=True)


def _describe(kind: str, name: str, input_json: str) -> str:
    shown = input_json if len(input_json) <= 200 else input_json[:197] + "..."
    return f"{kind} {name!r} with input {shown}"


class Child:
    """A child run spawned by :meth:`DurableContext.spawn`; await it for its result."""

    def __init__(self, ctx: DurableContext, seq: int, recording: asyncio.Future[int]) -> None:
        self._ctx = ctx
        self.seq = seq
        self._recording = recording

    async def id(self) -> int:
        """The child's run id (once its creation is recorded)."""
        return await self._recording

    def __await__(self) -> Generator[Any, None, Any]:
        results = yield from self._ctx.gather(self).__await__()
        return results[0]


class DurableContext:
    """Passed as the first argument of an ``async def`` durable task."""

    def __init__(self, run: DurableRun) -> None:
        self._run = run
        self._next_seq = 0
        self._child_returns: dict[int, ReturnType] = {}  # seq -> the child task's return type

    @property
    def run_id(self) -> int:
        """The id of this run."""
        return self._run.run_id

    @property
    def attempt(self) -> int:
        """The attempt number of this execution."""
        return self._run.attempt

    @property
    def cancelled(self) -> bool:
        """True once the run was cancelled or taken away from this worker."""
        return self._run.abandoned

    @property
    def idempotency_key(self) -> str:
        """Inside a step or a transaction: ``"<run id>:<sequence>"``, the same on every
        re-execution of that step, to pass to external services so that at-least-once becomes
        effectively-once."""
        key = _step_key.get()
        if key is None:
            raise RuntimeError(
                "ctx.idempotency_key is only defined inside ctx.step(...) or ctx.transaction(...)"
            )
        return key

    # -- replay --------------------------------------------------------------------------------

    def _lookup(
        self, kind: str, name: str, input_value: Any, input_json: str | None = None
    ) -> tuple[int, str, str, Entry | None]:
        """Take the next sequence number; return the recorded entry there, if any. The input is
        ``input_json`` when already encoded (canonically), else ``input_value`` encoded here: an
        input that cannot be recorded raises NotSerializable or PayloadTooLarge."""
        if self._run.suspending is not None:  # user code caught the suspension: raise it again
            raise self._run.suspending
        inside = _step_key.get()
        if inside is not None and inside.startswith(f"{self.run_id}:"):
            raise RuntimeError(
                f"ctx.{kind}() was called inside a step or transaction of run {self.run_id}: "
                "a re-execution replays that step without calling it, so the operation would "
                "vanish from the order of operations; call it from the workflow function instead"
            )
        if input_json is None:
            what = f"the input of {kind} {name!r}"
            input_json = encode_value(input_value, what, self._max_payload, sort_keys=True)
        seq = self._next_seq
        self._next_seq += 1
        key = operation_key(kind, name, input_json)
        entry = self._run.log.get(seq)
        if entry is not None and entry.key != key:
            error = NonDeterminismError(
                f"run {self.run_id} is not deterministic at event {seq}: the log recorded "
                f"{_describe(entry.kind, entry.name, canonical(entry.input))} but the code now "
                f"did {_describe(kind, name, input_json)}; keep the code's order of operations "
                f"for runs in flight, or replay the run (durably runs replay {self.run_id})"
            )
            self._run.nondeterminism = error
            raise error
        return seq, key, input_json, entry

    @property
    def _max_payload(self) -> int:
        return self._run.runtime.max_payload

    def _encode_result(self, kind: str, name: str, value: Any, returns: ReturnType) -> str:
        """Encode what a step or transaction returned, refusing (NotSerializable,
        PayloadTooLarge) what could not be recorded and handed back the same on re-execution."""
        what = f"the result of {kind} {name!r}"
        encoded = encode_value(value, what, self._max_payload)
        if returns.adapter is not None:
            try:
                returns.decode(json.loads(encoded))
            except pydantic.ValidationError as exc:
                raise NotSerializable(
                    f"{what} ({type(value).__name__}) does not rebuild from JSON into its "
                    f"declared return type {returns.name} ({first_problem(exc)}): return a "
                    f"{returns.name}, or change the annotation"
                ) from None
        return encoded

    # -- steps ---------------------------------------------------------------------------------

    async def step(
        self, fn: Callable[..., Any], *args: Any, name: str | None = None, retries: int = 0
    ) -> Any:
        """Call ``fn(*args)`` once and checkpoint its result; on re-execution return the recorded
        result. Exceptions are retried ``retries`` times; a final failure is recorded and raised
        as :class:`StepFailed` (here and on every re-execution)."""
        step_name = name or str(getattr(fn, "__qualname__", repr(fn)))
        returns = _returns("step", step_name, fn)
        seq, key, input_json, entry = self._lookup("step", step_name, list(args))
        if entry is not None:
            return _decoded("step", step_name, returns, _replayed(entry))
        token = _step_key.set(f"{self.run_id}:{seq}")
        try:
            value, error = await self._call_with_retries(fn, args, retries)
        finally:
            _step_key.reset(token)
        encoded = (
            None if error is not None else self._encode_result("step", step_name, value, returns)
        )
        stored = await self._run.append(seq, "step", step_name, key, input_json, encoded, error)
        if error is not None:
            raise StepFailed(f"step {step_name!r} failed: {error['type']}: {error['message']}")
        # What Postgres gave back, as a re-execution will read it: the same value both times.
        return _decoded("step", step_name, returns, stored)

    async def _call_with_retries(
        self, fn: Callable[..., Any], args: tuple[Any, ...], retries: int
    ) -> tuple[Any, dict[str, Any] | None]:
        for attempt in range(retries + 1):
            try:
                if inspect.iscoroutinefunction(fn):
                    return await fn(*args), None
                # On the worker's own threads (which carry this context), not the loop's small
                # default pool: steps that hang there would starve every sync step of the worker.
                threads = self._run.runtime.threads
                call = functools.partial(fn, *args)
                return await asyncio.get_running_loop().run_in_executor(threads, call), None
            except Exception as exc:
                if attempt == retries:
                    return None, error_dict(exc)
                await asyncio.sleep(min(0.5 * 2**attempt, 30.0))
        raise AssertionError("unreachable")

    async def transaction(self, fn: Callable[..., Any], *args: Any, name: str | None = None) -> Any:
        """Call ``fn(conn, *args)`` inside the very transaction that records its result, so an
        effect in this database happens exactly once. ``fn`` is async and gets a
        ``psycopg.AsyncConnection``, or sync and gets a ``psycopg.Connection``."""
        step_name = name or str(getattr(fn, "__qualname__", repr(fn)))
        returns = _returns("transaction", step_name, fn)
        seq, key, _, entry = self._lookup("transaction", step_name, list(args))
        if entry is not None:
            return _decoded("transaction", step_name, returns, _replayed(entry))
        stored: list[Any] = []

        def encode(value: Any) -> str:
            # Inside the transaction: a refusal rolls back fn's writes with the entry.
            encoded = self._encode_result("transaction", step_name, value, returns)
            stored.append(as_stored(encoded))
            return encoded

        # Like a step's: ctx.idempotency_key is defined inside, ctx operations are refused.
        token = _step_key.set(f"{self.run_id}:{seq}")
        try:
            await self._run.transaction(seq, step_name, key, fn, args, encode)
        finally:
            _step_key.reset(token)
        return _decoded("transaction", step_name, returns, stored[0])

    # -- recorded values -----------------------------------------------------------------------

    async def now(self) -> datetime:
        """The database's current time, recorded once."""
        seq, key, input_json, entry = self._lookup("now", "now", None)
        value = (
            entry.result
            if entry is not None
            else await self._run.append(seq, "now", "now", key, input_json, None, None)
        )
        return datetime.fromtimestamp(float(value), UTC)

    async def uuid4(self) -> uuid.UUID:
        """A random UUID, recorded once."""
        return uuid.UUID(await self._recorded("uuid4", lambda: str(uuid.uuid4())))

    async def random(self) -> float:
        """A random float in [0, 1), recorded once."""
        return float(await self._recorded("random", _random.random))

    async def _recorded(self, kind: str, make: Callable[[], Any]) -> Any:
        seq, key, input_json, entry = self._lookup(kind, kind, None)
        if entry is not None:
            return entry.result
        encoded = dumps(make())
        return await self._run.append(seq, kind, kind, key, input_json, encoded, None)

    # -- children ------------------------------------------------------------------------------

    def spawn(self, task: TaskDefinition | Bound, *args: Any, **kwargs: Any) -> Child:
        """Start a child run now (its sequence number is taken at once); await the returned
        :class:`Child`, or pass several to :meth:`gather`, for results. ``task`` may carry
        per-child options: ``ctx.spawn(charge.options(priority=5, queue="payments"), ...)``."""
        task, opts = task_options(task)
        run = task.new_run(args, kwargs, opts, telemetry.carrier())
        # The options are not part of the operation's key: they say how the child is scheduled,
        # not what it does, so changing them between deploys leaves runs in flight replayable.
        seq, key, _, entry = self._lookup("child", task.name, None, input_json=run.args)
        self._run.child_names[seq] = task.name
        self._child_returns[seq] = task.signature.returns
        loop = asyncio.get_running_loop()
        if entry is not None and entry.child_id is not None:
            recorded: asyncio.Future[int] = loop.create_future()
            recorded.set_result(entry.child_id)
            return Child(self, seq, recorded)
        recording = asyncio.ensure_future(self._run.spawn(seq, key, run, task.durable))
        return Child(self, seq, recording)

    async def run(self, task: TaskDefinition | Bound, *args: Any, **kwargs: Any) -> Any:
        """Spawn a child run and wait for its result; raises :class:`ChildFailed` if it fails.
        ``task`` may be ``task.options(...)`` (see :meth:`spawn`)."""
        return await self.spawn(task, *args, **kwargs)

    async def gather(self, *children: Child) -> list[Any]:
        """Wait for every child; return their results in order. Raises :class:`ChildFailed` for
        the first child (in order) that failed."""
        ids = [await child.id() for child in children]
        outcomes = await self._run.wait_children([c.seq for c in children], ids)
        results = []
        for child, child_id, end in zip(children, ids, outcomes, strict=True):
            if end.status != Status.COMPLETED:
                err = end.error or {"type": end.status, "message": ""}
                what = f"{err.get('type')}: {err.get('message')}"
                raise ChildFailed(
                    f"child run {child_id} {end.status.lower()}: {what}",
                    child_id=child_id,
                    error=err,
                )
            returns = self._child_returns.get(child.seq)
            name = self._run.child_names.get(child.seq, "")
            value = end.result
            results.append(value if returns is None else _decoded("child", name, returns, value))
        return results

    # -- waits ---------------------------------------------------------------------------------

    async def sleep(self, seconds: float) -> None:
        """Sleep durably: the wake time is recorded once, so a crash does not restart it."""
        seq, key, _, entry = self._lookup("sleep", "sleep", None)
        if entry is None:
            wake_in = await self._run.append_sleep(seq, key, seconds)
        elif entry.done:
            return
        else:
            wake_in = entry.wake_in or 0.0
        await self._run.wait_timer(seq, wake_in)

    async def sleep_until(self, when: datetime) -> None:
        """Sleep durably until ``when`` (an aware datetime)."""
        if when.tzinfo is None:
            raise ValueError("sleep_until needs an aware datetime, e.g. datetime.now(UTC)")
        now = await self.now()
        await self.sleep(max(0.0, (when - now).total_seconds()))

    async def wait_for_event(self, key: str, timeout: float | None = None) -> Any:
        """Wait for an event pushed with ``app.push_event(key, payload)`` and return its payload.

        Sees the first event with that key pushed after this run was created and not taken by an
        earlier wait of this run. Raises TimeoutError after ``timeout`` seconds (recorded too)."""
        check_text(key, "the event key")  # one push_event would refuse could never arrive
        seq, log_key, _, entry = self._lookup("event", key, None)
        if entry is None:
            wake_in = await self._run.append_wait(seq, log_key, key, timeout)
        elif entry.done:
            return _replayed(entry)
        else:
            wake_in = entry.wake_in
        return await self._run.wait_event(seq, key, wake_in)


def task_options(target: Any) -> tuple[TaskDefinition, CallOptions]:
    """The task of a child and its per-child options: ``target`` is a task, or a task with
    options (``task.options(...)``); anything else is refused."""
    if isinstance(target, Bound):
        return target.task, target.opts
    if isinstance(target, TaskDefinition):
        return target, CallOptions()
    what = getattr(target, "__qualname__", None) or type(target).__name__
    raise TypeError(
        "ctx.run and ctx.spawn take a task (registered with @app.task or @app.durable_task) or "
        f"task.options(...), not {what!r}: register it as a task, or call it with ctx.step"
    )


def _returns(kind: str, name: str, fn: Any) -> ReturnType:
    """``fn``'s declared return type; refuses one that no JSON value could be rebuilt into,
    before anything runs."""
    returns = return_type(fn)
    if returns.problem is not None:
        raise NotSerializable(
            f"{kind} {name!r} declares the return type {returns.name}, which cannot be rebuilt "
            f"from JSON ({returns.problem}): declare JSON types, dataclasses or pydantic models"
        )
    return returns


def _decoded(kind: str, name: str, returns: ReturnType, value: Any) -> Any:
    """A recorded result, rebuilt into its declared return type."""
    try:
        return returns.decode(value)
    except pydantic.ValidationError as exc:
        raise NotSerializable(
            f"the recorded result of {kind} {name!r} does not rebuild into its declared return "
            f"type {returns.name} ({first_problem(exc)}): declare the type it was recorded with"
        ) from None


def _replayed(entry: Entry) -> Any:
    if entry.error is not None:
        err = entry.error
        if err.get("type") == "TimeoutError" and entry.kind == "event":
            raise TimeoutError(err.get("message", "timed out"))
        raise StepFailed(f"step {entry.name!r} failed: {err.get('type')}: {err.get('message')}")
    return entry.result


class SyncDurableContext:
    """Passed as the first argument of a plain ``def`` durable task: the same operations as
    :class:`DurableContext`, blocking instead of awaitable. The task runs on a worker thread;
    each operation is carried out on the worker's event loop."""

    def __init__(self, ctx: DurableContext, loop: asyncio.AbstractEventLoop) -> None:
        self._ctx = ctx
        self._loop = loop

    def _call(self, coro: Awaitable[T]) -> T:
        async def wrapped() -> T:
            return await coro

        return asyncio.run_coroutine_threadsafe(wrapped(), self._loop).result()

    run_id = property(lambda self: self._ctx.run_id, doc="The id of this run.")
    attempt = property(lambda self: self._ctx.attempt, doc="The attempt of this execution.")
    cancelled = property(lambda self: self._ctx.cancelled, doc="True once cancelled.")
    idempotency_key = property(lambda self: self._ctx.idempotency_key, doc="See DurableContext.")

    def step(
        self, fn: Callable[..., Any], *args: Any, name: str | None = None, retries: int = 0
    ) -> Any:
        """See :meth:`DurableContext.step`."""
        return self._call(self._ctx.step(fn, *args, name=name, retries=retries))

    def transaction(self, fn: Callable[..., Any], *args: Any, name: str | None = None) -> Any:
        """See :meth:`DurableContext.transaction`."""
        return self._call(self._ctx.transaction(fn, *args, name=name))

    def spawn(self, task: TaskDefinition | Bound, *args: Any, **kwargs: Any) -> Child:
        """See :meth:`DurableContext.spawn`."""

        async def spawn() -> Child:
            child = self._ctx.spawn(task, *args, **kwargs)
            await child.id()
            return child

        return self._call(spawn())

    def run(self, task: TaskDefinition | Bound, *args: Any, **kwargs: Any) -> Any:
        """See :meth:`DurableContext.run`."""
        return self._call(self._ctx.run(task, *args, **kwargs))

    def gather(self, *children: Child) -> list[Any]:
        """See :meth:`DurableContext.gather`."""
        return self._call(self._ctx.gather(*children))

    def sleep(self, seconds: float) -> None:
        """See :meth:`DurableContext.sleep`."""
        self._call(self._ctx.sleep(seconds))

    def sleep_until(self, when: datetime) -> None:
        """See :meth:`DurableContext.sleep_until`."""
        self._call(self._ctx.sleep_until(when))

    def wait_for_event(self, key: str, timeout: float | None = None) -> Any:
        """See :meth:`DurableContext.wait_for_event`."""
        return self._call(self._ctx.wait_for_event(key, timeout))

    def now(self) -> datetime:
        """See :meth:`DurableContext.now`."""
        return self._call(self._ctx.now())

    def uuid4(self) -> uuid.UUID:
        """See :meth:`DurableContext.uuid4`."""
        return self._call(self._ctx.uuid4())

    def random(self) -> float:
        """See :meth:`DurableContext.random`."""
        return self._call(self._ctx.random())


async def run_workflow(run: DurableRun, args: list[Any], kwargs: dict[str, Any]) -> Any:
    """Call a durable task's function for one execution of ``run``: with a
    :class:`DurableContext`, or for a sync function a :class:`SyncDurableContext`, on one of the
    worker's threads."""
    ctx = DurableContext(run)
    fn = run.task.fn
    if run.task.is_async:
        return await fn(ctx, *args, **kwargs)
    loop = asyncio.get_running_loop()
    call = functools.partial(fn, SyncDurableContext(ctx, loop), *args, **kwargs)
    return await loop.run_in_executor(run.runtime.threads, call)
