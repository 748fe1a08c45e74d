"""The soak test: an hour of sustained mixed load on one PostgreSQL with a short retention, so
that the steady state of a system left running for months is reached and watched.

A private PostgreSQL (bench.history's settings) and one worker process (``--slots`` task
slots, ``--durable-slots`` durable slots). A driver offers ``--rate`` task runs a second, and
with them a tenth as many three-step workflows, a fiftieth as many fan-outs of five children,
and a twentieth each of durable two-second sleeps and event waits (each event pushed two
seconds after its waiter was enqueued), in batches ten times a second. Retention is
``--retention`` seconds, so from then on the sweeper removes as much as the load adds.

Every ``--every`` seconds a sampler records: runs ended in the interval (throughput), pickup
latency of the task runs that ended in it (first start - enqueue, database clock; p50 and p99),
the claim latency of a probe (one connection claiming ``--probes`` runs of a queue no worker
serves, one at a time, through ``Store.claim``), the database and table sizes, dead rows,
autovacuum runs, WAL bytes per run ended, the backlog (runs due and not started) and the
worker's resident memory. A statement-level trigger counts every run removed, by status.

Pass: throughput and p99 pickup of the last ten minutes within 10% of the first ten steady
minutes (from twice the retention on), the database size within 10% over the steady period,
and no run lost or left behind: after the load stops and the runs drain, every run enqueued
is either stored and ended or was removed ended, and none was removed unfinished.

Run from the project root: ``python -m bench.soak`` (an hour); ``--minutes 5 --retention 60``
for a quick look. Results: ``bench/results/soak.json``, ``soak.md`` and ``soak.png``.
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
import os
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

from bench import plots, soak_app
from bench.apps import SCHEMA_ENV
from bench.growth import rss_mib
from bench.harness import ROOT, connect, percentile, wait_until
from bench.history import commit, private_server
from durably.records import Outcome, OutcomeKind
from durably.storage import Store

RESULTS = Path(__file__).resolve().parent / "results"
SCHEMA = "soak"
TICK = 0.1  # seconds between the driver's batches
PROBE_QUEUE = "soak.probe"  # served by no worker: the sampler claims these itself


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    add = parser.add_argument
    add("--minutes", type=float, default=60.0, help="how long the load is offered")
    add("--rate", type=int, default=1000, help="task runs offered per second (the rest scale)")
    add("--retention", type=float, default=180.0, help="seconds finished runs are kept")
    add("--every", type=float, default=10.0, help="seconds between samples")
    add("--slots", type=int, default=200, help="the worker's task slots")
    add("--durable-slots", type=int, default=400, help="the worker's durable slots")
    add("--probes", type=int, default=20, help="probe claims per sample")
    add("--json", type=Path, default=RESULTS / "soak.json", help="results file")
    return parser.parse_args(argv)


@dataclass
class Sample:
    """One interval of the soak."""

    t: float  # seconds since the load started
    ended_per_s: float
    pickup_p50_ms: float
    pickup_p99_ms: float
    claim_p50_ms: float
    claim_p99_ms: float
    db_bytes: int
    runs_bytes: int
    log_bytes: int
    events_bytes: int
    dead_rows: int
    autovacuums: int
    wal_per_run: float
    backlog: int
    worker_rss_mib: float


class Driver(threading.Thread):
    """Offers the mixed load at a fixed rate until stopped; counts what it enqueued."""

    def __init__(self, url: str, rate: int, retention: float) -> None:
        super().__init__(daemon=True)
        # The runs carry the enqueuer's retention: the driver's must be the soak's.
        self.app = soak_app.build(SCHEMA, url, retention)
        self.rate = rate
        self.stop = threading.Event()
        self.enqueued = 0  # root runs
        self.events = 0
        self.behind = 0.0  # the most seconds the driver fell behind its schedule
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            self._offer()
        except BaseException as exc:  # reported by the main thread
            self.failure = exc

    def _offer(self) -> None:
        reg = self.app.registry
        mix = {name: self.rate * share * TICK for name, share in _MIX.items()}
        owed = dict.fromkeys(mix, 0.0)
        pending: deque[tuple[float, str]] = deque()
        n = 0
        start = time.monotonic()
        tick = 0
        while not self.stop.is_set():
            for name, per_tick in mix.items():
                owed[name] += per_tick
                count = int(owed[name])
                owed[name] -= count
                if not count:
                    continue
                if name == "soak.waiter":
                    keys = [f"soak:{uuid.uuid4().hex}" for _ in range(count)]
                    reg[name].enqueue_many([(k,) for k in keys])
                    pending.extend((time.monotonic() + 2.0, k) for k in keys)
                else:
                    reg[name].enqueue_many([(n + i,) for i in range(count)])
                n += count
                self.enqueued += count
            while pending and pending[0][0] <= time.monotonic():
                self.app.push_event(pending.popleft()[1], "ok")
                self.events += 1
            tick += 1
            delay = start + tick * TICK - time.monotonic()
            self.behind = max(self.behind, -delay)
            if delay > 0:
                time.sleep(delay)
        for _, key in pending:  # every waiter gets its event
            self.app.push_event(key, "ok")
            self.events += 1
        self.app.close()


# Root runs offered per task run, by task.
_MIX = {
    "soak.task": 1.0,
    "soak.flow": 0.1,
    "soak.fan": 0.02,
    "soak.nap": 0.05,
    "soak.waiter": 0.05,
}


def install_audit(url: str) -> None:
    """Count every run removed, by status and whether it was a root (a statement trigger)."""
    s = f'"{SCHEMA}"'
    with connect(url) as conn:
        conn.execute(
            f"""CREATE TABLE {s}.soak_removed (status text, root boolean, n bigint);
                CREATE FUNCTION {s}.soak_count_removed() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    INSERT INTO {s}.soak_removed
                    SELECT status, parent_id IS NULL, count(*) FROM gone GROUP BY 1, 2;
                    RETURN NULL;
                END $$;
                CREATE TRIGGER soak_count_removed AFTER DELETE ON {s}.runs
                    REFERENCING OLD TABLE AS gone
                    FOR EACH STATEMENT EXECUTE FUNCTION {s}.soak_count_removed();"""
        )


class Sampler:
    """Reads the figures of one interval from the database and the worker's /proc."""

    def __init__(self, url: str, worker_pid: int, probes: int) -> None:
        self.url = url
        self.pid = worker_pid
        self.probes = probes
        self.conn = connect(url)
        self.wal = self._wal()
        self.ended = self._ended_total()
        self.at = time.monotonic()
        self.loop = asyncio.new_event_loop()
        self.store = self.loop.run_until_complete(Store.open(url, SCHEMA, max_size=1))
        self.probe_worker = str(uuid.uuid4())

    def close(self) -> None:
        self.loop.run_until_complete(self.store.close())
        self.loop.close()
        self.conn.close()

    def _one(self, sql: str, params: Any = None) -> Any:
        row = self.conn.execute(sql, params).fetchone()
        assert row is not None
        return row[0]

    def _wal(self) -> int:
        return int(self._one("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn"))

    def _ended_total(self) -> int:
        """Runs ended so far: those stored and ended, plus those removed (all ended)."""
        s = f'"{SCHEMA}"'
        return int(
            self._one(
                f"""SELECT (SELECT count(*) FROM {s}.runs WHERE finished_at IS NOT NULL)
                           + (SELECT coalesce(sum(n), 0) FROM {s}.soak_removed)"""
            )
        )

    def sample(self, t: float) -> Sample:
        s = f'"{SCHEMA}"'
        now = time.monotonic()
        ended, wal = self._ended_total() - self.probes, self._wal()
        runs = max(ended - self.ended, 1)
        rate = (ended - self.ended) / (now - self.at)
        pickups = [
            r[0]
            for r in self.conn.execute(
                f"""SELECT (EXTRACT(EPOCH FROM started_at - run_at) * 1000)::float8 FROM {s}.runs
                    WHERE task = 'soak.task' AND finished_at > now() - make_interval(secs => %s)""",
                (now - self.at,),
            ).fetchall()
        ] or [0.0]
        claims = self.loop.run_until_complete(self._probe())
        stats = self.conn.execute(
            """SELECT sum(n_dead_tup), sum(autovacuum_count) FROM pg_stat_user_tables
               WHERE schemaname = %s""",
            (SCHEMA,),
        ).fetchone()
        assert stats is not None
        sample = Sample(
            t=t,
            ended_per_s=rate,
            pickup_p50_ms=percentile(pickups, 0.5),
            pickup_p99_ms=percentile(pickups, 0.99),
            claim_p50_ms=percentile(claims, 0.5),
            claim_p99_ms=percentile(claims, 0.99),
            db_bytes=int(self._one("SELECT pg_database_size(current_database())")),
            runs_bytes=int(self._one(f"SELECT pg_total_relation_size('{s}.runs')")),
            log_bytes=int(
                self._one(
                    f"SELECT pg_total_relation_size('{s}.event_log')"
                    f" + pg_total_relation_size('{s}.event_log_archive')"
                )
            ),
            events_bytes=int(self._one(f"SELECT pg_total_relation_size('{s}.events')")),
            dead_rows=int(stats[0] or 0),
            autovacuums=int(stats[1] or 0),
            wal_per_run=(wal - self.wal) / runs,
            backlog=int(
                self._one(
                    f"SELECT count(*) FROM {s}.runs WHERE status = 'QUEUED' AND run_at <= now()"
                    " AND queue <> %s",
                    (PROBE_QUEUE,),
                )
            ),
            worker_rss_mib=rss_mib(self.pid),
        )
        self.ended, self.wal, self.at = ended + self.probes, wal, now
        return sample

    async def _probe(self) -> list[float]:
        """Milliseconds per claim of one probe run, each then completed (and kept: probes
        have no retention, so the audit of removed runs counts only the load's)."""
        s = f'"{SCHEMA}"'
        self.conn.execute(
            f"INSERT INTO {s}.runs (task, queue, args) SELECT 'soak.probe', %s, "
            """'{"args": [], "kwargs": {}}' FROM generate_series(1, %s)""",
            (PROBE_QUEUE, self.probes),
        )
        times = []
        for _ in range(self.probes):
            started = time.perf_counter()
            claim = await self.store.claim(self.probe_worker, [PROBE_QUEUE], ["soak.probe"], 1, 30)
            times.append((time.perf_counter() - started) * 1000)
            for run in claim.runs:
                await self.store.finish(
                    self.probe_worker, [Outcome(run.run_id, run.attempt, OutcomeKind.OK)]
                )
        return times


