"""A fault-injecting TCP proxy between the chaos harness's workers and PostgreSQL.

Workers connect to a :class:`FaultProxy` instead of the server, so the harness can break their
connections on a schedule and then check that no durable run was lost or recorded twice. The
faults, each a method called from any thread:

- :meth:`FaultProxy.drop_all` resets every connection on both sides (RST), like a router reboot.
- :meth:`FaultProxy.set_delay` delays every chunk in both directions, like a slow or congested
  network; statements still arrive, in order, just late.
- :meth:`FaultProxy.half_close` ends a client's side with FIN but keeps the server's side open,
  as with a half-open TCP connection: the server session, with its locks and transaction,
  lingers until :meth:`FaultProxy.release_half_open`.
- :meth:`FaultProxy.blackhole_next` is the ambiguous commit: a statement reaches the server and
  commits, but its reply is lost and the client sees its connection die.
- :meth:`FaultProxy.partition` resets everything and refuses new connections for a while.

The upstream is a callable asked afresh for every connection, because the harness's private
server listens on a Unix socket whose path may change when it restarts. The proxy runs its own
asyncio loop in a daemon thread; fault methods hand their work to that loop, so connection state
is only ever touched from one thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import random
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import TypeVar
from urllib.parse import quote

T = TypeVar("T")
Upstream = str | tuple[str, int]
# (loop time the chunk arrived, loop time it may be sent, the bytes; b"" is EOF)
Chunk = tuple[float, float, bytes]

log = logging.getLogger(__name__)

CHUNK_SIZE = 65536
UPSTREAM_TIMEOUT = 5.0
# How long a blackholed connection's server side stays open after the reply was swallowed: the
# first reply bytes may precede the commit, and closing at once could abort the statement.
BLACKHOLE_LINGER = 0.5
CALL_TIMEOUT = 10.0
STAT_NAMES = ("accepted", "dropped", "half_closed", "blackholed", "refused")


@dataclass(eq=False)
class _Conn:
    """One proxied connection: the client's side, the server's side and the two pumps."""

    client_r: asyncio.StreamReader
    client_w: asyncio.StreamWriter
    up_r: asyncio.StreamReader
    up_w: asyncio.StreamWriter
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    # Loop time a chunk went upstream while the blackhole was armed; replies read after it are lost.
    blackhole_at: float | None = None
    stopped: bool = False

    def stop(self) -> None:
        """Stop forwarding in both directions, leaving the sockets to the caller."""
        # The flag takes effect at once; cancelling reaches the pumps' inner tasks a turn later.
        self.stopped = True
        for task in self.tasks:
            task.cancel()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Abort ``writer``'s connection with RST rather than FIN, as a crashed peer or router would."""
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        # Linger 0 makes close() send RST; without it an abort with nothing unread sends FIN.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    """A TCP proxy on 127.0.0.1 to PostgreSQL that breaks connections on demand.

    ``upstream`` returns a Unix socket path or a ``(host, port)`` pair; it is called for every new
    connection. Use as a context manager, or call :meth:`start` and :meth:`close`.
    """

    def __init__(self, upstream: Callable[[], Upstream]) -> None:
        self._upstream = upstream
        self.port = 0
        #: Counters: connections accepted, dropped, half_closed, blackholed and refused.
        self.stats: dict[str, int] = dict.fromkeys(STAT_NAMES, 0)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping: asyncio.Event | None = None
        self._conns: set[_Conn] = set()
        self._half_open: list[asyncio.StreamWriter] = []
        self._lingering: set[asyncio.StreamWriter] = set()
        self._delay = 0.0
        self._blackhole_armed = 0
        self._refuse_until = 0.0
        # Bumped by every drop, so a connection still dialling the server when it came is dropped.
        self._epoch = 0

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start listening on 127.0.0.1 (port chosen by the OS) in a background thread."""
        if self._thread is not None:
            raise RuntimeError("FaultProxy already started")
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._main(ready)), name="fault-proxy", daemon=True
        )
        self._thread.start()
        ready.result(timeout=CALL_TIMEOUT)

    def close(self) -> None:
        """Stop listening, close every connection (half-open ones too) and join the thread."""
        loop, thread, stopping = self._loop, self._thread, self._stopping
        if loop is None or thread is None or stopping is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop already ended
            loop.call_soon_threadsafe(stopping.set)
        thread.join(timeout=CALL_TIMEOUT)
        self._thread = self._loop = None

    def __enter__(self) -> FaultProxy:
        if self._thread is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def url(self, user: str = "postgres", dbname: str = "postgres") -> str:
        """A libpq URL that reaches the upstream server through this proxy."""
        return f"postgresql://{quote(user, safe='')}@127.0.0.1:{self.port}/{quote(dbname)}"

    async def _main(self, ready: concurrent.futures.Future[None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        try:
            server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        except OSError as exc:
            ready.set_exception(exc)
            return
        self.port = server.sockets[0].getsockname()[1]
        ready.set_result(None)
        await self._stopping.wait()
        server.close()
        self._abort_everything()
        # One more turn of the loop lets the aborted transports actually close their sockets.
        await asyncio.sleep(0)

    def _abort_everything(self) -> None:
        self._drop_all()
        for writer in [*self._half_open, *self._lingering]:
            writer.transport.abort()
        self._half_open.clear()
        self._lingering.clear()

    # --- faults (public, any thread) -------------------------------------------------------

    def drop_all(self) -> int:
        """Reset every open connection on both sides; returns how many there were."""
        return self._call(self._drop_all)

    def set_delay(self, seconds: float) -> None:
        """Delay every chunk forwarded from now on, in both directions, by ``seconds`` (0: off)."""
        if seconds < 0:
            raise ValueError("delay must not be negative")
        self._call(lambda: self._set_delay(seconds))

    def half_close(self, n: int = 1) -> int:
        """Half-close up to ``n`` random connections; returns how many.

        The client gets FIN and nothing more is forwarded, but the server's socket stays open, so
        its session lingers (holding whatever it held) until :meth:`release_half_open`.
        """
        return self._call(lambda: self._half_close(n))

    def release_half_open(self) -> int:
        """Close the server sides kept by :meth:`half_close`; returns how many."""
        return self._call(self._release_half_open)

    def blackhole_next(self, n: int = 1) -> None:
        """Lose the replies to the next ``n`` client chunks, on whichever connections send them.

        Each such chunk is forwarded; when the server's first reply to it arrives, the client is
        reset instead of getting it, and the server's side is closed a moment later, so the server
        finishes (and in autocommit, commits) a statement the client believes failed. A connection
        already armed does not use up another chunk; new connections' startup packets count too.
        """
        self._call(lambda: self._arm_blackhole(n))

    def partition(self, seconds: float) -> None:
        """Reset every connection and refuse new ones (accept, then reset) for ``seconds``."""
        self._call(lambda: self._partition(seconds))

    def _call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the proxy's loop and return its result, so state has one owner thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            raise RuntimeError("FaultProxy is not running")
        if threading.current_thread() is thread:
            return fn()
        done: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                done.set_result(fn())
            except BaseException as exc:
                done.set_exception(exc)

        loop.call_soon_threadsafe(run)
        return done.result(timeout=CALL_TIMEOUT)

    # --- faults (on the loop) --------------------------------------------------------------

    def _drop_all(self) -> int:
        conns = list(self._conns)
        self._conns.clear()
        self._epoch += 1
        for conn in conns:
            conn.stop()
            _reset(conn.client_w)
            _reset(conn.up_w)
        self.stats["dropped"] += len(conns)
        return len(conns)

    def _set_delay(self, seconds: float) -> None:
        self._delay = seconds

    def _half_close(self, n: int) -> int:
        chosen = random.sample(list(self._conns), min(max(n, 0), len(self._conns)))
        for conn in chosen:
            self._conns.discard(conn)
            conn.stop()
            conn.client_w.close()  # a graceful close: the client reads EOF, as after FIN
            # Nobody reads the server's side any more, as if its peer had vanished.
            if isinstance(conn.up_w.transport, asyncio.ReadTransport):
                conn.up_w.transport.pause_reading()
            self._half_open.append(conn.up_w)
        self.stats["half_closed"] += len(chosen)
        return len(chosen)

    def _release_half_open(self) -> int:
        writers, self._half_open = self._half_open, []
        for writer in writers:
            writer.close()
        return len(writers)

    def _arm_blackhole(self, n: int) -> None:
        self._blackhole_armed += max(n, 0)

    def _partition(self, seconds: float) -> None:
        self._refuse_until = asyncio.get_running_loop().time() + seconds
        self._drop_all()

    def _refusing(self) -> bool:
        return asyncio.get_running_loop().time() < self._refuse_until

    # --- connections -----------------------------------------------------------------------

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            await self._handle(client_r, client_w)
        except asyncio.CancelledError:
            # Only the loop's shutdown cancels a handler. Ending quietly instead of re-raising keeps
            # asyncio's stream callback (Python 3.11) from logging the cancellation as an error.
            client_w.transport.abort()
        except Exception:
            # One connection's bug must not stop the proxy: log it and drop just that connection.
            log.exception("fault proxy: connection failed")
            client_w.transport.abort()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self._refusing():
            self.stats["refused"] += 1
            _reset(client_w)
            return
        self.stats["accepted"] += 1
        epoch = self._epoch
        upstream = await self._open_upstream()
        if upstream is None:
            client_w.close()  # the server is down: the client sees its connection closed
            return
        if epoch != self._epoch or self._refusing():
            # A drop or partition came while the server was being dialled: it covers this one too.
            self.stats["dropped"] += 1
            _reset(client_w)
            _reset(upstream[1])
            return
        await self._serve(_Conn(client_r, client_w, *upstream))

    async def _open_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        try:
            target = self._upstream()
            async with asyncio.timeout(UPSTREAM_TIMEOUT):
                if isinstance(target, str):
                    return await asyncio.open_unix_connection(target)
                host, port = target
                return await asyncio.open_connection(host, port)
        except Exception as exc:
            log.info("fault proxy: upstream unreachable: %r", exc)
            return None

    async def _serve(self, conn: _Conn) -> None:
        conn.tasks = [
            asyncio.create_task(self._pipe(conn, conn.client_r, conn.up_w, to_server=True)),
            asyncio.create_task(self._pipe(conn, conn.up_r, conn.client_w, to_server=False)),
        ]
        self._conns.add(conn)
        try:
            await asyncio.wait(conn.tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._finish(conn)

    def _finish(self, conn: _Conn) -> None:
        """Close a connection that ended by itself; one a fault took is the fault's to close."""
        if conn not in self._conns:
            return
        self._conns.discard(conn)
        conn.stop()
        conn.client_w.close()
        conn.up_w.close()

    async def _pipe(
        self,
        conn: _Conn,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        to_server: bool,
    ) -> None:
        """Forward one direction until EOF; reading and (delayed) sending run side by side."""
        queue: asyncio.Queue[Chunk] = asyncio.Queue()
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._read(reader, queue))
                group.create_task(self._send(conn, queue, writer, to_server))
        except* OSError:
            pass  # a reset on either side just ends the connection
        except* Exception:
            log.exception("fault proxy: forwarding failed")

    async def _read(self, reader: asyncio.StreamReader, queue: asyncio.Queue[Chunk]) -> None:
        # Reading never waits for the delay, so each chunk is late by the delay, not by the sum of
        # the delays of the chunks queued before it.
        loop = asyncio.get_running_loop()
        while True:
            data = await reader.read(CHUNK_SIZE)
            now = loop.time()
            queue.put_nowait((now, now + self._delay, data))
            if not data:
                return

    async def _send(
        self,
        conn: _Conn,
        queue: asyncio.Queue[Chunk],
        writer: asyncio.StreamWriter,
        to_server: bool,
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:
            arrived, due, data = await queue.get()
            if due > loop.time():
                await asyncio.sleep(due - loop.time())
            if conn.stopped or not data:
                return
            if to_server:
                self._note_sent(conn, loop.time())
            elif conn.blackhole_at is not None and arrived >= conn.blackhole_at:
                self._spring_blackhole(conn)
                return
            writer.write(data)
            await writer.drain()

    def _note_sent(self, conn: _Conn, now: float) -> None:
        """If the blackhole is armed, mark ``conn``: the reply to what it sends now will be lost."""
        if self._blackhole_armed > 0 and conn.blackhole_at is None:
            self._blackhole_armed -= 1
            conn.blackhole_at = now

    def _spring_blackhole(self, conn: _Conn) -> None:
        """Swallow the reply: reset the client now, close the server's side after a moment."""
        self._conns.discard(conn)
        conn.stop()
        _reset(conn.client_w)
        self._lingering.add(conn.up_w)
        asyncio.get_running_loop().call_later(BLACKHOLE_LINGER, self._close_lingering, conn.up_w)
        self.stats["blackholed"] += 1

    def _close_lingering(self, writer: asyncio.StreamWriter) -> None:
        if writer in self._lingering:
            self._lingering.discard(writer)
            writer.close()
