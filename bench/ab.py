"""Interleaved A/B comparison of two checkouts of durably on the same benchmark.

Runs one benchmark module (``bench.queue``, ``bench.durable``, ...) in this checkout and in
another (``--base``, e.g. a worktree of an earlier commit with its own ``.venv``), alternately,
``--rounds`` times, each round one run of the module (``--runs 1``) with its ``--json`` output;
then prints, for every figure, the median of each side and their ratio (this / base). Alternating
the sides spreads a drifting machine over both, as bench/README.md asks of every comparison.

Run from the project root, e.g.::

    python -m bench.ab --base ../base --rounds 5 -- bench.queue --only drain --slots 500
    python -m bench.ab --base ../base --rounds 5 --json bench/results/ab.json -- \\
        bench.durable --only steps
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:
    # Run as a script: put the project root, not bench/, first on the path (see bench/queue.py).
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse
import json
import statistics
import subprocess
import tempfile
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line: options, then ``--``, then the benchmark module and its arguments."""
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__)
    parser.add_argument("--base", type=Path, required=True, help="the other checkout")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each side (interleaved)")
    parser.add_argument("--json", type=Path, help="also write every value and median here")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- MODULE [ARGS...]")
    args = parser.parse_args(argv)
    if args.command[:1] == ["--"]:
        args.command = args.command[1:]
    if not args.command:
        parser.error("give the benchmark after --, e.g. -- bench.queue --only drain")
    return args


def run_once(checkout: Path, command: list[str]) -> dict[str, list[float]]:
    """One run of the benchmark in ``checkout`` (its own ``.venv``); its figures by name."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "figures.json"
        python = checkout / ".venv" / "bin" / "python"
        subprocess.run(
            [str(python), "-m", *command, "--runs", "1", "--json", str(out)],
            cwd=checkout,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        figures: dict[str, Any] = json.loads(out.read_text())
    return {name: [v for v in f["values"] if v is not None] for name, f in figures.items()}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    sides = {"this": ROOT, "base": args.base.resolve()}
    values: dict[str, dict[str, list[float]]] = {"this": {}, "base": {}}
    for round_ in range(args.rounds):
        # Alternate which side goes first, so neither always runs on a warmer machine.
        order = ["this", "base"] if round_ % 2 == 0 else ["base", "this"]
        for side in order:
            for name, got in run_once(sides[side], args.command).items():
                values[side].setdefault(name, []).extend(got)
            print(f"round {round_ + 1}/{args.rounds}: {side} done", file=sys.stderr, flush=True)
    report = {}
    print(f"{'figure':60} {'this':>12} {'base':>12} {'ratio':>7}")
    for name in values["this"]:
        this, base = values["this"][name], values["base"].get(name, [])
        if not this or not base:
            continue
        m_this, m_base = statistics.median(this), statistics.median(base)
        ratio = m_this / m_base if m_base else float("nan")
        report[name] = {"this": this, "base": base, "median_this": m_this, "median_base": m_base}
        print(f"{name[:60]:60} {m_this:12.3f} {m_base:12.3f} {ratio:7.3f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        meta = {"command": args.command, "rounds": args.rounds, "base": str(args.base)}
        args.json.write_text(json.dumps({"meta": meta, "figures": report}, indent=2) + "\n")


if __name__ == "__main__":
    main()
