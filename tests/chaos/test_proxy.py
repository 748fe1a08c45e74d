"""The fault proxy against the real server: each fault does to a client what it promises."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from tests.chaos.proxy import FaultProxy, Upstream
from tests.helpers import wait_until

Connect = Callable[..., psycopg.Connection[Any]]


def upstream_of(url: str) -> Upstream:
    """Where ``url``'s server listens: ``(host, port)``, or the socket path for a socket dir."""
    info = conninfo_to_dict(url)
    host, port = str(info.get("host") or "127.0.0.1"), int(info.get("port") or 5432)
    return f"{host}/.s.PGSQL.{port}" if host.startswith("/") else (host, port)


def url_through(proxy: FaultProxy, database_url: str) -> str:
    info = conninfo_to_dict(database_url)
    return proxy.url(str(info.get("user") or "postgres"), str(info.get("dbname") or "postgres"))


def backends(db: psycopg.Connection[Any], application_name: str) -> int:
    """How many server sessions carry ``application_name``."""
    row = db.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (application_name,)
    ).fetchone()
    assert row is not None
    return int(row[0])


def unique_name() -> str:
    return f"proxy_test_{uuid.uuid4().hex[:12]}"


def round_trip(conn: psycopg.Connection[Any]) -> float:
    started = time.monotonic()
    conn.execute("SELECT 1").fetchone()
    return time.monotonic() - started


@pytest.fixture
def proxy(database_url: str) -> Iterator[FaultProxy]:
    target = upstream_of(database_url)
    with FaultProxy(lambda: target) as running:
        yield running


@pytest.fixture
def connect(proxy: FaultProxy, database_url: str) -> Iterator[Connect]:
    """Open autocommit connections through the proxy; all are closed after the test."""
    opened: list[psycopg.Connection[Any]] = []

    def make(**kwargs: Any) -> psycopg.Connection[Any]:
        url = url_through(proxy, database_url)
        conn = psycopg.connect(url, autocommit=True, connect_timeout=5, **kwargs)
        opened.append(conn)
        return conn

    yield make
    for conn in opened:
        conn.close()


def test_queries_pass_through(proxy: FaultProxy, connect: Connect) -> None:
    conn = connect()
    assert conn.execute("SELECT 1").fetchone() == (1,)
    # Several chunks' worth each way, so forwarding is exercised beyond one read.
    big = conn.execute("SELECT %s::text || repeat('x', 1000000)", ("y" * 200_000,)).fetchone()
    assert big is not None
    assert len(big[0]) == 1_200_000
    assert proxy.stats["accepted"] == 1


def test_drop_all_resets_connections(
    proxy: FaultProxy, connect: Connect, db: psycopg.Connection[Any]
) -> None:
    name = unique_name()
    conn = connect(application_name=name)
    conn.execute("SELECT 1")

    assert proxy.drop_all() == 1
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    assert connect().execute("SELECT 1").fetchone() == (1,)
    assert proxy.stats["dropped"] == 1
    # The server's side was reset too, so its session ends.
    wait_until(lambda: backends(db, name) == 0, timeout=5, what="server session to end")


def test_delay_slows_round_trips_until_turned_off(proxy: FaultProxy, connect: Connect) -> None:
    conn = connect()
    assert round_trip(conn) < 0.2

    proxy.set_delay(0.2)
    # The query and its reply are each delayed.
    assert round_trip(conn) >= 0.4

    proxy.set_delay(0)
    assert round_trip(conn) < 0.2


def test_half_close_keeps_the_server_session(
    proxy: FaultProxy, connect: Connect, db: psycopg.Connection[Any]
) -> None:
    name = unique_name()
    conn = connect(application_name=name)
    conn.execute("SELECT 1")

    assert proxy.half_close(5) == 1
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    assert backends(db, name) == 1
    assert proxy.stats["half_closed"] == 1

    assert proxy.release_half_open() == 1
    wait_until(lambda: backends(db, name) == 0, timeout=5, what="server session to end")


def test_blackhole_commits_while_the_client_sees_failure(
    proxy: FaultProxy, connect: Connect, db: psycopg.Connection[Any]
) -> None:
    schema, name = f"t_proxy_{uuid.uuid4().hex[:12]}", unique_name()
    db.execute(f'CREATE SCHEMA "{schema}"')
    try:
        db.execute(f'CREATE TABLE "{schema}".t (id int)')
        conn = connect(application_name=name)
        conn.execute("SELECT 1")

        proxy.blackhole_next()
        with pytest.raises(psycopg.OperationalError):
            conn.execute(f'INSERT INTO "{schema}".t VALUES (42)')

        def committed() -> bool:
            return db.execute(f'SELECT id FROM "{schema}".t').fetchall() == [(42,)]

        wait_until(committed, timeout=5, what="the blackholed insert to be committed")
        assert proxy.stats["blackholed"] == 1
        wait_until(lambda: backends(db, name) == 0, timeout=5, what="server side to close")
        # Only one chunk was armed: the next connection works.
        assert connect().execute("SELECT 1").fetchone() == (1,)
    finally:
        db.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def test_partition_refuses_connections_for_its_duration(
    proxy: FaultProxy, connect: Connect
) -> None:
    conn = connect()
    conn.execute("SELECT 1")

    started = time.monotonic()
    proxy.partition(1.0)
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    with pytest.raises(psycopg.OperationalError):
        connect()
    assert proxy.stats["refused"] >= 1

    def reconnect() -> psycopg.Connection[Any] | None:
        try:
            return connect()
        except psycopg.OperationalError:
            return None

    fresh = wait_until(reconnect, timeout=10, interval=0.05, what="the partition to heal")
    assert time.monotonic() - started >= 1.0
    assert fresh is not None
    assert fresh.execute("SELECT 1").fetchone() == (1,)


def test_upstream_is_asked_per_connection_and_may_be_down(database_url: str) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        nobody = probe.getsockname()[1]  # free once closed: nothing listens there
    target: list[Upstream] = [("127.0.0.1", nobody)]
    with FaultProxy(lambda: target[0]) as proxy:
        url = url_through(proxy, database_url)
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(url, connect_timeout=5)

        target[0] = upstream_of(database_url)
        conn = psycopg.connect(url, autocommit=True, connect_timeout=5)
        try:
            assert conn.execute("SELECT 1").fetchone() == (1,)
            proxy.close()
            # Closing the proxy closes the connections through it.
            with pytest.raises(psycopg.OperationalError):
                conn.execute("SELECT 1")
        finally:
            conn.close()


def test_unix_socket_upstream(database_url: str, db: psycopg.Connection[Any]) -> None:
    row = db.execute(
        "SELECT split_part(current_setting('unix_socket_directories'), ',', 1),"
        " current_setting('port')"
    ).fetchone()
    assert row is not None
    path = f"{row[0].strip()}/.s.PGSQL.{row[1]}"
    if not os.path.exists(path):
        pytest.skip(f"the server's socket {path} is not on this machine")
    with (
        FaultProxy(lambda: path) as proxy,
        psycopg.connect(url_through(proxy, database_url), connect_timeout=5) as conn,
    ):
        assert conn.execute("SELECT 1").fetchone() == (1,)
