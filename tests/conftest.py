"""Test fixtures: every test talks to a real PostgreSQL.

The server is ``DATABASE_URL`` when set, else durably's embedded server. Each test gets its own
schema (dropped afterwards), so tests never see each other's runs.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

import durably
from durably.embedded import embedded_url
from tests.apps import queue_app


@pytest.fixture(autouse=True)
def _close_apps(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Close every App a test made, so idle pooled connections never pile up on the server."""
    made: list[durably.App] = []
    init = durably.App.__init__

    def tracking_init(self: durably.App, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(durably.App, "__init__", tracking_init)
    yield
    for made_app in made:
        made_app.close()


@pytest.fixture(scope="session")
def database_url() -> str:
    return os.environ.get("DATABASE_URL") or embedded_url()


def drop_schema(url: str, schema: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def schema(database_url: str) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    drop_schema(database_url, name)


@pytest.fixture
def make_app(database_url: str, schema: str) -> Callable[..., durably.App]:
    """Build Apps on the test's schema (several Apps may share it, like several processes)."""

    def make(**kwargs: Any) -> durably.App:
        return durably.App(database_url, schema=schema, **kwargs)

    return make


@pytest.fixture
def app(make_app: Callable[..., durably.App]) -> durably.App:
    return make_app()


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A plain autocommit connection for looking at tables directly."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def qapp(database_url: str, schema: str, db: psycopg.Connection[Any]) -> durably.App:
    """The client side of tests/apps/queue_app.py, on this test's schema."""
    app = durably.App(database_url, schema=schema)
    for task in queue_app.app.registry.values():
        app.task(name=task.name, retries=task.retries)(task.fn)
    app.migrate()
    queue_app.create_effects(db, schema)
    return app
