"""Does the hot path stay flat as history piles up, and what does removing it cost?

On a private PostgreSQL (tens of millions of rows must never fill a shared server), one schema
is topped up with finished runs (COMPLETED task runs with a 30-day retention, ended over the
last 29 days, so no sweeper removes them meanwhile) to each level of ``--levels``. At each
level: the claim latency of one connection claiming one run at a time through ``Store.claim``
(p50, p99 over ``--samples`` claims, with ``--queued`` runs queued), and the drain of a worker
process (``--drain`` async no-op runs queued, then drained, from first start to last end).

Then the removal of history is measured three ways, each on ``--purge`` runs:

- ``app.purge`` (batched ``DELETE`` of whole workflows, what retention does): seconds, WAL
  bytes and dead rows per million runs, and the claim and drain right after it (dead rows
  not yet vacuumed) and after a ``VACUUM`` of runs (its time per million removed);
- ``DROP`` of a partition holding the same number of rows in a range-partitioned copy of
  runs: seconds and WAL bytes per million (the alternative docs/scaling.md weighs).

Run from the project root: ``python -m bench.history`` (about 40 minutes at the default
levels 0, 10M and 100M; ``--levels 0,1000000`` for a quick look). Results go to
``bench/results/history.json`` and ``history.md``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:
    # Run as a script: put the project root, not bench/, first on the path (see bench/queue.py).
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse
import asyncio
import json
import platform
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg

import durably
from bench.growth import _migrate, claim_latencies
from bench.harness import WorkerProcess, connect, int_list, median, percentile, wait_until

ARGS = '{"args": [], "kwargs": {}}'
RESULTS = Path(__file__).resolve().parent / "results"
# The private server's settings: a modest production-like configuration for a 24 GiB machine.
SETTINGS = {
    "shared_buffers": "4GB",
    "max_wal_size": "16GB",
    "checkpoint_timeout": "15min",
    "maintenance_work_mem": "1GB",
    "max_parallel_maintenance_workers": "2",
    "effective_cache_size": "16GB",
}
# Indexes that finished runs enter: dropped while a level is bulk-loaded, then built again
# from their own definitions (faster than maintaining them row by row).
HISTORY_INDEXES = ("runs_task_id", "runs_finished_id", "runs_purge")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m bench.history", description=__doc__)
    add = parser.add_argument
    add("--levels", default="0,10000000,100000000", help="finished runs kept, in order")
    add("--runs", type=int, default=3, help="measurements at each level; medians are reported")
    add("--samples", type=int, default=300, help="claims timed per measurement")
    add("--queued", type=int, default=10_000, help="runs queued during the claim measurement")
    add("--drain", type=int, default=20_000, help="runs drained per drain measurement")
    add("--slots", type=int, default=500, help="slots of the draining worker")
    add("--purge", type=int, default=1_000_000, help="runs removed by each removal measured")
    add("--json", type=Path, default=RESULTS / "history.json", help="results file")
    return parser.parse_args(argv)


@dataclass
class Level:
    """The hot path's figures with some history in the table."""

    label: str
    finished: int
    claim_p50_ms: list[float] = field(default_factory=list)
    claim_p99_ms: list[float] = field(default_factory=list)
    drain_per_s: list[float] = field(default_factory=list)

    def medians(self) -> dict[str, float]:
        return {
            "claim_p50_ms": median(self.claim_p50_ms),
            "claim_p99_ms": median(self.claim_p99_ms),
            "drain_per_s": median(self.drain_per_s),
        }


@dataclass
class Removal:
    """What removing ``runs`` rows of history cost, one way."""

    how: str
    runs: int
    seconds: float
    wal_bytes: int
    extra: dict[str, float] = field(default_factory=dict)

    def per_million(self) -> dict[str, float]:
        scale = 1_000_000 / self.runs
        return {"seconds": self.seconds * scale, "wal_mib": self.wal_bytes * scale / 2**20}


