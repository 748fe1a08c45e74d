"""The connection pools and the running of named statements, under every part of the store."""

from __future__ import annotations

import asyncio
import zlib
from typing import Any, Self, TypeVar

import psycopg
import psycopg.errors
from psycopg.rows import class_row
from psycopg_pool import AsyncConnectionPool

from ..errors import ConfigurationError
from .connection import check_schema_name, connect, out_of_space, pool_kwargs
from .sql import statements

Row = tuple[Any, ...]
T = TypeVar("T")
R = TypeVar("R")  # a cursor's row type
# Never server-prepared, so always planned with their actual parameters. A cached generic plan
# of `finish` joins the outcomes to runs with a nested loop over every RUNNING row of the worker
# (estimated at 1 row): O(running x batch), about 60 ms for 500 outcomes instead of 6 ms.
_CUSTOM_PLANS = frozenset({"finish"})


class Database:
    """One App's (or worker's) connections and named statements, on one event loop: what every
    part of the storage layer builds on."""

    def __init__(
        self,
        url: str,
        schema: str,
        pool: AsyncConnectionPool[Any],
        transaction_max_size: int = 10,
    ) -> None:
        self.url = url
        self.schema = check_schema_name(schema)
        self.pool = pool
        # ctx.transaction runs user code inside a transaction, for as long as that code takes:
        # on connections of its own (opened on first use), so user code never holds one of the
        # engine's, whose statements (heartbeat, sweep, claim, outcomes) must not wait for it.
        self.transaction_max_size = transaction_max_size
        self._transaction_pool: AsyncConnectionPool[Any] | None = None
        self._transaction_pool_lock = asyncio.Lock()
        # Advisory lock namespace and notification channel, both derived from the schema so that
        # two apps in one database never see each other's locks or notifications.
        self.namespace = zlib.crc32(schema.encode()) & 0x7FFFFFFF
        self.channel = f"durably_{schema}"
        # The parts of the sweep failing now, with their error: each is logged once.
        self._sweep_failures: dict[str, str] = {}
        # Runs the retention part of the current sweep removed, logged once per sweep.
        self._purged = 0
        self._sql = statements(schema, self.channel)

    @classmethod
    async def open(
        cls, url: str, schema: str, max_size: int = 10, transaction_max_size: int = 10
    ) -> Self:
        """Check the server is reachable, then open a pool of autocommit connections.
        ``transaction_max_size`` caps the separate pool of ``ctx.transaction`` (opened lazily)."""
        check_schema_name(schema)
        probe = await connect(url)
        await probe.close()
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            url, min_size=1, max_size=max_size, kwargs=pool_kwargs(), open=False
        )
        await pool.open(wait=True, timeout=10)
        return cls(url, schema, pool, transaction_max_size)

    async def close(self) -> None:
        """Close every pooled connection."""
        await self.pool.close()
        if self._transaction_pool is not None:
            await self._transaction_pool.close()

    async def _transactions(self) -> AsyncConnectionPool[Any]:
        """The pool of ``ctx.transaction``, opened on first use: most apps never need it."""
        async with self._transaction_pool_lock:
            if self._transaction_pool is None:
                pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
                    self.url,
                    min_size=0,
                    max_size=self.transaction_max_size,
                    kwargs=pool_kwargs(),
                    open=False,
                )
                await pool.open()
                self._transaction_pool = pool
            return self._transaction_pool

    def sql(self, name: str) -> str:
        """The text of a named statement, with the schema filled in."""
        return self._sql[name]

    async def fetch(self, name: str, params: dict[str, Any] | None = None) -> list[Row]:
        """Run one named statement on a pooled connection and return its rows."""
        async with self.pool.connection() as conn:
            cur = await self.execute(conn, name, params)
            return await cur.fetchall() if cur.description else []

    async def fetch_as(
        self, record: type[T], name: str, params: dict[str, Any] | None = None
    ) -> list[T]:
        """:meth:`fetch`, each row built into ``record`` (a dataclass whose fields are named
        after the statement's columns)."""
        async with self.pool.connection() as conn:
            cur: psycopg.AsyncCursor[T] = conn.cursor(row_factory=class_row(record))
            await self._run(cur, name, params)
            return await cur.fetchall()

    async def execute(
        self, conn: psycopg.AsyncConnection[Any], name: str, params: dict[str, Any] | None = None
    ) -> psycopg.AsyncCursor[Any]:
        """Run one named statement on ``conn``; a missing table means an unmigrated schema."""
        return await self._run(conn.cursor(), name, params)

    async def _run(
        self, cur: psycopg.AsyncCursor[R], name: str, params: dict[str, Any] | None
    ) -> psycopg.AsyncCursor[R]:
        try:
            prepare = False if name in _CUSTOM_PLANS else None
            return await cur.execute(self._sql[name], params, prepare=prepare)
        except psycopg.errors.UndefinedTable:
            raise self._not_migrated() from None
        except psycopg.errors.DiskFull as exc:
            raise out_of_space(exc) from None

    def _not_migrated(self) -> ConfigurationError:
        return ConfigurationError(
            f"schema {self.schema!r} has no durably tables: run `durably db migrate` "
            "(or use App(migrate=True), the default)"
        )
