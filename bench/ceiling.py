"""The raw PostgreSQL ceiling on this machine: what the server allows before any engine code runs,
so the other benchmarks can say how close durably comes to the limit.

- **commits/s of single-row INSERTs** (autocommit: one row, one commit, one WAL flush) on 1
  connection and on 8 connections (8 threads; their flushes share group commit);
- **a minimal SKIP LOCKED claim-and-complete loop** on one connection over pre-inserted jobs:
  claim a batch with ``UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED)``, then mark it
  done with a second ``UPDATE``: two commits per batch, nothing else. Batch 1 is a queue that
  claims one job at a time; batch 100 is closer to durably, which claims up to its free slots and
  records outcomes in batches.

Run from the project root: ``python -m bench.ceiling``; ``--help`` lists the options. Every figure
is the median of ``--runs`` runs; see bench/README.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:
    # Run as a script: put the project root, not bench/, first on the path (see bench/queue.py).
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse
import threading
import time

from bench.harness import connect, database_url, int_list, throwaway_schema
from bench.queue import Row, print_table
from durably.storage import describe_url


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m bench.ceiling", description=__doc__)
    add = parser.add_argument
    add("--runs", type=int, default=3, help="runs of each measurement; the median is reported")
    add("--seconds", type=float, default=5.0, help="length of each insert measurement")
    add("--connections", default="1,8", help="connection counts for the insert commit rate")
    add("--jobs", type=int, default=20_000, help="jobs per claim-and-complete measurement")
    add("--batches", default="1,100", help="claim batch sizes")
    return parser.parse_args(argv)


def insert_rate(url: str, connections: int, seconds: float) -> float:
    """Single-row autocommit INSERTs per second over ``connections`` threads."""
    with throwaway_schema(url) as schema, connect(url) as setup:
        setup.execute(f'CREATE SCHEMA "{schema}"')
        setup.execute(f'CREATE TABLE "{schema}".t (id bigserial PRIMARY KEY, v integer)')
        counts = [0] * connections
        deadline = [0.0]

        def go() -> None:  # once every thread is connected: the clock starts
            deadline[0] = time.monotonic() + seconds

        start = threading.Barrier(connections + 1, action=go)

        def insert(i: int) -> None:
            with connect(url) as conn:
                start.wait()
                while time.monotonic() < deadline[0]:
                    conn.execute(f'INSERT INTO "{schema}".t (v) VALUES (%s)', (i,))
                    counts[i] += 1

        threads = [threading.Thread(target=insert, args=(i,)) for i in range(connections)]
        for thread in threads:
            thread.start()
        start.wait()
        began = deadline[0] - seconds
        for thread in threads:
            thread.join()
        return sum(counts) / (time.monotonic() - began)


def claim_rate(url: str, jobs: int, batch: int) -> float:
    """Jobs per second through claim (SKIP LOCKED) then complete, ``batch`` jobs at a time."""
    with throwaway_schema(url) as schema, connect(url) as conn:
        t = f'"{schema}".jobs'
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(f"CREATE TABLE {t} (id bigserial PRIMARY KEY, status text NOT NULL)")
        conn.execute(f"CREATE INDEX ON {t} (id) WHERE status = 'queued'")
        conn.execute(
            f"INSERT INTO {t} (status) SELECT 'queued' FROM generate_series(1, %s)", (jobs,)
        )
        conn.execute(f"VACUUM ANALYZE {t}")
        claim = (
            f"UPDATE {t} SET status = 'running' WHERE id IN (SELECT id FROM {t} "
            "WHERE status = 'queued' ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING id"
        )
        complete = f"UPDATE {t} SET status = 'done' WHERE id = ANY(%s)"
        began, done = time.monotonic(), 0
        while done < jobs:
            ids = [row[0] for row in conn.execute(claim, (batch,)).fetchall()]
            conn.execute(complete, (ids,))
            done += len(ids)
        return done / (time.monotonic() - began)


def main(argv: list[str] | None = None) -> None:
    """Measure and print the table."""
    args = parse_args(argv)
    url = database_url()
    print(f"PostgreSQL ceiling on {describe_url(url)}, {args.runs} runs each", file=sys.stderr)
    inserts = {
        n: Row(f"single-row INSERT commits, {n} conn", "rows/s") for n in int_list(args.connections)
    }
    claims = {
        b: Row(f"SKIP LOCKED claim+complete, batch {b}", "jobs/s") for b in int_list(args.batches)
    }
    for run in range(args.runs):
        for n, row in inserts.items():
            row.record(insert_rate(url, n, args.seconds), run)
        for b, row in claims.items():
            row.record(claim_rate(url, args.jobs, b), run)
    print()
    print_table([*inserts.values(), *claims.values()])


if __name__ == "__main__":
    main()
