"""Fan-out / fan-in: a durable task spawns one child per chunk and gathers the results.

Run it: ``python examples/fan_out.py``.
"""

from __future__ import annotations

import os

import durably

app = durably.App(schema=os.environ.get("DURABLY_EXAMPLES_SCHEMA", "examples"))


@app.task(name="fanout.count_words", retries=2)
def count_words(chunk: str) -> int:
    return len(chunk.split())


@app.durable_task(name="fanout.word_count")
async def word_count(ctx: durably.DurableContext, text: str, chunk_lines: int = 2) -> int:
    lines = text.splitlines()
    chunks = ["\n".join(lines[i : i + chunk_lines]) for i in range(0, len(lines), chunk_lines)]
    counts = await ctx.gather(*(ctx.spawn(count_words, chunk) for chunk in chunks))
    return sum(counts)


if __name__ == "__main__":
    text = "\n".join(f"line {i} has five words" for i in range(20))
    with app.worker(slots=8, durable_slots=2):
        print("words:", word_count.enqueue(text).result(timeout=60))
