"""What each flow-control feature costs the claim: one worker process drains the same queue of
no-op runs with each feature declared on the task (limits too high to bind, so only the mechanism
is measured), against the plain claim. Runs are interleaved across features; medians reported.

``python -m bench.flow [--runs 3] [--tasks 20000] [--slots 500]``; writes
``bench/results/flow.md`` and ``flow.json``. See bench/README.md, "Flow control".
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from bench import workloads
from bench.apps import FLOW_ENV, FLOW_KEYS, FLOW_MODES
from bench.harness import database_url, median
from durably.storage import describe_url

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m bench.flow", description=__doc__)
    parser.add_argument("--runs", type=int, default=3, help="drains per feature (median shown)")
    parser.add_argument("--tasks", type=int, default=20_000, help="runs per drain")
    parser.add_argument("--slots", type=int, default=500, help="slots of the draining worker")
    parser.add_argument("--only", action="append", choices=list(FLOW_MODES), help="repeatable")
    return parser.parse_args(argv)


def measure(url: str, args: argparse.Namespace, modes: list[str]) -> dict[str, list[float]]:
    """Tasks/s of every drain, by feature, interleaved: run 1 of each feature, then run 2..."""
    rates: dict[str, list[float]] = {mode: [] for mode in modes}
    for run in range(args.runs):
        for mode in modes:
            os.environ[FLOW_ENV] = mode  # read by bench.apps here and in the worker process
            rate = workloads.drain(url, "noop", args.slots, args.tasks).rate
            rates[mode].append(rate)
            print(f"run {run + 1}: {mode}: {rate:,.0f} tasks/s", file=sys.stderr)
    os.environ.pop(FLOW_ENV, None)
    return rates


def table(rates: dict[str, list[float]], args: argparse.Namespace) -> str:
    """Markdown: each feature's median drain and its ratio to the plain claim."""
    plain = median(rates["plain"]) if "plain" in rates else None
    lines = [
        f"Drain of {args.tasks:,} no-op runs, one worker process, {args.slots} slots; keyed "
        f"features spread the runs over {FLOW_KEYS} keys. Median of {args.runs} runs.",
        "",
        "| claim | tasks/s (median) | runs | vs plain |",
        "|---|---:|---|---:|",
    ]
    for mode, values in rates.items():
        ratio = f"{median(values) / plain:.2f}" if plain else ""
        runs = " / ".join(f"{v:,.0f}" for v in values)
        lines.append(f"| {mode} | {median(values):,.0f} | {runs} | {ratio} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Measure, print and write the results."""
    args = parse_args(argv)
    modes = args.only or list(FLOW_MODES)
    if "plain" not in modes:
        modes = ["plain", *modes]
    url = database_url()
    print(f"flow-control claim cost on {describe_url(url)}", file=sys.stderr)
    started = time.monotonic()
    rates = measure(url, args, modes)
    text = table(rates, args)
    print(f"\n{text}\n({time.monotonic() - started:.0f}s)")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "flow.md").write_text(text)
    (RESULTS / "flow.json").write_text(json.dumps(rates, indent=2) + "\n")


if __name__ == "__main__":
    main()
