"""Bad input gets a clear one-line error and loses nothing: malformed URLs, unreachable servers,
invalid schema names, runs of tasks no worker knows, tasks that raise BaseException or return
what JSON cannot hold, and hostile strings."""

from __future__ import annotations

import gc
import random
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest

import durably
from tests.helpers import wait_until


@contextmanager
def worker_stopped_at_once(app: durably.App, **options: Any) -> Iterator[durably.Worker]:
    """A background worker that is stopped at once on exit (two stop requests), so that a worker
    wedged by a bug fails the test instead of hanging it in a graceful shutdown."""
    worker = app.make_worker(**options)
    thread: threading.Thread = worker.start_in_thread()
    try:
        yield worker
    finally:
        worker.stop_from_thread()
        worker.stop_from_thread()
        thread.join(15)
        assert not thread.is_alive(), "the worker did not stop"


def status_of(app: durably.App, run_id: int) -> str | None:
    run = app.get_run(run_id)
    return None if run is None else run.status


def assert_one_clear_line(message: str) -> None:
    assert message.strip(), "empty message"
    assert "\n" not in message, message
    assert "Traceback" not in message, message


# -- database URL and schema name ----------------------------------------------------------

MALFORMED_URLS = [
    "not a url = =",
    "postgresql://user:s3cret@[::1/db",
    "http://user:s3cret@host/db",
    "postgresql://user:s3cret@host/db?no_such_option=1",
]


@pytest.mark.parametrize("url", MALFORMED_URLS)
def test_malformed_url_is_a_one_line_configuration_error(url: str, schema: str) -> None:
    app = durably.App(url, schema=schema)
    with pytest.raises(durably.ConfigurationError) as error:
        app.list_runs()
    message = str(error.value)
    assert_one_clear_line(message)
    assert "malformed" in message
    assert "expected postgresql://user@host:port/dbname" in message  # what to do


@pytest.mark.parametrize("url", [u for u in MALFORMED_URLS if "s3cret" in u])
def test_malformed_url_error_never_shows_the_password(url: str, schema: str) -> None:
    app = durably.App(url, schema=schema)
    with pytest.raises(durably.ConfigurationError) as error:
        app.list_runs()
    assert "s3cret" not in str(error.value)


@pytest.mark.parametrize(
    "url",
    ["postgresql://user@host:notaport/db", "postgresql://user:s3cret@127.0.0.1:notaport/db"],
)
def test_url_with_a_bad_port_is_a_one_line_error(url: str, schema: str) -> None:
    app = durably.App(url, schema=schema)
    with pytest.raises((durably.ConfigurationError, durably.DatabaseUnavailable)) as error:
        app.list_runs()
    message = str(error.value)
    assert_one_clear_line(message)
    assert "s3cret" not in message
    assert "notaport" in message
    assert "check the URL" in message or "expected postgresql://" in message


def test_unreachable_server_is_a_one_line_database_unavailable(schema: str) -> None:
    url = "postgresql://postgres:hunter2@127.0.0.1:1/postgres"
    app = durably.App(url, schema=schema)

    @app.task(name="noop")
    def noop() -> None:
        pass

    attempts: list[Callable[[], object]] = [
        lambda: noop.enqueue(),
        lambda: app.get_run(1),
        app.migrate,
        lambda: app.make_worker(slots=1).start_in_thread(),
    ]
    for attempt in attempts:
        with pytest.raises(durably.DatabaseUnavailable) as error:
            attempt()
        message = str(error.value)
        assert_one_clear_line(message)
        assert "hunter2" not in message
        assert "127.0.0.1:1" in message
        assert "check the URL" in message and "server is running" in message


@pytest.mark.parametrize(
    "name",
    ["", "Public", "has-dash", "1st", "a" * 42, 'quo"te', "x; DROP TABLE runs", "sp ace", "ünï"],
)
def test_invalid_schema_name_is_a_configuration_error(name: str, database_url: str) -> None:
    with pytest.raises(durably.ConfigurationError) as error:
        durably.App(database_url, schema=name)
    message = str(error.value)
    assert_one_clear_line(message)
    assert repr(name) in message
    assert "lowercase letters, digits and _" in message


