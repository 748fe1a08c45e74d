"""The worker: claims runs into a fixed number of slots, executes them, records outcomes.

Loops, each an asyncio task on one event loop:

- claim (here): ``free slots`` runs per statement (guide lessons 2-3), woken by NOTIFY, by a freed
  slot, or by the poll timer (the fallback that makes notifications optional); each claimed run
  executes in a task of its own (:mod:`durably.execution`);
- record (:mod:`durably.recorder`): outcomes written in batches, one fenced statement per batch;
- heartbeat (here): extends the leases this worker holds and abandons runs it no longer holds;
- sweep (:mod:`durably.sweeper`): recovers runs of dead workers and expired leases (one sweeper
  at a time, any worker);
- schedule (:mod:`durably.scheduler`): fires due cron schedules;
- listen (:mod:`durably.notify`): the worker's own connection, its liveness lock and LISTEN.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Mapping
from typing import Any, Protocol

import psycopg

from . import failpoints, flow, telemetry
from .attempt import Attempt
from .definitions import TaskDefinition
from .durable import DurableRun
from .errors import ConfigurationError, DurablyError
from .eventloop import ABANDON_GRACE, contained_task, serve
from .execution import execute
from .flow import QueueLimits
from .notify import Listener, Waiters
from .recorder import Recorder
from .records import ClaimedRun, Outcome, OutcomeKind
from .scheduler import Scheduler
from .serde import error_json
from .storage import LATEST_VERSION, Store, first_line, is_transient
from .sweeper import sweep_forever
from .threads import DaemonThreads

log = logging.getLogger("durably.worker")

_DB_ERRORS = (psycopg.Error, DurablyError, OSError)


class WorkerHost(Protocol):
    """What a worker needs of the App whose tasks it runs (:class:`durably.App`)."""

    @property
    def url(self) -> str: ...
    @property
    def schema(self) -> str: ...
    @property
    def registry(self) -> Mapping[str, TaskDefinition]: ...
    @property
    def queues(self) -> Mapping[str, QueueLimits]: ...  # the queues' declared limits
    @property
    def max_payload(self) -> int: ...
    @property
    def auto_migrate(self) -> bool: ...
    @property
    def retention(self) -> float | None: ...  # seconds; events and stopped workers of that age go

    def run_workflow(
        self, run: DurableRun, args: list[Any], kwargs: dict[str, Any]
    ) -> Awaitable[Any]:
        """Call a durable task's function with a context on ``run``."""
        ...


