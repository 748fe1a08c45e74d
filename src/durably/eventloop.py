"""The worker's event loop: started and ended so that no run's code can keep the worker from
stopping, and no run's background task can end it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

from .records import CURRENT_RUN

# Seconds an abandoned attempt (cancelled, lease lost, shutdown) gets to stop before its slot is
# taken back from it; and tasks still running when the loop ends get to stop before it closes.
ABANDON_GRACE = 5.0


def serve(main: Coroutine[Any, Any, None]) -> None:
    """``asyncio.run(main)`` for a worker: at the end, tasks still running are cancelled and
    waited for at most ``ABANDON_GRACE`` seconds (asyncio.run waits for ever, and a task that
    swallows its cancellation would keep the worker from ever exiting)."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    pending: set[asyncio.Task[Any]] = set()
    try:
        loop.run_until_complete(main)
    finally:
        try:
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.wait(pending, timeout=ABANDON_GRACE))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()
            for task in pending:
                if not task.done():  # closed here, not by the garbage collector at any moment
                    with contextlib.suppress(RuntimeError):
                        task.get_coro().close()


def contained_task(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
    """The worker loop's task factory. asyncio lets a SystemExit or KeyboardInterrupt raised in a
    task escape the event loop: one raised by a task a run started in the background (a library
    giving up) would end the whole worker, and every run it holds with it. Tasks started while a
    run executes turn them into a RuntimeError of that task instead."""
    if CURRENT_RUN.get() is not None:
        coro = _contain(coro)
    return asyncio.Task(coro, loop=loop, **kwargs)


async def _contain(coro: Any) -> Any:
    try:
        return await coro
    except (SystemExit, KeyboardInterrupt) as exc:
        raise RuntimeError(
            f"{type(exc).__name__} raised by a task a run started: {exc}; the worker goes on"
        ) from exc
