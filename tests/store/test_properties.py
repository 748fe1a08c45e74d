"""Property tests: random interleavings of what workers and operators do, against the real store.

A Hypothesis state machine drives ``durably.storage.Store`` (and the App's cancel / retry / replay /
fork) on a real PostgreSQL, in a fresh schema per example. It simulates several workers in one
process without running task bodies. Each registers with its own liveness lock, as the real Worker
does; claims into its two slot pools; records outcomes through the fenced ``finish`` (ok, retry,
fail, and ``release`` when an attempt lost the database), once more when the reply of a write was
lost; appends to durable event logs, spawns children, completes their entries and suspends, all
through the fenced log statements; and heartbeats. Workers also get SIGKILLed (their lock
connection closed, then the sweeper run), lose only their lock connection and reconnect, freeze
past their lease, or shut down gracefully. A frozen or cut-off worker keeps its executions: they
are the stale holders whose every write must be refused (a `zombie` step makes one on purpose:
takes an attempt away, has the run claimed again, then lets the old attempt write). Time moves
only when a step says so: the test ages heartbeats, leases and backoffs on the database clock,
the only clock the engine reads. Some steps race two statements on two connections (two claims;
an outcome against the sweeper, or against a cancel; an append against the sweeper; a child's
outcome against its parent's suspension): whichever order they took must be one the engine
allows.

A model predicts the answer of every statement (which runs a claim takes, in which order, which
writes land, what the sweeper recovers and wakes) and, after every step, the content of the
tables; a step fails as soon as the database disagrees. At the end every worker is killed, the
sweeper runs, and a fresh worker finishes everything it can claim: then every run must have ended.

Environment: ``DURABLY_PROPERTY_EXAMPLES`` / ``DURABLY_PROPERTY_STEPS`` raise the effort to hunt
for bugs, ``DURABLY_PROPERTY_SHRINK=1`` shrinks a failure to a minimal program (minutes on a
database).
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Concatenate, ParamSpec, TypeVar

import psycopg
import pytest
from hypothesis import HealthCheck, Phase, event, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

import durably
from durably.errors import UnknownTask
from durably.records import (
    Appended,
    CallOptions,
    Claim,
    Fence,
    LogWrite,
    NewRun,
    Outcome,
    OutcomeKind,
    Status,
)
from durably.storage import Store

P = ParamSpec("P")
T = TypeVar("T")
U = TypeVar("U")

STATUSES = frozenset({"QUEUED", "RUNNING", "WAITING", "COMPLETED", "FAILED", "CANCELLED"})
TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED"})
QUEUES = ("default", "q2")
# Leases and heartbeats never go stale by themselves during an example: only `freeze` ages them.
LONG = 3600.0


@dataclass(frozen=True)
class TaskSpec:
    durable: bool
    retries: int
    max_recoveries: int


# Small budgets, so that retries run out and recoveries reach their cap within a few steps.
TASKS = {
    "plain": TaskSpec(durable=False, retries=1, max_recoveries=1),
    "flow": TaskSpec(durable=True, retries=1, max_recoveries=2),
}
TASK_SETS = (("plain",), ("flow",), ("flow", "plain"))
QUEUE_SETS = (("default",), ("q2",), ("default", "q2"))
# How an attempt ends: fatal is a NonRetryableError, lost_db an attempt cut off from the database.
OUTCOME_KINDS = ("error", "ok", "lost_db", "fatal")
# Runs to enqueue in one call: (task, queue, priority, idempotency key).
ENQUEUE_SPECS = st.lists(
    st.tuples(
        st.sampled_from(sorted(TASKS)),
        st.sampled_from(QUEUES),
        st.integers(0, 2),
        st.sampled_from((None, None, "k0", "k1")),
    ),
    min_size=1,
    max_size=3,
)

EXAMPLES = int(os.environ.get("DURABLY_PROPERTY_EXAMPLES", "50"))
STEPS = int(os.environ.get("DURABLY_PROPERTY_STEPS", "30"))
SHRINK = os.environ.get("DURABLY_PROPERTY_SHRINK") == "1"
SETTINGS = settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    database=None,  # no .hypothesis/ directory in the working tree
    phases=[Phase.generate, *([Phase.shrink] if SHRINK else [])],
    suppress_health_check=[HealthCheck.too_slow],
)

COVERAGE: Counter[str] = Counter()  # what the examples did, all together
GROUPS = ("work", "trouble", "operator", "zombie", "race", "stale")
# The choices of one step: a fixed number of integers, whatever the step turns out to do.
PICKS = st.lists(st.integers(0, 2**16 - 1), min_size=16, max_size=16)


class Picks:
    """Every choice a step makes, taken from integers Hypothesis drew up front.

    Races make the state of the database differ from one run of a program to the next, so what
    a step can do (which executions exist, which runs are due) differs too. Hypothesis requires
    the same draws, of the same kinds, for the same program: so a step always draws the same
    sixteen integers, and picks among whatever exists by their remainders. A value shrinks to 0,
    which picks the first option and says no to every ``chance``. Each choice is noted, so a
    failing program prints what it did.
    """

    def __init__(self, values: Sequence[int]) -> None:
        self.values = values
        self.used = 0

    def index(self, count: int) -> int:
        value = self.values[self.used % len(self.values)] % count
        self.used += 1
        return value

    def one(self, options: Sequence[T], label: str) -> T:
        assert options, f"nothing to pick for {label!r}"
        choice = options[self.index(len(options))]
        note(f"    {label}: {choice!r}")
        return choice

    def integer(self, low: int, high: int, label: str) -> int:
        return self.one(range(low, high + 1), label)

    def chance(self, one_in: int, label: str) -> bool:
        """True once in ``one_in``."""
        yes = self.index(one_in) == one_in - 1
        note(f"    {label}: {yes}")
        return yes

    def enqueue_specs(self) -> list[tuple[str, str, int, str | None]]:
        return [
            (
                self.one(sorted(TASKS), "task"),
                self.one(QUEUES, "queue"),
                self.integer(0, 2, "priority"),
                self.one((None, None, "k0", "k1"), "idempotency key"),
            )
            for _ in range(self.integer(1, 3, "runs"))
        ]


# -- the model -------------------------------------------------------------------------------------


@dataclass
class MEntry:
    """One event-log entry, as the model expects it."""

    kind: str
    attempt: int
    done: bool
    child: int | None = None


@dataclass
class MRun:
    """One row of ``runs``, as the model expects it."""

    id: int
    task: str
    queue: str
    priority: int
    key: str | None = None
    parent: int | None = None
    status: str = "QUEUED"
    due: bool = True  # QUEUED and run_at <= now()
    attempt: int = 0
    failures: int = 0
    recoveries: int = 0
    worker: str | None = None
    lease_expired: bool = False
    result: Any = None
    error: tuple[str, int | None] | None = None  # (type, attempt that recorded it)
    wait_children: list[int] | None = None
    epoch: int = 0
    log: dict[int, MEntry] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"run {self.id} ({self.task}, {self.status})"

    @property
    def spec(self) -> TaskSpec:
        return TASKS[self.task]

    def queue_now(self) -> None:
        """QUEUED with run_at = now(), as most statements that queue a run do."""
        self.status, self.due = "QUEUED", True


@dataclass
class MExec:
    """An attempt a worker believes it executes: claimed, its outcome not yet written."""

    run: int
    attempt: int
    durable: bool
    failures: int
    max_retries: int
    next_seq: int

    def __repr__(self) -> str:
        return f"run {self.run} attempt {self.attempt}"


@dataclass
class MWorker:
    """A simulated worker process."""

    id: str
    queues: list[str]
    tasks: list[str]
    caps: dict[bool, int]  # durable? -> slots
    conn: psycopg.AsyncConnection[Any] | None  # the listener connection holding the lock
    lock_id: int
    alive: bool = True  # the process
    row_alive: bool = True  # workers.stopped_at IS NULL
    stale_heartbeat: bool = False
    executions: dict[tuple[int, int], MExec] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"worker {self.id[:8]}"

    def busy(self, durable: bool) -> int:
        return sum(1 for ex in self.executions.values() if ex.durable == durable)


def tracked(fn: Callable[Concatenate[StoreMachine, P], None]) -> Callable[..., None]:
    """Marks the machine broken while a step runs, so that teardown (which Hypothesis also calls
    after a failed step) only goes on to the final checks after steps that passed."""

    @functools.wraps(fn)
    def step(self: StoreMachine, *args: P.args, **kwargs: P.kwargs) -> None:
        self.broken = True
        fn(self, *args, **kwargs)
        self.broken = False

    return step


class StoreMachine(RuleBasedStateMachine):
    database_url: ClassVar[str] = ""

    def __init__(self) -> None:
        super().__init__()
        self.broken = True
        self.runner = asyncio.Runner()  # one event loop per example, for every async call
        self.schema = f"t_prop_{uuid.uuid4().hex[:12]}"
        self.runs: dict[int, MRun] = {}
        self.workers: dict[str, MWorker] = {}
        self.recorded: Counter[tuple[int, int]] = Counter()  # outcomes accepted per attempt
        self.archived: Counter[tuple[int, int]] = Counter()  # (run, epoch) -> entries archived
        self.mix: list[str] = list(GROUPS)
        self.app = durably.App(self.database_url, schema=self.schema, migrate=False, pool_size=2)
        self.app.task(name="plain", retries=1, max_recoveries=1)(_plain)
        self.app.durable_task(name="flow", retries=1, max_recoveries=2)(_flow)
        self.store = self.run(Store.open(self.database_url, self.schema, max_size=3))
        self.run(self.store.migrate())
        self.broken = False

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.runner.run(coro)

    def race(self, one: Coroutine[Any, Any, T], other: Coroutine[Any, Any, U]) -> tuple[T, U]:
        """Two statements at once, each on its own connection."""

        async def both() -> tuple[T, U]:
            first, second = await asyncio.gather(one, other)
            return first, second

        return self.run(both())

    def seen(self, what: str) -> None:
        """Count what happened, to show that the examples reach the interesting cases."""
        event(what)
        COVERAGE[what] += 1

    async def rows(self, sql: str, params: dict[str, Any] | None = None) -> list[Any]:
        async with self.store.pool.connection() as conn:
            cur = await conn.execute(sql.replace("{schema}", f'"{self.schema}"').encode(), params)
            return await cur.fetchall() if cur.description else []

    # -- helpers -----------------------------------------------------------------------------------

    def live(self) -> list[MWorker]:
        return [w for w in self.workers.values() if w.alive]

    def executions(self, durable: bool | None = None) -> list[tuple[MWorker, MExec]]:
        return [
            (w, ex)
            for w in self.live()
            for _, ex in sorted(w.executions.items())
            if durable is None or ex.durable == durable
        ]

    def holds(self, worker: MWorker, ex: MExec) -> bool:
        """Would a fenced write of this execution land? (run, attempt, worker, RUNNING)"""
        run = self.runs[ex.run]
        return run.status == "RUNNING" and run.attempt == ex.attempt and run.worker == worker.id

    def stale(self) -> list[tuple[MWorker, MExec]]:
        return [(w, ex) for w, ex in self.executions() if not self.holds(w, ex)]

    def refused(self, worker: MWorker, ex: MExec, what: str) -> None:
        """A refused write ends the execution (LeaseLost, fenced outcome): its slot is freed."""
        del worker.executions[(ex.run, ex.attempt)]
        self.seen(f"stale {what} refused")

    def fence(self, worker: MWorker, ex: MExec) -> Fence:
        return Fence(ex.run, ex.attempt, worker.id)

    def descendants(self, run_id: int) -> list[int]:
        found, todo = [run_id], [run_id]
        while todo:
            parent = todo.pop()
            children = [r.id for r in self.runs.values() if r.parent == parent]
            found += children
            todo += children
        return found

    def pools(self, due_only: bool) -> list[tuple[MWorker, bool]]:
        """(worker, durable pool) pairs that would claim now: tasks to claim and a free slot,
        and with ``due_only`` a due run to take."""
        pools = []
        for w in self.live():
            for durable in (False, True):
                names = [t for t in w.tasks if TASKS[t].durable == durable]
                if not names or w.busy(durable) >= w.caps[durable]:
                    continue
                if due_only and not any(
                    r.status == "QUEUED" and r.due and r.queue in w.queues and r.task in names
                    for r in self.runs.values()
                ):
                    continue
                pools.append((w, durable))
        return pools

    async def wait_lock_released(self, worker: MWorker) -> None:
        """PostgreSQL ends a closed session a moment later; the sweeper looks in pg_locks."""
        deadline = time.monotonic() + 10
        while True:
            [(held,)] = await self.rows(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                " AND objsubid = 2 AND classid = %(ns)s::oid AND objid = %(lock)s::oid"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                {"ns": self.store.namespace, "lock": worker.lock_id},
            )
            if not held:
                return
            assert time.monotonic() < deadline, f"worker {worker.id}'s lock outlived its session"
            await asyncio.sleep(0.005)

    async def register(
        self, worker_id: str, queues: list[str], tasks: list[str], slots: int
    ) -> tuple[psycopg.AsyncConnection[Any], int]:
        """What Worker does on start and on reconnect: a connection, its lock, the row."""
        conn = await self.store.register_worker(
            worker_id, queues, tasks, slots, "property-test", os.getpid()
        )
        [(lock_id,)] = await self.rows(
            "SELECT lock_id FROM {schema}.workers WHERE id = %(id)s", {"id": worker_id}
        )
        return conn, int(lock_id)

    def close_lock_connection(self, worker: MWorker) -> None:
        assert worker.conn is not None
        self.run(worker.conn.close())
        worker.conn = None
        self.run(self.wait_lock_released(worker))

    # -- worker actions ----------------------------------------------------------------------------

    def add_worker(
        self, queues: tuple[str, ...], tasks: tuple[str, ...], slots: int, durable_slots: int
    ) -> MWorker:
        worker_id = str(uuid.uuid4())
        conn, lock_id = self.run(self.register(worker_id, list(queues), list(tasks), slots))
        caps = {False: slots, True: durable_slots}
        worker = MWorker(worker_id, list(queues), list(tasks), caps, conn, lock_id)
        self.workers[worker_id] = worker
        return worker

    def register_worker(self, pick: Picks) -> None:
        self.add_worker(
            pick.one(QUEUE_SETS, "queues"),
            pick.one(TASK_SETS, "tasks"),
            pick.integer(1, 2, "slots"),
            pick.integer(1, 2, "durable slots"),
        )

    def claim_args(self, worker: MWorker, durable: bool) -> tuple[list[str], int]:
        names = sorted(t for t in worker.tasks if TASKS[t].durable == durable)
        return names, worker.caps[durable] - worker.busy(durable)

    def claim_for(self, worker: MWorker, durable: bool, claim: Claim | None = None) -> list[int]:
        """One claim of one slot pool, as the worker's claim loop makes it; returns run ids.
        With ``claim``, the answer of a claim that raced with another: SKIP LOCKED may have made
        it skip runs, but it took only due runs, none twice, within its free slots."""
        names, free = self.claim_args(worker, durable)
        if not names or free <= 0:
            return []  # the real worker does not claim then
        due = [
            r
            for r in self.runs.values()
            if r.status == "QUEUED" and r.due and r.queue in worker.queues and r.task in names
        ]
        expected = sorted(due, key=lambda r: (-r.priority, r.id))[:free]
        if claim is None:
            claim = self.run(self.store.claim(worker.id, worker.queues, names, free, LONG, durable))
            rows = claim.runs
        else:
            rows = claim.runs
            taken = {row.run_id for row in rows}
            assert len(taken) <= free and taken <= {r.id for r in due}, (
                f"a racing claim of {free} by {worker.id[:8]} took {sorted(taken)}, "
                f"due: {[r.id for r in due]}"
            )
            expected = [r for r in due if r.id in taken]
        assert claim.woken == 0, f"no timer is due, yet woken: {claim}"
        got = {row.run_id: row for row in rows}
        assert sorted(got) == sorted(r.id for r in expected), (
            f"a claim of {free} by {worker.id[:8]} took {sorted(got)}, expected "
            f"{[r.id for r in expected]} (priority DESC, id)"
        )
        for run in expected:
            claimed = got[run.id]
            task, attempt, failures = claimed.task, claimed.attempt, claimed.failures
            max_retries, has_log, deadline_in = (
                claimed.max_retries,
                claimed.has_log,
                claimed.deadline_in,
            )
            assert deadline_in is None  # none of these runs has a run deadline
            assert (task, attempt, failures, max_retries) == (
                run.task,
                run.attempt + 1,
                run.failures,
                run.spec.retries,
            ), f"claimed row {got[run.id]} does not match {run}"
            assert bool(has_log) == (run.spec.durable and bool(run.log))
            assert not any((run.id, attempt) in w.executions for w in self.workers.values()), (
                f"attempt {attempt} of run {run.id} was claimed twice"
            )
            run.status, run.attempt, run.worker, run.lease_expired = (
                "RUNNING",
                attempt,
                worker.id,
                False,
            )
            if has_log:  # DurableRun.call loads the log: it must be the model's
                self.seen("claimed a run with a log")
                loaded = self.run(self.store.load_log(run.id))
                assert [(e.seq, e.kind, e.done, e.child_id) for e in loaded] == [
                    (seq, e.kind, e.done, e.child) for seq, e in sorted(run.log.items())
                ], f"the log of run {run.id} as loaded at claim"
            worker.executions[(run.id, attempt)] = MExec(
                run.id, attempt, run.spec.durable, failures, max_retries, len(run.log)
            )
        return [run.id for run in expected]

    def claim(self, pick: Picks) -> None:
        idle = not self.pools(due_only=True) or pick.chance(5, "idle")
        worker, durable = pick.one(self.pools(due_only=not idle), "pool")
        self.seen(f"claim took {len(self.claim_for(worker, durable))}")

    def outcome(self, ex: MExec, kind: str) -> Outcome:
        """The outcome the worker writes for an attempt that ended this way (Worker._failure,
        Worker._release)."""
        if kind == "ok":
            result = json.dumps({"run": ex.run, "attempt": ex.attempt})
            return Outcome(ex.run, ex.attempt, OutcomeKind.OK, result=result)
        if kind == "lost_db":
            error = json.dumps({"type": "DatabaseUnavailable", "attempt": ex.attempt})
            return Outcome(ex.run, ex.attempt, OutcomeKind.RELEASE, error=error)
        final = kind == "fatal" or ex.failures >= ex.max_retries
        error = json.dumps({"type": "Boom", "attempt": ex.attempt, "traceback": None})
        kind = OutcomeKind.FAIL if final else OutcomeKind.RETRY
        return Outcome(ex.run, ex.attempt, kind, error=error)

    def finish_batch(
        self,
        worker: MWorker,
        items: Iterable[tuple[MExec, str]],
        lost_reply: bool = False,
        rows: dict[int, Status] | None = None,
        wake: bool = True,
    ) -> None:
        """Write outcomes in one fenced `finish`, as the worker's flusher does; with
        ``lost_reply`` the reply is lost and the flusher writes the same batch again. With
        ``rows``, the answer of a `finish` that raced with another statement (and with ``wake``
        False, one that did not see the parent's suspension)."""
        outcomes = [self.outcome(ex, kind) for ex, kind in items]
        accepted = {
            (o.run_id, o.attempt)
            for o in outcomes
            if self.holds(worker, worker.executions[(o.run_id, o.attempt)])
        }
        expected: dict[int, str] = {}  # run id -> its status once written
        for o in (o for o in outcomes if (o.run_id, o.attempt) in accepted):
            run = self.runs[o.run_id]
            # A release counts as a recovery: queued again until max_recoveries, then FAILED.
            again = o.kind == "retry" or (
                o.kind == "release" and run.recoveries < run.spec.max_recoveries
            )
            expected[o.run_id] = "COMPLETED" if o.kind == "ok" else "QUEUED" if again else "FAILED"
        if rows is None:
            rows = self.run(self.store.finish(worker.id, outcomes))
        assert rows == expected, (
            f"finish by {worker.id[:8]} of {[(o.run_id, o.attempt, o.kind) for o in outcomes]}"
            f" wrote {rows}, expected {expected}"
        )
        ended, released = [], []
        for o in outcomes:
            ex = worker.executions.pop((o.run_id, o.attempt))  # the slot is freed either way
            if (o.run_id, o.attempt) not in accepted:
                self.seen("stale outcome refused")
                continue
            self.recorded[(o.run_id, o.attempt)] += 1
            run = self.runs[o.run_id]
            run.status, run.worker = expected[o.run_id], None
            run.result = json.loads(o.result) if o.result is not None else None
            run.error = None if o.error is None else (json.loads(o.error)["type"], ex.attempt)
            run.failures += o.kind in ("retry", "fail")
            run.recoveries += o.kind == "release"
            run.due = o.kind != "release"
            self.seen(f"outcome {o.kind}: {run.status}")
            if run.status in TERMINAL:
                ended.append(run)
            elif o.kind == "release":
                released.append(run)
        for child in ended if wake else ():  # a parent wakes once all its children have ended
            parent = self.runs.get(child.parent) if child.parent is not None else None
            if (
                parent is not None
                and parent.status == "WAITING"
                and parent.wait_children is not None
                and child.id in parent.wait_children
                and all(self.runs[c].status in TERMINAL for c in parent.wait_children)
            ):
                parent.queue_now()
                parent.wait_children = None
                self.seen("parent woken by finish")
        if released:
            self.run(self.pin_backoff(released))
        if lost_reply:  # the flusher's retry of a batch that had committed: fenced out entirely
            assert self.run(self.store.finish(worker.id, outcomes)) == {}, "written twice"
            self.seen("lost reply: the batch written again was refused")

    async def pin_backoff(self, released: list[MRun]) -> None:
        """A released run waits 0.25 s doubling per recovery: check it, then make it wait until
        a step lets time pass, so that claims do not depend on how fast the test runs."""
        rows = await self.rows(
            "SELECT id, EXTRACT(EPOCH FROM run_at - now())::float8 FROM {schema}.runs"
            " WHERE id = ANY(%(ids)s)",
            {"ids": [r.id for r in released]},
        )
        for run_id, left in rows:
            backoff = 0.25 * 2 ** (self.runs[run_id].recoveries - 1)
            assert backoff - 1.0 < left <= backoff, f"run {run_id} released for {left}s"
        await self.rows(
            "UPDATE {schema}.runs SET run_at = now() + interval '1 hour' WHERE id = ANY(%(ids)s)",
            {"ids": [r.id for r in released]},
        )

    def finish(self, pick: Picks) -> None:
        worker, ex = pick.one(self.executions(), "execution")
        kind = pick.one(OUTCOME_KINDS, "outcome")
        lost_reply = pick.chance(5, "lost reply")
        self.finish_batch(worker, [(ex, kind)], lost_reply)

    def flush_batch(self, pick: Picks) -> None:
        busy = [w for w in self.live() if len(w.executions) > 1]
        worker = pick.one(busy, "worker")
        execs = [ex for _, ex in sorted(worker.executions.items())]
        kinds = [pick.one(OUTCOME_KINDS, "outcome") for _ in execs]
        lost_reply = pick.chance(5, "lost reply")
        self.finish_batch(worker, zip(execs, kinds, strict=True), lost_reply)

    def append_params(self, worker: MWorker, ex: MExec) -> tuple[Fence, LogWrite]:
        result = json.dumps({"attempt": ex.attempt})
        write = LogWrite(ex.next_seq, "step", "s", f"k{ex.next_seq}", "[]", result, done=True)
        return self.fence(worker, ex), write

    def append(self, worker: MWorker, ex: MExec, landed: bool | None = None) -> None:
        """A step's result appended to the log (DurableRun.append), fenced; ``landed``, the
        answer of an append that raced with another statement."""
        run, seq, held = self.runs[ex.run], ex.next_seq, self.holds(worker, ex)
        assert not held or seq not in run.log, "model: a holder appends after its log"
        if landed is None:
            row = self.run(self.store.log_append(*self.append_params(worker, ex)))
        else:
            row = Appended(None, None) if landed else None
        assert (row is not None) == held, (
            f"append of run {ex.run} attempt {ex.attempt} by {worker.id[:8]}: "
            f"{'written' if row else 'refused'}, expected {'written' if held else 'refused'}"
        )
        if not held:
            self.refused(worker, ex, "append")
            return
        run.log[seq] = MEntry("step", ex.attempt, True)
        ex.next_seq += 1

    def append_step(self, pick: Picks) -> None:
        worker, ex = pick.one(self.executions(durable=True), "execution")
        self.append(worker, ex)

    def spawn_child(self, pick: Picks) -> None:
        worker, ex = pick.one(self.executions(durable=True), "execution")
        self.spawn(worker, ex, pick)

    def spawn(self, worker: MWorker, ex: MExec, pick: Picks) -> None:
        """ctx.spawn: the child run and its entry, in one fenced statement."""
        task = pick.one(sorted(TASKS), "child task")
        queue = pick.one(QUEUES, "child queue")
        priority = pick.integer(0, 2, "child priority")
        run, seq, held = self.runs[ex.run], ex.next_seq, self.holds(worker, ex)
        spec = TASKS[task]
        child_id = self.run(
            self.store.log_spawn(
                self.fence(worker, ex),
                seq,
                f"k{seq}",
                NewRun(
                    task=task,
                    queue=queue,
                    priority=priority,
                    args=json.dumps({"n": seq}),
                    max_retries=spec.retries,
                    max_recoveries=spec.max_recoveries,
                    delay=0.0,
                    schedule_timeout=None,
                    idempotency_key=None,
                    durable=spec.durable,
                ),
            )
        )
        assert (child_id is not None) == held, f"spawn by run {ex.run} attempt {ex.attempt}"
        if child_id is None:
            self.refused(worker, ex, "spawn")
            return
        assert child_id not in self.runs
        self.runs[child_id] = MRun(child_id, task, queue, priority, parent=run.id)
        run.log[seq] = MEntry("child", ex.attempt, False, child_id)
        ex.next_seq += 1

    def pending_children(self, ex: MExec) -> list[tuple[int, MEntry]]:
        log = self.runs[ex.run].log
        return [(seq, e) for seq, e in sorted(log.items()) if e.kind == "child" and not e.done]

    def can_observe(self) -> list[tuple[MWorker, MExec, int]]:
        return [
            (w, ex, seq)
            for w, ex in self.executions(durable=True)
            for seq, e in self.pending_children(ex)
            if e.child is not None and self.runs[e.child].status in TERMINAL
        ]

    def observe_child(self, pick: Picks) -> None:
        """The parent saw its child end (DurableRun.wait_children): log_complete, fenced."""
        worker, ex, seq = pick.one(self.can_observe(), "entry")
        held = self.holds(worker, ex)
        done = self.run(self.store.log_complete(self.fence(worker, ex), seq, "1", None))
        assert done == held, f"log_complete of run {ex.run} seq {seq} attempt {ex.attempt}"
        if not held:
            self.refused(worker, ex, "log_complete")
            return
        self.runs[ex.run].log[seq].done = True

    def can_suspend(self) -> list[tuple[MWorker, MExec]]:
        """Executions waiting for children."""
        return [(w, ex) for w, ex in self.executions(durable=True) if self.pending_children(ex)]

    def suspend(self, pick: Picks) -> None:
        """The run waited past evict_after for its children: WAITING, its slot freed."""
        worker, ex = pick.one(self.can_suspend(), "execution")
        self.suspend_exec(worker, ex)

    def suspend_children(self, ex: MExec) -> list[int]:
        return [e.child for _, e in self.pending_children(ex) if e.child is not None]

    def suspend_statement(self, worker: MWorker, ex: MExec) -> Coroutine[Any, Any, Status | None]:
        children = self.suspend_children(ex)
        return self.store.suspend(self.fence(worker, ex), None, children, None)

    def suspend_exec(
        self, worker: MWorker, ex: MExec, answer: tuple[str | None] | None = None
    ) -> None:
        """Suspend; ``answer``, that of a suspend that raced with another statement."""
        run, held = self.runs[ex.run], self.holds(worker, ex)
        children = self.suspend_children(ex)
        status = self.run(self.suspend_statement(worker, ex)) if answer is None else answer[0]
        ready = bool(children) and all(self.runs[c].status in TERMINAL for c in children)
        expected = None if not held else "QUEUED" if ready else "WAITING"
        assert status == expected, f"suspend of run {ex.run} on {children}"
        if not held:
            self.refused(worker, ex, "suspend")
            return
        del worker.executions[(ex.run, ex.attempt)]
        run.queue_now()
        run.status, run.worker, run.wait_children = str(status), None, children
        self.seen(f"suspended: {status}")

    def heartbeat(self, pick: Picks) -> None:
        """Extend the leases it holds; abandon the executions it no longer holds."""
        worker = pick.one(self.live(), "worker")
        ids = sorted({ex.run for ex in worker.executions.values()})
        held = self.run(self.store.heartbeat(worker.id, LONG, ids))
        expected = {
            (r, self.runs[r].attempt)
            for r in ids
            if self.runs[r].status == "RUNNING" and self.runs[r].worker == worker.id
        }
        assert held == expected, f"heartbeat of {worker.id[:8]} over {ids}"
        worker.row_alive, worker.stale_heartbeat = True, False
        for run_id, _ in held:
            self.runs[run_id].lease_expired = False
        for key in [k for k in worker.executions if k not in held]:
            del worker.executions[key]  # taken away (recovered, cancelled): abandoned
            self.seen("heartbeat abandoned an execution")

    # -- trouble -----------------------------------------------------------------------------------

    def sweep_model(
        self, swept: tuple[int, int, int] | None = None, locked: frozenset[int] = frozenset()
    ) -> None:
        """Store.sweep, as every worker's sweep loop runs it. With ``swept``, the answer of a
        sweep that raced with a statement holding the rows of ``locked`` (SKIP LOCKED)."""
        if swept is None:
            swept = self.run(self.store.sweep(dead_after=LONG))
        for w in self.workers.values():
            if w.row_alive and (w.stale_heartbeat or w.conn is None):
                w.row_alive = False
        # A worker marked stopped for a stale heartbeat that still holds its lock only lost the
        # runs whose lease expired; one whose lock is gone lost them all.
        alive = {w.id for w in self.workers.values() if w.row_alive or w.conn is not None}
        orphans = [
            r
            for r in self.runs.values()
            if r.status == "RUNNING"
            and (r.lease_expired or r.worker not in alive)
            and r.id not in locked
        ]
        for r in orphans:
            r.queue_now()
            if r.recoveries >= r.spec.max_recoveries:
                r.status, r.error = "FAILED", ("WorkerLost", None)
                self.seen("recovered: WorkerLost")
            else:
                self.seen("recovered: QUEUED")
            r.recoveries += 1
            r.worker, r.lease_expired = None, False
        # The wake-up backstop: WAITING runs all of whose children ended, whatever ended them
        # (cancel, WorkerLost).
        woken = [
            r
            for r in self.runs.values()
            if r.status == "WAITING"
            and bool(r.wait_children)
            and all(self.runs[c].status in TERMINAL for c in r.wait_children or [])
        ]
        for r in woken:
            r.queue_now()
            r.wait_children = None
            self.seen("woken by the sweeper")
        assert swept == (len(orphans), 0, len(woken)), (
            f"sweep returned {swept}, expected {len(orphans)} recovered and {len(woken)} woken: "
            f"{[(r.id, r.status) for r in orphans]}, {[r.id for r in woken]}"
        )

    def sweep(self, pick: Picks) -> None:
        self.sweep_model()

    def crash(self, pick: Picks) -> None:
        """SIGKILL: the session ends and its lock with it, then the sweep loop runs."""
        worker = pick.one(self.live(), "worker")
        if worker.conn is not None:
            self.close_lock_connection(worker)
        worker.alive = False
        worker.executions.clear()
        self.sweep_model()

    def lose_lock_connection(self, pick: Picks) -> None:
        """Only the listener connection drops (server restart, pg_terminate_backend): the
        process lives on, and so do its executions."""
        choices = [w for w in self.live() if w.conn is not None]
        self.close_lock_connection(pick.one(choices, "worker"))
        if pick.chance(2, "swept before it reconnects"):
            self.sweep_model()

    def reconnect(self, pick: Picks) -> None:
        """The listener reconnects: a new lock, and the worker row upserted alive again."""
        worker = pick.one([w for w in self.live() if w.conn is None], "choice")
        worker.conn, worker.lock_id = self.run(
            self.register(worker.id, worker.queues, worker.tasks, worker.caps[False])
        )
        worker.row_alive, worker.stale_heartbeat = True, False

    def freeze(self, pick: Picks) -> None:
        """SIGSTOP for longer than dead_after and the lease: on the database clock its heartbeat
        and its leases are now two hours old. It keeps its lock and its executions."""
        worker = pick.one(self.live(), "worker")
        self.freeze_worker(worker)
        if pick.chance(2, "swept while frozen"):
            self.sweep_model()

    def freeze_worker(self, worker: MWorker) -> None:
        self.run(
            self.rows(
                "UPDATE {schema}.workers SET heartbeat_at = heartbeat_at - interval '2 hours'"
                " WHERE id = %(id)s",
                {"id": worker.id},
            )
        )
        worker.stale_heartbeat = True
        self.age_leases(worker)

    def leases_expire(self, pick: Picks) -> None:
        """Its leases lapse while its heartbeat stays fresh (a lease shorter than dead_after):
        the sweeper takes the runs back although the worker lives."""
        worker = pick.one(self.live(), "worker")
        self.age_leases(worker)
        if pick.chance(2, "swept at once"):
            self.sweep_model()

    def age_leases(self, worker: MWorker) -> None:
        self.run(
            self.rows(
                "UPDATE {schema}.runs SET lease_expires_at = lease_expires_at - interval '2 hours'"
                " WHERE worker_id = %(id)s AND status = 'RUNNING'",
                {"id": worker.id},
            )
        )
        for r in self.runs.values():
            if r.status == "RUNNING" and r.worker == worker.id:
                r.lease_expired = True

    def time_passes(self, pick: Picks | None = None) -> None:
        """Backoffs run out: every queued run is due."""
        self.run(
            self.rows(
                "UPDATE {schema}.runs SET run_at = now() - interval '1 second'"
                " WHERE status = 'QUEUED' AND run_at > now()"
            )
        )
        for r in self.runs.values():
            if r.status == "QUEUED":
                r.due = True

    def shutdown(self, pick: Picks) -> None:
        """A graceful stop past its grace period: what it still runs is released at once."""
        worker = pick.one(self.live(), "worker")
        ids = sorted({ex.run for ex in worker.executions.values()})
        released = self.run(self.store.release(worker.id, ids))
        expected = [
            self.runs[r]
            for r in ids
            if self.runs[r].status == "RUNNING" and self.runs[r].worker == worker.id
        ]
        assert released == len(expected), f"release by {worker.id[:8]} of {ids}"
        for r in expected:
            r.queue_now()
            r.worker, r.lease_expired = None, False
        self.run(self.store.worker_stopped(worker.id))
        worker.row_alive = False
        if worker.conn is not None:
            self.close_lock_connection(worker)
        worker.alive = False
        worker.executions.clear()

    # -- clients: enqueue; an operator's cancel, retry, replay, fork -------------------------------

    def add_runs(self, specs: list[tuple[str, str, int, str | None]]) -> None:
        new_runs: list[NewRun] = [
            self.app.registry[task].new_run((i,), {}, CallOptions(queue, priority, 0.0, key))
            for i, (task, queue, priority, key) in enumerate(specs)
        ]
        ids = self.run(self.store.enqueue(new_runs))
        assert len(ids) == len(specs)
        by_key = {(r.task, r.key): r.id for r in self.runs.values() if r.key is not None}
        fresh: list[int] = []
        for run_id, (task, queue, priority, key) in zip(ids, specs, strict=True):
            if key is not None and (task, key) in by_key:
                assert run_id == by_key[(task, key)], f"idempotency key {key!r} of {task}"
                self.seen("idempotency key: existing run")
                continue
            assert run_id not in self.runs and run_id not in fresh, f"id {run_id} reused"
            assert not fresh or run_id > fresh[-1], f"ids {ids} not in input order"
            fresh.append(run_id)
            self.runs[run_id] = MRun(run_id, task, queue, priority, key=key)
            if key is not None:
                by_key[(task, key)] = run_id

    def enqueue(self, pick: Picks) -> None:
        self.add_runs(pick.enqueue_specs())

    def draw_run(self, pick: Picks, *rank: Callable[[MRun], bool]) -> MRun:
        """Any run; the more of the ``rank`` tests it passes, the likelier."""
        runs = sorted(self.runs.values(), key=lambda r: r.id)
        return pick.one([r for r in runs for _ in range(1 + 3 * sum(t(r) for t in rank))], "run")

    def unfinished_children(self, run: MRun) -> bool:
        return any(r.status not in TERMINAL for r in self.runs.values() if r.parent == run.id)

    def cancel(self, pick: Picks) -> None:
        run = self.draw_run(pick, lambda r: r.status not in TERMINAL, self.unfinished_children)
        self.cancel_run(run)

    def cancel_run(self, run: MRun, answer: bool | None = None) -> None:
        """Cancel a run and its unfinished descendants; ``answer``, that of a cancel that raced
        with another statement."""
        expected = run.status in ("QUEUED", "RUNNING", "WAITING")
        if answer is None:
            answer = self.run(self.app.cancel_async(run.id))
        assert answer == expected, f"cancel of {run}: {answer}"
        for r in (self.runs[i] for i in self.descendants(run.id)):
            if r.status in ("QUEUED", "RUNNING", "WAITING"):
                self.seen(f"cancelled a {r.status} run")
                r.status, r.lease_expired = "CANCELLED", False  # worker_id is kept

    def retry(self, pick: Picks) -> None:
        run = self.draw_run(
            pick,
            lambda r: r.status in ("FAILED", "CANCELLED"),
            lambda r: any(e.kind == "child" and not e.done for e in r.log.values()),
        )
        expected = run.status in ("FAILED", "CANCELLED")
        assert self.run(self.app.retry_async(run.id)) == expected, f"retry of {run}"
        if not expected:
            return
        # The run, and down the tree every run a re-queued run never saw end that failed or was
        # cancelled; each starts clean (its worker and what it waited for cleared).
        tree, todo = [run], [run]
        while todo:
            for e in todo.pop().log.values():
                child = self.runs[e.child] if e.kind == "child" and e.child is not None else None
                if child is None or e.done or child.status not in ("FAILED", "CANCELLED"):
                    continue
                if child not in tree:
                    tree.append(child)
                    todo.append(child)
                    self.seen("retry queued a child again")
        for r in tree:
            r.queue_now()
            r.failures, r.recoveries, r.error, r.result, r.worker = 0, 0, None, None, None
            r.wait_children = None

    def replay(self, pick: Picks) -> None:
        run = self.draw_run(pick, lambda r: r.status in TERMINAL, lambda r: bool(r.log))
        expected = run.status in TERMINAL
        assert self.run(self.app.replay_async(run.id)) == expected, f"replay of {run}"
        if not expected:
            return
        if run.log:
            self.archived[(run.id, run.epoch)] += len(run.log)
            self.seen("replay archived a log")
        run.log, run.epoch = {}, run.epoch + 1
        run.queue_now()
        run.failures, run.recoveries, run.error, run.result, run.worker = 0, 0, None, None, None

    def fork(self, pick: Picks) -> None:
        run = self.draw_run(pick, lambda r: r.spec.durable, lambda r: bool(r.log))
        at_event = pick.integer(0, 4, "at_event")
        if not run.spec.durable:
            with pytest.raises(UnknownTask):
                self.run(self.app.fork_async(run.id, at_event))
            return
        new_id = self.run(self.app.fork_async(run.id, at_event)).id
        assert new_id not in self.runs
        copied = {}
        for seq, e in run.log.items():
            child = self.runs[e.child] if e.child is not None else None
            pending = e.kind == "child" and not e.done
            completed = pending and child is not None and child.status == "COMPLETED"
            # A child the source never saw end is not shared: left out (the fork spawns its
            # own), unless it completed, then copied as done.
            if seq < at_event and (completed or not pending):
                copied[seq] = MEntry(e.kind, 0, e.done or completed, e.child)
        self.runs[new_id] = MRun(new_id, run.task, run.queue, run.priority, log=copied)
        self.seen("fork copied entries" if copied else "fork of an empty prefix")

    # -- the rules ---------------------------------------------------------------------------------
    # One rule, `step`, whose draws never depend on the state (see Picks). It picks a group of
    # actions from the example's mix, then an action among those possible now; an action named
    # several times in a list is picked that much more often.

    @initialize(
        queues=st.sampled_from(QUEUE_SETS),
        tasks=st.sampled_from(TASK_SETS),
        slots=st.integers(1, 2),
        durable_slots=st.integers(1, 2),
        specs=ENQUEUE_SPECS,
        weights=st.lists(st.integers(0, 3), min_size=len(GROUPS), max_size=len(GROUPS)),
    )
    @tracked
    def start(
        self,
        queues: tuple[str, ...],
        tasks: tuple[str, ...],
        slots: int,
        durable_slots: int,
        specs: list[tuple[str, str, int, str | None]],
        weights: list[int],
    ) -> None:
        """Every example starts with a worker that serves everything, another, and some runs;
        and with its own mix of the kinds of steps (swarm testing: some get none at all)."""
        self.add_worker(QUEUES, tuple(sorted(TASKS)), 2, 2)
        self.add_worker(queues, tasks, slots, durable_slots)
        self.add_runs(specs)
        self.mix = [g for g, w in zip(GROUPS, weights, strict=True) for _ in range(w)]

    @rule(values=PICKS)
    @tracked
    def step(self, values: list[int]) -> None:
        """One step: a group of actions from this example's mix, among those possible now."""
        pick = Picks(values)
        possible = {
            "work": bool(self.work_actions()),
            "trouble": True,
            "operator": bool(self.operator_actions()),
            "zombie": bool(self.holders()),
            "race": bool(self.race_kinds()),
            "stale": bool(self.stale()),
        }
        groups = [g for g in self.mix if possible[g]] or ["work" if possible["work"] else "trouble"]
        group = pick.one(groups, "step")
        steps: dict[str, Callable[[Picks], None]] = {
            "work": self.do_work,
            "trouble": self.trouble,
            "operator": self.operator,
            "zombie": self.zombie,
            "race": self.race_statements,
            "stale": self.stale_holder_writes,
        }
        steps[group](pick)

    def work_actions(self) -> list[str]:
        actions: list[str] = []
        if self.can_observe():
            actions += ["observe_child"] * 2
        if self.executions(durable=True):
            actions += ["spawn_child", "spawn_child", "append_step"]
        if self.can_suspend():  # mostly once it waits for two children or more
            gathered = any(len(self.pending_children(ex)) > 1 for _, ex in self.can_suspend())
            actions += ["suspend"] * (4 if gathered else 1)
        if self.executions():
            actions += ["finish"] * 3
        if self.pools(due_only=True):
            actions += ["claim"] * 3
        if any(len(w.executions) > 1 for w in self.live()):
            actions += ["flush_batch"]
        if self.live():
            actions += ["heartbeat"]
        return actions

    def do_work(self, pick: Picks) -> None:
        """A worker claims, records outcomes, appends, spawns, observes, suspends, heartbeats."""
        action = pick.one(self.work_actions(), "action")
        actions: dict[str, Callable[[Picks], None]] = {
            "claim": self.claim,
            "finish": self.finish,
            "flush_batch": self.flush_batch,
            "append_step": self.append_step,
            "spawn_child": self.spawn_child,
            "observe_child": self.observe_child,
            "suspend": self.suspend,
            "heartbeat": self.heartbeat,
        }
        self.seen(f"action {action}")
        actions[action](pick)

    def trouble_actions(self) -> list[str]:
        actions = ["freeze", "leases_expire", "crash"] if self.live() else []
        actions += ["sweep", "sweep", "time_passes"]
        if any(w.conn is not None for w in self.live()):
            actions += ["lose_lock_connection"]
        if any(w.conn is None for w in self.live()):
            actions += ["reconnect"] * 2
        if len(self.live()) < 3:
            actions += ["register_worker"] * 2
        if self.live():
            actions += ["shutdown"]
        return actions

    def trouble(self, pick: Picks) -> None:
        """Workers die, freeze, lose their lock connection, reconnect, stop, start; the sweeper
        runs; time passes."""
        action = pick.one(self.trouble_actions(), "trouble")
        actions: dict[str, Callable[[Picks], None]] = {
            "freeze": self.freeze,
            "leases_expire": self.leases_expire,
            "crash": self.crash,
            "sweep": self.sweep,
            "time_passes": self.time_passes,
            "lose_lock_connection": self.lose_lock_connection,
            "reconnect": self.reconnect,
            "register_worker": self.register_worker,
            "shutdown": self.shutdown,
        }
        self.seen(f"action {action}")
        actions[action](pick)

    def operator_actions(self) -> list[str]:
        actions = ["enqueue"] * 3 if len(self.runs) < 40 else []
        if self.runs:
            actions += ["cancel", "retry", "replay", "fork"]
        return actions

    def operator(self, pick: Picks) -> None:
        """Clients enqueue; an operator cancels, retries, replays or forks any run."""
        action = pick.one(self.operator_actions(), "operator")
        actions: dict[str, Callable[[Picks], None]] = {
            "enqueue": self.enqueue,
            "cancel": self.cancel,
            "retry": self.retry,
            "replay": self.replay,
            "fork": self.fork,
        }
        self.seen(f"action {action}")
        actions[action](pick)

    def stale_holder_writes(self, pick: Picks) -> None:
        """An attempt that lost its claim (recovered and claimed again, cancelled, released)
        writes its outcome or a log entry: it must be refused."""
        worker, ex = pick.one(self.stale(), "stale execution")
        write = pick.one(("append", "spawn", "ok", "error"), "write")
        if write == "append" and ex.durable:
            self.append(worker, ex)
        elif write == "spawn" and ex.durable:
            self.spawn(worker, ex, pick)
        else:
            self.finish_batch(worker, [(ex, "ok" if write == "ok" else "error")])

    def holders(self) -> list[tuple[MWorker, MExec]]:
        return [(w, ex) for w, ex in self.executions() if self.holds(w, ex)]

    def zombie(self, pick: Picks) -> None:
        """The classic: an attempt is taken from its worker (frozen, lease lapsed, lock
        connection lost, cancelled), maybe claimed again by any worker, and the old attempt then
        writes its outcome or to its log: every write must be refused."""
        worker, ex = pick.one(self.holders(), "execution")
        how = pick.one(("freeze", "lease", "lock", "cancel"), "taken by")
        self.seen(f"zombie: {how}")
        if how == "freeze":
            self.freeze_worker(worker)
        elif how == "lease":
            self.age_leases(worker)
        elif how == "lock" and worker.conn is not None:
            self.close_lock_connection(worker)
        elif how == "cancel":
            self.cancel_run(self.runs[ex.run])
        self.sweep_model()
        assert not self.holds(worker, ex), "the attempt was not taken away"
        pools = [p for p in self.pools(due_only=True) if p[1] == ex.durable]
        if pools and not pick.chance(4, "left alone"):
            self.claim_for(*pick.one(pools, "claimed again by"))
        writes = ["ok", "error", "lost_db"]
        if ex.durable:
            writes = ["append", "spawn", "suspend", "observe", *writes]
        write = pick.one(writes, "stale write")
        if write == "append":
            self.append(worker, ex)
        elif write == "spawn":
            self.spawn(worker, ex, pick)
        elif write in ("suspend", "observe"):
            self.stale_log_write(worker, ex, write)
        else:
            self.finish_batch(worker, [(ex, write)])
        if how == "lock" and worker.alive and worker.conn is None:  # the listener reconnects
            worker.conn, worker.lock_id = self.run(
                self.register(worker.id, worker.queues, worker.tasks, worker.caps[False])
            )
            worker.row_alive, worker.stale_heartbeat = True, False

    def stale_log_write(self, worker: MWorker, ex: MExec, write: str) -> None:
        """A suspend, or a log_complete of its first entry, by an attempt that is no longer its
        run's: refused whatever the entry or the children."""
        assert not self.holds(worker, ex)
        fence = self.fence(worker, ex)
        if write == "suspend":
            suspended = self.run(self.store.suspend(fence, None, [ex.run], None))
            assert suspended is None, f"stale suspend of {ex.run}"
        else:
            completed = self.run(self.store.log_complete(fence, 0, "1", None))
            assert completed is False, f"stale complete {ex.run}"
        self.refused(worker, ex, write)

    # -- races: two statements at once; whichever order they took, it must be one of the orders
    # the engine allows, and the model replays them in that order against their answers.

    def race_kinds(self) -> list[str]:
        kinds = ["finish_vs_suspend"] * 2 if self.child_races() or self.child_claims() else []
        if self.holders():
            kinds += ["finish_vs_sweep", "cancel_vs_finish"]
        if any(ex.durable for _, ex in self.holders()):
            kinds += ["append_vs_sweep"]
        if len({w.id for w, _ in self.pools(due_only=True)}) > 1:
            kinds += ["two_claims"]
        return kinds

    def child_races(self) -> list[tuple[MWorker, MExec, MWorker, MExec]]:
        """(parent's worker, parent's execution, child's worker, child's execution), both held,
        the child one the parent waits for."""
        pairs = []
        for pw, pex in self.holders():
            waited = {e.child for _, e in self.pending_children(pex)} if pex.durable else set()
            pairs += [(pw, pex, cw, cex) for cw, cex in self.holders() if cex.run in waited]
        return pairs

    def child_claims(self) -> list[tuple[MWorker, bool]]:
        """Pools that can claim a due child a held parent waits for (to race it next)."""
        waited = {
            e.child
            for _, pex in self.holders()
            if pex.durable
            for _, e in self.pending_children(pex)
        }
        return [
            (w, durable)
            for w, durable in self.pools(due_only=True)
            if any(
                self.runs[c].status == "QUEUED"
                and self.runs[c].due
                and self.runs[c].spec.durable == durable
                and self.runs[c].task in w.tasks
                and self.runs[c].queue in w.queues
                for c in waited
                if c is not None
            )
        ]

    def race_statements(self, pick: Picks) -> None:
        kind = pick.one(self.race_kinds(), "race")
        self.seen(f"race: {kind}")
        races: dict[str, Callable[[Picks], None]] = {
            "finish_vs_suspend": self.race_finish_suspend,
            "two_claims": self.race_claims,
            "cancel_vs_finish": self.race_cancel_finish,
            "finish_vs_sweep": self.race_finish_sweep,
            "append_vs_sweep": self.race_append_sweep,
        }
        races[kind](pick)

    def race_claims(self, pick: Picks) -> None:
        """Two workers claim at once: SKIP LOCKED keeps their runs apart."""
        pools = self.pools(due_only=True)
        one = pick.one(pools, "claim")
        other = pick.one([p for p in pools if p[0] is not one[0]], "racing claim")
        answers = self.race(self.claim_statement(*one), self.claim_statement(*other))
        for (worker, durable), rows in zip((one, other), answers, strict=True):
            self.claim_for(worker, durable, rows)

    def race_cancel_finish(self, pick: Picks) -> None:
        """A cancel against the outcome of the attempt: one of them comes first."""
        worker, ex = pick.one(self.holders(), "execution")
        end = pick.one(OUTCOME_KINDS, "outcome")
        cancelled, rows = self.race(
            self.app.cancel_async(ex.run), self.store.finish(worker.id, [self.outcome(ex, end)])
        )
        if rows:  # the outcome first: the cancel found the run ended (or queued again)
            self.finish_batch(worker, [(ex, end)], rows=rows)
            self.cancel_run(self.runs[ex.run], cancelled)
        else:  # the cancel first: the outcome is fenced out
            self.cancel_run(self.runs[ex.run], cancelled)
            self.finish_batch(worker, [(ex, end)], rows=rows)

    def race_finish_sweep(self, pick: Picks) -> None:
        """The sweeper against the outcome of an attempt whose lease lapsed: the outcome is
        recorded and the run not recovered, or the run recovered and the outcome fenced out."""
        worker, ex = pick.one(self.holders(), "execution")
        end = pick.one(OUTCOME_KINDS, "outcome")
        self.age_leases(worker)
        rows, swept = self.race(
            self.store.finish(worker.id, [self.outcome(ex, end)]),
            self.store.sweep(dead_after=LONG),
        )
        assert swept is not None
        if rows:  # the outcome first (the sweep skipped the row it locked, or came after)
            self.finish_batch(worker, [(ex, end)], rows=rows)
            self.sweep_model(swept)
        else:  # the recovery first: the outcome is fenced out
            self.sweep_model(swept)
            self.finish_batch(worker, [(ex, end)], rows=rows)

    def race_append_sweep(self, pick: Picks) -> None:
        """The sweeper against an append of an attempt whose lease lapsed: the append's FOR
        SHARE makes the sweep skip the run, or the append comes after the recovery and is
        refused."""
        worker, ex = pick.one([(w, ex) for w, ex in self.holders() if ex.durable], "execution")
        self.age_leases(worker)
        row, swept = self.race(
            self.store.log_append(*self.append_params(worker, ex)),
            self.store.sweep(dead_after=LONG),
        )
        assert swept is not None
        if row is None:  # the recovery first
            self.sweep_model(swept)
            self.append(worker, ex, landed=False)
            return
        self.append(worker, ex, landed=True)
        [(status,)] = self.run(
            self.rows("SELECT status FROM {schema}.runs WHERE id = %(id)s", {"id": ex.run})
        )
        if status == "RUNNING":
            self.seen("race: the sweeper skipped a run being appended to")
        self.sweep_model(swept, frozenset({ex.run}) if status == "RUNNING" else frozenset())

    def claim_statement(self, worker: MWorker, durable: bool) -> Coroutine[Any, Any, Claim]:
        names, free = self.claim_args(worker, durable)
        return self.store.claim(worker.id, worker.queues, names, free, LONG, durable)

    def race_finish_suspend(self, pick: Picks) -> None:
        """A child's outcome against its parent's suspension: the parent is queued by the
        suspend (the child had ended), by the finish (the parent was waiting), or, when neither
        saw the other, by the sweeper's backstop."""
        if not self.child_races():  # first a worker claims a child that a parent waits for
            self.claim_for(*pick.one(self.child_claims(), "claimed by"))
            if not self.child_races():
                return  # it took other runs first
        pw, pex, cw, cex = pick.one(self.child_races(), "parent, child")
        end = pick.one(("ok", "fatal", "error"), "child's outcome")
        rows, status = self.race(
            self.store.finish(cw.id, [self.outcome(cex, end)]),
            self.suspend_statement(pw, pex),
        )
        if status == "QUEUED":  # the suspension saw the child's end (or another child's)
            self.seen("race: the suspension saw the child end")
            self.finish_batch(cw, [(cex, end)], rows=rows)
            self.suspend_exec(pw, pex, (status,))
            return
        self.suspend_exec(pw, pex, (status,))
        [(parent,)] = self.run(
            self.rows("SELECT status FROM {schema}.runs WHERE id = %(id)s", {"id": pex.run})
        )
        if parent == "QUEUED":
            self.seen("race: the child's end woke the suspended parent")
        self.finish_batch(cw, [(cex, end)], rows=rows, wake=parent == "QUEUED")
        if parent == "WAITING" and self.runs[cex.run].status in TERMINAL:
            self.seen("race: neither saw the other, the sweeper wakes the parent")
            self.sweep_model()

    # -- invariants --------------------------------------------------------------------------------

    @invariant()
    @tracked
    def tables_match_the_model(self) -> None:
        self.run(self.check_tables())

    async def check_tables(self) -> None:
        # What the simulated workers believe: one holder per attempt, never over their slots.
        holders: dict[tuple[int, int], str] = {}
        for w in self.live():
            for key in w.executions:
                assert key not in holders, f"two workers execute run {key[0]} attempt {key[1]}"
                holders[key] = w.id
            for durable in (False, True):
                assert w.busy(durable) <= w.caps[durable], f"{w.id[:8]} is over its slots"
        assert set(self.recorded.values()) <= {1}, "an outcome was recorded more than once"

        runs = await self.rows(
            "SELECT id, status, attempt, worker_id::text, lease_expires_at IS NOT NULL,"
            " finished_at IS NOT NULL, run_at <= now(), wake_at, wait_event, task, queue,"
            " priority, failures, recoveries, result, error->>'type', (error->>'attempt')::int,"
            " parent_id, wait_children, log_epoch, durable, idempotency_key, max_retries,"
            " max_recoveries FROM {schema}.runs ORDER BY id"
        )
        attempts: dict[int, int] = {}
        for row in runs:
            run_id, status, attempt, worker_id, has_lease, has_finished, due = row[:7]
            attempts[run_id] = attempt
            # The engine's own invariants, whatever the model says.
            assert status in STATUSES, f"run {run_id}: unknown status {status!r}"
            assert has_lease == (status == "RUNNING"), f"run {run_id} {status}: lease {has_lease}"
            assert has_finished == (status in TERMINAL), f"run {run_id} {status}: finished_at"
            assert row[7] is None and row[8] is None, f"run {run_id}: timers and events unused"
            if status == "RUNNING":  # exactly one live holder, and the row names it
                holder = holders.get((run_id, attempt))
                assert holder is not None and holder == worker_id, (
                    f"run {run_id} is RUNNING attempt {attempt} for {worker_id}, but its live "
                    f"holder is {holder}"
                )
            # The whole row, as the model predicts it.
            model = self.runs.get(run_id)
            assert model is not None, f"run {run_id} exists, the model never made it"
            error_type, error_attempt = row[15], row[16]
            got = (
                status,
                attempt,
                worker_id,
                due if status == "QUEUED" else None,
                *row[9:15],
                (error_type, error_attempt) if error_type else None,
                *row[17:],
            )
            want = (
                model.status,
                model.attempt,
                model.worker,
                model.due if model.status == "QUEUED" else None,
                model.task,
                model.queue,
                model.priority,
                model.failures,
                model.recoveries,
                model.result,
                model.error,
                model.parent,
                model.wait_children,
                model.epoch,
                model.spec.durable,
                model.key,
                model.spec.retries,
                model.spec.max_recoveries,
            )
            assert got == want, f"run {run_id}:\n  table {got}\n  model {want}"
        assert sorted(attempts) == sorted(self.runs), "runs lost, or made by nobody"

        log = await self.rows(
            "SELECT run_id, seq, kind, attempt, done, child_id FROM {schema}.event_log"
            " ORDER BY run_id, seq"
        )
        pairs = Counter((r[0], r[1]) for r in log)
        assert max(pairs.values(), default=1) == 1, "duplicate (run_id, seq) in event_log"
        for run_id, seq, _, attempt, _, _ in log:
            assert attempt <= attempts.get(run_id, -1), (
                f"event_log ({run_id}, {seq}) was written by attempt {attempt}, newer than the "
                f"run's attempt {attempts.get(run_id)}"
            )
        expected_log = [
            (run.id, seq, e.kind, e.attempt, e.done, e.child)
            for run in sorted(self.runs.values(), key=lambda r: r.id)
            for seq, e in sorted(run.log.items())
        ]
        assert [tuple(r) for r in log] == expected_log, "event_log differs from the model"

        archived = await self.rows(
            "SELECT run_id, epoch, count(*)::int FROM {schema}.event_log_archive GROUP BY 1, 2"
        )
        assert {(r[0], r[1]): r[2] for r in archived} == dict(self.archived), "the archive"

        workers = await self.rows(
            "SELECT id::text, lock_id, stopped_at IS NULL FROM {schema}.workers"
        )
        assert {r[0]: (r[1], r[2]) for r in workers} == {
            w.id: (w.lock_id, w.row_alive) for w in self.workers.values()
        }, "the workers table"

    # -- the end: nothing is lost ------------------------------------------------------------------

    def drain(self) -> None:
        """Kill every worker and sweep; then a fresh worker finishes all it can claim, and every
        run must have ended."""
        for worker in self.live():
            if worker.conn is not None:
                self.close_lock_connection(worker)
            worker.alive = False
            worker.executions.clear()
        self.sweep_model()
        self.run(self.check_tables())
        assert not any(r.status == "RUNNING" for r in self.runs.values()), "RUNNING after sweep"
        drainer = self.add_worker(QUEUES, tuple(sorted(TASKS)), 10, 10)
        for _ in range(100):
            self.time_passes()
            self.sweep_model()
            claimed = self.claim_for(drainer, False) + self.claim_for(drainer, True)
            if not claimed:
                break
            execs = [ex for _, ex in sorted(drainer.executions.items())]
            self.finish_batch(drainer, [(ex, "ok") for ex in execs])
            self.run(self.check_tables())
        self.run(self.check_tables())
        unfinished = {r.id: (r.status, r.wait_children) for r in self.runs.values()}
        unfinished = {i: s for i, s in unfinished.items() if s[0] not in TERMINAL}
        assert not unfinished, f"runs that never end: {unfinished}"

    def teardown(self) -> None:
        try:
            if not self.broken:
                self.broken = True
                self.drain()
        finally:
            self.close()

    def close(self) -> None:
        try:
            for worker in self.workers.values():
                if worker.conn is not None:
                    self.run(worker.conn.close())
            self.run(self.app.aclose())
            self.run(self.store.close())
        finally:
            self.runner.close()
            with psycopg.connect(self.database_url, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE'.encode())


def _plain(n: int) -> int:
    return n


async def _flow(ctx: durably.DurableContext, n: int) -> int:
    return n


def test_random_interleavings_keep_the_invariants(database_url: str) -> None:
    StoreMachine.database_url = database_url
    COVERAGE.clear()
    try:
        run_state_machine_as_test(StoreMachine, settings=SETTINGS)
    finally:
        print("what the examples did:", dict(sorted(COVERAGE.items())))
    # The examples must reach the cases the invariants are about, or they prove little.
    for what in ("claim took 1", "outcome ok: COMPLETED", "stale outcome refused"):
        assert COVERAGE[what] > 0, f"no example did {what!r}"


# -- an engine defect the machine above found (fixed) ---------------------------------------------


def test_one_key_on_two_tasks(database_url: str, schema: str) -> None:
    """The minimal program Hypothesis found: one Store.enqueue of runs of two tasks with the same
    idempotency key. Keys are per task, so both runs are made; enqueue used to match inserted rows
    to keys without their task and raised after its INSERT had committed."""

    async def scenario() -> list[tuple[str, str | None]]:
        app = durably.App(database_url, schema=schema, migrate=False)
        app.task(name="plain")(_plain)
        app.durable_task(name="flow")(_flow)
        store = await Store.open(database_url, schema, max_size=1)
        try:
            await store.migrate()
            runs = [
                app.registry[task].new_run((1,), {}, CallOptions(idempotency_key="k"))
                for task in ("plain", "flow")
            ]
            ids = await store.enqueue(runs)
            assert len(set(ids)) == 2, f"two runs, one id: {ids}"
            rows = [await store.get_run(i) for i in ids]
            return [(r.task, r.idempotency_key) for r in rows if r is not None]
        finally:
            await store.close()

    assert asyncio.run(scenario()) == [("plain", "k"), ("flow", "k")]
