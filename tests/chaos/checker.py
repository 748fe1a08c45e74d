"""The chaos checker: after a run of the harness, read every table and count what went wrong.

Categories follow Jepsen's queue checker: *lost* (enqueued, never ended well), *duplicated*
(recorded or applied twice), *unexpected* (a result or effect nobody asked for), *recovered*
(runs that lost a worker or a connection on the way and still ended right). At-least-once
re-executions of external effects are counted too; they are allowed only with the same
idempotency key.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from tests.chaos import workload

AUDIT_SQL = Path(__file__).with_name("audit.sql")


def install_audit(conn: psycopg.Connection[Any], schema: str) -> None:
    """Install the audit triggers and the workload's tables in a migrated schema."""
    conn.execute(AUDIT_SQL.read_text().replace("{schema}", f'"{schema}"').encode())


@dataclass
class Report:
    """What the checker found; ``problems`` is empty when every invariant held."""

    enqueued: int = 0
    runs: int = 0
    completed: int = 0
    not_terminal: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    lost: list[int] = field(default_factory=list)
    unexpected_results: list[int] = field(default_factory=list)
    outcomes_recorded_twice: list[int] = field(default_factory=list)
    step_results_recorded_twice: list[int] = field(default_factory=list)
    children_created_twice: list[int] = field(default_factory=list)
    zombie_writes: list[str] = field(default_factory=list)
    transactions_applied_twice: list[int] = field(default_factory=list)
    transactions_missing: list[int] = field(default_factory=list)
    effects_missing: list[str] = field(default_factory=list)
    effects_with_wrong_key: list[str] = field(default_factory=list)
    # Two executions of one run that overlapped in time with no fault that could have taken the
    # first one's lease (a kill or freeze of its worker, or a fault of every connection).
    executed_concurrently: list[str] = field(default_factory=list)
    burst_runs_missing: dict[str, int] = field(default_factory=dict)  # task -> how many
    expected_failures: int = 0  # burst runs failed as they must (schedule timeout, lost worker)
    unexpected_effects: int = 0
    effect_reexecutions: int = 0
    recovered_runs: int = 0
    retried_runs: int = 0
    max_attempt: int = 0

    def problems(self) -> list[str]:
        """One line per violated invariant."""
        found = []
        for name in (
            "not_terminal", "failed", "lost", "unexpected_results", "outcomes_recorded_twice",
            "step_results_recorded_twice", "children_created_twice", "zombie_writes",
            "transactions_applied_twice", "transactions_missing", "effects_missing",
            "effects_with_wrong_key", "executed_concurrently", "burst_runs_missing",
        ):  # fmt: skip
            value = getattr(self, name)
            if value:
                sample = list(value.items() if isinstance(value, dict) else value)[:5]
                found.append(f"{name}: {len(value)} (e.g. {sample})")
        if self.unexpected_effects:
            found.append(f"unexpected_effects: {self.unexpected_effects}")
        return found

    def summary(self) -> dict[str, Any]:
        """The counts, for a report."""
        return {
            "enqueued": self.enqueued,
            "runs (orders + children)": self.runs,
            "completed": self.completed,
            "lost": len(self.lost) + len(self.not_terminal),
            "failed": len(self.failed),
            "unexpected results": len(self.unexpected_results) + self.unexpected_effects,
            "outcomes recorded twice": len(self.outcomes_recorded_twice),
            "step results recorded twice": len(self.step_results_recorded_twice),
            "children created twice": len(self.children_created_twice),
            "zombie writes": len(self.zombie_writes),
            "transactions applied twice": len(self.transactions_applied_twice),
            "transactions missing": len(self.transactions_missing),
            "external effects missing": len(self.effects_missing),
            "runs executed twice at once without a fault to explain it": len(
                self.executed_concurrently
            ),
            "burst runs missing": sum(self.burst_runs_missing.values()),
            "burst runs failed as expected (schedule timeout, max_recoveries=0)": (
                self.expected_failures
            ),
            "re-executions of external effects (same key, allowed)": self.effect_reexecutions,
            "runs recovered from a lost worker": self.recovered_runs,
            "runs retried after an error": self.retried_runs,
            "highest attempt": self.max_attempt,
        }


