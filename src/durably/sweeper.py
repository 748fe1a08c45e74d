"""The sweeper loop every worker runs: one sweep a second, one sweeper at a time across all
workers (the sweep takes an advisory lock), each part bounded (see
:meth:`durably.storage.sweep.Sweep.sweep`)."""

from __future__ import annotations

import asyncio
import logging

import psycopg

from .errors import DurablyError
from .storage import Store, first_line

log = logging.getLogger("durably.worker")

_DB_ERRORS = (psycopg.Error, DurablyError, OSError)


async def sweep_forever(
    store: Store, interval: float, dead_after: float, retention: float | None
) -> None:
    """Sweep every ``interval`` seconds until cancelled (``retention``: the App's, for events
    and stopped workers); a failed sweep is logged and the next one tries again."""
    while True:
        await asyncio.sleep(interval)
        try:
            swept = await store.sweep(dead_after, retention)
            if swept and any(swept):
                log.info("sweeper: %d runs recovered, %d past schedule timeout, %d woken", *swept)
        except _DB_ERRORS as exc:
            log.warning("sweep failed: %s", first_line(exc))