def start_worker(url: str, args: argparse.Namespace) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DURABLY_DATABASE_URL": url,
        SCHEMA_ENV: SCHEMA,
        soak_app.RETENTION_ENV: str(args.retention),
        "PYTHONPATH": str(ROOT),
    }
    command = [sys.executable, "-m", "durably", "worker", "bench.soak_app:app"]
    command += ["--slots", str(args.slots), "--durable-slots", str(args.durable_slots)]
    log = open(Path(tempfile.gettempdir()) / "durably-soak-worker.log", "wb")  # noqa: SIM115
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def accounting(url: str, enqueued: int) -> dict[str, int]:
    """Every root run enqueued, accounted for: stored (by state) or removed (by status)."""
    s = f'"{SCHEMA}"'
    with connect(url) as conn:
        stored = dict(
            conn.execute(
                f"""SELECT finished_at IS NOT NULL, count(*) FROM {s}.runs
                    WHERE parent_id IS NULL AND queue <> %s GROUP BY 1""",
                (PROBE_QUEUE,),
            ).fetchall()
        )
        removed = dict(
            conn.execute(
                f"""SELECT status IN ('COMPLETED', 'FAILED', 'CANCELLED'), sum(n)
                    FROM {s}.soak_removed WHERE root GROUP BY 1"""
            ).fetchall()
        )
        failed = conn.execute(
            f"""SELECT count(*) FROM {s}.runs WHERE status IN ('FAILED', 'CANCELLED')
                AND queue <> %s""",
            (PROBE_QUEUE,),
        ).fetchone()
    stored_ended = int(stored.get(True, 0))
    removed_ended = int(removed.get(True, 0))
    return {
        "enqueued": enqueued,
        "stored_ended": stored_ended,
        "removed_ended": removed_ended,
        "removed_unfinished": int(removed.get(False, 0)),
        "left_behind": int(stored.get(False, 0)),
        "lost": enqueued - stored_ended - removed_ended - int(stored.get(False, 0)),
        "failed_or_cancelled_stored": int(failed[0]) if failed else 0,
    }