# Faults that cut every worker off at once (the database, every session, the proxy's
# connections): any of them may take a healthy worker's lease.
GLOBAL_FAULTS = {"restart", "terminate", "drop", "half_close", "ambiguous", "partition", "delay"}
# Burst runs (volume mode) and the failure each may end with instead of completing.
EXPECTED_FAILURE = {"expire": "ScheduleTimeout", "hold_once": "WorkerLost"}
BURST_TASKS = {"hold", "hold_once", "expire"}


def check(
    url: str,
    schema: str,
    items: list[int],
    bursts: Mapping[str, int] | None = None,
    faults: Sequence[tuple[float, str, int | None]] = (),
    lease: float = 3.0,
) -> Report:
    """Check every invariant for the ``order`` runs of ``items`` (and their children), and for
    the ``bursts`` of volume mode (runs enqueued per task). ``faults``: when each fault struck
    (epoch seconds), its kind and the worker pid it hit (None: every worker)."""
    report = Report(enqueued=len(items))
    with psycopg.connect(url, autocommit=True) as conn:
        runs = _runs(conn, schema)
        report.runs = len(runs)
        _check_runs(report, runs, items)
        _check_bursts(report, runs, bursts or {})
        _check_outcomes(report, conn, schema, runs)
        _check_log(report, conn, schema)
        _check_transactions(report, conn, schema, runs)
        _check_effects(report, conn, schema, runs)
        _check_overlaps(report, conn, schema, faults, lease)
    return report


def _rows(conn: psycopg.Connection[Any], schema: str, sql: str) -> list[tuple[Any, ...]]:
    return conn.execute(sql.replace("{schema}", f'"{schema}"')).fetchall()


def _runs(conn: psycopg.Connection[Any], schema: str) -> dict[int, dict[str, Any]]:
    rows = _rows(
        conn,
        schema,
        "SELECT id, task, status, args, result, error, attempt, recoveries, failures, "
        "parent_id, idempotency_key FROM {schema}.runs",
    )
    keys = ("id", "task", "status", "args", "result", "error", "attempt", "recoveries",
            "failures", "parent_id", "idempotency_key")  # fmt: skip
    return {row[0]: dict(zip(keys, row, strict=True)) for row in rows}


def _check_runs(report: Report, runs: dict[int, dict[str, Any]], items: list[int]) -> None:
    by_key = {r["idempotency_key"]: r for r in runs.values() if r["task"] == "order"}
    for item in items:
        run = by_key.get(f"order-{item}")
        if run is None:
            report.lost.append(item)
        elif run["status"] == "COMPLETED" and run["result"] != workload.expected(item):
            report.unexpected_results.append(run["id"])
    for run in runs.values():
        report.max_attempt = max(report.max_attempt, run["attempt"])
        report.recovered_runs += run["recoveries"] > 0
        report.retried_runs += run["failures"] > 0
        error = run["error"] or {}
        if run["status"] == "COMPLETED":
            report.completed += 1
        elif run["status"] == "FAILED" and EXPECTED_FAILURE.get(run["task"]) == error.get("type"):
            report.expected_failures += 1
        elif run["status"] == "FAILED":
            report.failed[run["id"]] = f"{error.get('type')}: {error.get('message')}"[:300]
        else:
            report.not_terminal.append(run["id"])
    expected_keys = {f"order-{item}" for item in items}
    report.unexpected_effects += sum(
        1
        for r in runs.values()
        if r["task"] == "order" and r["idempotency_key"] not in expected_keys
    )


def _check_bursts(
    report: Report, runs: dict[int, dict[str, Any]], bursts: Mapping[str, int]
) -> None:
    """Every burst run the harness enqueued is there, once (a burst lands whole or not)."""
    found = Counter(r["task"] for r in runs.values() if r["task"] in BURST_TASKS)
    for task in BURST_TASKS:
        if found[task] != bursts.get(task, 0):
            report.burst_runs_missing[task] = bursts.get(task, 0) - found[task]
    expired = [r for r in runs.values() if r["task"] == "expire" and r["status"] == "COMPLETED"]
    report.unexpected_results += [r["id"] for r in expired]  # no worker serves its queue


