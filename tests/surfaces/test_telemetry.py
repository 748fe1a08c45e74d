"""Telemetry: OpenTelemetry spans across the queue, span events for the event log, and
structured log records, with a real SDK exporting to memory and a real worker."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import durably

_EXPORTER = InMemorySpanExporter()


class _WhileTesting(SimpleSpanProcessor):
    """Exports only while a test of this module runs: the provider stays installed for the rest
    of the session (OpenTelemetry allows one per process) and other tests' spans are dropped."""

    enabled = False

    def on_end(self, span: ReadableSpan) -> None:
        if self.enabled:
            super().on_end(span)


_PROCESSOR = _WhileTesting(_EXPORTER)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """The finished spans of this test, exported to memory by a real SDK provider."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(_PROCESSOR)
        trace.set_tracer_provider(provider)
    _EXPORTER.clear()
    _PROCESSOR.enabled = True
    yield _EXPORTER
    _PROCESSOR.enabled = False
    _EXPORTER.clear()


def named(spans: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in spans.get_finished_spans() if s.name == name]


def test_a_workflow_and_its_children_form_one_trace(
    app: durably.App, spans: InMemorySpanExporter
) -> None:
    @app.task(name="charge")
    def charge(amount: int) -> int:
        return amount

    def add_tax(amount: int) -> int:
        return amount + 1

    async def record(conn: Any, amount: int) -> int:
        await conn.execute("SELECT %s::int", (amount,))
        return amount

    @app.durable_task(name="order")
    async def order(ctx: durably.DurableContext, amount: int) -> int:
        charged = await ctx.run(charge, amount)
        taxed = int(await ctx.step(add_tax, charged))
        return int(await ctx.transaction(record, taxed))

    tracer = trace.get_tracer("tests")
    with app.worker(slots=2, durable_slots=2):
        with tracer.start_as_current_span("http request") as request:
            handle = order.enqueue(10)
        assert handle.result(timeout=30) == 11

    [enqueue] = named(spans, "enqueue order")
    runs = named(spans, "run order")
    [child] = named(spans, "run charge")
    trace_id = request.get_span_context().trace_id
    for span in [enqueue, *runs, child]:
        assert span.context is not None and span.context.trace_id == trace_id, span.name
    assert enqueue.kind is SpanKind.PRODUCER
    assert (
        enqueue.parent is not None and enqueue.parent.span_id == request.get_span_context().span_id
    )
    # Every attempt of the workflow (it suspends while the child runs, then resumes) continues
    # the enqueue span; the child continues the attempt that spawned it.
    assert runs and all(
        r.parent is not None and r.parent.span_id == enqueue.context.span_id for r in runs
    )
    assert all(r.kind is SpanKind.CONSUMER for r in runs)
    spawner = [r for r in runs if any(e.name == "durably.child" for e in r.events)]
    assert len(spawner) == 1
    assert child.parent is not None and child.parent.span_id == spawner[0].context.span_id
    attempts = {r.attributes["durably.attempt"] for r in runs if r.attributes}
    assert attempts == set(range(1, len(runs) + 1))
    events = [e for r in runs for e in r.events]
    recorded = [(e.name, e.attributes and e.attributes["durably.seq"]) for e in events]
    assert recorded == [("durably.child", 0), ("durably.step", 1), ("durably.transaction", 2)]


def test_a_failed_attempt_is_an_error_span(app: durably.App, spans: InMemorySpanExporter) -> None:
    @app.task(name="flaky", retries=1, backoff=0)
    def flaky() -> None:
        raise ValueError("card declined")

    with app.worker(slots=1):
        handle = flaky.enqueue()
        with pytest.raises(durably.RunFailed):
            handle.result(timeout=30)

    runs = sorted(named(spans, "run flaky"), key=lambda s: s.start_time or 0)
    assert [r.attributes and r.attributes["durably.outcome"] for r in runs] == ["retry", "fail"]
    for span in runs:
        assert span.status.status_code is StatusCode.ERROR
        assert "card declined" in (span.status.description or "")
        assert any(e.name == "exception" for e in span.events)


def test_without_a_tracer_provider_nothing_is_stored(
    database_url: str, schema: str, db: Any
) -> None:
    # In a fresh process: this one has an SDK provider installed for the other tests.
    script = (
        "import durably, sys\n"
        "app = durably.App(sys.argv[1], schema=sys.argv[2])\n"
        "plain = app.task(name='plain')(lambda: None)\n"
        "print(plain.enqueue().id)\n"
        "app.close()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, database_url, schema], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    run_id = int(done.stdout)
    row = db.execute(f'SELECT trace_context FROM "{schema}".runs WHERE id = %s', (run_id,))
    assert row.fetchone() == (None,)


def test_log_records_carry_the_run(app: durably.App, caplog: pytest.LogCaptureFixture) -> None:
    @app.task(name="noted")
    def noted() -> None:
        return None

    caplog.set_level(logging.DEBUG, logger="durably.worker")
    with app.worker(slots=1) as worker:
        handle = noted.enqueue()
        handle.result(timeout=30)
    about = [r for r in caplog.records if getattr(r, "run_id", None) == handle.id]
    assert {r.getMessage().split(": ")[0].split()[-1] for r in about} >= {"started", "ended"}
    for record in about:
        assert record.__dict__["task"] == "noted"
        assert record.__dict__["attempt"] == 1
        assert record.__dict__["worker"] == worker.id