def test_longest_valid_schema_name_is_accepted(database_url: str) -> None:
    assert durably.App(database_url, schema="a" * 41).schema == "a" * 41


# -- tasks no worker knows -----------------------------------------------------------------


def test_run_of_an_unknown_task_waits_for_a_worker_that_knows_it(
    make_app: Callable[..., durably.App],
) -> None:
    producer = make_app()  # like a newer deployment: it knows one more task
    old = make_app()

    @producer.task(name="known")
    def known_new(tag: str) -> str:
        return f"new {tag}"

    @producer.task(name="extra")
    def extra(tag: str) -> str:
        return f"extra {tag}"

    @old.task(name="known")
    def known_old(tag: str) -> str:
        return f"old {tag}"

    unknown = extra.enqueue("first")
    after = known_old.enqueue("second")
    assert after.id > unknown.id
    with old.worker(slots=2, poll_interval=0.05):
        assert after.result(timeout=10) == "old second"
        # The worker claimed (and completed) a run enqueued later, so it passed this one over.
        run = old.get_run(unknown.id)
        assert run is not None
        assert (run.status, run.attempt, run.worker_id) == ("QUEUED", 0, None)

    with producer.worker(slots=2):
        assert unknown.result(timeout=10) == "extra first"


# -- tasks that misbehave ------------------------------------------------------------------


class Boom(BaseException):
    """A BaseException that is neither Exception, SystemExit nor KeyboardInterrupt."""


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_base_exceptions_fail_only_their_run(app: durably.App, kind: str) -> None:
    raised: dict[str, BaseException] = {
        "sysexit": SystemExit(3),
        "interrupt": KeyboardInterrupt(),
        "boom": Boom("kaboom"),
    }

    def sync_body(exc: BaseException) -> Callable[[], None]:
        def body() -> None:
            raise exc

        return body

    def async_body(exc: BaseException) -> Callable[[], Any]:
        async def body() -> None:
            raise exc

        return body

    def make(name: str) -> durably.Task[Any, Any]:
        body = (sync_body if kind == "sync" else async_body)(raised[name])
        return app.task(name=name)(body)

    failing = {name: make(name).enqueue() for name in raised}

    @app.task(name="normal")
    def normal() -> str:
        return "fine"

    with app.worker(slots=1):  # leaving the block re-raises whatever ended the worker
        for handle in failing.values():
            with pytest.raises(durably.RunFailed):
                handle.result(timeout=10)
        # The same worker (one slot) goes on to complete a normal run.
        assert normal.enqueue().result(timeout=10) == "fine"

    errors = {}
    for name, handle in failing.items():
        run = app.get_run(handle.id)
        assert run is not None
        assert (run.status, run.failures) == ("FAILED", 1)
        assert run.error is not None and run.error["traceback"]
        errors[name] = (run.error["type"], run.error["message"])
    assert errors["sysexit"] == ("SystemExit", "3")
    assert errors["interrupt"][0] == "KeyboardInterrupt"
    assert errors["boom"][0].endswith(".Boom") and errors["boom"][1] == "kaboom"


def test_non_json_result_fails_with_not_serializable(app: durably.App) -> None:
    @app.task(name="returns_a_set", retries=3)
    def returns_a_set() -> Any:
        return {1, 2}

    @app.task(name="normal")
    def normal() -> str:
        return "fine"

    bad = returns_a_set.enqueue()
    with app.worker(slots=1):
        with pytest.raises(durably.RunFailed) as failed:
            bad.result(timeout=10)
        assert normal.enqueue().result(timeout=10) == "fine"
    assert failed.value.error_type == "durably.errors.NotSerializable"
    assert "returns_a_set" in failed.value.error_message
    assert "set" in failed.value.error_message
    run = app.get_run(bad.id)
    assert run is not None
    # Not retried: the same code would return the same value again.
    assert (run.status, run.attempt, run.failures) == ("FAILED", 1, 1)


