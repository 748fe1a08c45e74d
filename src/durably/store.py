"""Store: the only module that executes SQL.

Every statement lives in a ``sql/*.sql`` file of named blocks (``queries.sql`` for the engine,
``operator_views.sql`` for the dashboard and CLI, one file per further concept) or in
``sql/migrations/NNNN_name.sql``;
``{schema}`` in them is replaced by the App's quoted schema name, and values are always bound
parameters. Connections come from one psycopg async pool in autocommit mode, so a single statement
costs one round trip; statements that must commit together run in an explicit transaction.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any

import psycopg
import psycopg.errors
from psycopg import conninfo
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from .context import Entry
from .errors import ConfigurationError, DatabaseFull, DatabaseUnavailable, DurablyError

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,40}$")
_PASSWORD = re.compile(r"(://[^:/@\s]*):[^@\s]*@")
Row = tuple[Any, ...]
# Never server-prepared, so always planned with their actual parameters. A cached generic plan
# of `finish` joins the outcomes to runs with a nested loop over every RUNNING row of the worker
# (estimated at 1 row): O(running x batch), about 60 ms for 500 outcomes instead of 6 ms.
_CUSTOM_PLANS = frozenset({"finish"})
# The sweeper handles at most SWEEP_BATCH rows per statement, each statement its own short
# transaction (row locks held briefly, little to roll back), and repeats a part while batches
# come back full, up to SWEEP_ROUNDS times per sweep: 20,000 rows a second per part.
SWEEP_BATCH = 1000
SWEEP_ROUNDS = 20
log = logging.getLogger("durably.sweeper")


def _read_sql(name: str) -> str:
    return resources.files("durably").joinpath("sql", name).read_text()


def _parse_named_blocks(text: str) -> dict[str, str]:
    blocks: dict[str, str] = {}
    for chunk in re.split(r"^-- name: ", text, flags=re.M)[1:]:
        name, _, body = chunk.partition("\n")
        blocks[name.strip()] = body.strip().rstrip(";")
    return blocks


def _all_named_blocks() -> dict[str, str]:
    blocks: dict[str, str] = {}
    for file in sorted(resources.files("durably").joinpath("sql").iterdir(), key=lambda f: f.name):
        if file.name.endswith(".sql"):
            found = _parse_named_blocks(file.read_text())
            clash = blocks.keys() & found.keys()
            if clash:
                raise RuntimeError(f"{file.name}: statement names defined twice: {sorted(clash)}")
            blocks.update(found)
    return blocks


_QUERIES = _all_named_blocks()


@dataclass(frozen=True)
class Migration:
    """One numbered, forward-only migration file."""

    version: int
    name: str
    template: str


def _migrations() -> list[Migration]:
    found = []
    for entry in resources.files("durably").joinpath("sql", "migrations").iterdir():
        match = re.match(r"^(\d{4})_(\w+)\.sql$", entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text()))
    return sorted(found, key=lambda m: m.version)


MIGRATIONS = _migrations()
LATEST_VERSION = MIGRATIONS[-1].version


@dataclass(frozen=True)
class NewRun:
    """A run to insert: everything enqueue decided, arguments already encoded as JSON."""

    task: str
    queue: str
    priority: int
    args: str
    max_retries: int
    max_recoveries: int
    delay: float
    schedule_timeout: float | None
    idempotency_key: str | None
    durable: bool = False
    trace_context: str | None = None  # JSON: the enqueuer's trace (telemetry.carrier)
    concurrency_key: str | None = None
    fairness_key: str | None = None
    flow: bool = False  # under flow control: claimed by the controlled claim
    execution_deadline: float | None = None  # seconds from the first start to the run deadline


def check_schema_name(schema: str) -> str:
    """Schema names are plain lowercase identifiers, so they never need escaping."""
    if not _SCHEMA_NAME.match(schema):
        raise ConfigurationError(
            f"schema name {schema!r} is not valid: use lowercase letters, digits and _ "
            "(at most 41 characters, not starting with a digit)"
        )
    return schema


def describe_url(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        info = conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<malformed URL>"
    user, host = info.get("user") or "", info.get("host") or "localhost"
    return f"postgresql://{user}@{host}:{info.get('port') or 5432}/{info.get('dbname') or ''}"


def _redact(text: str) -> str:
    return _PASSWORD.sub(r"\1:***@", text)


def _check_url(url: str) -> None:
    try:
        conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        first = _redact(str(exc).splitlines()[0])
        raise ConfigurationError(
            f"the database URL is malformed ({first}): expected postgresql://user@host:port/dbname"
        ) from None


# SQLSTATEs of the connection or the server's state rather than of the statement: connection
# exceptions (08), insufficient resources such as a full disk (53), and the server shutting down
# or restarting (57P01-57P03). A statement that failed with one of these may succeed later.
_TRANSIENT_STATES = ("08", "53", "57P01", "57P02", "57P03")


def first_line(exc: BaseException) -> str:
    """An error as one line: psycopg's messages carry DETAIL and HINT lines of their own."""
    try:
        text = str(exc).strip()
    except Exception:  # a task's exception may refuse to be printed
        text = ""
    return " ".join(text.splitlines()[0].split()) if text else type(exc).__name__


