"""Ambiguous commits: the engine's statement committed but its reply was lost (the connection
broke in between). Named failure points stop at exactly that boundary; the chaos harness hits it
at random moments through its proxy."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

import durably
from durably import failpoints
from tests.helpers import wait_until


@pytest.fixture
def failpoint(monkeypatch: pytest.MonkeyPatch) -> Any:
    def enable(*points: str) -> None:
        monkeypatch.setattr(failpoints, "ENABLED", frozenset(points))
        monkeypatch.setattr(failpoints, "_fired", set())

    return enable


def counters(db: psycopg.Connection[Any], schema: str, run_id: int) -> tuple[Any, ...]:
    row = db.execute(
        f'SELECT status, attempt, failures, recoveries FROM "{schema}".runs WHERE id = %s',
        (run_id,),
    ).fetchone()
    assert row is not None
    return tuple(row)


def test_lost_reply_to_a_log_write_resumes_the_run_without_failing_it(
    app: durably.App, db: psycopg.Connection[Any], schema: str, failpoint: Any
) -> None:
    executed: list[str] = []

    def effect(name: str) -> str:
        executed.append(name)
        return name

    @app.durable_task(name="two_steps")  # no retries: a lost reply must not spend one
    async def two_steps(ctx: durably.DurableContext) -> list[str]:
        return [await ctx.step(effect, "a"), await ctx.step(effect, "b")]

    failpoint("lost_reply_log:two_steps")  # step "a" commits, then its reply is lost
    with app.worker():
        handle = two_steps.enqueue()
        assert handle.result(timeout=20) == ["a", "b"]
    assert executed == ["a", "b"], "the committed step was replayed, not executed again"
    assert counters(db, schema, handle.id) == ("COMPLETED", 2, 0, 1)
    seqs = db.execute(f'SELECT seq FROM "{schema}".event_log WHERE run_id = %s', (handle.id,))
    assert sorted(r[0] for r in seqs) == [0, 1], "each step recorded exactly once"


def test_lost_reply_to_an_outcome_write_records_it_once(
    app: durably.App, db: psycopg.Connection[Any], schema: str, failpoint: Any
) -> None:
    executed: list[int] = []

    @app.task(name="double")
    def double(n: int) -> int:
        executed.append(n)
        return 2 * n

    failpoint("lost_reply_finish:double")  # the outcome commits, then its reply is lost
    with app.worker() as worker:
        first = double.enqueue(21)
        assert first.result(timeout=20) == 42
        # The worker wrote the outcome again (fenced: refused), freed the slot and goes on.
        assert double.enqueue(1).result(timeout=20) == 2
        wait_until(lambda: worker.busy[False] == 0, what="both slots freed")
    assert executed == [21, 1]
    assert counters(db, schema, first.id) == ("COMPLETED", 1, 0, 0)


def test_lost_connection_while_suspending_hands_the_run_back(
    app: durably.App, db: psycopg.Connection[Any], schema: str, failpoint: Any
) -> None:
    @app.durable_task(name="napper")
    async def napper(ctx: durably.DurableContext) -> str:
        await ctx.sleep(0.5)  # longer than evict_after: the run suspends
        return "rested"

    failpoint("lost_reply_log:napper")  # the timer commits, then its reply is lost
    with app.worker(evict_after=0.1):
        handle = napper.enqueue()
        assert handle.result(timeout=20) == "rested"
    status, _, failures, recoveries = counters(db, schema, handle.id)
    assert (status, failures, recoveries) == ("COMPLETED", 0, 1)
