"""``durably demo``: the guide's order workflow, crashed on purpose and resumed.

A durable ``process_order`` runs ``charge_payment`` then ``send_confirmation_email`` as child
tasks. The first worker is killed with SIGKILL right after the payment child completes (a named
failure point, see :mod:`durably.failpoints`); a second worker resumes the run from its event log;
the payment is performed exactly once. Works on the embedded PostgreSQL with no set-up.

The demo's own tables (a payment ledger and an outbox of emails) are the application's, not the
engine's: this module plays the part of user code.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from typing import Any

import click
import psycopg

from .app import App
from .context import DurableContext, current_run_id

SCHEMA = os.environ.get("DURABLY_DEMO_SCHEMA", "durably_demo")
app = App(schema=SCHEMA)


def _ledger(sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(app.url, autocommit=True) as conn:
        cur = conn.execute(sql.replace("{schema}", f'"{SCHEMA}"'), params)
        return cur.fetchall() if cur.description else []


def create_ledger() -> None:
    """The application's tables: payments (unique per idempotency key) and sent emails."""
    _ledger(
        "CREATE TABLE IF NOT EXISTS {schema}.demo_payments (idempotency_key text PRIMARY KEY,"
        " order_id text NOT NULL, amount integer NOT NULL, pid integer NOT NULL)"
    )
    _ledger(
        "CREATE TABLE IF NOT EXISTS {schema}.demo_emails (order_id text NOT NULL,"
        " pid integer NOT NULL)"
    )


@app.task(name="demo.charge_payment")
def charge_payment(order_id: str, amount: int) -> dict[str, Any]:
    """Charge the card. Tasks run at least once, so the charge is keyed by this run's id: a
    second execution of the same run cannot charge twice."""
    key = f"charge:{current_run_id()}"
    _ledger(
        "INSERT INTO {schema}.demo_payments VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
        (key, order_id, amount, os.getpid()),
    )
    return {"order_id": order_id, "charged": amount, "payment": key}


@app.task(name="demo.send_confirmation_email")
def send_confirmation_email(order_id: str) -> str:
    """Send the confirmation (recorded in an outbox table)."""
    _ledger("INSERT INTO {schema}.demo_emails VALUES (%s, %s)", (order_id, os.getpid()))
    return f"confirmation sent for {order_id}"


@app.durable_task(name="demo.process_order")
async def process_order(ctx: DurableContext, order_id: str, amount: int) -> dict[str, Any]:
    """The guide's durable task: charge, then confirm, each a checkpointed child run."""
    receipt: dict[str, Any] = await ctx.run(charge_payment, order_id, amount)
    receipt["email"] = await ctx.run(send_confirmation_email, order_id)
    return receipt


def start_worker(failpoints: str = "") -> subprocess.Popen[bytes]:
    """A worker process for this demo's App (``durably worker durably.demo:app``)."""
    env = {**os.environ, "DURABLY_DATABASE_URL": app.url, "DURABLY_DEMO_SCHEMA": SCHEMA}
    env["DURABLY_FAILPOINTS"] = failpoints
    return subprocess.Popen(
        [sys.executable, "-m", "durably", "worker", "durably.demo:app", "--slots", "2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def run_demo() -> None:
    """Run the crash-and-resume demo and explain what happened."""
    click.echo(f"database: {app.url}  (schema {SCHEMA!r})")
    app.migrate()
    create_ledger()
    order_id = f"order-{uuid.uuid4().hex[:6]}"
    handle = process_order.enqueue(order_id, 4200)
    click.echo(f"enqueued process_order({order_id!r}, 4200) as run {handle.id}")

    first = start_worker("after_finish:demo.charge_payment")
    click.echo(f"worker A (pid {first.pid}) started; it will be killed right after the payment")
    code = first.wait(timeout=60)
    how = "SIGKILL" if code == -signal.SIGKILL else f"exit code {code}"
    click.echo(f"worker A died ({how}) with run {handle.id} {handle.status()}, its payment made")

    second = start_worker()
    started = time.monotonic()
    click.echo(f"worker B (pid {second.pid}) started")
    try:
        result = handle.result(timeout=60)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=60)
    click.echo(f"worker B finished the run in {time.monotonic() - started:.1f}s: {result}")
    _explain(handle.id, order_id)


def _explain(run_id: int, order_id: str) -> None:
    run = app.get_run(run_id)
    assert run is not None
    click.echo(f"\nrun {run_id}: {run.status}, attempt {run.attempt} ({run.recoveries} recovery)")
    click.echo("event log:")
    for entry in app.event_log(run_id):
        click.echo(
            f"  #{entry['seq']} {entry['kind']:<6} {entry['name']:<28} child run "
            f"{entry['child_id']}, recorded by attempt {entry['attempt']}, "
            f"{'done' if entry['done'] else 'pending'}"
        )
    payments = _ledger("SELECT pid FROM {schema}.demo_payments WHERE order_id = %s", (order_id,))
    emails = _ledger("SELECT pid FROM {schema}.demo_emails WHERE order_id = %s", (order_id,))
    click.echo(
        f"\npayment performed {len(payments)} time(s); confirmation sent {len(emails)} time(s)."
    )
    click.echo(
        "Attempt 2 re-ran process_order from the top: the payment child was already in the log, "
        "so its recorded result was returned instead of charging again."
    )