@contextmanager
def private_server() -> Iterator[str]:
    """A private PostgreSQL with :data:`SETTINGS`, in a temporary directory."""
    from tests.chaos.server import PrivateServer

    with tempfile.TemporaryDirectory(prefix="durably-history-") as pgdata:
        server = PrivateServer(Path(pgdata) / "pgdata")
        try:
            server.configure(**SETTINGS)
            yield server.url
        finally:
            server.cleanup()


def wal_lsn(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()
    assert row is not None
    return int(row[0])


def top_up(url: str, schema: str, have: int, want: int, chunk: int = 5_000_000) -> None:
    """Add finished runs until ``want`` are kept, in chunks, with the history indexes dropped
    during the load and built again after it."""
    if want <= have:
        return
    s = f'"{schema}"'
    with connect(url) as conn:
        defs = [
            row[0]
            for row in conn.execute(
                "SELECT indexdef FROM pg_indexes WHERE schemaname = %s AND indexname = ANY(%s)",
                (schema, list(HISTORY_INDEXES)),
            ).fetchall()
        ]
        for name in HISTORY_INDEXES:
            conn.execute(f"DROP INDEX {s}.{name}")
        chunks = [(start, min(chunk, want - start)) for start in range(have, want, chunk)]
        # Two connections load at once (each INSERT ... SELECT uses one core).
        with ThreadPoolExecutor(2) as pool:
            for done in pool.map(lambda c: _load(url, schema, want, *c), chunks):
                print(f"  history: chunk of {done:,} finished runs loaded", file=sys.stderr)
        for definition in defs:
            conn.execute(definition)
        conn.execute(f"VACUUM ANALYZE {s}.runs")
        # Write the load out now, so no checkpoint flushes gigabytes during a measurement.
        conn.execute("CHECKPOINT")


def _load(url: str, schema: str, want: int, start: int, n: int) -> int:
    """Insert ``n`` finished runs, numbered from ``start`` of ``want`` (spread over 28 days)."""
    with connect(url) as conn:
        conn.execute(
            f"""INSERT INTO "{schema}".runs (task, args, status, result, attempt, created_at,
                                            started_at, finished_at, retention)
                SELECT 'bench.noop', %s::jsonb, 'COMPLETED', 'null', 1, t, t, t, 2592000
                FROM (SELECT now() - interval '29 days'
                             + (g::float8 / %s) * interval '28 days' AS t
                      FROM generate_series(%s, %s) g) x""",
            (ARGS, want, start, start + n - 1),
        )
    return n


def measure(url: str, schema: str, level: Level, args: argparse.Namespace) -> None:
    """Claim latency and drain at the table's current history, ``args.runs`` times each."""
    s = f'"{schema}"'
    for _ in range(args.runs):
        with connect(url) as conn:
            conn.execute(
                f"INSERT INTO {s}.runs (task, args) SELECT 'noop', %s::jsonb "
                "FROM generate_series(1, %s)",
                (ARGS, args.queued),
            )
        latencies = [ms * 1000 for ms in asyncio.run(claim_latencies(url, schema, args.samples))]
        with connect(url) as conn:
            conn.execute(f"DELETE FROM {s}.runs WHERE task = 'noop'")
        level.claim_p50_ms.append(percentile(latencies, 0.5))
        level.claim_p99_ms.append(percentile(latencies, 0.99))
        level.drain_per_s.append(drain(url, schema, args.drain, args.slots))
    print(f"  {level.label}: {level.medians()}", file=sys.stderr)


def drain(url: str, schema: str, count: int, slots: int) -> float:
    """Runs/s of one worker process over ``count`` queued async no-op runs, first start to
    last end; the drained runs are removed afterwards so the level stays as it was."""
    s = f'"{schema}"'
    with connect(url) as conn:
        row = conn.execute(
            f"""WITH added AS (
                    INSERT INTO {s}.runs (task, args) SELECT 'bench.noop', %s::jsonb
                    FROM generate_series(1, %s) RETURNING id)
                SELECT min(id) FROM added""",
            (ARGS, count),
        ).fetchone()
    assert row is not None
    first = int(row[0])

    def done() -> bool:
        worker.check_alive()
        with connect(url) as conn:
            got = conn.execute(
                f"SELECT count(*) FROM {s}.runs WHERE id >= %s AND status = 'COMPLETED'",
                (first,),
            ).fetchone()
        return bool(got and got[0] >= count)

    with WorkerProcess(url, schema, slots) as worker:
        wait_until(done, 600, 0.2, "the drain")
    with connect(url) as conn:
        got = conn.execute(
            f"""SELECT EXTRACT(EPOCH FROM max(finished_at) - min(started_at))::float8
                FROM {s}.runs WHERE id >= %s""",
            (first,),
        ).fetchone()
        conn.execute(f"DELETE FROM {s}.runs WHERE id >= %s", (first,))
        conn.execute(f"VACUUM {s}.runs")
    assert got is not None
    return count / float(got[0])


def purge_oldest(url: str, schema: str, count: int) -> Removal:
    """``app.purge`` of the ``count`` oldest finished runs (each a workflow of one run)."""
    s = f'"{schema}"'
    with connect(url) as conn:
        row = conn.execute(
            f"""SELECT EXTRACT(EPOCH FROM now() - finished_at)::float8 FROM {s}.runs
                WHERE finished_at IS NOT NULL ORDER BY finished_at OFFSET %s LIMIT 1""",
            (count - 1,),
        ).fetchone()
        assert row is not None
        before = wal_lsn(conn)
        app = durably.App(url, schema=schema, migrate=False)
        started = time.perf_counter()
        removed = app.purge(float(row[0]) - 0.001)
        seconds = time.perf_counter() - started
        app.close()
        wal = wal_lsn(conn) - before
        dead = conn.execute(
            "SELECT n_dead_tup FROM pg_stat_user_tables WHERE schemaname = %s AND relname = 'runs'",
            (schema,),
        ).fetchone()
    return Removal(
        "app.purge (batched DELETE)", removed, seconds, wal, {"dead_rows": dead[0] if dead else 0}
    )


def vacuum(url: str, schema: str, removed: int) -> Removal:
    """``VACUUM`` of runs after a purge: what reclaiming the dead rows costs."""
    with connect(url) as conn:
        before = wal_lsn(conn)
        started = time.perf_counter()
        conn.execute(f'VACUUM "{schema}".runs')
        seconds = time.perf_counter() - started
        return Removal("VACUUM after the purge", removed, seconds, wal_lsn(conn) - before)


def drop_partition(url: str, schema: str, count: int) -> Removal:
    """Dropping a partition of ``count`` finished runs from a range-partitioned copy of runs."""
    s = f'"{schema}"'
    with connect(url) as conn:
        conn.execute(
            f"""CREATE TABLE {s}.runs_by_day (LIKE {s}.runs INCLUDING DEFAULTS)
                PARTITION BY RANGE (finished_at)"""
        )
        conn.execute(
            f"""CREATE TABLE {s}.runs_day_old PARTITION OF {s}.runs_by_day
                FOR VALUES FROM ('2000-01-01') TO ('2000-01-02')"""
        )
        conn.execute(f"CREATE INDEX ON {s}.runs_by_day (id)")
        conn.execute(f"CREATE INDEX ON {s}.runs_by_day (task, id)")
        conn.execute(
            f"""INSERT INTO {s}.runs_by_day (id, task, args, status, result, finished_at)
                SELECT g, 'bench.noop', %s::jsonb, 'COMPLETED', 'null',
                       '2000-01-01'::timestamptz + (g::float8 / %s) * interval '1 day'
                FROM generate_series(0, %s - 1) g""",
            (ARGS, count, count),
        )
        conn.execute("CHECKPOINT")
        before = wal_lsn(conn)
        started = time.perf_counter()
        with conn.transaction():
            conn.execute(f"ALTER TABLE {s}.runs_by_day DETACH PARTITION {s}.runs_day_old")
            conn.execute(f"DROP TABLE {s}.runs_day_old")
        seconds = time.perf_counter() - started
        wal = wal_lsn(conn) - before
        conn.execute(f"DROP TABLE {s}.runs_by_day")
    return Removal("DROP of a partition", count, seconds, wal)


def sizes(url: str, schema: str) -> dict[str, int]:
    """Bytes of runs (table, indexes) now."""
    with connect(url) as conn:
        row = conn.execute(
            "SELECT pg_table_size(%s::regclass), pg_indexes_size(%s::regclass)",
            (f'"{schema}".runs', f'"{schema}".runs'),
        ).fetchone()
    assert row is not None
    return {"table_bytes": int(row[0]), "index_bytes": int(row[1])}


def render(levels: list[Level], removals: list[Removal], meta: dict[str, Any]) -> str:
    """The Markdown tables of the results."""
    base = levels[0].medians()
    lines = [
        f"Measured {meta['date']} on {meta['machine']} at {meta['commit']} "
        "(`python -m bench.history`, private PostgreSQL, medians of "
        f"{meta['runs']}).",
        "",
        "| finished runs in the table | claim p50 (ms) | claim p99 (ms) | drain (runs/s) "
        "| drain vs empty |",
        "|---|---:|---:|---:|---:|",
    ]
    for level in levels:
        m = level.medians()
        lines.append(
            f"| {level.label} | {m['claim_p50_ms']:.3f} | {m['claim_p99_ms']:.3f} "
            f"| {m['drain_per_s']:,.0f} | {m['drain_per_s'] / base['drain_per_s']:.2f} |"
        )
    lines += [
        "",
        "| removing history | runs | seconds per million | WAL per million (MiB) |",
        "|---|---:|---:|---:|",
    ]
    for r in removals:
        pm = r.per_million()
        lines.append(f"| {r.how} | {r.runs:,} | {pm['seconds']:.2f} | {pm['wal_mib']:.1f} |")
    return "\n".join(lines) + "\n"


def commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def main(argv: list[str] | None = None) -> None:
    """Every level, then the removals; printed and written to the results files."""
    args = parse_args(argv)
    levels: list[Level] = []
    removals: list[Removal] = []
    with private_server() as url:
        schema = "history"
        asyncio.run(_migrate(url, schema))
        have = 0
        for want in int_list(args.levels):
            top_up(url, schema, have, want)
            have = max(have, want)
            level = Level(f"{have:,} kept", have)
            measure(url, schema, level, args)
            levels.append(level)
        top = sizes(url, schema)
        removed = purge_oldest(url, schema, args.purge)
        removals.append(removed)
        after = Level(
            f"{have:,} kept, {removed.runs:,} just purged (not vacuumed)", have - removed.runs
        )
        measure(url, schema, after, args)
        levels.append(after)
        removals.append(vacuum(url, schema, removed.runs))
        vacuumed = Level(
            f"{have:,} kept, {removed.runs:,} purged and vacuumed", have - removed.runs
        )
        measure(url, schema, vacuumed, args)
        levels.append(vacuumed)
        removals.append(drop_partition(url, schema, args.purge))
    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.node()}, {platform.processor() or platform.machine()}",
        "commit": commit(),
        "runs": args.runs,
        "args": {k: str(v) for k, v in vars(args).items()},
        "sizes_at_top_level": top,
    }
    table = render(levels, removals, meta)
    print("\n" + table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "meta": meta,
                "levels": [{**asdict(lv), "medians": lv.medians()} for lv in levels],
                "removals": [{**asdict(r), "per_million": r.per_million()} for r in removals],
            },
            indent=2,
        )
    )
    args.json.with_suffix(".md").write_text(table)


if __name__ == "__main__":
    main()
