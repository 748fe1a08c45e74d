"""A reference point for the pickup latency: the floor of the protocol on this machine.

The same exchange durably performs, written with plain psycopg and nothing else: the client
inserts a row and NOTIFYs in one statement, a LISTENing process claims the row with one
``UPDATE ... FOR UPDATE SKIP LOCKED`` and reports when it holds it. No pool, no event-loop hop,
no serialization: what this measures is what the database, the kernel and the machine cost.

``python -m bench.floor URL SCHEMA`` runs the claiming side (started by :func:`pickup_floor`).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from typing import Any

import psycopg

from bench.harness import ROOT, connect, throwaway_schema, wait_until

QUEUE_CHANNEL = "durably_bench_floor_q"
DONE_CHANNEL = "durably_bench_floor_done"
WARMUP = 20


async def serve(url: str, schema: str) -> None:
    """Claim one row per notification; NOTIFY the wall-clock time the claim returned."""
    listener = await psycopg.AsyncConnection.connect(url, autocommit=True)
    conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
    await listener.execute(f"LISTEN {QUEUE_CHANNEL}")
    claim = (
        f'UPDATE "{schema}".jobs SET claimed = true WHERE id = (SELECT id FROM "{schema}".jobs '
        "WHERE NOT claimed ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING id"
    )
    await conn.execute(f"SELECT pg_notify('{DONE_CHANNEL}', 'ready')")
    async for _ in listener.notifies():
        row = await (await conn.execute(claim)).fetchone()
        started = time.time()
        if row is not None:
            await conn.execute("SELECT pg_notify(%s, %s)", (DONE_CHANNEL, repr(started)))


def _sample(conn: psycopg.Connection[Any], replies: psycopg.Connection[Any], schema: str) -> float:
    before = time.time()
    conn.execute(f"""WITH j AS (INSERT INTO "{schema}".jobs DEFAULT VALUES RETURNING id)
                     SELECT pg_notify('{QUEUE_CHANNEL}', id::text) FROM j""")
    for note in replies.notifies(timeout=10, stop_after=1):
        return float(note.payload) - before
    raise TimeoutError("the floor's claiming process did not answer within 10s")


def _ready(replies: psycopg.Connection[Any], proc: subprocess.Popen[bytes]) -> bool:
    if proc.poll() is not None:
        raise RuntimeError(f"the floor's claiming process exited with code {proc.returncode}")
    return any(n.payload == "ready" for n in replies.notifies(timeout=0.1))


def pickup_floor(url: str, samples: int, pause: float) -> list[float]:
    """Seconds from just before the INSERT to the claim returning, one row at a time."""
    with throwaway_schema(url) as schema, connect(url) as conn, connect(url) as replies:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(
            f'CREATE TABLE "{schema}".jobs (id bigint GENERATED ALWAYS AS IDENTITY '
            "PRIMARY KEY, claimed boolean NOT NULL DEFAULT false)"
        )
        replies.execute(f"LISTEN {DONE_CHANNEL}")
        proc = subprocess.Popen([sys.executable, "-m", "bench.floor", url, schema], cwd=ROOT)
        try:
            wait_until(lambda: _ready(replies, proc), 30, 0, "the floor's claiming process")
            latencies = []
            for n in range(WARMUP + samples):
                time.sleep(pause)
                latency = _sample(conn, replies, schema)
                if n >= WARMUP:
                    latencies.append(latency)
            return latencies
        finally:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], sys.argv[2]))
