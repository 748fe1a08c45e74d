"""A long-running AI agent with a human in the loop.

The model is called through ``ctx.step`` (its answer is checkpointed, so a crash never pays for
the same completion twice), tools run as child tasks, and a risky tool waits for a human approval
pushed as an event. The "model" here is a deterministic fake so the example runs offline.

Run it: ``python examples/agent_loop.py``.
"""

from __future__ import annotations

import os
import time
from typing import Any

import durably

app = durably.App(schema=os.environ.get("DURABLY_EXAMPLES_SCHEMA", "examples"))


def fake_model(messages: list[dict[str, str]]) -> dict[str, Any]:
    """Stands in for an LLM call: decides the next action from the conversation so far."""
    tools_used = [m["content"] for m in messages if m["role"] == "tool"]
    if not tools_used:
        return {"tool": "search_flights", "args": {"to": "Lisbon"}}
    if len(tools_used) == 1:
        return {"tool": "book_flight", "args": {"flight": "TP1234"}, "needs_approval": True}
    return {"answer": f"Booked. Steps: {'; '.join(tools_used)}"}


@app.task(name="agent.search_flights")
def search_flights(to: str) -> str:
    return f"found TP1234 to {to} for 120 EUR"


@app.task(name="agent.book_flight")
def book_flight(flight: str) -> str:
    return f"booked {flight}"


TOOLS = {"search_flights": search_flights, "book_flight": book_flight}


@app.durable_task(name="agent.run", timeout=3600)
async def agent(ctx: durably.DurableContext, goal: str) -> str:
    messages = [{"role": "user", "content": goal}]
    for turn in range(10):
        decision = await ctx.step(fake_model, messages, name="model")
        if "answer" in decision:
            return str(decision["answer"])
        if decision.get("needs_approval"):
            approval = await ctx.wait_for_event(f"approve:{ctx.run_id}:{turn}", timeout=86400)
            if not approval.get("ok"):
                return "the human declined"
        result = await ctx.run(TOOLS[decision["tool"]], **decision["args"])
        messages.append({"role": "tool", "content": str(result)})
    return "gave up after 10 turns"


if __name__ == "__main__":
    with app.worker(slots=4, durable_slots=10, evict_after=1.0):
        handle = agent.enqueue("book me a flight to Lisbon")
        print(f"agent run {handle.id} started")
        while handle.status() != "WAITING":  # the agent suspends while it waits for a human
            time.sleep(0.1)
        print("the agent waits for approval; approving...")
        app.push_event(f"approve:{handle.id}:1", {"ok": True})
        print("answer:", handle.result(timeout=60))
