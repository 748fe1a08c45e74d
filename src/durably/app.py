"""App: the task registry and every client-side operation."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import threading
import weakref
from collections.abc import Callable, Coroutine, Iterator, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from typing_extensions import Unpack

from . import schedules as scheduling
from .context import run_workflow
from .definitions import check_retention
from .errors import ConfigurationError, UnknownTask
from .flow import QueueLimits, Rate, check_limit
from .notify import Listener, Waiters
from .portal import Portal
from .records import ENDED, Run
from .schedules import Schedule
from .serde import check_text, encode_value
from .storage import LATEST_VERSION, PurgeProgress, Store, check_schema_name, connect
from .tasks import RunHandle, Task, TaskOptions

if TYPE_CHECKING:
    from .worker import Worker

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

DEFAULT_MAX_PAYLOAD = 2 * 1024 * 1024
DEFAULT_RETENTION = timedelta(days=30)


class App:
    """A durably application: its database, its schema and its registered tasks.

    The database is ``url`` if given, else ``DURABLY_DATABASE_URL``, else ``DATABASE_URL``, else an
    embedded PostgreSQL in the user's data directory. Every table lives in ``schema``, so several
    apps can share one database without seeing each other.

    ``retention`` (a ``timedelta`` or seconds; default 30 days; None keeps everything) is how
    long finished runs of its tasks are kept, unless a task says otherwise; the workers' sweeper
    removes them after that, with their event logs, and events and stopped workers of that age
    (docs/retention.md).

    ``read_url`` names a read replica of that database: the operator views (dashboard, CLI
    listings) and :meth:`list_runs` read there, everything else on the primary
    (docs/scaling.md).
    """

    # How the App's workers call a durable task's function: with a context (durably.context).
    run_workflow = staticmethod(run_workflow)

    def __init__(
        self,
        url: str | None = None,
        *,
        schema: str = "durably",
        migrate: bool = True,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        pool_size: int = 10,
        retention: timedelta | float | None = DEFAULT_RETENTION,
        read_url: str | None = None,
    ) -> None:
        self._url = url
        self.read_url = read_url
        self.retention = check_retention(retention, "App")
        self.schema = check_schema_name(schema)
        self.auto_migrate = migrate
        self.max_payload = max_payload
        self.pool_size = pool_size
        self.registry: dict[str, Task[Any, Any]] = {}
        self.queues: dict[str, QueueLimits] = {}
        self._stores: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task[Store]] = (
            weakref.WeakKeyDictionary()
        )
        self._read_stores: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, asyncio.Task[Store]
        ] = weakref.WeakKeyDictionary()
        self._waiters: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, asyncio.Task[Waiters]
        ] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self._portal: Portal | None = None
        self._migrated = False

    def __repr__(self) -> str:
        return f"<durably.App schema={self.schema!r} tasks={len(self.registry)}>"

    # -- configuration ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The database URL, resolving (and starting the embedded server) on first use."""
        with self._lock:
            if self._url is None:
                self._url = (
                    os.environ.get("DURABLY_DATABASE_URL")
                    or os.environ.get("DATABASE_URL")
                    or _embedded_url()
                )
            return self._url

    # -- tasks -----------------------------------------------------------------------------

    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def task(self, /, **options: Unpack[TaskOptions]) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def task(self, fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
        """Register a function (sync or async) as a task: ``@app.task`` or ``@app.task(retries=3)``.

        Options (:class:`~durably.tasks.TaskOptions`): ``name`` (default ``module.qualname``),
        ``queue``, ``retries`` (extra attempts after a failure), ``backoff`` (seconds or a
        :class:`Backoff`), ``timeout`` (seconds per attempt), ``execution_deadline`` (seconds from
        the run's first start to its end, across retries and suspensions: past it the run fails
        with :class:`DeadlineExceeded`), ``schedule_timeout`` (seconds to be
        picked up), ``priority`` (higher first), ``max_recoveries`` (times a run may lose its
        worker before it fails), ``concurrency`` (the most runs executing at once across all
        workers), ``retention`` (how long its finished runs are kept: a ``timedelta``, seconds,
        or None to keep them; default the App's).
        """
        return self._register(fn, options, durable=False)

    @overload
    def durable_task(self, fn: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def durable_task(
        self, /, **options: Unpack[TaskOptions]
    ) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def durable_task(self, fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
        """Register a durable task: ``async def f(ctx: DurableContext, ...)`` or
        ``def f(ctx: SyncDurableContext, ...)``. Same options as :meth:`task`. Its progress is
        checkpointed in its event log, and it runs in the workers' durable slot pool."""
        return self._register(fn, options, durable=True)

    def _register(self, fn: Callable[..., Any] | None, options: Any, durable: bool) -> Any:
        def register(f: Callable[..., Any]) -> Task[Any, Any]:
            task: Task[Any, Any] = Task(self, f, durable=durable, **options)
            if task.name in self.registry and self.registry[task.name].fn is not f:
                raise ConfigurationError(
                    f"two tasks are named {task.name!r}: give one of them another name="
                )
            self.registry[task.name] = task
            return task

        return register if fn is None else register(fn)

    def queue(
        self, name: str, *, concurrency: int | None = None, rate_limit: str | None = None
    ) -> None:
        """Limit every run of queue ``name`` across all workers: ``concurrency`` runs executing
        at once, ``rate_limit`` starts per period (``"100/minute"``). Workers serving the queue
        must declare the same limits (docs/flow-control.md)."""
        owner = f"queue {name!r}"
        limits = QueueLimits(
            concurrency=check_limit(concurrency, "concurrency", owner),
            rate=Rate.parse(rate_limit, "rate_limit", owner),
        )
        check_text(name, "queue name")
        if limits.concurrency is None and limits.rate is None:
            self.queues.pop(name, None)  # no limits left: its claims need no flow control
        else:
            self.queues[name] = limits

    def get_task(self, name: str) -> Task[Any, Any]:
        """The registered task called ``name``."""
        try:
            return self.registry[name]
        except KeyError:
            raise UnknownTask(
                f"no task named {name!r} is registered on this App (known: "
                f"{', '.join(sorted(self.registry)) or 'none'})"
            ) from None

    # -- the async core: one store (connection pool) per event loop -----------------------

    async def store(self) -> Store:
        """The Store of the running event loop, opened (and the schema migrated) on first use."""
        return await _per_loop(self._stores, self._open_store)

    async def _open_store(self) -> Store:
        url = await asyncio.to_thread(lambda: self.url)
        store = await Store.open(url, self.schema, max_size=self.pool_size)
        if self.auto_migrate and not self._migrated:
            await store.migrate()
            self._migrated = True
        return store

    async def read_store(self) -> Store:
        """The Store for reads that may lag a little (operator views, :meth:`list_runs`): on
        ``read_url`` when the App has one, else :meth:`store`. Never migrates: a replica
        follows its primary's schema."""
        if self.read_url is None:
            return await self.store()
        return await _per_loop(self._read_stores, self._open_read_store)

    async def _open_read_store(self) -> Store:
        assert self.read_url is not None
        return await Store.open(self.read_url, self.schema, max_size=self.pool_size)

    async def waiters(self) -> Waiters:
        """The result-waiters of the running loop, fed by a LISTENing connection."""
        return await _per_loop(self._waiters, self._open_waiters)

    async def _open_waiters(self) -> Waiters:
        store = await self.store()
        waiters = Waiters()

        async def listen() -> Any:
            conn = await connect(store.url)
            await store.listen(conn)
            return conn

        listener = Listener(listen, waiters.on_message, waiters.wake_all)
        await listener.start()
        waiters.listen(listener)
        return waiters

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine of the async core from sync code (on the App's private loop)."""
        with self._lock:
            if self._portal is None:
                self._portal = Portal()
                atexit.register(self.close)
        return self._portal.call(coro)

    async def aclose(self) -> None:
        """Close the connections this App opened on the running event loop."""
        loop = asyncio.get_running_loop()
        waiters = self._waiters.pop(loop, None)
        if waiters is not None and waiters.done() and not waiters.exception():
            await waiters.result().close()
        for stores in (self._stores, self._read_stores):
            store = stores.pop(loop, None)
            if store is not None and store.done() and not store.exception():
                await store.result().close()

    def close(self) -> None:
        """Close the connections of the sync API and stop its private loop."""
        with self._lock:
            portal, self._portal = self._portal, None
        if portal is not None:
            atexit.unregister(self.close)
            portal.call(self.aclose())
            portal.stop()

    # -- client operations (sync and async twins) -----------------------------------------

    def handle(self, run_id: int) -> RunHandle:
        """A handle on an existing run, by id."""
        return RunHandle(self, run_id)

    async def get_run_async(self, run_id: int) -> Run | None:
        """The stored state of one run, or None when there is no such run."""
        return await (await self.store()).get_run(run_id)

    def get_run(self, run_id: int) -> Run | None:
        """The stored state of one run, or None when there is no such run."""
        return self.call(self.get_run_async(run_id))

    async def list_runs_async(
        self,
        status: str | None = None,
        task: str | None = None,
        queue: str | None = None,
        limit: int = 100,
        before_id: int | None = None,
    ) -> list[Run]:
        """Runs, newest first, optionally filtered by status, task and queue (from the read
        replica when the App has one)."""
        store = await self.read_store()
        return await store.list_runs(status, task, queue, limit, before_id)

    def list_runs(
        self,
        status: str | None = None,
        task: str | None = None,
        queue: str | None = None,
        limit: int = 100,
        before_id: int | None = None,
    ) -> list[Run]:
        """Runs, newest first, optionally filtered by status, task and queue."""
        return self.call(self.list_runs_async(status, task, queue, limit, before_id))

    async def cancel_async(self, run_id: int) -> bool:
        """Cancel a run: queued runs at once, running ones are stopped by their worker.
        Returns False when the run had already ended."""
        return await (await self.store()).cancel(run_id)

    def cancel(self, run_id: int) -> bool:
        """Cancel a run (see :meth:`cancel_async`)."""
        return self.call(self.cancel_async(run_id))

    async def push_event_async(self, key: str, payload: Any = None) -> int:
        """Push an event: durable runs waiting for ``key`` receive ``payload`` (JSON). Returns
        the event id."""
        check_text(key, "event key")
        store = await self.store()
        return await store.push_event(
            key, encode_value(payload, f"the payload of event {key!r}", self.max_payload)
        )

    def push_event(self, key: str, payload: Any = None) -> int:
        """Push an event (see :meth:`push_event_async`)."""
        return self.call(self.push_event_async(key, payload))

    async def retry_async(self, run_id: int) -> bool:
        """Queue a FAILED or CANCELLED run again, keeping its event log (it resumes after its
        last checkpoint). False when the run is not failed or cancelled."""
        return await (await self.store()).retry(run_id)

    def retry(self, run_id: int) -> bool:
        """Retry a failed or cancelled run (see :meth:`retry_async`)."""
        return self.call(self.retry_async(run_id))

    async def replay_async(self, run_id: int) -> bool:
        """Run a finished run again from scratch: its event log is archived (kept for audit).
        False when the run has not finished."""
        return await (await self.store()).replay(run_id)

    def replay(self, run_id: int) -> bool:
        """Replay a finished run (see :meth:`replay_async`)."""
        return self.call(self.replay_async(run_id))

    async def fork_async(self, run_id: int, at_event: int) -> RunHandle:
        """A new run of the same durable task and input whose event log starts with the first
        ``at_event`` events of ``run_id``; the source is untouched."""
        if at_event < 0:
            raise ValueError(f"at_event={at_event} is not valid: pass 0 or more")
        new_id = await (await self.store()).fork(run_id, at_event)
        if new_id is None:
            raise UnknownTask(f"run {run_id} is not a durable run in schema {self.schema!r}")
        return RunHandle(self, new_id)

    def fork(self, run_id: int, at_event: int) -> RunHandle:
        """Fork a durable run (see :meth:`fork_async`)."""
        return self.call(self.fork_async(run_id, at_event))

    async def event_log_async(self, run_id: int) -> list[dict[str, Any]]:
        """A run's event log, oldest first."""
        return await (await self.store()).log_list(run_id)

    def event_log(self, run_id: int) -> list[dict[str, Any]]:
        """A run's event log, oldest first."""
        return self.call(self.event_log_async(run_id))

    async def purge_async(
        self,
        older_than: timedelta | float,
        *,
        statuses: Sequence[str] = tuple(ENDED),
        tasks: Sequence[str] | None = None,
        progress: Callable[[PurgeProgress], None] | None = None,
    ) -> int:
        """Remove finished workflows whose runs all ended more than ``older_than`` ago (a
        ``timedelta`` or seconds), whatever their retention, with their event logs: those whose
        root run has one of ``statuses`` (default all finished ones) and, when given, one of
        ``tasks``. A workflow with a run not finished is left whole. Runs in batches, each its
        own transaction (``progress`` is called after each); returns the runs removed."""
        seconds, chosen = _purge_filter(older_than, statuses)
        return await (await self.store()).purge(seconds, chosen, tasks, progress)

    def purge(
        self,
        older_than: timedelta | float,
        *,
        statuses: Sequence[str] = tuple(ENDED),
        tasks: Sequence[str] | None = None,
        progress: Callable[[PurgeProgress], None] | None = None,
    ) -> int:
        """Remove old finished workflows (see :meth:`purge_async`)."""
        return self.call(
            self.purge_async(older_than, statuses=statuses, tasks=tasks, progress=progress)
        )

    async def purge_count_async(
        self,
        older_than: timedelta | float,
        *,
        statuses: Sequence[str] = tuple(ENDED),
        tasks: Sequence[str] | None = None,
    ) -> int:
        """How many workflows (root runs) :meth:`purge_async` would look at."""
        seconds, chosen = _purge_filter(older_than, statuses)
        return await (await self.store()).purge_count(seconds, chosen, tasks)

    def purge_count(
        self,
        older_than: timedelta | float,
        *,
        statuses: Sequence[str] = tuple(ENDED),
        tasks: Sequence[str] | None = None,
    ) -> int:
        """How many workflows :meth:`purge` would look at (see :meth:`purge_count_async`)."""
        return self.call(self.purge_count_async(older_than, statuses=statuses, tasks=tasks))

    async def migrate_async(self) -> list[int]:
        """Apply pending migrations; returns the versions applied."""
        done = await (await self.store()).migrate()
        self._migrated = True
        return done

    def migrate(self) -> list[int]:
        """Apply pending migrations; returns the versions applied."""
        return self.call(self.migrate_async())

    async def schema_version_async(self) -> tuple[int, int]:
        """(version applied in the database, version this code needs)."""
        applied = await (await self.store()).applied_versions()
        return (max(applied) if applied else 0), LATEST_VERSION

    # -- workers ---------------------------------------------------------------------------

    def make_worker(self, **options: Any) -> Worker:
        """A worker for this App's tasks (see :class:`durably.worker.Worker` for options)."""
        from .worker import Worker

        return Worker(self, **options)

    def run_worker(self, **options: Any) -> None:
        """Run a worker in this thread until SIGTERM or SIGINT (a second signal stops at once)."""
        from .eventloop import serve

        serve(self.make_worker(**options).run(handle_signals=True))

    @contextlib.contextmanager
    def worker(self, **options: Any) -> Iterator[Worker]:
        """Run a worker in a background thread for the duration of a ``with`` block."""
        worker = self.make_worker(**options)
        thread = worker.start_in_thread()
        try:
            yield worker
        finally:
            worker.stop_from_thread()
            thread.join()
            worker.raise_if_crashed()

    async def schedule_async(
        self,
        task: Task[Any, Any] | str,
        cron: str,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        name: str | None = None,
        timezone: str = "UTC",
        catch_up: str = "latest",
    ) -> Schedule:
        """Enqueue ``task(*args, **kwargs)`` on every tick of ``cron`` (5 fields, or 6 with
        seconds first) in ``timezone``, from the next tick on; workers that have the task fire
        it, one run per tick. Creates the schedule ``name`` or updates it (keeping its next tick
        unless the cron or the time zone changed, and its paused state). ``name`` defaults to
        the task's name, plus a digest of the arguments when there are any. ``catch_up`` says
        what ticks missed while no worker ran enqueue: ``"latest"`` (one run, the default),
        ``"all"`` (one run each) or ``"none"``."""
        return await scheduling.save(
            self, task, cron, args, kwargs, name=name, timezone=timezone, catch_up=catch_up
        )

    def schedule(
        self,
        task: Task[Any, Any] | str,
        cron: str,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        name: str | None = None,
        timezone: str = "UTC",
        catch_up: str = "latest",
    ) -> Schedule:
        """Enqueue a task on a cron (see :meth:`schedule_async`)."""
        return self.call(
            self.schedule_async(
                task, cron, args, kwargs, name=name, timezone=timezone, catch_up=catch_up
            )
        )

    async def schedules_async(self) -> list[Schedule]:
        """Every schedule of the schema (declared with ``cron=`` or made with
        :meth:`schedule`), by name."""
        return await scheduling.list_all(self)

    def schedules(self) -> list[Schedule]:
        """Every schedule (see :meth:`schedules_async`)."""
        return self.call(self.schedules_async())

    async def get_schedule_async(self, name: str) -> Schedule | None:
        """The schedule called ``name``, or None."""
        return await scheduling.get(self, name)

    def get_schedule(self, name: str) -> Schedule | None:
        """The schedule called ``name``, or None."""
        return self.call(self.get_schedule_async(name))

    async def pause_schedule_async(self, name: str) -> Schedule:
        """Stop firing a schedule until it is resumed (raises :class:`UnknownSchedule`)."""
        return await scheduling.pause(self, name)

    def pause_schedule(self, name: str) -> Schedule:
        """Pause a schedule (see :meth:`pause_schedule_async`)."""
        return self.call(self.pause_schedule_async(name))

    async def resume_schedule_async(self, name: str) -> Schedule:
        """Fire a paused schedule again from its next tick after now: ticks of the paused time
        are not caught up (raises :class:`UnknownSchedule`)."""
        return await scheduling.resume(self, name)

    def resume_schedule(self, name: str) -> Schedule:
        """Resume a schedule (see :meth:`resume_schedule_async`)."""
        return self.call(self.resume_schedule_async(name))

    async def delete_schedule_async(self, name: str) -> bool:
        """Delete a schedule; False when there is none of that name. Runs it enqueued stay. A
        schedule declared with ``cron=`` comes back when a worker starts: remove ``cron=``."""
        return await scheduling.delete(self, name)

    def delete_schedule(self, name: str) -> bool:
        """Delete a schedule (see :meth:`delete_schedule_async`)."""
        return self.call(self.delete_schedule_async(name))


async def _per_loop(
    cache: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task[T]],
    open_it: Callable[[], Coroutine[Any, Any, T]],
) -> T:
    """One resource per event loop (pools and connections belong to the loop that made them),
    opened once even when many callers ask at the same time, and opened again after a failure."""
    loop = asyncio.get_running_loop()
    opening = cache.get(loop)
    if opening is None or (opening.done() and opening.exception() is not None):
        opening = loop.create_task(open_it())
        cache[loop] = opening
    return await asyncio.shield(opening)


def _purge_filter(
    older_than: timedelta | float, statuses: Sequence[str]
) -> tuple[float, list[str]]:
    """A purge's age in seconds and its statuses, checked: bad arguments are refused."""
    seconds = check_retention(older_than, "purge")
    if seconds is None:
        raise ValueError("purge: older_than=None is not valid: pass a timedelta or seconds")
    chosen = [str(s) for s in statuses]
    if not chosen or set(chosen) - set(ENDED):
        raise ValueError(
            f"purge: statuses={chosen!r} is not valid: pass finished statuses only "
            f"({', '.join(ENDED)}); runs that have not finished are never purged"
        )
    return seconds, chosen


def _embedded_url() -> str:
    from .embedded import embedded_url

    return embedded_url()