def window(samples: list[Sample], start: float, minutes: float) -> list[Sample]:
    return [s for s in samples if start <= s.t < start + minutes * 60]


def verdict(
    samples: list[Sample], args: argparse.Namespace, books: dict[str, int]
) -> dict[str, Any]:
    """The pass/fail of each criterion, with the figures behind it."""
    steady_from = 2 * args.retention
    span = min(10.0, (args.minutes * 60 - steady_from) / 120)  # minutes per compared window
    first = window(samples, steady_from, span)
    last = window(samples, args.minutes * 60 - span * 60, span)
    steady = [s for s in samples if s.t >= steady_from]

    def med(ws: list[Sample], field: str) -> float:
        return float(statistics.median(getattr(s, field) for s in ws))

    checks: dict[str, Any] = {}
    for field in ("ended_per_s", "pickup_p99_ms"):
        a, b = med(first, field), med(last, field)
        checks[field] = {"first": a, "last": b, "ratio": b / a, "pass": abs(b / a - 1) <= 0.10}
    sizes = [s.db_bytes for s in steady]
    checks["db_size"] = {
        "min": min(sizes),
        "max": max(sizes),
        "ratio": max(sizes) / min(sizes),
        "pass": max(sizes) / min(sizes) <= 1.10,
    }
    checks["runs"] = {
        **books,
        "pass": books["lost"] == 0
        and books["left_behind"] == 0
        and books["removed_unfinished"] == 0,
    }
    checks["windows_min"] = {"steady_from_s": steady_from, "span_min": span}
    checks["pass"] = all(c.get("pass", True) for c in checks.values() if isinstance(c, dict))
    return checks