class Worker:
    """Runs an App's tasks. Options:

    - ``slots``: how many task runs execute at once in this process (default 10);
    - ``durable_slots``: how many durable runs execute at once, a separate pool so that parents
      waiting for children never starve the children (default 100);
    - ``evict_after``: seconds a durable run may wait in memory before it is suspended (default 5);
    - ``queues``: queues to serve (default: every queue the App's tasks name);
    - ``poll_interval``: seconds between polls when no notification arrives (default 1);
    - ``lease``: seconds a claim stays valid without a heartbeat (default 30);
    - ``heartbeat_interval``: seconds between heartbeats (default 2);
    - ``dead_after``: seconds without heartbeat before a worker counts as dead (default 15);
    - ``sweep_interval``: seconds between sweeps for lost runs (default 1);
    - ``grace_period``: seconds running tasks get to finish on shutdown (default 30).
    """

    def __init__(
        self,
        app: WorkerHost,
        *,
        slots: int = 10,
        durable_slots: int = 100,
        evict_after: float = 5.0,
        queues: list[str] | None = None,
        poll_interval: float = 1.0,
        lease: float = 30.0,
        heartbeat_interval: float = 2.0,
        dead_after: float = 15.0,
        sweep_interval: float = 1.0,
        grace_period: float = 30.0,
    ) -> None:
        if slots < 1 or durable_slots < 1:
            raise ConfigurationError(
                f"slots={slots}, durable_slots={durable_slots} are not valid: use at least 1 each"
            )
        if not app.registry:
            raise ConfigurationError("the App has no tasks: register some with @app.task first")
        self.app = app
        self.max_payload = app.max_payload
        self.run_workflow = app.run_workflow
        self.id = str(uuid.uuid4())
        self.slots = slots
        self.durable_slots = durable_slots
        self.evict_after = evict_after
        self.queues = sorted(queues or {t.queue for t in app.registry.values()})
        self.task_names = sorted(app.registry)
        # One slot pool per kind: {durable?: (task names, capacity)}.
        self.pools = {
            kind: ([n for n, t in sorted(app.registry.items()) if t.durable == kind], cap)
            for kind, cap in ((False, slots), (True, durable_slots))
        }
        self.busy = {False: 0, True: 0}
        # Per pool, the flow-control parameters of its claims (None: nothing is controlled).
        self.flow = {
            kind: flow.claim_rules(
                {n: app.registry[n].flow for n in names}, self.queues, app.queues
            )
            for kind, (names, _) in self.pools.items()
        }
        # Per pool: did its last claim take every free slot (or find none free)? Then due runs
        # may have been left behind, and a slot freed must claim again at once.
        self._left_behind = {False: False, True: False}
        self.waiters = Waiters()
        self._names: dict[int, str] = {}  # run id -> task name, kept only for failpoints
        self.poll_interval = poll_interval
        self.lease = lease
        self.heartbeat_interval = heartbeat_interval
        self.dead_after = dead_after
        self.sweep_interval = sweep_interval
        self.grace_period = grace_period
        self._running: dict[int, Attempt] = {}
        self._stopping = False
        self.threads = DaemonThreads()
        self._started = threading.Event()
        self._crash: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self, handle_signals: bool = False) -> None:
        """Serve until :meth:`stop` (or SIGTERM/SIGINT with ``handle_signals``)."""
        self._loop = asyncio.get_running_loop()
        self._loop.set_task_factory(contained_task)
        self._wake = asyncio.Event()
        self._force = asyncio.Event()
        self.store = await Store.open(self.app.url, self.app.schema, max_size=4)
        try:
            await self._check_schema()
            await self._adopt_flow()
            self._listener = Listener(self._connect_listener, self._on_message, self._on_reconnect)
            await self._listener.start()
            if handle_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    self._loop.add_signal_handler(sig, self.stop)
            background = [
                asyncio.create_task(coro)
                for coro in (
                    self._listener.run(),
                    self._heartbeat_loop(),
                    sweep_forever(
                        self.store, self.sweep_interval, self.dead_after, self.app.retention
                    ),
                    Scheduler(self.store, self.app.registry).run(),
                )
            ]
            self._recorder = Recorder(self.store, self.id, self._recorded, self._names)
            self._flusher = asyncio.create_task(self._recorder.run())
            log.info("worker %s serving queues %s with %d slots", self.id, self.queues, self.slots)
            self._started.set()
            await self._claim_loop()
            await self._shutdown(background)
        finally:
            if hasattr(self, "_listener"):
                await self._listener.close()
            await self.store.close()

    def stop(self) -> None:
        """Stop claiming and shut down gracefully; called a second time, stop at once."""
        if self._stopping:
            log.warning("second stop request: stopping now")
            self._force.set()
        else:
            log.info(
                "stopping: no new claims, waiting up to %ss for running tasks", self.grace_period
            )
            self._stopping = True
        self._wake.set()

    def start_in_thread(self) -> threading.Thread:
        """Start in a background thread; returns once the worker serves (or raises its error)."""
        thread = threading.Thread(
            target=self._thread_main, name=f"durably-worker-{self.id[:8]}", daemon=True
        )
        thread.start()
        self._started.wait()
        if self._crash is not None:
            thread.join()
            self.raise_if_crashed()
        return thread

    def _thread_main(self) -> None:
        try:
            serve(self.run())
        except BaseException as exc:
            self._crash = exc
        finally:
            self._started.set()

    def stop_from_thread(self) -> None:
        """:meth:`stop`, callable from another thread."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.stop)

    def raise_if_crashed(self) -> None:
        """Re-raise the error that ended a background worker, if any."""
        if self._crash is not None:
            raise self._crash

    async def _check_schema(self) -> None:
        if self.app.auto_migrate:
            await self.store.migrate()
        applied = await self.store.applied_versions()
        version = max(applied) if applied else 0
        if version < LATEST_VERSION:
            raise ConfigurationError(
                f"schema {self.app.schema!r} is at version {version} but this durably needs "
                f"{LATEST_VERSION}: run `durably db migrate` (or `durably db sql` for the SQL)"
            )
        if version > LATEST_VERSION:
            raise ConfigurationError(
                f"schema {self.app.schema!r} is at version {version}, newer than this durably "
                f"({LATEST_VERSION}): upgrade durably on this worker"
            )

    async def _adopt_flow(self) -> None:
        """Queued runs of controlled tasks that were enqueued unmarked (before their limits were
        declared) join the controlled claim, which reads marked runs only."""
        for rules in self.flow.values():
            if rules:
                adopted = await self.store.flow_adopt(self.queues, [t.task for t in rules.tasks])
                if adopted:
                    log.info("%d queued runs brought under flow control", adopted)

    async def _connect_listener(self) -> psycopg.AsyncConnection[Any]:
        return await self.store.register_worker(
            self.id, self.queues, self.task_names, self.slots, socket.gethostname(), os.getpid()
        )

    # -- claiming --------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        failures = 0
        while not self._stopping:
            self._wake.clear()
            timeout = self.poll_interval  # the fallback, should a notification be lost
            try:
                again, idle = await self._claim_pools()
                failures = 0
                if again:
                    continue  # a pool filled up or timers woke runs: there may be more
                if idle and not self._wake.is_set():  # woken meanwhile: claim again at once
                    timeout = await self._idle_wait()
            except _DB_ERRORS as exc:
                failures += 1
                timeout = min(0.1 * 2**failures, 5.0)
                log.warning("claim failed (%s); retrying in %.1fs", exc, timeout)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def _claim_pools(self) -> tuple[bool, bool]:
        """Claim into every pool with free slots; returns (claim again now, nothing was due)."""
        again, idle = False, True
        for durable, (names, capacity) in self.pools.items():
            free = capacity - self.busy[durable]
            if not names or free <= 0:
                idle = False if names else idle
                self._left_behind[durable] = bool(names)
                continue
            claim = await self.store.claim(
                self.id, self.queues, names, free, self.lease, durable, self.flow[durable]
            )
            for run in claim.runs:
                self._start(run)
            self._left_behind[durable] = len(claim.runs) == free
            again = again or len(claim.runs) == free or claim.woken > 0
            idle = idle and not claim.runs
        return again, idle

    async def _idle_wait(self) -> float:
        due = await self.store.next_due(self.queues, self.task_names)
        return min(self.poll_interval, due) if due is not None and due > 0 else self.poll_interval

    def _start(self, run: ClaimedRun) -> None:
        task = self.app.registry[run.task]
        ex = Attempt(
            run.run_id,
            run.attempt,
            task,
            run.args,
            run.failures,
            run.max_retries,
            bool(run.has_log),
            run.trace_context,
            run.deadline_in,
        )
        self._running[run.run_id] = ex
        self.busy[task.durable] += 1
        if failpoints.ENABLED:
            self._names[run.run_id] = run.task
        ex.future = asyncio.create_task(self._execute(ex))
        ex.future.add_done_callback(lambda _: self._never_started(ex))

    def _never_started(self, ex: Attempt) -> None:
        """A run cancelled between its claim and its first step (``_abandon`` right after the
        claim) ends without entering ``_execute``, whose ``finally`` frees the slot: free it
        here, or the slot would stay taken for good."""
        if self._running.get(ex.run_id) is ex:
            self._free_slot(ex)

    def _free_slot(self, ex: Attempt) -> None:
        """The attempt holds its slot no more (once, whichever way it ended)."""
        if self._running.get(ex.run_id) is ex:
            del self._running[ex.run_id]
        if not ex.slot_freed:
            ex.slot_freed = True
            self.busy[ex.task.durable] -= 1
            self._wake.set()

    # -- executing -------------------------------------------------------------------------

    async def _execute(self, ex: Attempt) -> None:
        outcome: Outcome | None = None
        try:
            if log.isEnabledFor(logging.DEBUG):  # on every run: skip building the fields
                log.debug(
                    "run %s attempt %s started", ex.run_id, ex.attempt, extra=ex.fields(self.id)
                )
            with telemetry.attempt_span(
                ex.task.name, ex.run_id, ex.attempt, self.id, ex.trace_context
            ):
                outcome = await execute(self, ex)
        except Exception as exc:  # a fault of the worker itself must still end the attempt
            if is_transient(exc):  # e.g. suspending failed: the database went away
                outcome = ex.released(exc, self.id)
            else:
                log.exception("run %s: recording the attempt failed", ex.run_id)
                outcome = Outcome(ex.run_id, ex.attempt, OutcomeKind.FAIL, error=error_json(exc))
        finally:
            if log.isEnabledFor(logging.DEBUG):
                kind = outcome.kind if outcome is not None else "none (suspended or taken away)"
                log.debug(
                    "run %s attempt %s ended: %s",
                    ex.run_id,
                    ex.attempt,
                    kind,
                    extra=ex.fields(self.id),
                )
            if self._running.get(ex.run_id) is ex:
                del self._running[ex.run_id]
            if outcome is not None and not ex.abandoned:
                # The run is RUNNING, and keeps its slot, until its outcome is written: freeing
                # the slot now would let the claim loop take runs faster than they are recorded.
                self._recorder.add(outcome, ex.task.durable)
            else:
                self._free_slot(ex)

    def _abandon(self, run_id: int, why: str) -> None:
        ex = self._running.get(run_id)
        if ex is not None and not ex.abandoned and ex.future is not None:
            log.info("abandoning run %s: %s", run_id, why)
            ex.abandoned = True
            ex.future.cancel()
            asyncio.get_running_loop().call_later(ABANDON_GRACE, self._take_slot_back, ex)

    def _take_slot_back(self, ex: Attempt) -> None:
        """An abandoned attempt whose code still runs ``ABANDON_GRACE`` seconds after its
        cancellation (it swallows CancelledError) gives its slot back: the worker serves other
        runs, and anything the attempt writes is refused by its fence."""
        if ex.future is None or ex.future.done() or ex.slot_freed:
            return
        log.warning(
            "run %s ignores its cancellation (it catches CancelledError); its slot is freed and "
            "anything it writes is refused",
            ex.run_id,
        )
        ex.future.cancel()
        self._free_slot(ex)

    def _on_message(self, payload: str) -> None:
        kind, _, rest = payload.partition(":")
        if kind == "q" and rest in self.queues:
            self._wake.set()
        elif kind == "done" and any(self.flow.values()):
            # A controlled run may have ended on another worker: room to claim again.
            self._wake.set()
            self.waiters.on_message(payload)
        elif kind == "cancel":
            self._abandon(int(rest), "cancelled")
        else:
            self.waiters.on_message(payload)

    def _on_reconnect(self) -> None:
        self._wake.set()
        self.waiters.wake_all()

    def _recorded(self, batch: list[Outcome], slots: list[bool]) -> None:
        """A batch of outcomes was written (see :class:`~durably.recorder.Recorder`): their
        slots are free."""
        for durable in slots:
            self.busy[durable] -= 1
        # Claim again now only if a claim can find something: runs a full claim left behind,
        # or runs this batch queued again for a retry (no notification announces those). A
        # claim that finds nothing would only slow down the runs executing meanwhile.
        if any(self._left_behind[d] for d in set(slots)) or any(
            o.kind in (OutcomeKind.RETRY, OutcomeKind.RELEASE) for o in batch
        ):
            self._wake.set()

    # -- heartbeats and recovery -----------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            sent = time.monotonic()
            try:
                mine = [*self._running, *(o.run_id for o in self._recorder.pending)]
                held = await self.store.heartbeat(self.id, self.lease, mine)
            except _DB_ERRORS as exc:
                log.warning("heartbeat failed: %s", first_line(exc))
                continue
            for ex in list(self._running.values()):
                if ex.claimed_at < sent and (ex.run_id, ex.attempt) not in held:
                    self._abandon(ex.run_id, "its lease was taken (recovered or cancelled)")

    # -- shutdown --------------------------------------------------------------------------

    async def _shutdown(self, background: list[asyncio.Task[Any]]) -> None:
        await self._wait_running_or_force()
        leftover = list(self._running.values())
        for ex in leftover:
            self._abandon(ex.run_id, "worker shutting down")
        futures = [ex.future for ex in leftover if ex.future]
        if futures:  # bounded: an attempt may swallow its cancellation
            await asyncio.wait(futures, timeout=ABANDON_GRACE)
        self._recorder.close()
        await self._flush_or_force()
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        try:
            if leftover:
                released = await self.store.release(self.id, [ex.run_id for ex in leftover])
                log.info("released %d unfinished runs back to the queue", released)
            await self.store.worker_stopped(self.id)
        except _DB_ERRORS as exc:
            log.warning(
                "could not release runs on shutdown (%s); the sweeper will", first_line(exc)
            )

    async def _wait_running_or_force(self) -> None:
        deadline = time.monotonic() + self.grace_period
        while self._running and not self._force.is_set() and time.monotonic() < deadline:
            waiting = [ex.future for ex in self._running.values() if ex.future is not None]
            force = asyncio.create_task(self._force.wait())
            await asyncio.wait(
                [*waiting, force],
                timeout=deadline - time.monotonic(),
                return_when=asyncio.FIRST_COMPLETED,
            )
            force.cancel()

    async def _flush_or_force(self) -> None:
        force = asyncio.create_task(self._force.wait())
        await asyncio.wait([self._flusher, force], return_when=asyncio.FIRST_COMPLETED)
        force.cancel()
        if not self._flusher.done():
            self._flusher.cancel()
            log.warning(
                "stopped before %d outcomes were recorded; their runs will be recovered",
                len(self._recorder.pending),
            )
