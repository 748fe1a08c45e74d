"""Tracing with OpenTelemetry, when ``opentelemetry-api`` is installed (``durably[otel]``).

Each enqueue is a PRODUCER span and each attempt a CONSUMER span. The enqueue span's context is
stored on the run (``runs.trace_context``, W3C trace context headers), so an attempt, however
late and on whichever worker, continues the trace of the code that enqueued it; a durable run's
children are enqueued inside its attempt span, so a workflow and its children form one trace.
Event-log operations (steps, children, sleeps, event waits) are span events of the attempt.

Without the package every function here does nothing. With the API but no SDK configured,
spans are non-recording and no context is stored: the cost is a few function calls.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

try:
    from opentelemetry import propagate, trace
    from opentelemetry.trace import (
        NoOpTracerProvider,
        ProxyTracerProvider,
        SpanKind,
        Status,
        StatusCode,
    )
except ImportError:  # the [otel] extra is not installed
    trace = None  # type: ignore[assignment]


def _tracing() -> bool:
    """Whether an application configured a tracer provider. Without one every span would be a
    no-op, but making them took about 4% of a draining worker's time: skip them."""
    if trace is None:
        return False
    return not isinstance(trace.get_tracer_provider(), ProxyTracerProvider | NoOpTracerProvider)


__all__ = ["attempt_span", "carrier", "enqueue_span", "event", "fail"]


def _tracer() -> Any:
    return trace.get_tracer("durably")


@contextmanager
def enqueue_span(task: str, count: int = 1) -> Iterator[None]:
    """The span around enqueueing ``count`` runs of ``task`` (their ``carrier`` points at it)."""
    if not _tracing():
        yield
        return
    attributes = {"durably.task": task, "messaging.batch.message_count": count}
    with _tracer().start_as_current_span(
        f"enqueue {task}", kind=SpanKind.PRODUCER, attributes=attributes
    ):
        yield


def carrier() -> str | None:
    """The current trace context as JSON text to store on a run, or None when not tracing."""
    if not _tracing() or not trace.get_current_span().get_span_context().is_valid:
        return None
    headers: dict[str, str] = {}
    propagate.inject(headers)
    return json.dumps(headers) if headers else None


@contextmanager
def attempt_span(task: str, run_id: int, attempt: int, worker: str, stored: Any) -> Iterator[None]:
    """The span of one attempt, a child of the enqueue span whose context ``stored`` holds."""
    if not _tracing():
        yield
        return
    parent = propagate.extract(_headers(stored)) if stored else None
    attributes = {
        "durably.task": task,
        "durably.run_id": run_id,
        "durably.attempt": attempt,
        "durably.worker": worker,
    }
    with _tracer().start_as_current_span(
        f"run {task}",
        context=parent,
        kind=SpanKind.CONSUMER,
        attributes=attributes,
        record_exception=False,  # outcomes are recorded by `fail`, not by exceptions passing
        set_status_on_exception=False,
    ):
        yield


def _headers(stored: Any) -> dict[str, str]:
    """The stored context: a dict from a jsonb column, or JSON text."""
    value = json.loads(stored) if isinstance(stored, str) else stored
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


def event(operation: str, **attributes: Any) -> None:
    """A span event on the current attempt (an event-log operation)."""
    if trace is None:
        return
    span = trace.get_current_span()
    if span.is_recording():
        clean = {f"durably.{k}": v for k, v in attributes.items() if v is not None}
        span.add_event(f"durably.{operation}", clean)


def fail(exc: BaseException, outcome: str) -> None:
    """Mark the current attempt's span as failed by ``exc`` (``outcome``: retry, fail, ...)."""
    if trace is None:
        return
    span = trace.get_current_span()
    if span.is_recording():
        span.record_exception(exc)
        span.set_attribute("durably.outcome", outcome)
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"[:200]))
