"""The durably chaos run, long mode: durable workflows on worker processes that are killed,
frozen and cut off, in front of a private PostgreSQL that is crashed and restarted; then every
invariant is checked (see tests/chaos and docs/reliability.md).

Run from the project root: ``python -m bench.chaos`` (the defaults are the 10-minute run of
docs/reliability.md: 10,000 workflows, a worker killed every 0.5-2 s, 5 database crashes, and
volume mode: bursts of 2,000 runs orphaned or expiring at once, transactions longer than the
lease).
Exits 1 if any invariant was violated.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:
    # Run as a script: put the project root, not bench/, first on the path (see bench/queue.py).
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse
import json
import signal
import tempfile
import time

from tests.chaos.harness import Chaos, Config


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__)
    add = parser.add_argument
    add("--items", type=int, default=10_000, help="order workflows to enqueue")
    add("--duration", type=float, default=600.0, help="seconds of faults")
    add("--workers", type=int, default=4, help="worker processes kept running")
    add("--restarts", type=int, default=5, help="database crashes (stop -m immediate)")
    add("--seed", type=int, default=1, help="seed of the fault schedule")
    add(
        "--volume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="bursts of thousands of orphaned and expiring runs, transactions longer than the "
        "lease (default: on)",
    )
    add("--burst-size", type=int, default=2000, help="runs per burst in volume mode")
    add("--json", type=Path, help="also write the report to this file")
    add("--logs", type=Path, help="keep the worker log here (workers.log)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM stops like Ctrl-C: the harness's cleanup stops the workers and its PostgreSQL.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    config = Config(
        items=args.items,
        duration=args.duration,
        workers=args.workers,
        restarts=args.restarts,
        seed=args.seed,
        volume=args.volume,
        burst_size=args.burst_size,
    )
    print(f"$ {config.command()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="durably-chaos-") as tmp:
        workdir = Path(tmp)
        result = Chaos(
            config, workdir, say=lambda s: print(time.strftime("%T"), s, flush=True)
        ).run()
        if args.logs:
            args.logs.mkdir(parents=True, exist_ok=True)
            (args.logs / "workers.log").write_bytes((workdir / "workers.log").read_bytes())
    report = {
        "command": config.command(),
        "elapsed_s": round(result.elapsed, 1),
        "faults": dict(result.faults),
        "all_terminal_after_last_fault_s": (
            None if result.settled_after is None else round(result.settled_after, 1)
        ),
        "invariants": result.report.summary(),
        "problems": result.problems(),
        "diagnosis": result.diagnosis,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
