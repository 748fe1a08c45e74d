"""Tasks for the dashboard tests: an order workflow with children, failures on demand, a run
that waits for an event, and a workflow whose code changes under it (non-determinism).

``register(app)`` puts them on any App (each test has its own schema); the module's ``app``, on
DURABLY_TEST_SCHEMA, is for ``durably dashboard tests.apps.dashboard_app:app`` in a subprocess.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import durably


def total(amounts: list[int]) -> int:
    """An inline step."""
    return sum(amounts)


def reserve_stock(order_id: str) -> str:
    """The step the first version of `changing` does."""
    return f"reserved {order_id}"


def refund_payment(order_id: str) -> str:
    """The step a later version of `changing` does instead."""
    return f"refunded {order_id}"


@dataclass
class Tasks:
    """The registered tasks, and the switches the tests flip."""

    charge_payment: Any
    echo: Any
    fails_once: Any
    process_order: Any
    await_approval: Any
    changing: Any
    failed_once: set[str] = field(default_factory=set)
    code: dict[str, str] = field(default_factory=lambda: {"step": "reserve_stock"})


def register(app: durably.App) -> Tasks:
    """Register the test tasks on ``app``."""
    failed_once: set[str] = set()
    code = {"step": "reserve_stock"}

    @app.task(name="charge_payment")
    def charge_payment(order_id: str, amount: int) -> dict[str, Any]:
        return {"order": order_id, "charged": amount}

    @app.task(name="echo")
    def echo(payload: Any) -> Any:
        return payload

    @app.task(name="fails_once")
    def fails_once(tag: str) -> str:
        # Fails the first time it runs for a tag, then succeeds (so a retry completes).
        if tag not in failed_once:
            failed_once.add(tag)
            raise ValueError(f"card declined for {tag}")
        return f"ok: {tag}"

    @app.durable_task(name="process_order")
    async def process_order(ctx: durably.DurableContext, order_id: str) -> dict[str, Any]:
        receipt = await ctx.run(charge_payment, order_id, 100)
        a, b = await ctx.gather(ctx.spawn(echo, 20), ctx.spawn(echo, 22))
        extra = await ctx.step(total, [a, b])
        return {"receipt": receipt, "extra": extra}

    @app.durable_task(name="await_approval")
    async def await_approval(ctx: durably.DurableContext, order_id: str) -> Any:
        return await ctx.wait_for_event(f"approved:{order_id}")

    @app.durable_task(name="changing")
    async def changing(ctx: durably.DurableContext, order_id: str) -> str:
        # Records a step, then fails; retried after `code` changed, it is non-deterministic.
        step = reserve_stock if code["step"] == "reserve_stock" else refund_payment
        await ctx.step(step, order_id)
        raise durably.NonRetryableError(f"stopped after the first step of {order_id}")

    return Tasks(
        charge_payment, echo, fails_once, process_order, await_approval, changing, failed_once, code
    )


URL = os.environ.get("DURABLY_DATABASE_URL") or os.environ.get("DATABASE_URL")
app = durably.App(URL, schema=os.environ.get("DURABLY_TEST_SCHEMA", "durably_test"))
tasks = register(app)
