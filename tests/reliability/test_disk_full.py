"""The database's disk fills up while a worker is busy: enqueueing fails with a clear error,
outcomes that cannot be written wait in the worker, nothing is lost, the worker stays up, and
every run completes once space returns.

The disk is simulated where the machine allows it (root, and tmpfs can be mounted): a private
PostgreSQL keeps durably's tables in a tablespace on a 16 MB tmpfs, and a ballast file takes the
rest of that tmpfs until PostgreSQL's "could not extend file ...: No space left on device". The
WAL stays on the normal disk, as on a server whose data volume fills up first.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

import durably
from tests.apps import disk_app
from tests.chaos.server import PrivateServer
from tests.helpers import WorkerProcess, wait_until

SERVER_USER = "embedded_postgres"  # who the private server runs as when the tests run as root
TABLESPACE = "small_disk"
RESULT_SIZE = 256 * 1024  # the results of runs in flight: stored only by extending a full file


@dataclass
class SmallDisk:
    """A 16 MB tmpfs mounted at ``mount``; ``location`` (inside it) is for the tablespace."""

    mount: Path
    mounted: bool = False

    @property
    def location(self) -> Path:
        return self.mount / "tablespace"

    @property
    def ballast(self) -> Path:
        return self.mount / "ballast"

    def mount_or_skip(self) -> None:
        if os.geteuid() != 0 or shutil.which("mount") is None:
            pytest.skip("simulating a full disk needs root (to mount a small tmpfs)")
        self.mount.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=16M,mode=0700", "tmpfs", str(self.mount)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            reason = (done.stderr.strip().splitlines() or ["mount failed"])[0]
            pytest.skip(f"cannot mount a tmpfs to simulate a full disk: {reason}")
        self.mounted = True
        self.location.mkdir()
        for path in (self.mount, self.location):
            shutil.chown(path, SERVER_USER, SERVER_USER)

    def available(self) -> int:
        stat = os.statvfs(self.mount)
        return stat.f_bavail * stat.f_frsize

    def fill(self) -> None:
        """Take every byte left with a ballast file (root's, so the server cannot free it)."""
        fd = os.open(self.ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for chunk in (1 << 20, 1 << 12, 1):
                try:
                    while True:
                        os.write(fd, bytes(chunk))
                except OSError as exc:
                    if exc.errno != 28:  # ENOSPC
                        raise
        finally:
            os.close(fd)

    def free(self) -> None:
        self.ballast.unlink(missing_ok=True)

    def unmount(self) -> None:
        if self.mounted:
            if subprocess.run(["umount", str(self.mount)], capture_output=True).returncode:
                subprocess.run(["umount", "-l", str(self.mount)], capture_output=True)
            self.mounted = False


@dataclass
class Setting:
    server: PrivateServer
    disk: SmallDisk
    tmp: Path


@pytest.fixture
def small_disk_server() -> Iterator[Setting]:
    with tempfile.TemporaryDirectory(prefix="durably-diskfull-") as tmp:
        disk = SmallDisk(Path(tmp) / "small")
        try:
            disk.mount_or_skip()
            server = PrivateServer(Path(tmp) / "pg")
            try:
                yield Setting(server, disk, Path(tmp))
            finally:
                disk.free()
                server.cleanup()
        finally:
            disk.unmount()


def use_small_disk(url: str, disk: SmallDisk) -> None:
    """Make the small disk the database's default tablespace (for tables created from now on)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE TABLESPACE {} LOCATION {}").format(
                sql.Identifier(TABLESPACE), sql.Literal(str(disk.location))
            )
        )
        dbname = conn.execute("SELECT current_database()").fetchone()[0]  # type: ignore[index]
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET default_tablespace = {}").format(
                sql.Identifier(dbname), sql.Identifier(TABLESPACE)
            )
        )


def test_full_disk_loses_nothing_and_the_worker_waits_for_space(
    small_disk_server: Setting,
) -> None:
    server, disk, tmp = small_disk_server.server, small_disk_server.disk, small_disk_server.tmp
    url, schema = server.url, "diskfull"
    use_small_disk(url, disk)
    app = durably.App(url, schema=schema)
    try:
        error = _scenario(app, url, schema, disk, tmp / "gate")
    finally:
        app.close()  # before the server goes, so its listener does not see the server vanish

    # The caller of enqueue got one line saying what is wrong and what to do.
    assert isinstance(error, durably.DatabaseFull), repr(error)
    assert len(str(error).splitlines()) == 1, str(error)
    assert "out of disk space" in str(error) and "free space" in str(error)


def _scenario(app: durably.App, url: str, schema: str, disk: SmallDisk, gate: Path) -> Exception:
    """The whole story, asserting as it goes; returns the error enqueue raised on a full disk."""
    blob = app.task(name="blob")(disk_app.blob.fn)
    app.migrate()  # on a new connection: every table, index and TOAST table goes to the tmpfs
    with psycopg.connect(url, autocommit=True) as conn:
        disk_app.create_effects(conn, schema)  # on the normal disk
        placed = conn.execute(
            # Tables, their indexes and TOAST tables (sequences never grow: they stay put).
            "SELECT coalesce(r.relname || ' (toast)', c.relname), coalesce(s.spcname, 'pg_default')"
            " FROM pg_class c"
            " LEFT JOIN pg_class r ON r.reltoastrelid = c.oid"
            " LEFT JOIN pg_tablespace s ON s.oid = c.reltablespace"
            " WHERE c.relkind IN ('r', 'i', 't')"
            "   AND (c.relnamespace = %(schema)s::regnamespace"
            "        OR r.relnamespace = %(schema)s::regnamespace)",
            {"schema": schema},
        ).fetchall()
    spaces: dict[str, str] = {row[0]: row[1] for row in placed}
    assert spaces.pop("effects") == spaces.pop("effects (toast)") == "pg_default"
    assert {"runs", "runs (toast)", "runs_claim_pool", "workers"} <= set(spaces), spaces
    assert set(spaces.values()) == {TABLESPACE}, f"durably's relations are on the tmpfs: {spaces}"

    def query(text: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
            return conn.execute(text.replace("{schema}", f'"{schema}"')).fetchall()

    def statuses() -> dict[int, str]:
        return {row[0]: row[1] for row in query("SELECT id, status FROM {schema}.runs")}

    def effects(what: str) -> Counter[str]:
        rows = query(f"SELECT tag FROM {{schema}}.effects WHERE what = '{what}'")
        return Counter(row[0] for row in rows)

    tags: dict[int, tuple[str, int]] = {}  # run id -> (tag, result size) of every run enqueued

    def enqueue_many(calls: list[tuple[Any, ...]]) -> list[int]:
        ids = [h.id for h in blob.enqueue_many(calls)]
        tags.update((i, (call[0], call[1])) for i, call in zip(ids, calls, strict=True))
        return ids

    with WorkerProcess(url, schema, "disk_app", "--slots", "4") as worker:
        worker.wait_for_line("serving queues")

        # 1. With space, runs complete.
        warm = enqueue_many([(f"warm-{i}", 16 * 1024) for i in range(8)])
        wait_until(
            lambda: all(statuses()[i] == "COMPLETED" for i in warm), what="the first runs done"
        )

        # 2. Four runs take every slot and wait at the gate; six more wait in the queue.
        inflight = enqueue_many([(f"inflight-{i}", RESULT_SIZE, str(gate)) for i in range(4)])
        wait_until(lambda: len(effects("started")) == 8 + 4, what="four runs in flight")
        queued = enqueue_many([(f"queued-{i}", 16 * 1024) for i in range(6)])

        # 3. The disk fills up. Enqueueing a run with large arguments needs new pages: it fails.
        # (Should PostgreSQL still have had room for one, that run must complete like the rest.)
        disk.fill()
        assert disk.available() == 0
        error: Exception | None = None
        for i in range(10):
            pad = disk_app.payload(f"pad-{i}", 64 * 1024)
            try:
                handle = blob.enqueue(f"late-{i}", 16 * 1024, pad=pad)
            except Exception as exc:  # whatever durably raises: its message is checked last
                error = exc
                break
            tags[handle.id] = (f"late-{i}", 16 * 1024)
        assert error is not None, "enqueueing 10 runs of 64 kB each on a full disk never failed"
        assert "No space left on device" in str(error), f"the error names the problem: {error!r}"

        # 4. The runs in flight end their bodies, whose outcomes cannot be written now. The
        # worker keeps them (with their slots) and retries with backoff: it neither fails them
        # nor exits, and claims nothing more meanwhile.
        gate.touch()
        wait_until(lambda: len(effects("ended")) == 8 + 4, what="the runs in flight end")

        def retries() -> list[str]:
            return [line for line in worker.lines if "outcomes failed" in line]

        wait_until(lambda: len(retries()) >= 5, timeout=20, what="the worker retrying 5 times")
        assert worker.proc.poll() is None, "the worker stays up while the disk is full"
        now = statuses()
        assert [now[i] for i in inflight] == ["RUNNING"] * 4, now
        assert [now[i] for i in queued] == ["QUEUED"] * 6, now
        assert set(now) == set(tags), "the enqueue that failed inserted nothing"

        # 5. Space returns: every run that was enqueued completes with its result, and its body
        # ran (at least once); no attempt counted as a failure.
        disk.free()
        wait_until(
            lambda: set(statuses().values()) == {"COMPLETED"},
            timeout=30,
            what="every run completed after the space returned",
        )
        assert worker.proc.poll() is None, "the worker is still up"
        ended = effects("ended")
        assert set(ended) == {tag for tag, _ in tags.values()}, "every body ran, and no other"
        for run_id, (tag, size) in tags.items():
            assert app.handle(run_id).result(timeout=5) == disk_app.payload(tag, size), tag
        assert query("SELECT sum(failures)::int, count(*)::int FROM {schema}.runs") == [
            (0, len(tags))
        ]

        worker.signal(signal.SIGTERM)  # and it still shuts down cleanly
        assert worker.wait(30) == 0
    output = worker.output()
    assert "Traceback" not in output, output
    assert "No space left on device" in output, "the worker's log says why it waits"
    return error


def test_durable_run_waits_out_a_full_disk_without_failing(
    small_disk_server: Setting, caplog: pytest.LogCaptureFixture
) -> None:
    server, disk = small_disk_server.server, small_disk_server.disk
    use_small_disk(server.url, disk)
    app = durably.App(server.url, schema="diskdurable")
    executed: list[int] = []
    disk_filled = threading.Event()

    def big(n: int) -> str:
        executed.append(n)
        disk_filled.wait(30)  # the first time, the test fills the disk meanwhile
        return disk_app.payload(f"step{n}", RESULT_SIZE)

    @app.durable_task(name="two_big_steps")  # no retries: a full disk must not spend one
    async def two_big_steps(ctx: durably.DurableContext) -> list[int]:
        return [len(await ctx.step(big, 1)), len(await ctx.step(big, 2))]

    def handed_back() -> bool:
        return any("lost the database" in r.getMessage() for r in caplog.records)

    try:
        app.migrate()
        with app.worker():
            handle = two_big_steps.enqueue()
            wait_until(lambda: executed == [1], what="step 1 running")
            disk.fill()
            disk_filled.set()
            # Step 1's result cannot be stored: the attempt is handed back, not failed.
            wait_until(handed_back, timeout=30, what="the attempt handed back")
            assert handle.status() != "FAILED"
            disk.free()
            assert handle.result(timeout=60) == [RESULT_SIZE, RESULT_SIZE]
        run = app.get_run(handle.id)
        assert run is not None
        assert (run.status, run.failures) == ("COMPLETED", 0)
        assert run.recoveries >= 1
        assert executed == [1, 1, 2], "step 1 again (never recorded), step 2 once"
    finally:
        app.close()