def out_of_space(exc: psycopg.errors.DiskFull) -> DatabaseFull:
    """psycopg's DiskFull as one line that says what happened and what to do."""
    return DatabaseFull(
        f"the database is out of disk space ({first_line(exc)}): nothing was written; free "
        "space on the database server, then try again"
    )


def is_transient(exc: BaseException) -> bool:
    """True for errors of the database connection or server, not of the statement: worth
    retrying, and no fault of the task. (A lost reply may hide a statement that committed.)"""
    if isinstance(exc, psycopg.InterfaceError | DatabaseUnavailable | OSError):
        return True
    if isinstance(exc, psycopg.OperationalError):
        state = exc.sqlstate
        return state is None or state.startswith(_TRANSIENT_STATES)
    return False


def _pool_kwargs() -> dict[str, Any]:
    # Named after the process, so pg_stat_activity (and an audit) can tell who wrote what.
    return {"autocommit": True, "application_name": f"durably pid {os.getpid()}"}


async def connect(url: str, **kwargs: Any) -> psycopg.AsyncConnection[Any]:
    """Open one autocommit connection, turning psycopg's failure into one readable line."""
    _check_url(url)
    try:
        return await psycopg.AsyncConnection.connect(
            url, autocommit=True, connect_timeout=10, **kwargs
        )
    except psycopg.OperationalError as exc:
        reason = _redact(first_line(exc))
        raise DatabaseUnavailable(
            f"cannot connect to {describe_url(url)}: {reason}; check the URL "
            "(DURABLY_DATABASE_URL or DATABASE_URL) and that the server is running"
        ) from None


class UserCodeFailed(Exception):
    """The exception ``error`` that the function of a ``ctx.transaction`` raised, carried past
    the engine's handling of its own connection errors, which must not take it for one of them:
    an ``OSError`` of the user's (a refused connection to some gateway) is the workflow's to see.
    """

    def __init__(self, error: Exception) -> None:
        super().__init__(first_line(error))
        self.error = error


def _blame(
    conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any], exc: Exception
) -> Exception:
    """Whose is an exception of the function of a ``ctx.transaction``? The engine's when the
    connection it handed over was lost (``conn.broken``), or when a statement on it failed
    for a reason of the server's state (a full disk, a shutdown: the transaction is aborted and
    the engine cannot record anything either); then the run is handed back to resume later, as
    for any of the engine's statements. Anything else is the user's: returned wrapped in
    :class:`UserCodeFailed`, for the workflow to see as it was raised."""
    if conn.broken:
        return DatabaseUnavailable(
            f"the connection of ctx.transaction was lost ({first_line(exc)}); the run resumes "
            "from its log when the database is back"
        )
    aborted = conn.info.transaction_status == TransactionStatus.INERROR
    if aborted and isinstance(exc, psycopg.Error) and is_transient(exc):
        return exc
    return UserCodeFailed(exc)