def test_oversized_result_fails_only_its_run(make_app: Callable[..., durably.App]) -> None:
    app = make_app(max_payload=1000)

    @app.task(name="too_big")
    def too_big(n: int) -> str:
        return "x" * n

    with app.worker(slots=1):
        with pytest.raises(durably.RunFailed) as failed:
            too_big.enqueue(5000).result(timeout=10)
        assert too_big.enqueue(10).result(timeout=10) == "x" * 10, "the worker goes on"
    assert failed.value.error_type == "durably.errors.PayloadTooLarge"
    assert "too_big" in failed.value.error_message
    assert "max_payload" in failed.value.error_message


def test_nul_character_in_a_result_fails_its_run_cleanly(app: durably.App) -> None:
    @app.task(name="nul_result")
    def nul_result() -> dict[str, str]:
        return {"text": "before\x00after"}

    @app.task(name="nul_error")
    def nul_error() -> None:
        raise ValueError("bad\x00byte")

    @app.task(name="normal")
    def normal() -> str:
        return "fine"

    bad_result = nul_result.enqueue()
    bad_error = nul_error.enqueue()
    with worker_stopped_at_once(app, slots=2):
        good = normal.enqueue()
        assert good.result(timeout=10) == "fine"
        with pytest.raises(durably.RunFailed) as failed:
            bad_result.result(timeout=10)
        assert failed.value.error_type == "durably.errors.NotSerializable"
        assert "NUL" in failed.value.error_message
        with pytest.raises(durably.RunFailed) as raised:
            bad_error.result(timeout=10)
        assert raised.value.error_type == "ValueError"
        assert raised.value.error_message == "bad\\x00byte"


def test_lone_surrogate_in_a_result_fails_only_its_run(app: durably.App) -> None:
    @app.task(name="surrogate")
    def surrogate() -> str:
        return "half a pair: \ud800"

    @app.task(name="normal")
    def normal() -> str:
        return "fine"

    bad = surrogate.enqueue()
    good = normal.enqueue()
    with worker_stopped_at_once(app, slots=2):
        assert good.result(timeout=5) == "fine"
        with pytest.raises(durably.RunFailed) as failed:
            bad.result(timeout=5)
        assert failed.value.error_type == "durably.errors.NotSerializable"
        assert normal.enqueue().result(timeout=5) == "fine"


def test_lone_surrogate_in_an_error_message_fails_only_its_run(app: durably.App) -> None:
    @app.task(name="surrogate_error")
    def surrogate_error() -> None:
        raise ValueError("half a pair: \udfff")

    @app.task(name="normal")
    def normal() -> str:
        return "fine"

    bad = surrogate_error.enqueue()
    good = normal.enqueue()
    with worker_stopped_at_once(app, slots=2):
        assert good.result(timeout=5) == "fine"
        with pytest.raises(durably.RunFailed) as failed:
            bad.result(timeout=5)
        assert failed.value.error_type == "ValueError"
        assert failed.value.error_message.startswith("half a pair: ")


class UnprintableError(Exception):
    printable = True

    def __str__(self) -> str:
        if not self.printable:
            raise RuntimeError("this exception cannot be printed")
        return "printable again"


def test_exception_that_cannot_be_printed_fails_its_run(app: durably.App) -> None:
    @app.task(name="unprintable")
    def unprintable() -> None:
        raise UnprintableError()

    @app.task(name="normal")
    def normal() -> str:
        return "fine"

    bad = unprintable.enqueue()
    # Unprintable only during the test: a stray reference printed later (by asyncio's "exception
    # never retrieved" when garbage is collected) must not break pytest's own reporting.
    UnprintableError.printable = False
    try:
        with worker_stopped_at_once(app, slots=1, heartbeat_interval=0.2):
            assert normal.enqueue().result(timeout=10) == "fine"
            wait_until(
                lambda: status_of(app, bad.id) == "FAILED",
                timeout=5,
                what=f"run {bad.id} to fail (it is {status_of(app, bad.id)})",
            )
    finally:
        UnprintableError.printable = True
        gc.collect()
    run = app.get_run(bad.id)
    assert run is not None and run.error is not None
    assert run.error["type"].endswith("UnprintableError")


