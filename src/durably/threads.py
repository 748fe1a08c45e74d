"""The thread pool that runs sync tasks."""

from __future__ import annotations

import contextvars
import functools
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from queue import SimpleQueue
from typing import Any


class DaemonThreads(Executor):
    """Runs sync tasks on daemon threads, created as needed and reused. Unlike the standard
    pool, a sync task that never returns cannot keep the process from exiting."""

    def __init__(self) -> None:
        self._jobs: SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None] = SimpleQueue()
        self._idle = 0
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        context = contextvars.copy_context()  # the caller's context vars (current run id)
        self._jobs.put((future, functools.partial(context.run, fn, *args, **kwargs)))
        with self._lock:
            if self._idle > 0:
                self._idle -= 1
            else:
                threading.Thread(target=self._serve, name="durably-task", daemon=True).start()
        return future

    def _serve(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            future, call = job
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(call())
                except BaseException as exc:  # a task's SystemExit must not end this thread
                    future.set_exception(exc)
            with self._lock:
                self._idle += 1
