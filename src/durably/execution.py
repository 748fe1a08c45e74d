"""Executing one attempt: the task's function (or a durable run) called with its decoded
arguments, within its time limit, and what its end means: the outcome to record, or nothing
(suspended, or taken away from this worker)."""

from __future__ import annotations

import asyncio
import functools
import logging

from . import failpoints, telemetry
from .attempt import Attempt
from .durable import DurableRun, Runtime
from .errors import DeadlineExceeded, LeaseLost
from .records import CURRENT_RUN, Fence, Outcome, OutcomeKind, Suspend
from .serde import encode_result
from .storage import first_line

log = logging.getLogger("durably.worker")


async def execute(worker: Runtime, ex: Attempt) -> Outcome | None:
    """Execute one attempt; its outcome, or None when there is nothing to record."""
    task = ex.task
    limit, by_deadline = ex.time_limit()
    if by_deadline and limit is not None and limit <= 0:
        await _past_deadline(worker, ex)  # e.g. queued past it, and claimed before a sweep
        return None
    timer = asyncio.timeout(limit)
    durable = DurableRun(worker, ex) if task.durable else None
    try:
        call_args, call_kwargs = task.signature.decode_args(ex.args)
        failpoints.hit("task_start", task.name)
        CURRENT_RUN.set(ex.run_id)  # this asyncio task's own context
        async with timer:
            if durable is not None:
                value = await durable.call(call_args, call_kwargs, ex.has_log)
            elif task.is_async:
                value = await task.fn(*call_args, **call_kwargs)
            else:
                call = functools.partial(task.fn, *call_args, **call_kwargs)
                value = await asyncio.get_running_loop().run_in_executor(worker.threads, call)
        failpoints.hit("after_body", task.name)
        result = encode_result(task.name, value, worker.max_payload)
        return Outcome(ex.run_id, ex.attempt, OutcomeKind.OK, result=result)
    except Suspend as suspend:
        assert durable is not None
        await durable.suspend(suspend)
        return None
    except LeaseLost as exc:
        log.info("run %s: %s", ex.run_id, first_line(exc))
        return None
    except asyncio.CancelledError as exc:
        current = asyncio.current_task()
        if ex.abandoned or (current is not None and current.cancelling()):
            raise  # taken away from us (lease lost, cancelled, shutdown): write nothing
        return ex.failed(exc, worker.id)
    except BaseException as exc:  # anything a task raises fails only its run
        if isinstance(exc, TimeoutError) and timer.expired():
            if by_deadline:  # final, not retried; a lost lease writes nothing
                if durable is None or not durable.lost:
                    await _past_deadline(worker, ex)
                return None
            exc = TimeoutError(f"{task.name} did not finish within its timeout of {task.timeout}s")
        if durable is not None and durable.lost:
            return None
        if durable is not None and durable.interrupted is not None:
            return ex.released(durable.interrupted, worker.id)
        return ex.failed(exc, worker.id)


async def _past_deadline(worker: Runtime, ex: Attempt) -> None:
    """The run reached its run deadline while this attempt held it: fail it for good and
    cancel its unfinished children, in one fenced statement (nothing is left to record)."""
    written = await worker.store.fail_past_deadline(Fence(ex.run_id, ex.attempt, worker.id))
    deadline = ex.task.execution_deadline
    log.info(
        "run %s (%s) attempt %s passed its run deadline%s",
        ex.run_id,
        ex.task.name,
        ex.attempt,
        "" if written else " (it was no longer held)",
        extra=ex.fields(worker.id),
    )
    telemetry.fail(DeadlineExceeded(f"execution deadline of {deadline} s"), "fail")
