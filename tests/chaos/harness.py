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

Volume mode adds, each on its own schedule:

- ``orphans``: a burst of ``hold`` runs is enqueued at once, a worker with thousands of slots
  takes them, and is SIGKILLed while it holds them: thousands of orphans recovered in one sweep,
  and (``hold_once``, ``max_recoveries=0``) thousands failing together;
- ``expiries``: a burst of ``expire`` runs on a queue no worker serves, all passing their
  schedule timeout in the same second;

and the workers' ``apply`` transactions of some items stay open longer than the lease.
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
_BURST_ATTEMPTS = 5  # tries of one burst enqueue: faults may break the first ones


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
    volume: bool = False  # bursts of orphans and expiries, long transactions (module docstring)
    burst_size: int = 2000
    burst_every: tuple[float, float] = (30.0, 60.0)

    def command(self) -> str:
        """The ``python -m bench.chaos`` command line that reproduces this configuration."""
        volume = f"--burst-size {self.burst_size}" if self.volume else "--no-volume"
        return (
            f"python -m bench.chaos --items {self.items} --duration {self.duration:g} "
            f"--workers {self.workers} --restarts {self.restarts} --seed {self.seed} {volume}"
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
    # When each fault struck (epoch seconds), its kind, and the worker pid it hit (None: all).
    fault_log: list[tuple[float, str, int | None]] = field(default_factory=list)
    bursts: Counter[str] = field(default_factory=Counter)  # runs enqueued by bursts, per task

    def problems(self) -> list[str]:
        found = self.report.problems()
        if self.settled_after is None:
            found.insert(0, f"runs still not terminal {self.config.settle:g}s after the last fault")
        return found


class Worker:
    """One ``durably worker tests.chaos.workload:app`` process, logging to a file. It serves
    the orders' queue, and in volume mode the burst queue too (never the expiries' queue)."""

    def __init__(
        self,
        url: str,
        ledger_url: str,
        lease: float,
        logfile: Path,
        volume: bool = False,
        slots: int = 8,
        queues: tuple[str, ...] = ("default", workload.BURST_QUEUE),
    ) -> None:
        env = {
            **os.environ,
            "DURABLY_DATABASE_URL": url,
            "CHAOS_LEDGER_URL": ledger_url,
            "DURABLY_TEST_SCHEMA": SCHEMA,
            "PYTHONPATH": str(ROOT),
            "CHAOS_VOLUME": "1" if volume else "0",
        }
        args = ["--slots", str(slots), "--durable-slots", "40", "--lease", f"{lease:g}"]
        args += ["--evict-after", "0.5", "--grace-period", "2"]
        for queue in queues:
            args += ["--queue", queue]
        self.id: str | None = None  # the worker's id, looked up by pid when needed
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
            if self.config.volume:
                threads += [
                    threading.Thread(target=self._burst_loop, args=(kind,), daemon=True)
                    for kind in ("orphans", "expiries")
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
            self.result.report = checker.check(
                self.server.url,
                SCHEMA,
                sorted(self.enqueued),
                bursts=self.result.bursts,
                faults=self.result.fault_log,
                lease=self.config.lease,
            )
        finally:
            self._shutdown()
            self.result.elapsed = time.monotonic() - started
        return self.result

    def _prepare(self) -> None:
        # Room for every worker's connections (the engine's pool, the listener, ctx.transaction's
        # pool: up to 15 each) and for the sessions half-close faults leave lingering until the
        # end: at the default 100, new workers would be refused and the run starved.
        self.server.configure(max_connections="400")
        app = durably.App(self.server.url, schema=SCHEMA)
        try:
            app.migrate()
        finally:
            app.close()
        with psycopg.connect(self.server.url, autocommit=True) as conn:
            checker.install_audit(conn, SCHEMA)

    def _new_worker(self, **kwargs: Any) -> Worker:
        if self.config.volume:  # room for the bursts' recovered runs beside the orders' children
            kwargs.setdefault("slots", 50)
        return Worker(
            self.proxy.url(),
            self.server.url,
            self.config.lease,
            self.workdir / "workers.log",
            volume=self.config.volume,
            **kwargs,
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
            at = time.time()
            try:
                name, pid = inject()
            except Exception as exc:  # a fault that cannot be injected now is skipped
                self.say(f"fault {kind} skipped: {type(exc).__name__}: {exc}")
                continue
            self._count(name, pid, at)

    def _count(self, name: str, pid: int | None = None, at: float | None = None) -> None:
        """Count a fault that struck at ``at`` (epoch seconds; default now) on worker ``pid``
        (None: on every worker) and has just ended."""
        with self.lock:
            self.result.faults[name] += 1
            self.result.fault_log.append((time.time() if at is None else at, name, pid))
            self.last_fault = time.monotonic()

    def _restart_loop(self) -> None:
        n = self.config.restarts
        start = time.monotonic()
        for k in range(n):
            at = start + self.config.duration * (k + self.rng.uniform(0.2, 0.8)) / n
            if self.stop.wait(max(0.0, at - time.monotonic())):
                return
            at = time.time()
            self.server.crash()
            time.sleep(self.rng.uniform(0.2, 1.5))  # down for a moment
            self.server.start()
            self._count("restart", None, at)  # once it is back: the last fault ends then

    def _supervise(self) -> None:
        """Start a new worker in place of any that exited (as systemd or Kubernetes would): a
        worker started while the database is down exits with a one-line error."""
        while not self.stop.wait(0.5):
            with self.lock:
                for index, worker in enumerate(self.workers):
                    if worker.proc.poll() is not None:
                        self.workers[index] = self._new_worker()

    def _fault_kill(self) -> tuple[str, int | None]:
        with self.lock:
            index = self.rng.randrange(len(self.workers))
            pid = self.workers[index].proc.pid
            self.workers[index].kill()
            self.workers[index] = self._new_worker()
        return "kill", pid

    def _fault_freeze(self) -> tuple[str, int | None]:
        with self.lock:
            worker = self.rng.choice(self.workers)
        worker.send(signal.SIGSTOP)
        self.stop.wait(self.config.lease + self.rng.uniform(1.0, 3.0))
        worker.send(signal.SIGCONT)
        return "freeze", worker.proc.pid

    def _fault_terminate(self) -> tuple[str, int | None]:
        self.server.terminate_backends("durably %")
        return "terminate", None

    def _fault_proxy(self) -> tuple[str, int | None]:
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
        return kind, None

    # -- volume mode -----------------------------------------------------------------------

    def _burst_loop(self, kind: str) -> None:
        """Every ``burst_every`` seconds, a burst of ``burst_size`` runs (module docstring)."""
        app = workload.build(durably.App(self.server.url, schema=SCHEMA, migrate=False))
        rng = random.Random(f"{self.config.seed}:{kind}")
        number = 0
        try:
            while not self.stop.wait(rng.uniform(*self.config.burst_every)):
                number += 1
                at = time.time()
                try:
                    pid = self._orphans(app, number) if kind == "orphans" else None
                    if kind == "expiries":
                        self._enqueue_burst(app, "expire", number, self.config.burst_size)
                except Exception as exc:  # e.g. the database is down: skip this burst
                    self.say(f"burst {kind} skipped: {type(exc).__name__}: {exc}")
                    continue
                self._count(kind, pid, at)
        finally:
            app.close()

    def _orphans(self, app: durably.App, number: int) -> int:
        """A worker with a slot for every run of the burst takes most of it, then is killed
        with all of them in hand; returns its pid."""
        size = self.config.burst_size
        worker = self._new_worker(slots=size, queues=(workload.BURST_QUEUE,))
        try:
            self._wait_for(lambda: self._registered(worker.proc.pid), 15.0)
            # hold_once first: claimed first, so the killed worker surely holds some of them.
            self._enqueue_burst(app, "hold_once", number, size // 4)
            self._enqueue_burst(app, "hold", number, size - size // 4)
            self._wait_for(lambda: self._held_by(worker.proc.pid) >= size // 2, 10.0)
        finally:
            worker.kill()
        return worker.proc.pid

    def _enqueue_burst(self, app: durably.App, task: str, number: int, size: int) -> None:
        """Enqueue ``size`` runs of ``task`` in one statement. Their items name the burst, so
        after an error whose commit is unknown a look at the table tells whether it landed."""
        items = [(number * 100_000 + i,) for i in range(size)]
        for attempt in range(_BURST_ATTEMPTS):
            try:
                app.registry[task].enqueue_many(items)
                break
            except (psycopg.Error, durably.DatabaseUnavailable, OSError):
                # A terminate fault leaves the pool's idle connections dead, and the first use
                # of one fails: like any client, try again, unless the burst landed after all.
                if self._burst_landed(task, number):
                    break
                if attempt == _BURST_ATTEMPTS - 1:
                    raise
                time.sleep(0.5)
        with self.lock:
            self.result.bursts[task] += size

    def _query(self, sql: str, *params: Any) -> Any:
        with psycopg.connect(self.server.url, autocommit=True, connect_timeout=5) as conn:
            row = conn.execute(sql.replace("{schema}", f'"{SCHEMA}"'), params).fetchone()
            return None if row is None else row[0]

    def _burst_landed(self, task: str, number: int) -> bool:
        """Whether burst ``number`` of ``task`` is in the table, asked until the database answers
        (it may be restarting): a wrong guess would miscount the burst."""
        while True:
            try:
                return bool(
                    self._query(
                        "SELECT count(*) FROM {schema}.runs WHERE task = %s "
                        "AND (args->'args'->>0)::int / 100000 = %s",
                        task,
                        number,
                    )
                )
            except psycopg.Error:
                time.sleep(0.2)

    def _registered(self, pid: int) -> bool:
        return bool(self._query("SELECT count(*) FROM {schema}.workers WHERE pid = %s", pid))

    def _held_by(self, pid: int) -> int:
        return int(
            self._query(
                "SELECT count(*) FROM {schema}.runs r JOIN {schema}.workers w "
                "ON w.id = r.worker_id WHERE r.status = 'RUNNING' AND w.pid = %s",
                pid,
            )
        )

    def _wait_for(self, condition: Callable[[], bool], timeout: float) -> None:
        """Wait until ``condition()`` (errors count as not yet), at most ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.stop.is_set():
            try:
                if condition():
                    return
            except psycopg.Error:
                pass
            time.sleep(0.1)

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
                lines += [f"  {row}" for row in conn.execute(sql.encode()).fetchall()]
        return lines

    def _shutdown(self) -> None:
        with self.lock:
            for worker in self.workers:
                worker.kill()
        self.proxy.close()
        self.server.cleanup()
