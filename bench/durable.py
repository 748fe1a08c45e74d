"""The durably durable-workflow benchmark: workflows/s, cost per checkpointed step, and the cost
of re-executing a run against a long event log.

Run from the project root: ``python -m bench.durable`` (or ``python bench/durable.py``);
``--help`` lists the options. Every figure is the median of ``--runs`` runs; see bench/README.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:
    # Run as a script: put the project root, not bench/, first on the path (see bench/queue.py).
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse
import json
import time

from bench import durable_workloads as work
from bench import plots
from bench.harness import database_url, int_list
from bench.queue import Row
from durably.storage import describe_url

WORKLOADS = ("workflows", "steps", "resume")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m bench.durable", description=__doc__)
    add = parser.add_argument
    add("--runs", type=int, default=3, help="runs of each measurement; the median is reported")
    add("--workflows", type=int, default=1_000, help="3-step workflows per throughput run")
    add("--in-flight", type=int, default=10, help="workflows outstanding in the concurrent run")
    add("--step-counts", default="0,10,20,40", help="steps per workflow for the step overhead")
    add("--per-count", type=int, default=30, help="workflows of each step count per run")
    add("--sizes", default="100,1000,3000,10000", help="log lengths (recorded steps) to resume")
    add("--repeats", type=int, default=9, help="re-executions of each log length per run")
    add("--slots", type=int, default=10, help="the worker's --slots (task slots, unused here)")
    add("--durable-slots", type=int, default=100, help="the worker's --durable-slots")
    add("--only", action="append", choices=WORKLOADS, help="run only these (repeatable)")
    add("--json", type=Path, help="also write every figure to this JSON file")
    return parser.parse_args(argv)


WIDE = {"width": 44, "digits": 3}  # how a figure is shown as it arrives


def _slots(args: argparse.Namespace) -> work.Slots:
    return work.Slots(args.slots, args.durable_slots)


def workflow_rows(args: argparse.Namespace, url: str) -> list[Row]:
    """3-step workflows/s, sequential and with ``--in-flight`` outstanding."""
    sequential = Row(
        "3-step workflow, sequential", "wf/s", target=">= 200", meets=lambda v: v >= 200
    )
    concurrent = Row(f"3-step workflow, {args.in_flight} in flight", "wf/s")
    for run in range(args.runs):
        for row, in_flight in ((sequential, 1), (concurrent, args.in_flight)):
            row.record(work.workflows(url, _slots(args), args.workflows, in_flight), run, **WIDE)
    return [sequential, concurrent]


def step_rows(args: argparse.Namespace, url: str) -> list[Row]:
    """Cost of one checkpointed step: the slope of workflow duration against its step count."""
    counts = int_list(args.step_counts)
    per_step = Row(
        "per checkpointed step (slope, in worker)",
        "ms",
        target="<= 0.9",
        meets=lambda v: v <= 0.9,
    )
    end_to_end = Row("per checkpointed step (slope, end to end)", "ms")
    durations = {n: Row(f"  workflow of {n} steps, in worker", "ms") for n in counts}
    for run in range(args.runs):
        worker, wall = work.step_durations(url, _slots(args), counts, args.per_count)
        for n, seconds in worker.items():
            durations[n].record(seconds * 1000, run, **WIDE)
        per_step.record(work.slope(worker) * 1000, run, **WIDE)
        end_to_end.record(work.slope(wall) * 1000, run, **WIDE)
    return [per_step, end_to_end, *durations.values()]


def resume_rows(args: argparse.Namespace, url: str) -> list[Row]:
    """Re-execution against logs of N recorded steps, minus the same with an empty log, per
    recorded event; the longest log is held to the target."""
    sizes = [n for n in int_list(args.sizes) if n > 0]  # 0, the empty log, is always measured
    base = Row("  re-execution, empty log", "ms")
    totals = {n: Row(f"  re-execution, log of {n:,} steps", "ms") for n in sizes}
    per_event = {n: Row(f"resume per recorded event, log of {n:,}", "us") for n in sizes}
    longest = per_event[max(sizes)]
    longest.target, longest.meets = "<= 50", lambda v: v <= 50
    for run in range(args.runs):
        seconds = work.resume_durations(url, _slots(args), [0, *sizes], args.repeats)
        base.record(seconds[0] * 1000, run, **WIDE)
        for n in sizes:
            totals[n].record(seconds[n] * 1000, run, **WIDE)
            per_event[n].record((seconds[n] - seconds[0]) / n * 1e6, run, **WIDE)
    points = [(0.0, base.median)] + [(float(n), totals[n].median) for n in sizes]
    path = plots.curves(
        "resume",
        "Re-executing a durable run against its event log (median)",
        "recorded steps in the log",
        "claim to recorded end (ms)",
        {"re-execution": points},
        logx=True,
    )
    print(f"  curve written to {path}", file=sys.stderr)
    return [*per_event.values(), base, *totals.values()]


def print_table(rows: list[Row]) -> None:
    """The results: median, target, verdict and every run's figure."""
    header = f"{'workload':<46} {'median':>10}  {'unit':<5} {'target':<8} {'':<7} runs"
    print(header)
    print("-" * (len(header) + 30))
    for row in rows:
        runs = " / ".join(f"{v:,.3g}" if abs(v) < 100 else f"{v:,.0f}" for v in row.values)
        print(
            f"{row.name:<46} {_figure(row.median):>10}  {row.unit:<5} {row.target:<8} "
            f"{row.verdict():<7} {runs}"
        )


def _figure(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.3g}"


def run_selected(args: argparse.Namespace, url: str, selected: list[str]) -> list[Row]:
    """Run the selected workloads in order and return their rows."""
    rows: list[Row] = []
    if "workflows" in selected:
        rows += workflow_rows(args, url)
    if "steps" in selected:
        rows += step_rows(args, url)
    if "resume" in selected:
        rows += resume_rows(args, url)
    return rows


def main(argv: list[str] | None = None) -> None:
    """Run the selected workloads and print the table."""
    args = parse_args(argv)
    url = database_url()
    print(
        f"durably durable-workflow benchmark on {describe_url(url)}, {args.runs} runs each; "
        f"one worker: --slots {args.slots} --durable-slots {args.durable_slots}",
        file=sys.stderr,
    )
    started = time.monotonic()
    rows = run_selected(args, url, args.only or list(WORKLOADS))
    print(f"\n{args.runs} runs per figure (median shown), {time.monotonic() - started:.0f}s\n")
    print_table(rows)
    if args.json:
        figures = {r.name.strip(): {"unit": r.unit, "values": r.values} for r in rows}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