def chart(samples: list[Sample], args: argparse.Namespace) -> Path:
    """The soak's figures over time, one panel each."""
    minutes = [s.t / 60 for s in samples]

    def series(field: str, scale: float = 1.0) -> list[tuple[float, float]]:
        return [(m, getattr(s, field) * scale) for m, s in zip(minutes, samples, strict=True)]

    mib = 1 / 2**20
    return plots.panels(
        "soak",
        f"Soak: {args.minutes:.0f} min, {args.rate:,} task runs/s + workflows, retention "
        f"{args.retention:.0f} s",
        "minutes",
        [
            ("runs ended per second", "runs/s", {"ended": series("ended_per_s")}),
            (
                "pickup of task runs (ms)",
                "ms",
                {"p50": series("pickup_p50_ms"), "p99": series("pickup_p99_ms")},
            ),
            (
                "probe claim (ms)",
                "ms",
                {"p50": series("claim_p50_ms"), "p99": series("claim_p99_ms")},
            ),
            (
                "sizes (MiB)",
                "MiB",
                {
                    "database": series("db_bytes", mib),
                    "runs + indexes": series("runs_bytes", mib),
                    "event logs": series("log_bytes", mib),
                    "events": series("events_bytes", mib),
                },
            ),
            (
                "dead rows / autovacuum runs",
                "count",
                {
                    "dead rows": series("dead_rows"),
                    "autovacuums x1000": series("autovacuums", 1000),
                },
            ),
            ("WAL per run ended (bytes)", "bytes", {"WAL/run": series("wal_per_run")}),
            ("backlog (runs due, not started)", "runs", {"backlog": series("backlog")}),
            ("worker RSS (MiB)", "MiB", {"RSS": series("worker_rss_mib")}),
        ],
    )


