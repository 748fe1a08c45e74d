"""The durably queue benchmark: drain throughput, enqueue throughput and idle pickup latency.

Run from the project root: ``python -m bench.queue`` (or ``python bench/queue.py``); ``--help``
lists the options. Every figure is the median of ``--runs`` runs; see bench/README.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:
    # Run as a script: put the project root, not bench/, first on the path, so that this file
    # does not shadow the standard library's `queue` and `bench.*` imports resolve.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bench import workloads
from bench.floor import pickup_floor
from bench.harness import database_url, int_list, median, percentile
from durably.storage import describe_url

WORKLOADS = ("drain", "drain-sync", "enqueue", "batch", "pickup", "floor")


@dataclass
class Row:
    """One line of the results table: a workload and its figure in each run."""

    name: str
    unit: str
    values: list[float] = field(default_factory=list)
    target: str = ""
    meets: Callable[[float], bool] | None = None
    peaks: list[int] = field(default_factory=list)  # drains: most runs RUNNING at once

    @property
    def median(self) -> float:
        """The median over runs."""
        return median(self.values)

    def verdict(self) -> str:
        """'met' or 'MISSED' against the target, blank without one."""
        if self.meets is None or not self.values:
            return ""
        return "met" if self.meets(self.median) else "MISSED"

    def record(self, value: float, run: int, width: int = 36, digits: int = 1) -> None:
        """Keep one run's figure and show it on stderr as it arrives."""
        self.values.append(value)
        line = f"  run {run + 1}: {self.name:<{width}} {value:>10,.{digits}f} {self.unit}"
        print(line, file=sys.stderr, flush=True)

    def peak(self) -> str:
        """The highest count of runs RUNNING at once over the runs (drains only)."""
        return f"{max(self.peaks):,}" if self.peaks else ""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m bench.queue", description=__doc__)
    add = parser.add_argument
    add("--runs", type=int, default=3, help="runs of each measurement; the median is reported")
    add("--tasks", type=int, default=20_000, help="runs drained per drain measurement")
    add("--slots", default="50,100,200,500", help="worker slot counts for the async drain")
    add("--sync-slots", default="50,100,200,500", help="worker slot counts for the sync drain")
    add("--enqueues", type=int, default=2_000, help="sequential enqueues per measurement")
    add("--batch-rows", type=int, default=20_000, help="rows per enqueue_many measurement")
    add("--samples", type=int, default=200, help="pickup latency samples per measurement")
    add("--pause", type=float, default=0.05, help="idle seconds before each pickup sample")
    add("--pickup-slots", type=int, default=10, help="slots of the idle worker")
    add("--only", action="append", choices=WORKLOADS, help="run only these (repeatable)")
    add("--json", type=Path, help="also write every figure to this JSON file")
    return parser.parse_args(argv)


def drain_rows(args: argparse.Namespace, url: str, task: str, slot_counts: list[int]) -> list[Row]:
    """The drain at each slot count; the best slot count is held to the target."""
    kind = "async" if task == "noop" else "sync"
    rows = {s: Row(f"drain, {kind} no-op, slots={s}", "tasks/s") for s in slot_counts}
    for run in range(args.runs):
        for slots, row in rows.items():
            result = workloads.drain(url, task, slots, args.tasks)
            row.peaks.append(result.peak_running)
            row.record(result.rate, run)
    best = max(rows.values(), key=lambda r: r.median)
    best.name += " *"
    if kind == "async":
        best.target, best.meets = ">= 7,000", lambda v: v >= 7_000
    return list(rows.values())


def enqueue_rows(args: argparse.Namespace, url: str) -> list[Row]:
    """Sequential single enqueues from one client, sync and async."""
    rows = [
        Row(f"{name}, sequential", "runs/s", target=">= 2,000", meets=lambda v: v >= 2_000)
        for name in ("enqueue", "enqueue_async")
    ]
    for run in range(args.runs):
        for row, use_async in zip(rows, (False, True), strict=True):
            row.record(workloads.single_enqueue(url, args.enqueues, use_async), run)
    return rows


def batch_rows(args: argparse.Namespace, url: str) -> list[Row]:
    """enqueue_many with batches of 1,000 and of 10,000 calls."""
    sizes = (1_000, 10_000)
    rows = [
        Row(
            f"enqueue_many, batches of {s:,}",
            "rows/s",
            target=">= 40,000",
            meets=lambda v: v >= 40_000,
        )
        for s in sizes
    ]
    for run in range(args.runs):
        for row, size in zip(rows, sizes, strict=True):
            row.record(workloads.batch_enqueue(url, size, args.batch_rows), run)
    return rows


def latency_rows(
    args: argparse.Namespace, name: str, sample: Callable[[], list[float]], targets: bool
) -> list[Row]:
    """p50, p99 and max of each run's latency samples, in milliseconds."""
    rows = [Row(f"{name} p50", "ms"), Row(f"{name} p99", "ms"), Row(f"{name} max", "ms")]
    if targets:
        rows[0].target, rows[0].meets = "<= 2", lambda v: v <= 2
        rows[1].target, rows[1].meets = "<= 5", lambda v: v <= 5
    for run in range(args.runs):
        latencies = [s * 1000 for s in sample()]
        stats = (percentile(latencies, 0.5), percentile(latencies, 0.99), max(latencies))
        for row, value in zip(rows, stats, strict=True):
            row.record(value, run)
    return rows


def print_table(rows: list[Row]) -> None:
    """The results: median, target, verdict, peak RUNNING (drains) and every run's figure."""
    header = (
        f"{'workload':<40} {'median':>10}  {'unit':<8} {'target':<10} {'':<7} "
        f"{'max RUNNING':>11}  runs"
    )
    print(header)
    print("-" * (len(header) + 24))
    for row in rows:
        runs = " / ".join(f"{v:,.1f}" for v in row.values)
        print(
            f"{row.name:<40} {row.median:>10,.1f}  {row.unit:<8} {row.target:<10} "
            f"{row.verdict():<7} {row.peak():>11}  {runs}"
        )


def run_selected(args: argparse.Namespace, url: str, selected: list[str]) -> list[Row]:
    """Run the selected workloads in order and return their rows."""
    rows: list[Row] = []
    if "drain" in selected:
        rows += drain_rows(args, url, "noop", int_list(args.slots))
    if "drain-sync" in selected:
        rows += drain_rows(args, url, "noop_sync", int_list(args.sync_slots))
    if "enqueue" in selected:
        rows += enqueue_rows(args, url)
    if "batch" in selected:
        rows += batch_rows(args, url)
    if "pickup" in selected:
        rows += latency_rows(
            args,
            "pickup latency",
            lambda: workloads.pickup(url, args.pickup_slots, args.samples, args.pause),
            targets=True,
        )
    if "floor" in selected:
        rows += latency_rows(
            args,
            "(floor: plain psycopg)",
            lambda: pickup_floor(url, args.samples, args.pause),
            targets=False,
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    """Run the selected workloads and print the table."""
    args = parse_args(argv)
    url = database_url()
    print(f"durably queue benchmark on {describe_url(url)}, {args.runs} runs each", file=sys.stderr)
    started = time.monotonic()
    rows = run_selected(args, url, args.only or list(WORKLOADS))
    print(f"\n{args.runs} runs per figure (median shown), {time.monotonic() - started:.0f}s\n")
    print_table(rows)
    print("\n* best slot count. max RUNNING: most runs a draining worker held at once.")
    if args.json:
        figures = {r.name: {"values": r.values, "peak_running": r.peaks} for r in rows}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
