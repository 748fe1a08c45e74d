"""``durably demo``: a queue at work on the embedded (or configured) database."""

from __future__ import annotations

import time

import click

from .app import App
from .errors import RunFailed

app = App(schema="durably_demo")
_attempts: dict[str, int] = {}


@app.task(name="demo.charge_payment", retries=3, backoff=0.2)
def charge_payment(order_id: str, amount: int) -> dict[str, object]:
    """Fails on its first attempt, like a flaky payment API, then succeeds on the retry."""
    _attempts[order_id] = _attempts.get(order_id, 0) + 1
    if _attempts[order_id] == 1:
        raise ConnectionError("payment API timed out")
    return {"order_id": order_id, "charged": amount, "attempts": _attempts[order_id]}


@app.task(name="demo.send_email")
async def send_email(order_id: str) -> str:
    """An async task."""
    return f"receipt for {order_id} sent"


@app.task(name="demo.refund", retries=0)
def refund(order_id: str) -> None:
    """Always fails: shows how a failed run carries its remote error."""
    raise ValueError(f"order {order_id} was never charged")


def run_demo() -> None:
    """Enqueue runs, serve them with a worker in this process, and show what happened."""
    click.echo(f"database: {app.url}  (schema {app.schema!r})")
    started = time.monotonic()
    with app.worker(slots=4, poll_interval=0.2):
        charge = charge_payment.enqueue("order-1", 100)
        email = send_email.options(priority=5).enqueue("order-1")
        again = charge_payment.options(idempotency_key="order-3-charge").enqueue("order-3", 300)
        same = charge_payment.options(idempotency_key="order-3-charge").enqueue("order-3", 300)
        bad = refund.enqueue("order-2")
        click.echo(f"enqueued runs {charge.id}, {email.id}, {again.id}, {bad.id}")
        click.echo(
            f"idempotency key: the second enqueue returned the same run ({same.id} == {again.id})"
        )
        click.echo(f"charge_payment -> {charge.result(timeout=30)}  (failed once, retried)")
        click.echo(f"send_email     -> {email.result(timeout=30)}")
        try:
            bad.result(timeout=30)
        except RunFailed as exc:
            click.echo(f"refund         -> {exc}")
    for run in app.list_runs(limit=4):
        click.echo(f"  run {run.id:>5} {run.task:<22} {run.status:<10} attempts={run.attempt}")
    click.echo(f"done in {time.monotonic() - started:.2f}s")
