"""An App for the full-disk test: its task leaves evidence in a table that lives on the normal
disk, and returns a large result that can only be stored on the (full) disk of durably's tables.

``<schema>.effects`` is created by the test with :func:`create_effects` in the ``pg_default``
tablespace, so a task body can record that it ran while the tablespace of durably's own tables is
out of space: only recording the run's outcome is what the full disk refuses.
"""

from __future__ import annotations

import base64
import os
import random
import time
from typing import Any

import psycopg

import durably

URL = os.environ.get("DURABLY_DATABASE_URL") or os.environ.get("DATABASE_URL")
SCHEMA = os.environ.get("DURABLY_TEST_SCHEMA", "durably_test")
app = durably.App(URL, schema=SCHEMA)


def create_effects(conn: psycopg.Connection[Any], schema: str) -> None:
    conn.execute(
        f'CREATE TABLE IF NOT EXISTS "{schema}".effects ('
        " tag text NOT NULL, what text NOT NULL, pid integer NOT NULL, at float8 NOT NULL)"
        " TABLESPACE pg_default"
    )


def record(tag: str, what: str) -> None:
    with psycopg.connect(app.url, autocommit=True) as conn:
        conn.execute(
            f'INSERT INTO "{SCHEMA}".effects (tag, what, pid, at) VALUES (%s, %s, %s, %s)',
            (tag, what, os.getpid(), time.time()),
        )


def payload(tag: str, size: int) -> str:
    """``size`` characters that PostgreSQL cannot compress, the same for the same tag."""
    return base64.b64encode(random.Random(tag).randbytes(size * 3 // 4)).decode()


@app.task(name="blob")
def blob(tag: str, size: int = 0, gate: str = "", pad: str = "") -> str:
    """Records its start; waits for the file ``gate`` (if any) to exist; records its end and
    returns ``payload(tag, size)``. ``pad`` only makes the stored arguments larger."""
    record(tag, "started")
    deadline = time.monotonic() + 60
    while gate and not os.path.exists(gate):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{tag}: the gate {gate} never opened")
        time.sleep(0.02)
    record(tag, "ended")
    return payload(tag, size)
