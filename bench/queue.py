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

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

from bench import workloads  # noqa: E402
from bench.harness import database_url, median, percentile  # noqa: E402
from durably.store import describe_url  # noqa: E402

WORKLOADS = ("drain", "drain-sync", "enqueue", "batch", "pickup")


@dataclass
class Row:
    """One line of the results table: a workload and its figure in each run."""

    name: str
    unit: str
    values: list[float] = field(default_factory=list)
    target: str = ""
    meets: Callable[[float], bool] | None = None

    @property
    def median(self) -> float:
        """The median over runs."""
        return median(self.values)

    def verdict(self) -> str:
        """'met' or 'MISSED' against the target, blank without one."""
        if self.meets is None or not self.values:
            return ""
        return "met" if self.meets(self.median) else "MISSED"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m bench.queue", description=__doc__)
    parser.add_argument("--runs", type=int, default=3, help="runs of each measurement (median)")
    parser.add_argument("--tasks", type=int, default=20_000, help="runs drained per measurement")
    parser.add_argument("--slots", default="50,100,200,500", help="worker slot counts, async drain")
    parser.add_argument("--sync-slots", default="50,100,200,500", help="slot counts, sync drain")
    parser.add_argument("--enqueues", type=int, default=2_000, help="sequential enqueues per run")
    parser.add_argument("--batch-rows", type=int, default=20_000, help="rows per batch run")
    parser.add_argument("--samples", type=int, default=200, help="pickup samples per run")
    parser.add_argument("--pause", type=float, default=0.05, help="idle seconds between samples")
    parser.add_argument("--pickup-slots", type=int, default=10, help="slots of the idle worker")
    parser.add_argument("--only", action="append", choices=WORKLOADS, help="workloads to run")
    parser.add_argument("--json", type=Path, help="also write the raw figures to this file")
    return parser.parse_args(argv)


def _slots(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s.strip()]


def _progress(row: Row, value: float, run: int) -> None:
    print(f"  run {run + 1}: {row.name:<34} {value:>10,.1f} {row.unit}", file=sys.stderr, flush=True)


def drain_rows(args: argparse.Namespace, url: str, task: str, slot_list: list[int]) -> list[Row]:
    """The drain workload at each slot count; the best slot count is held to the target."""
    kind = "async" if task == "noop" else "sync"
    rows = {s: Row(f"drain, {kind} no-op, slots={s}", "tasks/s") for s in slot_list}
    for run in range(args.runs):
        for slots, row in rows.items():
            value = workloads.drain(url, task, slots, args.tasks)
            row.values.append(value)
            _progress(row, value, run)
    best = max(rows.values(), key=lambda r: r.median)
    if kind == "async":
        best.target, best.meets = ">= 7,000", lambda v: v >= 7_000
    best.name += " (best)"
    return list(rows.values())


def enqueue_rows(args: argparse.Namespace, url: str) -> list[Row]:
    """Sequential single enqueues, sync and async."""
    rows = [
        Row("enqueue, sequential sync", "runs/s", target=">= 2,000", meets=lambda v: v >= 2_000),
        Row("enqueue_async, sequential", "runs/s", target=">= 2,000", meets=lambda v: v >= 2_000),
    ]
    for run in range(args.runs):
        for row, use_async in zip(rows, (False, True), strict=True):
            value = workloads.single_enqueue(url, args.enqueues, use_async)
            row.values.append(value)
            _progress(row, value, run)
    return rows


def batch_rows(args: argparse.Namespace, url: str) -> list[Row]:
    """enqueue_many with batches of 1,000 and 10,000 calls."""
    sizes = (1_000, 10_000)
    rows = [Row(f"enqueue_many, batch {s:,}", "rows/s", target=">= 40,000",
                meets=lambda v: v >= 40_000) for s in sizes]
    for run in range(args.runs):
        for row, size in zip(rows, sizes, strict=True):
            value = workloads.batch_enqueue(url, size, args.batch_rows)
            row.values.append(value)
            _progress(row, value, run)
    return rows


def pickup_rows(args: argparse.Namespace, url: str) -> list[Row]:
    """Idle pickup latency: p50, p99 and max of each run, in milliseconds."""
    rows = [
        Row("pickup latency p50", "ms", target="<= 2", meets=lambda v: v <= 2),
        Row("pickup latency p99", "ms", target="<= 5", meets=lambda v: v <= 5),
        Row("pickup latency max", "ms"),
    ]
    for run in range(args.runs):
        latencies = [s * 1000 for s in workloads.pickup(url, args.pickup_slots, args.samples,
                                                        args.pause)]
        stats = (percentile(latencies, 0.5), percentile(latencies, 0.99), max(latencies))
        for row, value in zip(rows, stats, strict=True):
            row.values.append(value)
            _progress(row, value, run)
    return rows


def print_table(rows: list[Row]) -> None:
    """The results: median, every run, target and verdict."""
    header = f"{'workload':<42} {'median':>10}  {'unit':<8} {'target':<10} {'':<7} runs"
    print(header)
    print("-" * len(header))
    for row in rows:
        runs = " / ".join(f"{v:,.1f}" for v in row.values)
        print(f"{row.name:<42} {row.median:>10,.1f}  {row.unit:<8} {row.target:<10} "
              f"{row.verdict():<7} {runs}")


def main(argv: list[str] | None = None) -> None:
    """Run the selected workloads and print the table."""
    args = parse_args(argv)
    selected = args.only or list(WORKLOADS)
    url = database_url()
    print(f"durably queue benchmark on {describe_url(url)}: {args.runs} runs each",
          file=sys.stderr)
    started = time.monotonic()
    rows: list[Row] = []
    if "drain" in selected:
        rows += drain_rows(args, url, "noop", _slots(args.slots))
    if "drain-sync" in selected:
        rows += drain_rows(args, url, "noop_sync", _slots(args.sync_slots))
    if "enqueue" in selected:
        rows += enqueue_rows(args, url)
    if "batch" in selected:
        rows += batch_rows(args, url)
    if "pickup" in selected:
        rows += pickup_rows(args, url)
    print(f"\n{args.runs} runs per figure, {time.monotonic() - started:.0f}s in all\n")
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps({r.name: r.values for r in rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
