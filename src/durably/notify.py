"""LISTEN/NOTIFY: the low-latency path. Notifications carry identifiers only and are never
required for correctness: every waiter also re-checks the database on a timer, so a lost
notification (or a dropped listener connection) costs latency, never a run."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg

from .errors import DurablyError
from .storage import first_line, is_transient

log = logging.getLogger("durably.notify")

Connect = Callable[[], Awaitable[psycopg.AsyncConnection[Any]]]


class Listener:
    """Keeps one LISTENing connection open and hands each payload to ``on_message``.

    When the connection drops it reconnects with backoff and calls ``on_reconnect``, so the owner
    can re-check whatever it may have missed meanwhile.
    """

    def __init__(
        self,
        connect: Connect,
        on_message: Callable[[str], None],
        on_reconnect: Callable[[], None] = lambda: None,
    ) -> None:
        self._connect = connect
        self._on_message = on_message
        self._on_reconnect = on_reconnect
        self.conn: psycopg.AsyncConnection[Any] | None = None

    async def start(self, patience: float = 30.0) -> None:
        """Open the first connection; raises if the database cannot be reached at all, but
        retries for up to ``patience`` seconds a connection lost while being set up."""
        deadline = time.monotonic() + patience
        while True:
            try:
                self.conn = await self._connect()
                return
            except (psycopg.Error, OSError) as exc:
                if not is_transient(exc) or time.monotonic() > deadline:
                    raise
                log.warning(
                    "listener connection lost while starting (%s); retrying", first_line(exc)
                )
                await self._discard()
                await asyncio.sleep(0.5)

    async def run(self) -> None:
        """Deliver notifications until cancelled."""
        delay = 0.1
        while True:
            try:
                if self.conn is None or self.conn.closed:
                    self.conn = await self._connect()
                    self._on_reconnect()
                    delay = 0.1
                async for note in self.conn.notifies():
                    self._on_message(note.payload)
            except (psycopg.Error, DurablyError, OSError) as exc:
                log.warning("listener connection lost (%s); reconnecting", first_line(exc))
                await self._discard()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _discard(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(psycopg.Error):
                await self.conn.close()
        self.conn = None

    async def close(self) -> None:
        """Close the connection."""
        await self._discard()


class Waiters:
    """Futures waiting for notifications, by token: ``done:<run id>`` (a run ended) or
    ``ev:<key>`` (an event was pushed)."""

    def __init__(self) -> None:
        self._waiting: dict[str, set[asyncio.Future[None]]] = {}
        self._listener: Listener | None = None
        self._task: asyncio.Task[None] | None = None

    def listen(self, listener: Listener) -> None:
        """Be fed by ``listener`` (started) from now on."""
        self._listener = listener
        self._task = asyncio.get_running_loop().create_task(listener.run())

    async def close(self) -> None:
        """Stop listening."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._listener is not None:
            await self._listener.close()

    def watch(self, token: str) -> asyncio.Future[None]:
        """A future resolved when a notification matches ``token``."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(token, set()).add(fut)
        return fut

    def unwatch(self, token: str, fut: asyncio.Future[None]) -> None:
        """Forget a future (after it fired or its wait timed out)."""
        futs = self._waiting.get(token)
        if futs is not None:
            futs.discard(fut)
            if not futs:
                del self._waiting[token]

    def on_message(self, payload: str) -> None:
        """Resolve the futures a payload names: each run of 'done:<id>,<id>', or 'ev:<key>'."""
        if not self._waiting:
            return
        kind, _, rest = payload.partition(":")
        if kind == "done":
            for run_id in rest.split(","):
                self._resolve(f"done:{run_id}")
        elif kind == "ev":
            self._resolve(payload)

    def _resolve(self, token: str) -> None:
        for fut in self._waiting.get(token, ()):
            if not fut.done():
                fut.set_result(None)

    def wake_all(self) -> None:
        """After a reconnect: let every waiter re-check the database."""
        for futs in self._waiting.values():
            for fut in futs:
                if not fut.done():
                    fut.set_result(None)
