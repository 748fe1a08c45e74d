"""The sync API is a thin layer over the async core: a private event loop in a daemon thread runs
the coroutines that sync calls hand it, so sync and async callers share one implementation."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from .records import CURRENT_RUN

T = TypeVar("T")


class Portal:
    """An event loop running forever in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name="durably-portal", daemon=True
        )
        self._thread.start()
        ready.wait()

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(ready.set)
        self.loop.run_forever()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the portal's loop and block until it returns."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("durably's sync API cannot be called from its own event loop")
        if _in_async_task():
            coro.close()
            raise RuntimeError(
                "an async task called durably's sync API, which would block its worker's event "
                "loop (heartbeats, claims, every other run): await the async twin instead, e.g. "
                "await task.enqueue_async(...), await handle.result_async()"
            )
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        """Stop the loop; the thread ends."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)


def _in_async_task() -> bool:
    """True inside an ``async def`` task run by a worker: a run is current and this thread runs
    an event loop (a sync task runs on a thread of its own, where blocking is harmless)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return CURRENT_RUN.get() is not None
