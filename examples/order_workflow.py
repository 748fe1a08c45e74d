"""An order workflow: charge, wait for a warehouse confirmation, ship, email.

Run it: ``python examples/order_workflow.py`` (uses DURABLY_DATABASE_URL / DATABASE_URL, else the
embedded PostgreSQL). Kill it at any moment and run it again: the order resumes where it was.
"""

from __future__ import annotations

import os

import durably

app = durably.App(schema=os.environ.get("DURABLY_EXAMPLES_SCHEMA", "examples"))


@app.task(name="orders.charge_payment", retries=3)
def charge_payment(order_id: str, amount: int) -> dict[str, object]:
    """Call the payment provider with an idempotency key, so a retry never charges twice."""
    key = f"charge-{durably.current_run_id()}"
    return {"order_id": order_id, "amount": amount, "provider_idempotency_key": key}


@app.task(name="orders.ship")
def ship(order_id: str) -> str:
    return f"tracking-{order_id}"


@app.task(name="orders.send_email")
async def send_email(order_id: str, tracking: str) -> None:
    print(f"  email: order {order_id} shipped, tracking {tracking}")


@app.durable_task(name="orders.process_order", retries=5)
async def process_order(
    ctx: durably.DurableContext, order_id: str, amount: int
) -> dict[str, object]:
    """Each await is a checkpoint: after a crash, finished children are not run again."""
    receipt = await ctx.run(charge_payment, order_id, amount)
    await ctx.sleep(0.5)  # e.g. a cooling-off period; survives restarts
    confirmation = await ctx.wait_for_event(f"warehouse:{order_id}", timeout=3600)
    tracking = await ctx.run(ship, order_id)
    await ctx.run(send_email, order_id, tracking)
    return {"receipt": receipt, "warehouse": confirmation, "tracking": tracking}


if __name__ == "__main__":
    with app.worker(slots=4, durable_slots=10):
        handle = process_order.options(idempotency_key="order-1001").enqueue("1001", 2500)
        print(f"run {handle.id} started; the warehouse confirms...")
        app.push_event("warehouse:1001", {"picked_by": "robot-7"})
        print("result:", handle.result(timeout=60))
