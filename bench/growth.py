"""How durably's costs grow with the work already in the tables: claim latency with 1k, 100k and
1M runs queued ahead, and with many finished runs kept; and the memory of a worker process with
many runs in flight or suspended (``--memory``).

Each depth gets a fresh schema filled with one ``INSERT ... SELECT generate_series`` (the runs are
of a task named ``noop`` on the default queue, so every claim has them all to choose from). Then
one connection claims one run at a time, ``--samples`` times, through the same
``Store.claim`` statement a worker uses, and records each outcome with ``Store.finish`` (not
timed). Reported: p50 and p99 of the claim in milliseconds.

``--history`` runs :mod:`bench.history` instead: claim and drain with 0, 10M and 100M
finished runs kept, then purged, and what removing history costs.

``--memory`` starts a worker process and reads its resident memory (VmRSS) idle, then with
``--in-flight`` async runs in flight at once (each sleeping), then after ``--suspended`` durable
runs have each started and suspended waiting for an event (evicted after 0.1 s).

Run from the project root: ``python -m bench.growth``; ``--help`` lists the options.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:
    # Run as a script: put the project root, not bench/, first on the path (see bench/queue.py).
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from bench import apps, plots
from bench.harness import (
    WorkerProcess,
    connect,
    database_url,
    int_list,
    percentile,
    throwaway_schema,
    wait_until,
)
from bench.queue import Row, print_table
from durably.records import Outcome, OutcomeKind
from durably.storage import Store, describe_url

ARGS = '{"args": [], "kwargs": {}}'


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m bench.growth", description=__doc__)
    add = parser.add_argument
    add("--runs", type=int, default=3, help="runs of each measurement; the median is reported")
    add("--depths", default="1000,100000,1000000", help="runs queued ahead of the claims")
    add("--finished", type=int, default=0, help="also keep this many COMPLETED runs")
    add("--samples", type=int, default=300, help="claims timed per measurement")
    add("--drain", type=int, default=20_000, help="runs timed per drain at each depth (0: none)")
    add("--slots", type=int, default=500, help="slots of the draining worker")
    add("--memory", action="store_true", help="measure worker memory instead")
    add(
        "--history",
        action="store_true",
        help="measure with 0 / 10M / 100M finished runs kept, then purged (bench.history)",
    )
    add("--private", action="store_true", help="use a private PostgreSQL (for --finished 10M)")
    add("--in-flight", type=int, default=1_000, help="async runs in flight (--memory)")
    add("--suspended", type=int, default=10_000, help="suspended durable runs (--memory)")
    return parser.parse_args(argv)


def fill(url: str, schema: str, queued: int, finished: int, task: str = "noop") -> None:
    """Create durably's tables in ``schema`` and fill them in bulk with runs of ``task``."""
    asyncio.run(_migrate(url, schema))
    runs = f'"{schema}".runs'
    with connect(url) as conn:
        conn.execute(
            f"INSERT INTO {runs} (task, args) SELECT %s, %s::jsonb FROM generate_series(1, %s)",
            (task, ARGS, queued),
        )
        if finished:
            conn.execute(
                f"INSERT INTO {runs} (task, args, status, result, finished_at) "
                "SELECT %s, %s::jsonb, 'COMPLETED', 'null', now() FROM generate_series(1, %s)",
                (task, ARGS, finished),
            )
        conn.execute(f"VACUUM ANALYZE {runs}")


async def _migrate(url: str, schema: str) -> None:
    store = await Store.open(url, schema, max_size=1)
    try:
        await store.migrate()
    finally:
        await store.close()


async def claim_latencies(url: str, schema: str, samples: int) -> list[float]:
    """Seconds per claim of one run, ``samples`` times; each claimed run is then completed."""
    store = await Store.open(url, schema, max_size=1)
    worker = str(uuid.uuid4())
    latencies = []
    try:
        for _ in range(samples):
            started = time.perf_counter()
            [run] = (await store.claim(worker, ["default"], ["noop"], 1, 30.0)).runs
            latencies.append(time.perf_counter() - started)
            await store.finish(
                worker, [Outcome(run.run_id, run.attempt, OutcomeKind.OK, result="null")]
            )
    finally:
        await store.close()
    return latencies