def render(samples: list[Sample], checks: dict[str, Any], meta: dict[str, Any]) -> str:
    """The Markdown summary."""
    mark = {True: "pass", False: "FAIL"}
    runs = checks["runs"]
    t, p, d = checks["ended_per_s"], checks["pickup_p99_ms"], checks["db_size"]
    span = checks["windows_min"]["span_min"]
    return "\n".join(
        [
            f"Measured {meta['date']} at {meta['commit']} (`python -m bench.soak`, private "
            f"PostgreSQL, one worker process): {meta['minutes']:.0f} minutes, "
            f"{meta['rate']:,} task runs/s offered with the workflow mix, retention "
            f"{meta['retention']:.0f} s, sampled every {meta['every']:.0f} s.",
            "",
            "| criterion | first steady window | last window | ratio | result |",
            "|---|---:|---:|---:|---|",
            f"| runs ended per second ({span:.0f}-min medians) | {t['first']:,.0f} "
            f"| {t['last']:,.0f} | {t['ratio']:.3f} | {mark[t['pass']]} |",
            f"| pickup p99 of task runs, ms ({span:.0f}-min medians) | {p['first']:.1f} "
            f"| {p['last']:.1f} | {p['ratio']:.3f} | {mark[p['pass']]} |",
            f"| database size over the steady period, MiB (min / max) | {d['min'] / 2**20:,.0f} "
            f"| {d['max'] / 2**20:,.0f} | {d['ratio']:.3f} | {mark[d['pass']]} |",
            f"| runs lost / left behind / removed unfinished | {runs['lost']} "
            f"| {runs['left_behind']} | {runs['removed_unfinished']} | | {mark[runs['pass']]} |",
            "",
            f"{runs['enqueued']:,} workflows and task runs enqueued (roots): "
            f"{runs['removed_ended']:,} ended and removed by retention, "
            f"{runs['stored_ended']:,} ended and still kept at the end; "
            f"{meta['events']:,} events pushed; the driver fell behind its schedule by at most "
            f"{meta['driver_behind_s']:.2f} s. Runs per day at this rate: "
            f"{meta['runs_per_day']:,.0f}.",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    """Run the soak, sample it, then drain, account and report."""
    args = parse_args(argv)
    samples: list[Sample] = []
    with private_server() as url:
        with connect(url) as conn:
            conn.execute(f'CREATE SCHEMA "{SCHEMA}"')
        soak_app.build(SCHEMA, url).migrate()
        install_audit(url)
        worker = start_worker(url, args)
        try:
            wait_until(lambda: _registered(url), 60, 0.2, "the worker")
            driver = Driver(url, args.rate, args.retention)
            sampler = Sampler(url, worker.pid, args.probes)
            started = time.monotonic()
            driver.start()
            deadline = started + args.minutes * 60
            while time.monotonic() < deadline:
                time.sleep(max(0.0, started + (len(samples) + 1) * args.every - time.monotonic()))
                if driver.failure is not None:
                    raise driver.failure
                if worker.poll() is not None:
                    raise RuntimeError("the worker exited: see its log, durably-soak-worker.log")
                sample = sampler.sample(time.monotonic() - started)
                samples.append(sample)
                print(json.dumps(asdict(sample)), file=sys.stderr, flush=True)
            driver.stop.set()
            driver.join()
            wait_until(lambda: _unfinished(url) == 0, 300, 1.0, "the runs to drain")
            books = accounting(url, driver.enqueued)
            sampler.close()
        finally:
            worker.terminate()
            worker.wait(30)
    checks = verdict(samples, args, books)
    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "commit": commit(),
        "minutes": args.minutes,
        "rate": args.rate,
        "retention": args.retention,
        "every": args.every,
        "events": driver.events,
        "driver_behind_s": driver.behind,
        "runs_per_day": float(statistics.median(s.ended_per_s for s in samples)) * 86400,
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    path = chart(samples, args)
    table = render(samples, checks, meta)
    print("\n" + table)
    print(f"chart written to {path}", file=sys.stderr)
    args.json.write_text(
        json.dumps(
            {"meta": meta, "checks": checks, "samples": [asdict(s) for s in samples]}, indent=1
        )
    )
    args.json.with_suffix(".md").write_text(table)


def _registered(url: str) -> bool:
    with connect(url) as conn:
        row = conn.execute(
            f'SELECT count(*) FROM "{SCHEMA}".workers WHERE stopped_at IS NULL'
        ).fetchone()
    return bool(row and row[0])


def _unfinished(url: str) -> int:
    with connect(url) as conn:
        row = conn.execute(
            f"""SELECT count(*) FROM "{SCHEMA}".runs
                WHERE finished_at IS NULL AND queue <> %s""",
            (PROBE_QUEUE,),
        ).fetchone()
    return int(row[0]) if row else 0


if __name__ == "__main__":
    main()