def test_lone_surrogate_argument_raises_not_serializable(
    app: durably.App, db: psycopg.Connection[Any], schema: str
) -> None:
    @app.task(name="echo")
    def echo(text: str) -> str:
        return text

    app.migrate()
    with pytest.raises(durably.NotSerializable, match="argument 1"):
        echo.enqueue("half a pair: \udc00")
    assert db.execute(f'SELECT count(*) FROM "{schema}".runs').fetchone() == (0,)


# -- hostile strings -----------------------------------------------------------------------

SQL = "'; DROP TABLE x; --"


def huge_unicode(length: int, seed: int) -> str:
    """Random text over all of Unicode except NUL and surrogates (which JSON in Postgres cannot
    hold): controls, RTL, combining marks, CJK, private use, astral emoji."""
    rnd = random.Random(seed)
    ranges = [(0x01, 0x7F), (0x80, 0x7FF), (0x800, 0xD7FF), (0xE000, 0xFFFD), (0x10000, 0x10FFFF)]
    out = []
    for _ in range(length):
        lo, hi = rnd.choice(ranges)
        out.append(chr(rnd.randint(lo, hi)))
    return "".join(out)


def test_hostile_strings_round_trip_intact(app: durably.App) -> None:
    name = f'{SQL} "$$ %s %(x)s {{schema}} \\ \u202e עברית 🎉'
    queue = f"q:{SQL} 'quoted' done:1"
    key = f"{SQL} 🔑 e\u0301 %s"
    payload = {
        "sql": SQL,
        "quotes": "it's \"quoted\" \\ back\\slash $$dollar$$ E'\\x41'",
        "placeholders": "%s %(x)s %% {schema} {channel}",
        "controls": "\t\r\n\x01\x1f\x7f",
        "emoji": "👩‍👩‍👧‍👦 🇺🇦",
        "nested": [SQL, {SQL: [SQL, None, 1.5, -(2**62)]}],
        "huge": huge_unicode(100_000, seed=7),
    }

    @app.task(name=name, queue=queue)
    def echo(value: dict[str, Any]) -> dict[str, Any]:
        return value

    first = echo.options(idempotency_key=key).enqueue(payload)
    assert echo.options(idempotency_key=key).enqueue({}).id == first.id
    run = app.get_run(first.id)
    assert run is not None
    assert (run.task, run.queue, run.idempotency_key) == (name, queue, key)
    assert run.args == {"args": [payload], "kwargs": {}}
    assert [r.id for r in app.list_runs(task=name, queue=queue)] == [first.id]

    with app.worker(slots=1):
        assert first.result(timeout=20) == payload
    # Every table is still there and holds what it should.
    assert [r.id for r in app.list_runs()] == [first.id]


def test_long_unicode_task_name_round_trips(app: durably.App) -> None:
    name = SQL + huge_unicode(200, seed=11)

    @app.task(name=name)
    def echo(text: str) -> str:
        return text

    text = huge_unicode(20_000, seed=12)
    handle = echo.enqueue(text)
    with app.worker(slots=1):
        assert handle.result(timeout=20) == text
    run = app.get_run(handle.id)
    assert run is not None and run.task == name


def test_oversized_task_name_is_refused_clearly(app: durably.App) -> None:
    with pytest.raises(ValueError) as refused:

        @app.task(name=SQL + huge_unicode(20_000, seed=11))
        def echo(text: str) -> str:
            return text

    assert_one_clear_line(str(refused.value))
    assert "task name" in str(refused.value) and "at most 1000 bytes" in str(refused.value)
    assert app.registry == {}


def test_oversized_idempotency_key_is_refused_clearly(app: durably.App) -> None:
    @app.task(name="echo")
    def echo(text: str) -> str:
        return text

    app.migrate()
    with pytest.raises(ValueError) as refused:
        echo.options(idempotency_key=SQL + huge_unicode(20_000, seed=13)).enqueue("one")
    assert_one_clear_line(str(refused.value))
    assert "idempotency key" in str(refused.value)
    assert app.list_runs() == []
    long_key = SQL + huge_unicode(200, seed=13)
    first = echo.options(idempotency_key=long_key).enqueue("one")
    assert echo.options(idempotency_key=long_key).enqueue("two").id == first.id
