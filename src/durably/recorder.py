"""The outcome recorder: a worker's finished attempts, written in batches, each batch one fenced
statement, retried while the database is away; it reports the slots each batch frees."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import psycopg

from . import failpoints
from .errors import NotSerializable
from .records import Outcome, OutcomeKind, Status
from .serde import error_json
from .storage import Store, first_line, is_transient

log = logging.getLogger("durably.worker")

_FLUSH_BATCH = 500  # outcomes per statement: bounds its arrays and its transaction

# Called after each batch is written: the batch, and the slot pool (durable?) of each outcome
# whose slot it freed.
Written = Callable[[list[Outcome], list[bool]], None]


class Recorder:
    """Writes the outcomes handed to it, in order, in batches."""

    def __init__(
        self, store: Store, worker_id: str, written: Written, names: dict[int, str]
    ) -> None:
        self.store = store
        self.worker_id = worker_id
        self._written = written
        self._names = names  # run id -> task name, kept only for failpoints
        self.pending: list[Outcome] = []
        # (run id, attempt) -> durable? of pending outcomes: their slots are freed once written.
        self._slots: dict[tuple[int, int], bool] = {}
        self._needed = asyncio.Event()
        self._closing = False

    def add(self, outcome: Outcome, durable: bool) -> None:
        """Record ``outcome``; its attempt's slot (of the durable pool or not) stays taken until
        it is written, so the claim loop never takes runs faster than they are recorded."""
        self._slots[(outcome.run_id, outcome.attempt)] = durable
        self.pending.append(outcome)
        self._needed.set()

    def close(self) -> None:
        """Write what is pending, then let :meth:`run` end."""
        self._closing = True
        self._needed.set()

    async def run(self) -> None:
        """Until closed and nothing is pending."""
        while not (self._closing and not self.pending):
            await self._needed.wait()
            self._needed.clear()
            await self._flush()

    async def _flush(self) -> None:
        failures = 0
        while self.pending:
            batch = self.pending[:_FLUSH_BATCH]
            try:
                written = await self._write(batch)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                # Safe to repeat: the write is fenced, so a committed batch is not written twice.
                failures += 1
                delay = min(0.1 * 2**failures, 5.0)
                log.warning(
                    "recording %d outcomes failed (%s); retrying in %.1fs",
                    len(batch),
                    first_line(exc),
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            del self.pending[: len(batch)]
            slots = [self._slots.pop((o.run_id, o.attempt)) for o in batch]
            self._written(batch, slots)
            for outcome in batch if failpoints.ENABLED else ():
                failpoints.hit("after_finish", self._names.pop(outcome.run_id, ""))
            if len(written) < len(batch):
                fenced = {o.run_id for o in batch} - written.keys()
                log.info(
                    "outcomes of runs %s not recorded: their lease was lost (fenced)",
                    sorted(fenced),
                )

    async def _write(self, batch: list[Outcome]) -> dict[int, Status]:
        try:
            rows = await self.store.finish(self.worker_id, batch)
            for outcome in batch if failpoints.ENABLED else ():
                failpoints.lose_reply(
                    "lost_reply_finish", self._names.get(outcome.run_id, ""), outcome.run_id
                )
            return rows
        except psycopg.Error as exc:
            if is_transient(exc):
                raise
            # One outcome the database refuses must not hold back the others: write them one by
            # one, and record a failure in place of any that cannot be stored.
            return await self._write_one_by_one(batch)

    async def _write_one_by_one(self, batch: list[Outcome]) -> dict[int, Status]:
        written: dict[int, Status] = {}
        for outcome in batch:
            try:
                written |= await self.store.finish(self.worker_id, [outcome])
            except psycopg.Error as exc:
                if is_transient(exc):
                    raise
                log.error("run %s: its outcome cannot be stored (%s)", outcome.run_id, exc)
                problem = NotSerializable(f"the outcome could not be stored: {exc}")
                error = error_json(problem)
                fallback = Outcome(outcome.run_id, outcome.attempt, OutcomeKind.FAIL, error=error)
                written |= await self.store.finish(self.worker_id, [fallback])
        return written
