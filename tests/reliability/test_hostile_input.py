"""Hostile input never reaches a 500 or a traceback: every dashboard parameter is parsed strictly
(whole numbers in ASCII digits, within what the database stores; text PostgreSQL can store) and
answered 4xx otherwise, and the CLI refuses bad arguments in one line with exit 2."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

import durably
from tests.cli_support import Cli, cli
from tests.conftest import drop_schema
from tests.dashboard_support import DashboardServer, request

__all__ = ["cli"]  # the fixture, imported for the tests below

TOKEN = "hostile-input-test-token-0123456789abcdef"
BEARER = {"Authorization": f"Bearer {TOKEN}"}  # bearer clients need no CSRF token
SUPERSCRIPT_TWO = "%C2%B2"  # '²': str.isdigit() accepts it, int() does not
TOO_BIG = "99999999999999999999"  # past bigint
PAST_INTEGER = "3000000000"  # past integer (event sequence numbers)


@pytest.fixture(scope="module")
def served(database_url: str) -> Iterator[tuple[DashboardServer, int]]:
    """The dashboard of an App holding one durable run, shared by this module's dashboard tests
    (they only read, or fork); (server, the run's id)."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    app = durably.App(database_url, schema=schema)

    @app.durable_task(name="wf")
    def wf(ctx: durably.SyncDurableContext, n: int) -> int:
        return n

    try:
        run_id = wf.enqueue(1).id
        with DashboardServer(app, token=TOKEN) as server:
            yield server, run_id
    finally:
        app.close()
        drop_schema(database_url, schema)


GET_PARAMETERS = [
    "/?before={bad}",
    "/?after={bad}",
    "/runs/table?before={bad}",
    "/runs/table?after={bad}",
    "/runs/{run}?from={bad}",
    "/runs/{run}?after={bad}",
    "/runs/{run}/events?from={bad}",
    "/runs/{run}/children?after={bad}",
    "/runs/{run}/fork?at={bad}",
    "/queues?minutes={bad}",
    "/queues/table?minutes={bad}",
]


@pytest.mark.parametrize("path", GET_PARAMETERS)
@pytest.mark.parametrize("bad", [SUPERSCRIPT_TWO, "%EF%BC%91", "-1", "1e3", TOO_BIG])
def test_a_bad_whole_number_in_the_query_is_a_400(
    served: tuple[DashboardServer, int], path: str, bad: str
) -> None:
    server, run_id = served
    reply = request(server.port, path.format(run=run_id, bad=bad), headers=BEARER)
    assert reply.status == 400, (path, bad, reply.status, reply.body[:300])


@pytest.mark.parametrize(
    "path", ["/runs/{run}?from={bad}", "/runs/{run}/events?from={bad}", "/runs/{run}/fork?at={bad}"]
)
def test_an_event_number_past_what_the_database_stores_is_a_400(
    served: tuple[DashboardServer, int], path: str
) -> None:
    server, run_id = served
    reply = request(server.port, path.format(run=run_id, bad=PAST_INTEGER), headers=BEARER)
    assert reply.status == 400, reply.body[:300]


@pytest.mark.parametrize(
    "path", ["/runs/" + TOO_BIG, "/runs/{run}/events/" + PAST_INTEGER, f"/runs/{TOO_BIG}/retry"]
)
def test_an_id_in_the_path_past_what_the_database_stores_is_not_found(
    served: tuple[DashboardServer, int], path: str
) -> None:
    server, run_id = served
    reply = request(server.port, path.format(run=run_id), headers=BEARER)
    assert reply.status == 404, reply.body[:300]


@pytest.mark.parametrize("name", ["task", "queue", "status", "window", "since", "until"])
@pytest.mark.parametrize("bad", ["%00", "a%00b"])
@pytest.mark.parametrize("page", ["/", "/runs/table"])
def test_text_postgres_cannot_store_in_a_filter_is_a_400(
    served: tuple[DashboardServer, int], name: str, bad: str, page: str
) -> None:
    server, _ = served
    reply = request(server.port, f"{page}?{name}={bad}", headers=BEARER)
    assert reply.status == 400, reply.body[:300]
    assert "NUL" in reply.body


@pytest.mark.parametrize("bad", [SUPERSCRIPT_TWO, "%EF%BC%91", "-1", "", TOO_BIG, PAST_INTEGER])
def test_a_bad_at_event_in_the_fork_form_is_a_400(
    served: tuple[DashboardServer, int], bad: str
) -> None:
    server, run_id = served
    reply = request(server.port, f"/runs/{run_id}/fork", "POST", f"at_event={bad}", headers=BEARER)
    assert reply.status == 400, reply.body[:300]
    assert reply.body.count("at_event") >= 1


def test_a_good_fork_form_still_forks(served: tuple[DashboardServer, int]) -> None:
    server, run_id = served
    reply = request(server.port, f"/runs/{run_id}/fork", "POST", "at_event=0", headers=BEARER)
    assert reply.status == 303 and "notice=forked" in reply.headers["location"]


# -- CLI ------------------------------------------------------------------------------------


def refused_in_one_line(result: object, expected: str) -> None:
    """Exit 2 (usage), no traceback, and one error line saying ``expected``."""
    exit_code = getattr(result, "exit_code", None)
    exception = getattr(result, "exception", None)
    output: str = getattr(result, "output", "")
    assert exit_code == 2, output
    assert exception is None or isinstance(exception, SystemExit), repr(exception)
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and expected in errors[0], output


DEEP = "[" * 3000 + "]" * 3000


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("events", "push", "k" * 2000, "{}"), "2000 bytes long"),
        (("events", "push", "k" * 3000), "3000 bytes long"),
        (("events", "push", "k\x00", "{}"), "NUL"),
        (("events", "push", "k\ud800", "{}"), "surrogate"),
        (("events", "push", "k", DEEP), "nested too deeply"),
        (("events", "push", "k", '"\\u0000"'), "NUL"),
        (("events", "push", "k", "NaN"), "cannot be stored as JSON"),
        (("runs", "list", "--task", "a\x00"), "NUL"),
        (("runs", "list", "--queue", "a\x00"), "NUL"),
        (("runs", "list", "--task", "a\ud800"), "surrogate"),
        (("runs", "list", "--since", "99999999999d"), "too far back"),
        (("runs", "list", "--before", TOO_BIG), "range"),
        (("runs", "list", "--before", "²"), "'²'"),
        (("runs", "show", "1", "--event", PAST_INTEGER), "range"),
        (("runs", "show", "1", "--events-from", PAST_INTEGER), "range"),
        (("runs", "show", "1", "--children-after", TOO_BIG), "range"),
        (("runs", "fork", "1", "--at-event", PAST_INTEGER), "range"),
        (("runs", "cancel", "--task", "a\x00", "--yes"), "NUL"),
        (("runs", "retry", "--queue", "a\x00", "--yes"), "NUL"),
        (("schedules", "pause", "a\x00"), "NUL"),
        (("schedules", "resume", "a\ud800"), "surrogate"),
        (("schedules", "delete", "a\x00"), "NUL"),
    ],
    ids=lambda value: repr(value)[:40] if isinstance(value, tuple) else None,
)
def test_the_cli_refuses_bad_arguments_in_one_line(
    cli: Cli, args: tuple[str, ...], expected: str
) -> None:
    refused_in_one_line(cli(*args), expected)
