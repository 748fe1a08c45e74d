"""An App whose tasks leave evidence in the database, for tests that run worker processes.

Every execution of a recording task inserts a row into ``<schema>.effects`` (created by the test
with :func:`create_effects`), so tests can count how often each body actually ran, in which
process, and over which interval.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import psycopg

import durably

URL = os.environ.get("DURABLY_DATABASE_URL") or os.environ.get("DATABASE_URL")
SCHEMA = os.environ.get("DURABLY_TEST_SCHEMA", "durably_test")
app = durably.App(URL, schema=SCHEMA)


def create_effects(conn: psycopg.Connection[Any], schema: str) -> None:
    conn.execute(
        f'CREATE TABLE IF NOT EXISTS "{schema}".effects ('
        " tag text NOT NULL, pid integer NOT NULL, started float8 NOT NULL, ended float8)"
    )


def record(tag: str, started: float, ended: float | None = None) -> None:
    with psycopg.connect(app.url, autocommit=True) as conn:
        conn.execute(
            f'INSERT INTO "{SCHEMA}".effects (tag, pid, started, ended) VALUES (%s, %s, %s, %s)',
            (tag, os.getpid(), started, ended),
        )


@app.task(name="noop")
async def noop() -> None:
    return None


@app.task(name="effect")
def effect(tag: str, seconds: float = 0.0) -> str:
    """Sleeps, then records one execution with its interval."""
    started = time.time()
    time.sleep(seconds)
    record(tag, started, time.time())
    return tag


@app.task(name="started_then_sleep")
def started_then_sleep(tag: str, seconds: float) -> str:
    """Records that it started, then sleeps: a test can kill the worker in between."""
    record(tag, time.time())
    time.sleep(seconds)
    return tag


@app.task(name="async_effect")
async def async_effect(tag: str, seconds: float = 0.0) -> str:
    started = time.time()
    await asyncio.sleep(seconds)
    await asyncio.to_thread(record, tag, started, time.time())
    return tag


@app.task(name="slow_first")
def slow_first(tag: str, seconds: float = 60.0) -> str:
    """Records each start; only the first execution of a tag is slow, so a test can kill the
    worker running it and watch the next attempt finish at once."""
    with psycopg.connect(app.url, autocommit=True) as conn:
        cur = conn.execute(f'SELECT count(*) FROM "{SCHEMA}".effects WHERE tag = %s', (tag,))
        earlier = cur.fetchone()[0]  # type: ignore[index]
    record(tag, time.time())
    if earlier == 0:
        time.sleep(seconds)
    return f"{tag}:{os.getpid()}"


@app.task(name="effect_pid")
def effect_pid(tag: str, seconds: float = 0.0) -> str:
    """Like effect, but returns which process ran it."""
    started = time.time()
    time.sleep(seconds)
    record(tag, started, time.time())
    return f"{tag}:{os.getpid()}"