def _check_outcomes(
    report: Report, conn: psycopg.Connection[Any], schema: str, runs: dict[int, dict[str, Any]]
) -> None:
    counts = Counter(
        r[0] for r in _rows(conn, schema, "SELECT run_id FROM {schema}.chaos_outcomes")
    )
    for run_id, run in runs.items():
        terminal = run["status"] in ("COMPLETED", "FAILED", "CANCELLED")
        if counts[run_id] > 1 or (terminal and counts[run_id] == 0):
            report.outcomes_recorded_twice.append(run_id)
    for kind, run_id, detail in _rows(
        conn, schema, "SELECT kind, run_id, detail FROM {schema}.chaos_violations"
    ):
        report.zombie_writes.append(f"{kind} run {run_id}: {detail}")


def _check_log(report: Report, conn: psycopg.Connection[Any], schema: str) -> None:
    # Every operation of an order has its own key: a key twice is a step recorded twice.
    twice = _rows(
        conn,
        schema,
        "SELECT DISTINCT run_id FROM {schema}.event_log GROUP BY run_id, key HAVING count(*) > 1",
    )
    report.step_results_recorded_twice += [r[0] for r in twice]
    children = _rows(
        conn,
        schema,
        "SELECT DISTINCT parent_id FROM {schema}.runs WHERE parent_id IS NOT NULL "
        "GROUP BY parent_id, parent_seq HAVING count(*) > 1",
    )
    report.children_created_twice += [r[0] for r in children]


def _check_transactions(
    report: Report, conn: psycopg.Connection[Any], schema: str, runs: dict[int, dict[str, Any]]
) -> None:
    times = dict(_rows(conn, schema, "SELECT item, times FROM {schema}.applied"))
    for run in runs.values():
        if run["task"] != "order" or run["status"] != "COMPLETED":
            continue
        item = run["args"]["args"][0]
        if times.get(item, 0) == 0:
            report.transactions_missing.append(item)
        elif times[item] > 1:
            report.transactions_applied_twice.append(item)


def _check_effects(
    report: Report, conn: psycopg.Connection[Any], schema: str, runs: dict[int, dict[str, Any]]
) -> None:
    ledger: dict[tuple[str, int], list[str]] = defaultdict(list)
    for effect, run_id, key in _rows(
        conn, schema, "SELECT effect, run_id, idem_key FROM {schema}.ledger"
    ):
        if run_id not in runs:
            report.unexpected_effects += 1
            continue
        ledger[(effect, run_id)].append(key)
    effects = {"order": "reserve", "charge": "charge", "hold": "hold", "hold_once": "hold"}
    for run_id, run in runs.items():
        if run["status"] != "COMPLETED" or run["task"] not in effects:
            continue
        effect = effects[run["task"]]
        key = f"{run_id}:0" if effect == "reserve" else f"{effect}:{run_id}"
        keys = ledger.get((effect, run_id), [])
        if not keys:
            report.effects_missing.append(f"{effect} of run {run_id}")
        if any(k != key for k in keys):
            report.effects_with_wrong_key.append(f"{effect} of run {run_id}: {set(keys)}")
        report.effect_reexecutions += max(0, len(keys) - 1)


def _check_overlaps(
    report: Report,
    conn: psycopg.Connection[Any],
    schema: str,
    faults: Sequence[tuple[float, str, int | None]],
    lease: float,
) -> None:
    """Executions of one run (a task's body, from its start to its effect) that overlapped in
    time: allowed only when a fault could have taken the first one's lease between its start
    (less a lease, as the lease may have been running down) and the second one's start."""
    rows = _rows(
        conn,
        schema,
        "SELECT run_id, pid, EXTRACT(EPOCH FROM started)::float8, EXTRACT(EPOCH FROM at)::float8 "
        "FROM {schema}.ledger WHERE started IS NOT NULL ORDER BY run_id, started",
    )
    by_run: dict[int, list[tuple[int, float, float]]] = defaultdict(list)
    for run_id, pid, started, ended in rows:
        by_run[run_id].append((pid, started, ended))
    for run_id, executions in by_run.items():
        pairs = [(a, b) for i, a in enumerate(executions) for b in executions[i + 1 :]]
        for (pid1, start1, end1), (pid2, start2, _) in pairs:
            if start2 >= end1:
                continue  # one after the other
            explained = any(
                start1 - lease - 1.0 <= at <= start2 and (pid is None or pid in (pid1, pid2))
                for at, kind, pid in faults
                if pid is not None or kind in GLOBAL_FAULTS
            )
            if not explained:
                report.executed_concurrently.append(
                    f"run {run_id}: pid {pid1} from {start1:.3f} to {end1:.3f}, "
                    f"pid {pid2} from {start2:.3f}"
                )