class Store:
    """All database access of one App (or worker) on one event loop."""

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
        self._sql = {
            name: q.replace("{schema}", f'"{schema}"').replace("{channel}", f'"{self.channel}"')
            for name, q in _QUERIES.items()
        }
        # The claim has three forms: a single queue is read in index order directly; several
        # queues one by one; and under flow control, the pool's free tasks are claimed as the
        # several-queues form claims them, beside the controlled ones.
        claim = self._sql.pop("claim")
        plain = claim.replace("{record}", "")
        self._sql["claim_one_queue"] = plain.replace("{pick}", self._sql["claim_pick_one_queue"])
        self._sql["claim_queues"] = plain.replace("{pick}", self._sql["claim_pick_queues"])
        free = self._sql["claim_pick_queues"].replace("%(tasks)s", "%(free)s")
        controlled = self._sql["claim_pick_controlled"].replace("{free}", free)
        self._sql["claim_controlled"] = claim.replace("{pick}", controlled).replace(
            "{record}", "\n" + self._sql["claim_record_flow"]
        )
        # So has `finish`: a batch of outcomes in arrays, or one outcome in scalars.
        finish = self._sql.pop("finish")
        self._sql["finish"] = finish.replace("{outcomes}", self._sql["finish_outcomes_many"])
        self._sql["finish_one"] = finish.replace("{outcomes}", self._sql["finish_outcomes_one"])
        # And `deadline_fail`: the sweeper's, over the runs due, and a worker's, over its attempt.
        deadline = self._sql.pop("deadline_fail")
        self._sql["sweep_deadlines"] = deadline.replace("{due}", self._sql["deadline_due"])
        self._sql["deadline_fail_held"] = deadline.replace("{due}", self._sql["deadline_held"])

    @classmethod
    async def open(
        cls, url: str, schema: str, max_size: int = 10, transaction_max_size: int = 10
    ) -> Store:
        """Check the server is reachable, then open a pool of autocommit connections.
        ``transaction_max_size`` caps the separate pool of ``ctx.transaction`` (opened lazily)."""
        check_schema_name(schema)
        probe = await connect(url)
        await probe.close()
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            url, min_size=1, max_size=max_size, kwargs=_pool_kwargs(), open=False
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
                    kwargs=_pool_kwargs(),
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

    async def execute(
        self, conn: psycopg.AsyncConnection[Any], name: str, params: dict[str, Any] | None = None
    ) -> psycopg.AsyncCursor[Any]:
        """Run one named statement on ``conn``; a missing table means an unmigrated schema."""
        try:
            prepare = False if name in _CUSTOM_PLANS else None
            return await conn.execute(self._sql[name], params, prepare=prepare)
        except psycopg.errors.UndefinedTable:
            raise self._not_migrated() from None
        except psycopg.errors.DiskFull as exc:
            raise out_of_space(exc) from None

    def _not_migrated(self) -> ConfigurationError:
        return ConfigurationError(
            f"schema {self.schema!r} has no durably tables: run `durably db migrate` "
            "(or use App(migrate=True), the default)"
        )

    # -- migrations --------------------------------------------------------------------------

    def _migration_sql(self, migration: Migration) -> str:
        return migration.template.replace("{schema}", f'"{self.schema}"')

    async def applied_versions(self) -> list[int]:
        """Versions recorded in the migrations table (empty when the schema is new)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                self._sql["schema_exists"], {"table": f'"{self.schema}".migrations'}
            )
            row = await cur.fetchone()
            if not row or not row[0]:
                return []
            cur = await conn.execute(self._sql["migrations_applied"])
            return [r[0] for r in await cur.fetchall()]

    async def pending_sql(self) -> str:
        """The SQL that ``migrate`` would run now, for a DBA to read or run by hand."""
        applied = set(await self.applied_versions())
        parts = [self._sql["create_schema"] + ";", self._sql["migrations_bootstrap"] + ";"]
        record = self._sql["migrations_record_literal"]
        for m in MIGRATIONS:
            if m.version not in applied:
                parts.append(f"-- {m.version:04d}_{m.name}\n{self._migration_sql(m).strip()}")
                literal = record.replace("{version}", str(m.version)).replace("{name}", m.name)
                parts.append(literal + ";")
        return "\n\n".join(parts) + "\n"

    async def migrate(
        self, on_migration: Callable[[Migration, int, int], None] | None = None
    ) -> list[int]:
        """Apply pending migrations in one transaction under an advisory lock; returns them.
        ``on_migration(migration, index, total)`` is called before each one is applied (the CLI
        shows progress with it: a migration may build an index on a big table)."""
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute(self._sql["migrations_lock"], {"namespace": self.namespace})
            await conn.execute(self._sql["create_schema"])
            await conn.execute(self._sql["migrations_bootstrap"])
            cur = await conn.execute(self._sql["migrations_applied"])
            applied = {r[0] for r in await cur.fetchall()}
            done: list[int] = []
            pending = [m for m in MIGRATIONS if m.version not in applied]
            for m in pending:
                if on_migration is not None:
                    on_migration(m, len(done), len(pending))
                await conn.execute(self._migration_sql(m).encode())
                await conn.execute(
                    self._sql["migrations_record"], {"version": m.version, "name": m.name}
                )
                done.append(m.version)
            return done

    # -- client side -------------------------------------------------------------------------

    def _enqueue_params(self, runs: Sequence[NewRun]) -> dict[str, Any]:
        return {
            "task": [r.task for r in runs],
            "queue": [r.queue for r in runs],
            "priority": [r.priority for r in runs],
            "args": [r.args for r in runs],
            "max_retries": [r.max_retries for r in runs],
            "max_recoveries": [r.max_recoveries for r in runs],
            "delay": [r.delay for r in runs],
            "schedule_timeout": [r.schedule_timeout for r in runs],
            "idempotency_key": [r.idempotency_key for r in runs],
            "durable": [r.durable for r in runs],
            "trace_context": [r.trace_context for r in runs],
            "concurrency_key": [r.concurrency_key for r in runs],
            "fairness_key": [r.fairness_key for r in runs],
            "flow": [r.flow for r in runs],
            "execution_deadline": [r.execution_deadline for r in runs],
            "channel": self.channel,
        }

    async def enqueue(
        self, runs: Sequence[NewRun], conn: psycopg.AsyncConnection[Any] | None = None
    ) -> list[int]:
        """Insert runs (one statement) and return their ids in input order; a run whose
        idempotency key exists already gets the existing run's id."""
        if conn is None:
            async with self.pool.connection() as own:
                return await self.enqueue(runs, own)
        if len(runs) == 1:
            params = {**vars(runs[0]), "channel": self.channel}  # shallow: asdict deep-copies
            cur = await self.execute(conn, "enqueue_one", params)
        else:
            cur = await self.execute(conn, "enqueue", self._enqueue_params(runs))
        inserted = await cur.fetchall()
        existing: dict[tuple[str, str], int] = {}
        for task, keys in _missing_keys(runs, inserted).items():
            cur = await conn.execute(self._sql["existing_by_key"], {"task": task, "keys": keys})
            existing.update({(task, k): i for k, i in await cur.fetchall()})
        return _ids_in_order(runs, inserted, existing)

    def enqueue_sync(self, runs: Sequence[NewRun], conn: psycopg.Connection[Any]) -> list[int]:
        """:meth:`enqueue` on the caller's own (sync) connection, inside its transaction."""
        try:
            cur = conn.execute(self._sql["enqueue"], self._enqueue_params(runs))
        except psycopg.errors.UndefinedTable:
            raise self._not_migrated() from None
        except psycopg.errors.DiskFull as exc:
            raise out_of_space(exc) from None
        inserted = cur.fetchall()
        existing: dict[tuple[str, str], int] = {}
        for task, keys in _missing_keys(runs, inserted).items():
            cur = conn.execute(self._sql["existing_by_key"], {"task": task, "keys": keys})
            existing.update({(task, k): i for k, i in cur.fetchall()})
        return _ids_in_order(runs, inserted, existing)

    async def cancel(self, run_id: int) -> bool:
        """Cancel a run that has not ended; False when it had already ended (or is unknown)."""
        rows = await self.fetch("cancel", {"id": run_id, "channel": self.channel})
        return any(row[0] == run_id for row in rows)

    async def get_run(self, run_id: int) -> Row | None:
        """The full row of one run."""
        rows = await self.fetch("run_get", {"id": run_id})
        return rows[0] if rows else None

    async def run_status(self, run_id: int) -> Row | None:
        """(status, result, error, task) of one run."""
        rows = await self.fetch("run_status", {"id": run_id})
        return rows[0] if rows else None

    async def list_runs(
        self,
        status: str | None,
        task: str | None,
        queue: str | None,
        limit: int,
        before_id: int | None = None,
    ) -> list[Row]:
        """Runs, newest first, filtered; page with ``before_id``."""
        params = {
            "status": status,
            "task": task,
            "queue": queue,
            "limit": limit,
            "before_id": before_id,
        }
        return await self.fetch("runs_list", params)

    # -- worker side -------------------------------------------------------------------------

    async def claim(
        self,
        worker_id: str,
        queues: list[str],
        tasks: list[str],
        limit: int,
        lease: float,
        durable: bool = False,
        flow: dict[str, Any] | None = None,
    ) -> list[Row]:
        """Claim up to ``limit`` due runs of ``tasks`` in one statement (FOR UPDATE SKIP LOCKED):
        durable runs or task runs, as the slot pool being filled. ``flow`` (the pool's limits,
        from :func:`durably.flow.claim_params`) makes it a turn-taking claim that keeps them."""
        params = {
            "worker_id": worker_id,
            "queues": queues,
            "tasks": tasks,
            "limit": limit,
            "lease": lease,
            "durable": durable,
        }
        if flow:
            return await self._claim_controlled({**params, **flow})
        name = "claim_one_queue" if len(queues) == 1 else "claim_queues"
        return await self.fetch(name, params)

    async def _claim_controlled(self, params: dict[str, Any]) -> list[Row]:
        """The claim under the flow-control lock, in one short transaction."""
        async with self.pool.connection() as conn, conn.transaction():
            await self.execute(conn, "claim_flow_lock", {"namespace": self.namespace})
            cur = await self.execute(conn, "claim_controlled", params)
            return await cur.fetchall()

    async def flow_adopt(self, queues: list[str], tasks: list[str]) -> int:
        """Mark queued runs of these queues and tasks as under flow control; returns how many
        were not (enqueued before the limits were declared, or by code that did not declare
        them)."""
        async with self.pool.connection() as conn:
            cur = await self.execute(conn, "flow_adopt", {"queues": queues, "tasks": tasks})
            return cur.rowcount

    async def next_due(self, queues: list[str], tasks: list[str]) -> float | None:
        """Seconds until the earliest queued run of these queues and tasks is due."""
        rows = await self.fetch("next_due", {"queues": queues, "tasks": tasks})
        return rows[0][0] if rows else None

    async def finish(self, worker_id: str, outcomes: Sequence[Outcome]) -> list[Row]:
        """Record many attempts' outcomes in one fenced statement; returns the rows written."""
        if len(outcomes) == 1:
            (one,) = outcomes
            return await self.fetch(
                "finish_one",
                {
                    "worker_id": worker_id,
                    "channel": self.channel,
                    "id": one.run_id,
                    "attempt": one.attempt,
                    "outcome": one.kind,
                    "result": one.result,
                    "error": one.error,
                    "delay": one.delay,
                },
            )
        params = {
            "worker_id": worker_id,
            "channel": self.channel,
            "ids": [o.run_id for o in outcomes],
            "attempts": [o.attempt for o in outcomes],
            "outcomes": [o.kind for o in outcomes],
            "results": [o.result for o in outcomes],
            "errors": [o.error for o in outcomes],
            "delays": [o.delay for o in outcomes],
        }
        return await self.fetch("finish", params)

    async def heartbeat(
        self, worker_id: str, lease: float, run_ids: list[int]
    ) -> set[tuple[int, int]]:
        """Extend the leases of ``run_ids``; returns the (run id, attempt) pairs still held."""
        params = {"worker_id": worker_id, "lease": lease, "ids": run_ids}
        rows = await self.fetch("heartbeat", params)
        return {(r[0], r[1]) for r in rows}

    async def release(self, worker_id: str, run_ids: list[int]) -> int:
        """Hand runs back to the queue at once (graceful shutdown)."""
        params = {"worker_id": worker_id, "ids": run_ids, "channel": self.channel}
        return len(await self.fetch("release", params))

    async def sweep(self, dead_after: float) -> tuple[int, int, int] | None:
        """Recover runs of dead workers and expired leases, fail runs past their schedule timeout,
        wake WAITING runs whose wake-up raced with their suspension, and forget expired
        flow-control rows.

        Each part runs in batches of at most ``SWEEP_BATCH`` rows, each batch its own short
        transaction under the sweeper's advisory lock (one sweeper at a time), repeated while
        batches come back full, up to ``SWEEP_ROUNDS`` per part; the rest waits for the next
        sweep. A part that fails is logged and retried next sweep; the others still run. Returns
        None when another sweeper holds the lock, else (recovered, expired, woken) counts.
        """
        params = {
            "dead_after": dead_after,
            "namespace": self.namespace,
            "channel": self.channel,
            "limit": SWEEP_BATCH,
        }
        async with self.pool.connection() as conn:
            if await self._sweep_part(conn, "sweep_dead_workers", params) is None:
                return None
            counts = [
                await self._sweep_part(conn, part, params) or 0
                for part in (
                    "sweep_orphans",
                    "sweep_schedule_timeouts",
                    "sweep_wake_ready",
                    "sweep_rate_starts",
                    "sweep_fair_turns",
                    "sweep_deadlines",
                )
            ]
            return counts[0], counts[1], counts[2]

    async def _sweep_part(
        self, conn: psycopg.AsyncConnection[Any], part: str, params: dict[str, Any]
    ) -> int | None:
        """Rows one part of the sweep handled, None when another sweeper holds the lock; rows
        handled before a failure when it failed (logged, retried next sweep)."""
        done = 0
        try:
            for round_ in range(SWEEP_ROUNDS):
                batch = await self._sweep_batch(conn, part, params)
                if batch is None:  # another sweeper holds the lock (or took it between batches)
                    return None if round_ == 0 else done
                done += batch
                if batch < SWEEP_BATCH:
                    break
        except (psycopg.Error, DurablyError) as exc:
            if conn.closed or conn.broken:
                raise
            self._sweep_failed(part, exc)
            return done
        if self._sweep_failures.pop(part, None) is not None:
            log.info("sweep: %s works again", part)
        return done

    async def _sweep_batch(
        self, conn: psycopg.AsyncConnection[Any], part: str, params: dict[str, Any]
    ) -> int | None:
        """One statement of the sweep in its own transaction, under the sweeper lock; None when
        another sweeper holds the lock."""
        async with conn.transaction():
            cur = await self.execute(conn, "sweep_lock", params)
            row = await cur.fetchone()
            if not row or not row[0]:
                return None
            cur = await self.execute(conn, part, params)
            return max(cur.rowcount, 0)

    def _sweep_failed(self, part: str, exc: BaseException) -> None:
        """Log a failing part once, not on every sweep while it keeps failing the same way."""
        reason = first_line(exc)
        if self._sweep_failures.get(part) != reason:
            log.warning("sweep: %s failed (%s); the other parts ran, it is retried", part, reason)
        self._sweep_failures[part] = reason

    async def register_worker(
        self,
        worker_id: str,
        queues: list[str],
        tasks: list[str],
        slots: int,
        hostname: str,
        pid: int,
    ) -> psycopg.AsyncConnection[Any]:
        """Open the worker's own connection, take its liveness lock on it, record the worker and
        LISTEN. The lock is taken before the row exists, so no sweeper can see a live worker
        without its lock; Postgres releases the lock the moment the worker's session ends.
        Called again when that connection is lost. The connection is named after the worker
        in pg_stat_activity."""
        conn = await connect(self.url, application_name=f"durably worker {worker_id}")
        cur = await conn.execute(self._sql["worker_next_lock_id"])
        row = await cur.fetchone()
        assert row is not None
        lock_id = row[0]
        await conn.execute(
            self._sql["worker_lock"], {"namespace": self.namespace, "lock_id": lock_id}
        )
        await conn.execute(
            self._sql["worker_register"],
            {
                "worker_id": worker_id,
                "lock_id": lock_id,
                "hostname": hostname,
                "pid": pid,
                "queues": queues,
                "tasks": tasks,
                "slots": slots,
            },
        )
        await self.listen(conn)
        return conn

    async def listen(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Subscribe ``conn`` to this schema's notifications."""
        await conn.execute(self._sql["listen"])

    async def worker_stopped(self, worker_id: str) -> None:
        """Mark a worker as stopped."""
        await self.fetch("worker_stopped", {"worker_id": worker_id})

    # -- durable runs --------------------------------------------------------------------------

    async def load_log(self, run_id: int) -> list[Entry]:
        """The whole event log of a run, in one query."""
        rows = await self.fetch("log_load", {"run_id": run_id})
        return [Entry(*row) for row in rows]

    async def log_append(self, params: dict[str, Any]) -> Row | None:
        """Append one entry, fenced; None when the attempt is no longer held."""
        rows = await self.fetch("log_append", params)
        return rows[0] if rows else None

    async def log_complete(self, params: dict[str, Any]) -> bool:
        """Mark a pending entry done, fenced; False when the attempt is no longer held."""
        return bool(await self.fetch("log_complete", params))

    async def log_spawn(self, params: dict[str, Any]) -> int | None:
        """Create a child run and its entry, fenced; the child's id (an existing run's, when its
        idempotency key names one), or None when the attempt is no longer held."""
        params = {
            "trace_context": None,
            "concurrency_key": None,
            "fairness_key": None,
            "flow": False,
            "delay": 0.0,
            "idempotency_key": None,
            "execution_deadline": None,
            **params,
            "channel": self.channel,
        }
        child_id, held, _ = (await self.fetch("log_spawn", params))[0]
        if held and child_id is None:
            # The key's run was inserted by a transaction that committed during the statement,
            # so its snapshot could not see it: a new statement does.
            child_id, held, _ = (await self.fetch("log_spawn", params))[0]
        return int(child_id) if child_id is not None else None

    async def fail_past_deadline(self, run_id: int, attempt: int, worker_id: str) -> bool:
        """Fail a run whose attempt reached its run deadline, cancelling its unfinished
        descendants, fenced; False when the attempt is no longer held."""
        params = {
            "run_id": run_id,
            "attempt": attempt,
            "worker_id": worker_id,
            "channel": self.channel,
        }
        rows = await self.fetch("deadline_fail_held", params)
        return bool(rows[0][0])

    async def take_event(self, params: dict[str, Any]) -> Row | None:
        """Take the next matching event for a waiting entry, fenced: (event id, payload)."""
        rows = await self.fetch("log_take_event", params)
        return rows[0] if rows else None

    async def children_status(self, ids: list[int]) -> dict[int, tuple[str, Any, Any]]:
        """(status, result, error) of each child run."""
        rows = await self.fetch("children_status", {"ids": ids})
        return {r[0]: (r[1], r[2], r[3]) for r in rows}

    async def suspend(self, params: dict[str, Any]) -> str | None:
        """Mark a run WAITING (or QUEUED when what it waits for already happened), fenced."""
        rows = await self.fetch("suspend", params)
        return str(rows[0][0]) if rows else None

    async def in_transaction(
        self,
        params: dict[str, Any],
        fn: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        encode: Callable[[Any], str],
    ) -> tuple[bool, Any]:
        """``await fn(conn, *args)`` and record its result in one transaction (fenced), on a
        connection of the transaction pool. An exception of ``fn`` rolls the transaction back
        and comes out as :class:`UserCodeFailed` unless it is the database's (see
        :func:`_blame`)."""
        pool = await self._transactions()
        async with pool.connection() as conn, conn.transaction():
            cur = await self.execute(conn, "log_hold", params)
            if await cur.fetchone() is None:
                return False, None
            try:
                value = await fn(conn, *args)
            except Exception as exc:
                problem = _blame(conn, exc)
                if problem is exc:
                    raise
                raise problem from exc
            await self.execute(conn, "log_append", {**params, "result": encode(value)})
            await self.execute(conn, "log_hold_renew", params)
            return True, value

    def in_transaction_sync(
        self,
        params: dict[str, Any],
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        encode: Callable[[Any], str],
    ) -> tuple[bool, Any]:
        """:meth:`in_transaction` for a sync ``fn``, on a sync connection of its own."""
        with (
            psycopg.connect(self.url, connect_timeout=10, **_pool_kwargs()) as conn,
            conn.transaction(),
        ):
            if conn.execute(self._sql["log_hold"], params).fetchone() is None:
                return False, None
            try:
                value = fn(conn, *args)
            except Exception as exc:
                problem = _blame(conn, exc)
                if problem is exc:
                    raise
                raise problem from exc
            conn.execute(self._sql["log_append"], {**params, "result": encode(value)})
            conn.execute(self._sql["log_hold_renew"], params)
            return True, value

    async def push_event(self, key: str, payload: str) -> int:
        """Store an event and wake the runs waiting for its key; returns the event id."""
        rows = await self.fetch(
            "push_event", {"key": key, "payload": payload, "channel": self.channel}
        )
        return int(rows[0][0])

    async def retry(self, run_id: int) -> bool:
        """A failed or cancelled run back to the queue, its log kept."""
        return bool(await self.fetch("retry", {"id": run_id, "channel": self.channel}))

    async def replay(self, run_id: int) -> bool:
        """Archive a finished run's log and queue it to run from scratch."""
        return bool(await self.fetch("replay", {"id": run_id, "channel": self.channel}))

    async def fork(self, run_id: int, at_event: int) -> int | None:
        """A new run whose log starts with the first ``at_event`` entries of ``run_id``."""
        params = {"id": run_id, "at_event": at_event, "channel": self.channel}
        rows = await self.fetch("fork", params)
        return int(rows[0][0]) if rows else None

    async def log_list(self, run_id: int) -> list[Row]:
        """A run's event log for display."""
        return await self.fetch("log_list", {"run_id": run_id})

    # -- operator views (dashboard and CLI) --------------------------------------------------
    # Read-only and paged by keyset. Rows are dicts keyed by the column names of the SQL in
    # operator_views.sql, ready for templates, tables and JSON. They run unprepared,
    # so each is planned with its actual values: NULL filters fold away, and the planner uses
    # the index that matches the filters given.

    ops_timeout = 10  # seconds an operator view may run before the database cancels it

    async def _ops_fetch(self, name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        # One short transaction: the limits of ops_limits hold for this statement only.
        sql = (
            self._sql[name]
            .replace("{columns}", self._sql["ops_runs_columns"])
            .replace("{filter}", self._sql["ops_runs_filter"])
        )
        async with self.pool.connection() as conn, conn.transaction():
            cur = conn.cursor(row_factory=dict_row)
            try:
                await cur.execute(self._sql["ops_limits"], {"timeout": f"{self.ops_timeout}s"})
                await cur.execute(sql, params, prepare=False)
            except psycopg.errors.UndefinedTable:
                raise self._not_migrated() from None
            except psycopg.errors.QueryCanceled:
                raise DurablyError(
                    f"{name} took longer than {self.ops_timeout} s and was cancelled: narrow the "
                    "filters (a status, a task or a time window)"
                ) from None
            rows: list[dict[str, Any]] = await cur.fetchall()
            return rows

    async def runs_page(
        self,
        *,
        limit: int = 50,
        before_id: int | None = None,
        after_id: int | None = None,
        preview: int = 200,
        **filters: Any,
    ) -> list[dict[str, Any]]:
        """Up to ``limit`` runs matching the filters (see :func:`runs_filter`), newest first.
        ``before_id`` pages to older runs, ``after_id`` to the newer ones; payloads are cut to
        ``preview`` characters."""
        params = {
            **runs_filter(**filters),
            "limit": limit,
            "before_id": before_id,
            "after_id": after_id,
            "preview": preview,
        }
        if after_id is None:
            return await self._ops_fetch("ops_runs_older", params)
        return list(reversed(await self._ops_fetch("ops_runs_newer", params)))

    async def runs_count(self, **filters: Any) -> dict[str, Any]:
        """How many runs match the filters (see :func:`runs_filter`): ``runs``, and the ids of
        the oldest and newest of them, ``min_id`` and ``max_id`` (None when none match)."""
        rows = await self._ops_fetch("ops_runs_count", runs_filter(**filters))
        return rows[0]

    async def run_detail(self, run_id: int) -> dict[str, Any] | None:
        """One run in full, with counts of its events, children and archived events."""
        rows = await self._ops_fetch("ops_run", {"id": run_id})
        return rows[0] if rows else None

    async def events_page(
        self, run_id: int, from_seq: int = 0, limit: int = 200, preview: int = 200
    ) -> list[dict[str, Any]]:
        """Up to ``limit`` entries of a run's event log from sequence number ``from_seq``."""
        params = {"run_id": run_id, "from_seq": from_seq, "limit": limit, "preview": preview}
        return await self._ops_fetch("ops_events", params)

    async def event_detail(self, run_id: int, seq: int) -> dict[str, Any] | None:
        """One entry of a run's event log in full."""
        rows = await self._ops_fetch("ops_event", {"run_id": run_id, "seq": seq})
        return rows[0] if rows else None

    async def children_page(
        self, run_id: int, after_id: int = 0, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Up to ``limit`` children of a run, oldest first, after the child ``after_id``."""
        params = {"id": run_id, "after_id": after_id, "limit": limit}
        return await self._ops_fetch("ops_children", params)

    async def task_names(self, limit: int = 500) -> list[str]:
        """The distinct task names of the stored runs."""
        return [r["task"] for r in await self._ops_fetch("ops_task_names", {"limit": limit})]

    async def workers_overview(self, limit: int = 100) -> list[dict[str, Any]]:
        """Workers, live ones first: heartbeat age and runs held (task and durable)."""
        return await self._ops_fetch("ops_workers", {"limit": limit})

    async def queues_overview(
        self, window: float = 60.0, cap: int = 10_000, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Per queue: unfinished runs by status (each count stops at ``cap``), the oldest
        queued run's age, and runs completed and failed in the last ``window`` seconds."""
        params = {"window": window, "cap": cap, "limit": limit}
        return await self._ops_fetch("ops_queues", params)

    async def throughput(self, minutes: int = 60, queue: str | None = None) -> list[dict[str, Any]]:
        """Runs completed and failed in each of the last ``minutes`` minutes, oldest first."""
        return await self._ops_fetch("ops_throughput", {"minutes": minutes, "queue": queue})

    # -- schedules -----------------------------------------------------------------------------
    # The other statements of schedules.sql run through fetch(); this one is a transaction.

    async def schedule_fire(
        self,
        name: str,
        expected: datetime,
        next_fire_at: datetime,
        fired_at: datetime | None,
        runs: Sequence[NewRun],
    ) -> list[int] | None:
        """Fire schedule ``name``: move its next tick from ``expected`` to ``next_fire_at`` and
        insert ``runs``, in one transaction. None, writing nothing, when its next tick is no
        longer ``expected`` (another worker fired it first, or it was paused or changed)."""
        params = {
            "name": name,
            "expected": expected,
            "next_fire_at": next_fire_at,
            "fired_at": fired_at,
        }
        async with self.pool.connection() as conn, conn.transaction():
            cur = await self.execute(conn, "schedule_advance", params)
            if await cur.fetchone() is None:
                return None
            ids = await self.enqueue(runs, conn) if runs else []
            if ids:
                await self.execute(conn, "schedule_fired", {"name": name, "run_id": ids[-1]})
            return ids


DELAYED = "DELAYED"  # not a status: the operator views' name for a QUEUED run not due yet


def runs_filter(
    *,
    status: str | None = None,
    statuses: Sequence[str] | None = None,
    task: str | None = None,
    queue: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    within: float | None = None,
    older_than: float | None = None,
) -> dict[str, Any]:
    """The parameters of ``ops_runs_filter``; None means any. ``status`` is one status,
    ``statuses`` any of several; either may be ``DELAYED``: a QUEUED run that is not due yet
    (its ``run_at`` is after now, database clock). ``within`` keeps runs created in the last so
    many seconds and ``older_than`` runs created longer ago than that (both on the database
    clock)."""
    delayed = None  # see ops_runs_filter: None, "all" or "queued"
    if status == DELAYED:
        status, delayed = "QUEUED", "all"
    chosen = None if statuses is None else list(statuses)
    if chosen is not None and DELAYED in chosen:
        chosen.remove(DELAYED)
        # QUEUED asked for as well takes every queued run, delayed or not.
        if "QUEUED" not in chosen:
            delayed = "queued" if chosen else "all"
            chosen.append("QUEUED")
    return {
        "status": status,
        "statuses": chosen,
        "delayed": delayed,
        "task": task,
        "queue": queue,
        "created_after": created_after,
        "created_before": created_before,
        "within": within,
        "older_than": older_than,
    }


@dataclass(frozen=True)
class Outcome:
    """How one attempt ended, ready to be written by :meth:`Store.finish`."""

    run_id: int
    attempt: int
    kind: str  # 'ok' | 'retry' | 'fail' | 'release' (handed back: the database went away)
    result: str | None = None
    error: str | None = None
    delay: float = 0.0


def _inserted_keys(inserted: list[Row]) -> set[tuple[str, str]]:
    # Keys are unique per task; an inserted row is (id, idempotency_key, notified, task).
    return {(r[3], r[1]) for r in inserted if r[1] is not None}


def _missing_keys(runs: Sequence[NewRun], inserted: list[Row]) -> dict[str, list[str]]:
    got = _inserted_keys(inserted)
    missing: dict[str, list[str]] = {}
    for r in runs:
        if r.idempotency_key is not None and (r.task, r.idempotency_key) not in got:
            missing.setdefault(r.task, []).append(r.idempotency_key)
    return missing


def _ids_in_order(
    runs: Sequence[NewRun], inserted: list[Row], existing: dict[tuple[str, str], int]
) -> list[int]:
    # Identities were drawn in input order, so sorted new ids line up with the runs inserted.
    new_ids = iter(sorted(r[0] for r in inserted))
    inserted_keys = _inserted_keys(inserted)
    ids: list[int] = []
    seen: set[tuple[str, str]] = set()
    for r in runs:
        key = None if r.idempotency_key is None else (r.task, r.idempotency_key)
        if key is not None and (key not in inserted_keys or key in seen):
            ids.append(existing[key] if key in existing else _same_batch(ids, runs, r))
        else:
            ids.append(next(new_ids))
            if key is not None:
                seen.add(key)
    return ids


def _same_batch(ids: list[int], runs: Sequence[NewRun], run: NewRun) -> int:
    # A key repeated inside one batch: the first occurrence was inserted, later ones share it.
    for i, earlier in enumerate(runs[: len(ids)]):
        if earlier.task == run.task and earlier.idempotency_key == run.idempotency_key:
            return ids[i]
    raise AssertionError("idempotency key neither inserted nor found")
