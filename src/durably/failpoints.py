"""Named failure points: places inside the engine where a test (or the demo) can make the worker
process die with SIGKILL, to prove what survives a crash at that exact moment.

Off unless the environment variable ``DURABLY_FAILPOINTS`` names them, e.g.
``DURABLY_FAILPOINTS=after_finish:demo.charge_payment,before_spawn:demo.send_email``. Points:

- ``task_start:<task>``: a run of that task is about to execute its body;
- ``after_body:<task>``: its body returned, and its outcome is not recorded yet;
- ``before_spawn:<task>`` / ``after_spawn:<task>``: a durable run is about to create / has
  created (committed) a child run of that task;
- ``after_finish:<task>``: the outcome of a run of that task has been committed;
- ``after_observe:<task>``: a durable run has recorded that its child of that task ended.

Two more do not kill: they raise a connection error right after a statement committed, as if
the reply to the commit were lost (an *ambiguous commit*), once per run and process:

- ``lost_reply_log:<task>``: the first statement a durable run of that task makes on its log;
- ``lost_reply_finish:<task>``: the statement recording the outcome of a run of that task.
"""

from __future__ import annotations

import os
import signal

import psycopg

ENABLED = frozenset(
    p.strip() for p in os.environ.get("DURABLY_FAILPOINTS", "").split(",") if p.strip()
)


def hit(point: str, task: str) -> None:
    """Die at once (SIGKILL, no cleanup) if ``point:task`` is enabled."""
    if ENABLED and f"{point}:{task}" in ENABLED:
        os.kill(os.getpid(), signal.SIGKILL)


_fired: set[tuple[str, int]] = set()


def lose_reply(point: str, task: str, run_id: int) -> None:
    """Raise a connection error (once per run) if ``point:task`` is enabled."""
    if ENABLED and f"{point}:{task}" in ENABLED and (point, run_id) not in _fired:
        _fired.add((point, run_id))
        raise psycopg.OperationalError(f"failpoint {point}: the reply was lost after the commit")
