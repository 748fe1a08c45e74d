"""The chaos checker: after a run of the harness, read every table and count what went wrong.

Categories follow Jepsen's queue checker: *lost* (enqueued, never ended well), *duplicated*
(recorded or applied twice), *unexpected* (a result or effect nobody asked for), *recovered*
(runs that lost a worker or a connection on the way and still ended right). At-least-once
re-executions of external effects are counted too; they are allowed only with the same
idempotency key.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from tests.chaos import workload

AUDIT_SQL = Path(__file__).with_name("audit.sql")


def install_audit(conn: psycopg.Connection[Any], schema: str) -> None:
    """Install the audit triggers and the workload's tables in a migrated schema."""
    conn.execute(AUDIT_SQL.read_text().replace("{schema}", f'"{schema}"'))  # type: ignore[arg-type]


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
            "effects_with_wrong_key",
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
            "re-executions of external effects (same key, allowed)": self.effect_reexecutions,
            "runs recovered from a lost worker": self.recovered_runs,
            "runs retried after an error": self.retried_runs,
            "highest attempt": self.max_attempt,
        }


def check(url: str, schema: str, items: list[int]) -> Report:
    """Check every invariant for the ``order`` runs of ``items`` (and their children)."""
    report = Report(enqueued=len(items))
    with psycopg.connect(url, autocommit=True) as conn:
        runs = _runs(conn, schema)
        report.runs = len(runs)
        _check_runs(report, runs, items)
        _check_outcomes(report, conn, schema, runs)
        _check_log(report, conn, schema)
        _check_transactions(report, conn, schema, runs)
        _check_effects(report, conn, schema, runs)
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
        if run["status"] == "COMPLETED":
            report.completed += 1
        elif run["status"] == "FAILED":
            error = run["error"] or {}
            report.failed[run["id"]] = f"{error.get('type')}: {error.get('message')}"[:300]
        else:
            report.not_terminal.append(run["id"])
    expected_keys = {f"order-{item}" for item in items}
    report.unexpected_effects += sum(
        1
        for r in runs.values()
        if r["task"] == "order" and r["idempotency_key"] not in expected_keys
    )


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
    for run_id, run in runs.items():
        if run["status"] != "COMPLETED":
            continue
        effect, key = (
            ("reserve", f"{run_id}:0") if run["task"] == "order" else ("charge", f"charge:{run_id}")
        )
        keys = ledger.get((effect, run_id), [])
        if not keys:
            report.effects_missing.append(f"{effect} of run {run_id}")
        if any(k != key for k in keys):
            report.effects_with_wrong_key.append(f"{effect} of run {run_id}: {set(keys)}")
        report.effect_reexecutions += max(0, len(keys) - 1)
