"""durably behind PgBouncer in session mode (docs/scaling.md, "Poolers"): a worker and a client
whose every connection goes through the pooler enqueue, run a workflow with a durable sleep, wait
for results by LISTEN/NOTIFY, and recover a killed worker's run through its advisory lock (the
pooler's DISCARD ALL releases it with the client's session), as on a direct connection."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

import durably
from tests.helpers import WorkerProcess, wait_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def bouncer_url(database_url: str) -> Iterator[str]:
    """A PgBouncer in session mode in front of the test database; its URL."""
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not Path(binary).exists():
        pytest.skip("PgBouncer is not installed (apt-get install pgbouncer; .ci/run installs it)")
    target = urlsplit(database_url)
    if not target.hostname or target.hostname.startswith("/"):
        pytest.skip("PgBouncer needs a TCP database URL (DATABASE_URL), not the embedded server")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="durably-bouncer-") as tmp:
        config = Path(tmp) / "pgbouncer.ini"
        config.write_text(
            f"""[databases]
* = host={target.hostname} port={target.port or 5432}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {tmp}/users.txt
pool_mode = session
max_client_conn = 200
default_pool_size = 50
"""
        )
        (Path(tmp) / "users.txt").write_text(f'"{target.username or "postgres"}" ""\n')
        os.chmod(tmp, 0o755)
        command = [binary, str(config)]
        if os.geteuid() == 0:  # PgBouncer refuses to run as root
            command = [binary, "-u", "nobody", str(config)]
        log = (Path(tmp) / "pgbouncer.log").open("wb")
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: _listening(port) or proc.poll() is not None, what="PgBouncer")
            assert proc.poll() is None, (Path(tmp) / "pgbouncer.log").read_text()
            user = target.username or "postgres"
            yield f"postgresql://{user}@127.0.0.1:{port}{target.path or '/postgres'}"
        finally:
            proc.send_signal(signal.SIGTERM)  # immediate shutdown (SIGINT waits for clients)
            proc.wait(10)
            log.close()


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def test_everything_works_through_pgbouncer_in_session_mode(bouncer_url: str, schema: str) -> None:
    app = durably.App(bouncer_url, schema=schema)
    app.migrate()
    with WorkerProcess(bouncer_url, schema, "durable_app") as worker:
        worker.wait_for_line("serving queues")
        sleepy = durably_task(app, "sleepy")
        started = time.monotonic()
        handle = sleepy.enqueue(1.0)
        slept = handle.result(timeout=30)  # a durable sleep: suspended, woken by the claim
        assert slept >= 1.0
        assert time.monotonic() - started < 25
        # A killed worker's run is recovered through its advisory lock, held on a session the
        # pooler keeps for it: another worker picks the run up and finishes it.
        three = durably_task(app, "three_steps")
        run = three.enqueue()
        wait_until(lambda: getattr(app.get_run(run.id), "status", None) == "RUNNING", what="step 1")
        worker.kill()
    with WorkerProcess(bouncer_url, schema, "durable_app") as second:
        assert run.result(timeout=60) == [0, 10, 2]
        second.kill()


def durably_task(app: durably.App, name: str) -> durably.Task[..., object]:
    """The durable_app task ``name`` registered on the client App (to enqueue by name)."""
    from tests.apps import durable_app

    task = durable_app.app.get_task(name)
    return app.durable_task(name=name)(task.fn)
