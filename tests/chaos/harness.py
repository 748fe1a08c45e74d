"""The chaos harness: runs the workload on worker processes behind a fault proxy, in front of a
private PostgreSQL, while faults strike on a schedule and at random moments; then checks.

Faults (each on its own thread, at random intervals):

- ``kill``: SIGKILL a worker process; the harness starts a new one in its place;
- ``freeze``: SIGSTOP a worker for longer than its lease, then SIGCONT it: a zombie whose late
  writes must all be refused;
- ``restart``: ``pg_ctl stop -m immediate`` of the database, then start it again;
- ``terminate``: ``pg_terminate_backend`` of every durably session;
- ``drop``, ``delay``, ``half_close``, ``ambiguous`` and ``partition``: the proxy aborts
  connections, slows them, half-closes them, loses the reply of a statement the server did
  commit, or refuses connections for a while (see :mod:`tests.chaos.proxy`).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

import durably
from tests.chaos import checker, workload
from tests.chaos.proxy import FaultProxy
from tests.chaos.server import PrivateServer

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = "chaos"


@dataclass
class Config:
    """How much work and how many faults; the defaults are the short CI run."""

    items: int = 300
    duration: float = 60.0  # seconds of faults, and of enqueues: work is in flight to the end
    workers: int = 3
    kill_every: tuple[float, float] | None = (0.5, 2.0)
    restarts: int = 1  # database crashes, spread over the duration
    freeze_every: tuple[float, float] | None = (10.0, 20.0)
    terminate_every: tuple[float, float] | None = (8.0, 15.0)
    proxy_every: tuple[float, float] | None = (2.0, 5.0)
    settle: float = 60.0  # every run must be terminal this long after the last fault
    lease: float = 3.0
    seed: int = 1

    def command(self) -> str:
        """The ``python -m bench.chaos`` command line that reproduces this configuration."""
        return (
            f"python -m bench.chaos --items {self.items} --duration {self.duration:g} "
            f"--workers {self.workers} --restarts {self.restarts} --seed {self.seed}"
        )


@dataclass
class Result:
    """What happened: faults injected, how long the runs took to settle, and the check."""

    config: Config
    faults: Counter[str] = field(default_factory=Counter)
    settled_after: float | None = None  # seconds from the last fault to every run terminal
    report: checker.Report = field(default_factory=checker.Report)
    elapsed: float = 0.0
    diagnosis: list[str] = field(default_factory=list)  # what unfinished runs were waiting for

    def problems(self) -> list[str]:
        found = self.report.problems()
        if self.settled_after is None:
            found.insert(0, f"runs still not terminal {self.config.settle:g}s after the last fault")
        return found


class Worker:
    """One ``durably worker tests.chaos.workload:app`` process, logging to a file."""

    def __init__(self, url: str, ledger_url: str, lease: float, logfile: Path) -> None:
        env = {
            **os.environ,
            "DURABLY_DATABASE_URL": url,
            "CHAOS_LEDGER_URL": ledger_url,
            "DURABLY_TEST_SCHEMA": SCHEMA,
            "PYTHONPATH": str(ROOT),
        }
        args = ["--slots", "8", "--durable-slots", "40", "--lease", f"{lease:g}"]
        args += ["--evict-after", "0.5", "--grace-period", "2"]
        with logfile.open("a") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "durably", "worker", "tests.chaos.workload:app", *args],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def send(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def kill(self) -> None:
        self.send(signal.SIGCONT)
        self.send(signal.SIGKILL)
        self.proc.wait(10)


class Chaos:
    """One chaos run in ``workdir``: start everything, inject faults, settle, check."""

    def __init__(self, config: Config, workdir: Path, say: Callable[[str], None] = print) -> None:
        self.config = config
        self.workdir = workdir
        self.say = say
        self.rng = random.Random(config.seed)
        self.result = Result(config)
        self.stop = threading.Event()
        self.enqueued: list[int] = []
        self.lock = threading.Lock()
        self.last_fault = time.monotonic()
        self.server = PrivateServer(workdir / "pg")
        self.proxy = FaultProxy(lambda: self.server.socket_path)
        self.workers: list[Worker] = []

    # -- the run ---------------------------------------------------------------------------

    def run(self) -> Result:
        started = time.monotonic()
        try:
            self._prepare()
            self.proxy.start()
            with self.lock:
                self.workers = [self._new_worker() for _ in range(self.config.workers)]
            threads = [threading.Thread(target=self._enqueue_all, daemon=True)]
            threads += [
                threading.Thread(target=self._fault_loop, args=(kind, every), daemon=True)
                for kind, every in self._schedules().items()
            ]
            threads.append(threading.Thread(target=self._restart_loop, daemon=True))
            threads.append(threading.Thread(target=self._supervise, daemon=True))
            for thread in threads:
                thread.start()
            self._progress_until(started + self.config.duration)
            self.stop.set()
            for thread in threads:
                thread.join()
            self._heal()
            self.result.settled_after = self._settle()
            if self.result.settled_after is None:
                self.result.diagnosis = self._diagnose()
            self.result.report = checker.check(self.server.url, SCHEMA, sorted(self.enqueued))
        finally:
            self._shutdown()
            self.result.elapsed = time.monotonic() - started
        return self.result

    def _prepare(self) -> None:
        app = durably.App(self.server.url, schema=SCHEMA)
        try:
            app.migrate()
        finally:
            app.close()
        with psycopg.connect(self.server.url, autocommit=True) as conn:
            checker.install_audit(conn, SCHEMA)

    def _new_worker(self) -> Worker:
        return Worker(
            self.proxy.url(), self.server.url, self.config.lease, self.workdir / "workers.log"
        )

    def _schedules(self) -> dict[str, tuple[float, float]]:
        c = self.config
        every = {
            "kill": c.kill_every,
            "freeze": c.freeze_every,
            "terminate": c.terminate_every,
            "proxy": c.proxy_every,
        }
        return {kind: span for kind, span in every.items() if span is not None}

    # -- load ------------------------------------------------------------------------------

    def _enqueue_all(self) -> None:
        """Enqueue the items evenly over the duration, retrying through faults; each with
        an idempotency key, so a retried enqueue whose first try did commit adds nothing."""
        app = workload.build(durably.App(self.server.url, schema=SCHEMA, migrate=False))
        task = app.registry["order"]
        spacing = self.config.duration / self.config.items
        start = time.monotonic()
        try:
            for item in range(self.config.items):
                time.sleep(max(0.0, start + item * spacing - time.monotonic()))
                self._retry(task.options(idempotency_key=f"order-{item}").enqueue, item)
                if workload.waits(item):
                    self._retry(app.push_event, workload.event_key(item), {"item": item})
                self.enqueued.append(item)
        finally:
            app.close()

    def _retry(self, call: Callable[..., Any], *args: Any) -> Any:
        while True:
            try:
                return call(*args)
            except (psycopg.Error, durably.DatabaseUnavailable, OSError):
                time.sleep(0.2)

    # -- faults ----------------------------------------------------------------------------

    def _fault_loop(self, kind: str, every: tuple[float, float]) -> None:
        inject = getattr(self, f"_fault_{kind}")
        while not self.stop.wait(self.rng.uniform(*every)):
            try:
                name = inject()
            except Exception as exc:  # a fault that cannot be injected now is skipped
                self.say(f"fault {kind} skipped: {type(exc).__name__}: {exc}")
                continue
            self._count(name)

    def _count(self, name: str) -> None:
        with self.lock:
            self.result.faults[name] += 1
            self.last_fault = time.monotonic()

    def _restart_loop(self) -> None:
        n = self.config.restarts
        start = time.monotonic()
        for k in range(n):
            at = start + self.config.duration * (k + self.rng.uniform(0.2, 0.8)) / n
            if self.stop.wait(max(0.0, at - time.monotonic())):
                return
            self.server.crash()
            time.sleep(self.rng.uniform(0.2, 1.5))  # down for a moment
            self.server.start()
            self._count("restart")  # once it is back: the last fault ends when it is up again

    def _supervise(self) -> None:
        """Start a new worker in place of any that exited (as systemd or Kubernetes would): a
        worker started while the database is down exits with a one-line error."""
        while not self.stop.wait(0.5):
            with self.lock:
                for index, worker in enumerate(self.workers):
                    if worker.proc.poll() is not None:
                        self.workers[index] = self._new_worker()

    def _fault_kill(self) -> str:
        with self.lock:
            index = self.rng.randrange(len(self.workers))
            self.workers[index].kill()
            self.workers[index] = self._new_worker()
        return "kill"

    def _fault_freeze(self) -> str:
        with self.lock:
            worker = self.rng.choice(self.workers)
        worker.send(signal.SIGSTOP)
        self.stop.wait(self.config.lease + self.rng.uniform(1.0, 3.0))
        worker.send(signal.SIGCONT)
        return "freeze"

    def _fault_terminate(self) -> str:
        self.server.terminate_backends("durably %")
        return "terminate"

    def _fault_proxy(self) -> str:
        kind = self.rng.choice(["drop", "delay", "half_close", "ambiguous", "partition"])
        if kind == "drop":
            self.proxy.drop_all()
        elif kind == "delay":
            self.proxy.set_delay(self.rng.uniform(0.02, 0.2))
            self.stop.wait(self.rng.uniform(1.0, 4.0))
            self.proxy.set_delay(0)
        elif kind == "half_close":
            self.proxy.half_close(self.rng.randint(1, 3))
        elif kind == "ambiguous":
            self.proxy.blackhole_next(self.rng.randint(1, 3))
        else:
            self.proxy.partition(self.rng.uniform(0.5, 2.0))
        return kind

    # -- the end ---------------------------------------------------------------------------

    def _progress_until(self, deadline: float) -> None:
        while not self.stop.wait(min(10.0, max(0.0, deadline - time.monotonic()))):
            if time.monotonic() >= deadline:
                return
            counts = self._statuses()
            self.say(
                f"{len(self.enqueued)} enqueued, {dict(counts)}, faults {dict(self.result.faults)}"
            )

    def _heal(self) -> None:
        """Faults stop: thaw every worker, replace dead ones, end proxy slowdowns."""
        with self.lock:
            for index, worker in enumerate(self.workers):
                worker.send(signal.SIGCONT)
                if worker.proc.poll() is not None:
                    self.workers[index] = self._new_worker()
        self.proxy.set_delay(0)
        self.proxy.release_half_open()

    def _statuses(self) -> Counter[str]:
        try:
            with psycopg.connect(self.server.url, autocommit=True, connect_timeout=5) as conn:
                rows = conn.execute(
                    f'SELECT status, count(*) FROM "{SCHEMA}".runs GROUP BY status'
                ).fetchall()
        except psycopg.OperationalError:
            return Counter()
        return Counter({status: n for status, n in rows})

    def _settle(self) -> float | None:
        """Seconds from the last fault until every run is terminal (None: not within settle)."""
        deadline = self.last_fault + self.config.settle
        while time.monotonic() < deadline:
            counts = self._statuses()
            open_runs = sum(n for s, n in counts.items() if s not in ("COMPLETED", "FAILED"))
            if counts and open_runs == 0:
                return time.monotonic() - self.last_fault
            time.sleep(0.2)
        return None

    def _diagnose(self) -> list[str]:
        """The unfinished runs, their event logs, and the database's sessions, for the report."""
        queries = [
            "SELECT id, task, status, attempt, recoveries, wake_at, wait_children, wait_event, "
            "worker_id, created_at FROM {schema}.runs "
            "WHERE status NOT IN ('COMPLETED', 'FAILED', 'CANCELLED')",
            "SELECT l.run_id, l.seq, l.kind, l.name, l.done, l.child_id, l.event_id, l.wake_at, "
            "l.attempt FROM {schema}.event_log l JOIN {schema}.runs r ON r.id = l.run_id "
            "WHERE r.status NOT IN ('COMPLETED', 'FAILED', 'CANCELLED') ORDER BY 1, 2",
            "SELECT e.id, e.key, e.created_at FROM {schema}.events e JOIN {schema}.runs r "
            "ON e.key = r.wait_event OR e.key = 'go:' || (r.args->'args'->>0) "
            "WHERE r.status NOT IN ('COMPLETED', 'FAILED', 'CANCELLED')",
            "SELECT application_name, state, xact_start, left(query, 80) FROM pg_stat_activity "
            "WHERE application_name LIKE 'durably%'",
            "SELECT classid, objid, pid, granted FROM pg_locks WHERE locktype = 'advisory'",
        ]
        lines = []
        with psycopg.connect(self.server.url, autocommit=True) as conn:
            for query in queries:
                lines.append(query)
                sql = query.replace("{schema}", f'"{SCHEMA}"')
                lines += [f"  {row}" for row in conn.execute(sql).fetchall()]  # type: ignore[arg-type]
        return lines

    def _shutdown(self) -> None:
        with self.lock:
            for worker in self.workers:
                worker.kill()
        self.proxy.close()
        self.server.cleanup()