def drain_at_depth(url: str, depth: int, count: int, slots: int) -> float:
    """Tasks/s of one worker process (async no-op tasks) over its first ``count`` runs, with
    ``depth`` runs queued when it starts; from the first claim to the count-th completion."""
    with throwaway_schema(url) as schema:
        fill(url, schema, depth, 0, task="bench.noop")
        with WorkerProcess(url, schema, slots) as worker:
            wait_until(lambda: count_done(url, schema, worker) >= count, 600, 0.2, "the drain")
            worker.stop()
        with connect(url) as conn:
            row = conn.execute(
                f'SELECT EXTRACT(EPOCH FROM (SELECT finished_at FROM "{schema}".runs '
                "WHERE status = 'COMPLETED' ORDER BY finished_at OFFSET %s LIMIT 1) "
                f'- (SELECT min(started_at) FROM "{schema}".runs))::float8',
                (count - 1,),
            ).fetchone()
    assert row is not None
    return count / float(row[0])


def count_done(url: str, schema: str, worker: WorkerProcess) -> int:
    worker.check_alive()
    return count(url, schema, "COMPLETED")


def rss_mib(pid: int) -> float:
    """Resident memory of a process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def count(url: str, schema: str, status: str) -> int:
    with connect(url) as conn:
        row = conn.execute(
            f'SELECT count(*) FROM "{schema}".runs WHERE status = %s', (status,)
        ).fetchone()
    return int(row[0]) if row else 0


def steps_to(total: int, points: int) -> list[int]:
    """``points`` evenly spaced counts ending at ``total`` (the x values of a curve)."""
    return [total * (i + 1) // points for i in range(points)]


Curve = list[tuple[float, float]]


def worker_memory(url: str, in_flight: int, suspended: int, points: int) -> tuple[Curve, Curve]:
    """RSS (MiB) of one worker process as async runs come into flight (0 to ``in_flight``),
    then, with those still in flight, as durable runs suspend (0 to ``suspended``)."""
    with throwaway_schema(url) as schema:
        bench = apps.build(schema, url)
        bench.app.migrate()
        with WorkerProcess(
            url, schema, in_flight, 200, "--evict-after", "0.1", "--grace-period", "0"
        ) as worker:
            worker.wait_ready()
            assert worker.proc is not None
            pid = worker.proc.pid
            time.sleep(1.0)  # settle after start-up
            flight: Curve = [(0, rss_mib(pid))]
            for n in steps_to(in_flight, points):
                bench.hold.enqueue_many([(600.0,)] * (n - int(flight[-1][0])))
                wait_until(lambda n=n: count(url, schema, "RUNNING") == n, 120, 0.2, "in flight")
                flight.append((n, rss_mib(pid)))
            parked: Curve = [(0, flight[-1][1])]
            for n in steps_to(suspended, points):
                start = int(parked[-1][0])
                bench.parked.enqueue_many([(f"never-{i}",) for i in range(start, n)])
                wait_until(lambda n=n: count(url, schema, "WAITING") == n, 600, 0.5, "suspended")
                parked.append((n, rss_mib(pid)))
        bench.app.close()
    return flight, parked


def memory_main(args: argparse.Namespace, url: str) -> None:
    """RSS curves, each point the median over runs; printed and plotted."""
    runs = [worker_memory(url, args.in_flight, args.suspended, 4) for _ in range(args.runs)]
    flight, parked = (
        [(x, statistics.median(run[i][k][1] for run in runs)) for k, (x, _) in enumerate(curve)]
        for i, curve in enumerate(runs[0])
    )
    rows = [Row(f"worker RSS, {int(x):,} async runs in flight", "MiB", [y]) for x, y in flight]
    rows += [Row(f"  ... and {int(x):,} durable runs suspended", "MiB", [y]) for x, y in parked[1:]]
    print()
    print_table(rows)
    path = plots.curves(
        "memory",
        f"Worker memory (RSS, median of {args.runs})",
        "runs",
        "MiB",
        {
            "async runs in flight": flight,
            f"durable runs suspended (with {args.in_flight:,} in flight)": parked,
        },
    )
    print(f"curve written to {path}", file=sys.stderr)


def plot_growth(args: argparse.Namespace, rows: list[Row]) -> None:
    """Claim latency and drain throughput against the queued depth."""
    depths = int_list(args.depths)
    suffix = f", {args.finished:,} finished kept" if args.finished else ""
    claim = {
        q: [(float(d), r.median) for d, r in zip(depths, rows[i::2], strict=False)]
        for i, q in enumerate(("claim p50", "claim p99"))
    }
    name = "growth-claim" + ("-finished" if args.finished else "")
    paths = [
        plots.curves(
            name, f"Claim latency by queue depth{suffix}", "runs queued", "ms", claim, logx=True
        )
    ]
    drains = [r for r in rows if r.name.startswith("drain")]
    if drains:
        points = [
            (float(max(d, args.drain)), r.median) for d, r in zip(depths, drains, strict=True)
        ]
        paths.append(
            plots.curves(
                "growth-drain",
                f"Drain of the first {args.drain:,} runs by queue depth",
                "runs queued",
                "tasks/s",
                {"one worker, async no-op": points},
                logx=True,
            )
        )
    print(f"curves written to {', '.join(map(str, paths))}", file=sys.stderr)


@contextmanager
def server(private: bool) -> Iterator[str]:
    """The benchmark database: a private PostgreSQL in a temporary directory (so that tens of
    millions of rows never fill a shared server), else the usual one."""
    if not private:
        yield database_url()
        return
    from tests.chaos.server import PrivateServer

    with tempfile.TemporaryDirectory(prefix="durably-growth-") as pgdata:
        instance = PrivateServer(Path(pgdata) / "pgdata")  # started
        try:
            yield instance.url
        finally:
            instance.cleanup()


def main(argv: list[str] | None = None) -> None:
    """Measure at each depth and print the table."""
    args = parse_args(argv)
    if args.history:
        from bench import history

        history.main([])
        return
    with server(args.private) as url:
        if args.memory:
            memory_main(args, url)
        else:
            growth_main(args, url)


def growth_main(args: argparse.Namespace, url: str) -> None:
    """Claim latency (and drain throughput) at each depth: printed and plotted."""
    print(f"durably cost growth on {describe_url(url)}, {args.runs} runs each", file=sys.stderr)
    kept = f", {args.finished:,} finished kept" if args.finished else ""
    rows = []
    for depth in int_list(args.depths):
        p50 = Row(f"claim p50, {depth:,} queued{kept}", "ms")
        p99 = Row(f"claim p99, {depth:,} queued{kept}", "ms")
        for run in range(args.runs):
            with throwaway_schema(url) as schema:
                fill(url, schema, depth, args.finished)
                latencies = [
                    s * 1000 for s in asyncio.run(claim_latencies(url, schema, args.samples))
                ]
            p50.record(percentile(latencies, 0.5), run, digits=3)
            p99.record(percentile(latencies, 0.99), run, digits=3)
        rows += [p50, p99]
    if args.drain:
        for depth in int_list(args.depths):
            row = Row(
                f"drain, first {args.drain:,} of {max(depth, args.drain):,} queued", "tasks/s"
            )
            for run in range(args.runs):
                row.record(drain_at_depth(url, max(depth, args.drain), args.drain, args.slots), run)
            rows.append(row)
    print()
    print_table(rows)
    p50s = [r for r in rows if r.name.startswith("claim p50")]
    print(
        f"\nclaim p50 (ms) by depth: {' / '.join(f'{r.median:.3f}' for r in p50s)}; "
        f"deepest / shallowest: {p50s[-1].median / p50s[0].median:.2f}"
    )
    plot_growth(args, rows)


if __name__ == "__main__":
    main()
