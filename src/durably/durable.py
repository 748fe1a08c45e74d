"""DurableRun: one execution of a durable run on a worker — its loaded log, its fenced appends,
its waits, and its suspension. The user-facing API is :mod:`durably.context`."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import replace
from typing import Any, Protocol, TypeVar

from . import failpoints, telemetry
from .attempt import Attempt
from .definitions import TaskDefinition
from .errors import LeaseLost, NonDeterminismError
from .notify import Waiters
from .records import Appended, ChildEnd, Entry, Fence, LogWrite, NewRun, Status, Suspend
from .serde import dumps
from .storage import Store, UserCodeFailed, is_transient
from .threads import DaemonThreads

T = TypeVar("T")


class Runtime(Protocol):
    """What a durable run needs of the worker that executes it."""

    id: str
    store: Store
    lease: float  # seconds a claim stays valid without a heartbeat
    evict_after: float  # seconds a run may wait in memory before it suspends
    max_payload: int
    threads: DaemonThreads
    waiters: Waiters

    def run_workflow(
        self, run: DurableRun, args: list[Any], kwargs: dict[str, Any]
    ) -> Awaitable[Any]:
        """Call the task's function with a context on ``run`` (see durably.context)."""
        ...


class DurableRun:
    """Drives one attempt of a durable run for the worker."""

    def __init__(self, runtime: Runtime, ex: Attempt) -> None:
        self.runtime = runtime
        self.store = runtime.store
        self.ex = ex
        self.task: TaskDefinition = ex.task
        self.run_id = ex.run_id
        self.attempt = ex.attempt
        self.log: dict[int, Entry] = {}
        self.nondeterminism: NonDeterminismError | None = None
        self.child_names: dict[int, str] = {}  # seq -> child task name
        self.lost = False
        # The connection error that cut this attempt off from the database, if any.
        self.interrupted: BaseException | None = None
        # The suspension this execution started, if any: once raised, every later operation
        # raises it again and the run suspends, even if user code caught it (a bare except:).
        self.suspending: Suspend | None = None
        # Children whose end this execution recorded (seq -> outcome): awaited again, they
        # answer from here, not by completing their entry a second time.
        self.observed: dict[int, ChildEnd] = {}
        # Open ctx.transactions hold the run's row lock: they take turns (see log_hold), and
        # the attempt's suspension and outcome, which would wait for that lock on one of the
        # engine's connections, are written only once none is open.
        self._transaction_turn = asyncio.Lock()
        self._open_transactions = 0
        self._no_transaction = asyncio.Event()
        self._no_transaction.set()

    @property
    def abandoned(self) -> bool:
        """True once the worker gave this execution up (cancelled, lease lost)."""
        return self.ex.abandoned or self.lost

    @property
    def fence(self) -> Fence:
        """Who may write for this attempt."""
        return Fence(self.run_id, self.attempt, self.runtime.id)

    async def call(self, args: list[Any], kwargs: dict[str, Any], has_log: bool) -> Any:
        """Run the task function against the log; raises Suspend, LeaseLost or its error."""
        if has_log:
            self.log = {e.seq: e for e in await self._db(self.store.load_log(self.run_id))}
        try:
            value = await self.runtime.run_workflow(self, args, kwargs)
        except BaseException:
            if self.suspending is None or self.nondeterminism is not None:
                raise
            value = None  # whatever user code raised after it caught the suspension
        finally:
            # A transaction the function left running (gathered beside an operation that
            # raised, or a sync one past the task's timeout) ends before the outcome is written.
            if not self.ex.abandoned:
                await self._no_transaction.wait()
        if self.nondeterminism is not None:  # raised into user code, which may have caught it
            raise self.nondeterminism
        if self.suspending is not None:  # raised into user code, which may have caught it
            raise self.suspending
        if self.lost:
            raise LeaseLost(f"run {self.run_id} attempt {self.attempt} lost its lease")
        if self.interrupted is not None:  # raised into user code, which may have caught it
            raise self.interrupted
        return value

    async def _db(self, call: Coroutine[Any, Any, T]) -> T:
        """Run one of the engine's statements for this attempt. A connection error marks the
        attempt interrupted, and every later statement fails at once: the worker then hands the
        run back to resume from its log (the statement whose reply was lost may have committed,
        and the next attempt will see it) rather than failing a run that did nothing wrong."""
        if self.interrupted is not None:
            call.close()
            raise self.interrupted
        try:
            value = await call
            failpoints.lose_reply("lost_reply_log", self.task.name, self.run_id)
            return value
        except BaseException as exc:
            if is_transient(exc):
                self.interrupted = exc
            raise

    def _check(self, written: bool) -> None:
        if not written:
            self.lost = True
            raise LeaseLost(
                f"run {self.run_id} attempt {self.attempt} no longer belongs to this worker"
            )

    # -- appends -------------------------------------------------------------------------------

    async def _append(self, write: LogWrite) -> Appended:
        """Append one entry, fenced; returns it as stored."""
        row = await self._db(self.store.log_append(self.fence, write))
        self._check(row is not None)
        telemetry.event(write.kind, seq=write.seq, name=write.name, failed=write.error is not None)
        assert row is not None
        return row

    async def append(
        self,
        seq: int,
        kind: str,
        name: str,
        key: str,
        input_json: str,
        result_json: str | None,
        error: dict[str, Any] | None,
    ) -> Any:
        """Append a finished entry (input and result already encoded, and checked against the
        payload limit); returns the stored result, as Postgres gives it back."""
        error_json = None if error is None else dumps(error)
        write = LogWrite(seq, kind, name, key, input_json, result_json, error_json, done=True)
        return (await self._append(write)).result

    async def append_sleep(self, seq: int, key: str, seconds: float) -> float:
        """Record a timer; returns the seconds left (database clock)."""
        write = LogWrite(seq, "sleep", "sleep", key, dumps({"seconds": seconds}))
        wake_in = (await self._append(replace(write, sleep=float(seconds)))).wake_in
        assert wake_in is not None
        return wake_in

    async def append_wait(
        self, seq: int, key: str, event: str, timeout: float | None
    ) -> float | None:
        """Record an event wait (with its deadline, if any)."""
        write = LogWrite(seq, "event", event, key, dumps({"key": event, "timeout": timeout}))
        return (await self._append(replace(write, sleep=timeout))).wake_in

    async def complete(self, seq: int, result: Any, error: dict[str, Any] | None) -> None:
        """Mark a pending entry done with its outcome."""
        result_json = None if result is None else dumps(result)
        error_json = None if error is None else dumps(error)
        self._check(
            await self._db(self.store.log_complete(self.fence, seq, result_json, error_json))
        )

    async def spawn(self, seq: int, key: str, run: NewRun, durable: bool) -> int:
        """Create the child run and its entry in one fenced statement; returns the child id."""
        failpoints.hit("before_spawn", run.task)
        child = replace(run, durable=durable)
        child_id = await self._db(self.store.log_spawn(self.fence, seq, key, child))
        self._check(child_id is not None)
        assert child_id is not None
        telemetry.event("child", seq=seq, name=run.task, child_id=child_id)
        failpoints.hit("after_spawn", run.task)
        return child_id

    async def transaction(
        self,
        seq: int,
        name: str,
        key: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        encode: Callable[[Any], str] = dumps,
    ) -> Any:
        """Run ``fn(conn, *args)`` and record its result, encoded by ``encode``, in the same
        transaction: an error from ``encode`` rolls back ``fn``'s writes too."""
        write = LogWrite(seq, "transaction", name, key, dumps(list(args)), done=True)
        self._open_transactions += 1
        self._no_transaction.clear()
        try:
            async with self._transaction_turn:
                held, value = await self._db(self._in_transaction(write, fn, args, encode))
        except UserCodeFailed as failure:
            error: Exception | None = failure.error
        else:
            error = None
        finally:
            self._open_transactions -= 1
            if not self._open_transactions:
                self._no_transaction.set()
        if error is not None:
            raise error  # the function's own exception, as it raised it: the workflow's to handle
        self._check(held)
        telemetry.event("transaction", seq=seq, name=name)
        return value

    async def _in_transaction(
        self,
        write: LogWrite,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        encode: Callable[[Any], str],
    ) -> tuple[bool, Any]:
        lease = self.runtime.lease

        def call(conn: Any) -> Any:
            return fn(conn, *args)

        if asyncio.iscoroutinefunction(fn):
            return await self.store.in_transaction(self.fence, write, lease, call, encode)
        # On the worker's own threads, not the loop's small default pool: user code that hangs
        # there would starve every other sync step of the worker.
        run = functools.partial(self.store.in_transaction_sync, self.fence, write, lease, call)
        return await asyncio.get_running_loop().run_in_executor(self.runtime.threads, run, encode)

    # -- waits ---------------------------------------------------------------------------------

    def _recorded_child(self, seq: int) -> ChildEnd | None:
        if seq in self.observed:
            return self.observed[seq]
        entry = self.log.get(seq)
        if entry is None or not entry.done:
            return None
        error = entry.error
        status = Status.COMPLETED if error is None else error.get("status", Status.FAILED)
        return ChildEnd(status, entry.result, error)

    async def wait_children(self, seqs: list[int], ids: list[int]) -> list[ChildEnd]:
        """Outcomes of children, in order: recorded ones from the log, others awaited."""
        outcomes: dict[int, ChildEnd] = {}
        for seq in seqs:
            recorded = self._recorded_child(seq)
            if recorded is not None:
                outcomes[seq] = recorded
        deadline = time.monotonic() + self.runtime.evict_after
        while len(outcomes) < len(seqs):
            pending = {seq: cid for seq, cid in zip(seqs, ids, strict=True) if seq not in outcomes}
            tokens = [f"done:{cid}" for cid in pending.values()]
            futures = [self.runtime.waiters.watch(t) for t in tokens]
            try:
                ends = await self._db(self.store.children_status(list(pending.values())))
                for seq, cid in pending.items():
                    end = ends[cid]
                    if end.ended:
                        stored = None if end.error is None else {**end.error, "status": end.status}
                        await self.complete(seq, end.result, stored)
                        failpoints.hit("after_observe", self.child_names.get(seq, ""))
                        outcomes[seq] = self.observed[seq] = ChildEnd(
                            end.status, end.result, stored
                        )
                if len(outcomes) == len(seqs):
                    break
                suspend = Suspend(None, list(pending.values()), None)
                await self._wait_or_suspend(futures, deadline, suspend)
            finally:
                for token, fut in zip(tokens, futures, strict=True):
                    self.runtime.waiters.unwatch(token, fut)
        return [outcomes[seq] for seq in seqs]

    async def wait_timer(self, seq: int, wake_in: float) -> None:
        """Sleep in memory when the timer ends before eviction; else suspend until it fires."""
        if wake_in > self.runtime.evict_after:
            raise self.suspend_with(Suspend(wake_in, [], None))
        if wake_in > 0:
            await asyncio.sleep(wake_in)
        await self.complete(seq, None, None)

    async def wait_event(self, seq: int, key: str, wake_in: float | None) -> Any:
        """Take the event for this wait, waiting (then suspending) until it is pushed."""
        started = time.monotonic()
        deadline = started + self.runtime.evict_after
        token = f"ev:{key}"
        while True:
            fut = self.runtime.waiters.watch(token)
            try:
                taken = await self._db(self.store.take_event(self.fence, seq, key))
                if taken is not None:
                    return taken.payload
                left = None if wake_in is None else wake_in - (time.monotonic() - started)
                if left is not None and left <= 0:
                    message = f"no event {key!r} arrived within the timeout"
                    await self.complete(seq, None, {"type": "TimeoutError", "message": message})
                    raise TimeoutError(message)
                await self._wait_or_suspend([fut], deadline, Suspend(left, [], key), cap=left)
            finally:
                self.runtime.waiters.unwatch(token, fut)

    async def _wait_or_suspend(
        self,
        futures: list[asyncio.Future[None]],
        deadline: float,
        suspend: Suspend,
        cap: float | None = None,
    ) -> None:
        """Wait for a notification (re-checking every second) until ``deadline``, then suspend."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise self.suspend_with(suspend)
        await asyncio.wait(futures, timeout=min(left, 1.0, left if cap is None else cap))

    def suspend_with(self, suspend: Suspend) -> Suspend:
        """Remember the suspension this execution starts (the first one wins), to raise."""
        if self.suspending is None:
            self.suspending = suspend
        return self.suspending

    async def suspend(self, s: Suspend) -> None:
        """Release the slot: WAITING until what the run waits for happens."""
        await self._db(self.store.suspend(self.fence, s.wake_in, s.children, s.event))
