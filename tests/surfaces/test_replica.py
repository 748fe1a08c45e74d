"""Reads that may lag go to a read replica: ``App(read_url=...)`` sends ``list_runs`` and the
operator views (dashboard, CLI listings) to a streaming replica the test starts itself, while
enqueueing, results and actions stay on the primary. Routing is proven by making the two
disagree: with replay paused on the replica, new runs are visible on the primary only."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

import durably
from durably.cli import main
from durably.console import Console
from tests.chaos.server import PrivateServer, StreamingReplica
from tests.helpers import wait_until


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[str, str]]:
    """(primary URL, replica URL): a private primary and its streaming replica."""
    with tempfile.TemporaryDirectory(prefix="durably-replica-") as tmp:
        primary = PrivateServer(Path(tmp) / "primary")
        try:
            replica = StreamingReplica(primary, Path(tmp) / "standby" / "pgdata")
            try:
                yield primary.url, replica.url
            finally:
                replica.stop()
        finally:
            primary.cleanup()


def replayed(replica: psycopg.Connection[Any], schema: str, count: int) -> bool:
    """Whether the replica shows ``count`` runs in ``schema`` yet."""
    try:
        row = replica.execute(f'SELECT count(*) FROM "{schema}".runs').fetchone()
    except psycopg.errors.UndefinedTable:
        return False
    return bool(row and row[0] == count)


def test_views_and_listings_read_the_replica(servers: tuple[str, str]) -> None:
    primary_url, replica_url = servers
    app = durably.App(primary_url, schema="routing", read_url=replica_url)

    @app.task(name="job")
    def job(n: int) -> int:
        return n

    first = [job.enqueue(i).id for i in range(3)]
    with psycopg.connect(replica_url, autocommit=True) as replica:
        assert replica.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
        wait_until(lambda: replayed(replica, "routing", 3), what="the replica to catch up")
        replica.execute("SELECT pg_wal_replay_pause()")
        try:
            later = job.enqueue(99).id  # on the primary only, while the replica is paused
            assert app.get_run(later) is not None  # reads of one's own writes: the primary
            assert [r.id for r in app.list_runs()] == first[::-1]
            console = Console(app)
            assert [r["id"] for r in console.runs_page()] == first[::-1]
            assert console.runs_count()["runs"] == 3
            listed = CliRunner().invoke(
                main,
                [
                    "runs",
                    "list",
                    "--json",
                    "--database-url",
                    primary_url,
                    "--schema",
                    "routing",
                    "--read-database-url",
                    replica_url,
                ],
            )
            assert listed.exit_code == 0, listed.output
            assert [r["id"] for r in json.loads(listed.stdout)] == first[::-1]
            direct = CliRunner().invoke(
                main,
                ["runs", "list", "--json", "--database-url", primary_url, "--schema", "routing"],
            )
            assert [r["id"] for r in json.loads(direct.stdout)] == [later, *first[::-1]]
        finally:
            replica.execute("SELECT pg_wal_replay_resume()")
        wait_until(lambda: len(app.list_runs()) == 4, what="the replica to replay the rest")
    app.close()
