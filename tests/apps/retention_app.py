"""Tasks for the retention tests' worker processes (schema from DURABLY_TEST_SCHEMA, retention
in seconds from DURABLY_TEST_RETENTION): each leaves one row in an effects table when it ends."""

from __future__ import annotations

import os

import psycopg

import durably

URL = os.environ.get("DURABLY_DATABASE_URL") or os.environ.get("DATABASE_URL")
SCHEMA = os.environ.get("DURABLY_TEST_SCHEMA", "durably_test")
app = durably.App(
    URL, schema=SCHEMA, retention=float(os.environ.get("DURABLY_TEST_RETENTION", "1"))
)


def effect(tag: str) -> None:
    assert URL is not None
    with psycopg.connect(URL, autocommit=True) as conn:
        conn.execute(f'INSERT INTO "{SCHEMA}".effects (tag) VALUES (%s)', (tag,))


@app.task(name="leaf")
def leaf(n: int, k: int) -> int:
    effect(f"leaf:{n}:{k}")
    return k


@app.task(name="plain")
def plain(n: int) -> int:
    effect(f"plain:{n}")
    return n


@app.durable_task(name="fan")
async def fan(ctx: durably.DurableContext, n: int, width: int) -> int:
    """Runs ``width`` children, then records its effect once, as a step."""
    total: int = sum(await ctx.gather(*[ctx.spawn(leaf, n, k) for k in range(width)]))
    await ctx.step(effect, f"fan:{n}")
    return total
