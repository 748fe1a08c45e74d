"""The dashboard's security model, as a browser and as plain HTTP clients see it: read-only mode,
the access token, CSRF and Origin checks, the Host check, escaping and the CSP, and the CLI's
refusal to serve beyond loopback without a token."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

import durably
from durably.dashboard import bind_problem
from tests.apps.dashboard_app import Tasks, register
from tests.dashboard_support import (
    DashboardServer,
    Reply,
    chromium,
    free_port,
    new_page,
    request,
)
from tests.helpers import ROOT, wait_until

expect.set_options(timeout=15_000)
TOKEN = "test-token-9f6c1e0b5d2a47c8"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as found:
        yield found


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    with new_page(browser) as found:
        yield found


@pytest.fixture
def tasks(app: durably.App) -> Tasks:
    return register(app)


def csrf_of(server: DashboardServer, page: Page) -> str:
    """The CSRF token of the page's session, as the server computes it."""
    asgi: Any = server.server.config.app
    guard = asgi.state.dashboard.guard
    cookie = next(c["value"] for c in page.context.cookies() if c["name"] == "durably_session")
    sid = guard.session_id(cookie)
    assert sid is not None
    token: str = guard.csrf_token(sid)
    return token


def test_read_only_mode_hides_and_refuses_actions(
    app: durably.App, tasks: Tasks, page: Page
) -> None:
    queued = tasks.echo.enqueue("stays queued")  # no worker: it stays QUEUED
    order = tasks.process_order.enqueue("o-1")
    with DashboardServer(app, read_only=True) as server:
        page.goto(f"{server.url}/runs/{queued.id}")
        expect(page.locator("header .ro")).to_have_text("read-only")
        expect(page.locator("#run-status")).to_have_text("QUEUED")
        expect(page.locator(".actions")).to_have_count(0)
        page.goto(f"{server.url}/runs/{order.id}")
        expect(page.locator(".actions")).to_have_count(0)

        confirm = page.goto(f"{server.url}/runs/{queued.id}/cancel")
        assert confirm is not None and confirm.status == 403
        expect(page.locator(".error-line")).to_have_text("refused: this dashboard is read-only")
        # Even a well-formed POST, with the session's CSRF token, is refused.
        posted = page.request.post(
            f"{server.url}/runs/{queued.id}/cancel", form={"csrf_token": csrf_of(server, page)}
        )
        assert posted.status == 403
        assert "read-only" in posted.text()
    assert queued.status() == "QUEUED"


def test_every_request_needs_the_token_when_one_is_set(
    app: durably.App, tasks: Tasks, page: Page
) -> None:
    run = tasks.echo.enqueue("secret input")
    with DashboardServer(app, token=TOKEN) as server:
        port = server.port
        anonymous = request(port, f"/runs/{run.id}")
        assert anonymous.status == 303
        assert anonymous.headers["location"] == f"/login?next=%2Fruns%2F{run.id}"
        assert "secret input" not in anonymous.body
        polled = request(port, "/runs/table", headers={"HX-Request": "true"})
        assert (polled.status, polled.headers["hx-redirect"]) == (401, "/login")
        wrong = request(port, "/queues", headers={"Authorization": "Bearer not-the-token"})
        assert wrong.status == 303
        posted = request(port, f"/runs/{run.id}/cancel", "POST", body="")
        assert posted.status == 401
        assert request(port, "/static/htmx.min.js").status == 200  # the login page needs it

        bearer = {"Authorization": f"Bearer {TOKEN}"}
        allowed = request(port, f"/runs/{run.id}", headers=bearer)
        assert allowed.status == 200 and "secret input" in allowed.body
        # A bearer client needs no CSRF token: no browser adds that header on its own.
        cancelled = request(port, f"/runs/{run.id}/cancel", "POST", body="", headers=bearer)
        assert cancelled.status == 303
        assert run.status() == "CANCELLED"

        page.goto(f"{server.url}/runs/{run.id}")
        expect(page).to_have_url(f"{server.url}/login?next=%2Fruns%2F{run.id}")
        page.fill("input[name=token]", "not-the-token-either")
        page.click("button:text-is('Log in')")
        expect(page.locator(".error-line")).to_have_text("That is not the access token.")
        page.fill("input[name=token]", TOKEN)
        page.click("button:text-is('Log in')")
        expect(page).to_have_url(f"{server.url}/runs/{run.id}")
        expect(page.locator("#run-input")).to_have_text('"secret input"')
        cookie = next(c for c in page.context.cookies() if c["name"] == "durably_session")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert page.evaluate("document.cookie") == ""  # no script can read the session

        page.click("button:text-is('Log out')")
        expect(page).to_have_url(f"{server.url}/login")
        page.goto(server.url + "/workers")
        expect(page).to_have_url(f"{server.url}/login?next=%2Fworkers")


def test_actions_need_the_sessions_csrf_token_and_the_same_origin(
    app: durably.App, tasks: Tasks, browser: Browser, page: Page
) -> None:
    run = tasks.echo.enqueue("keep me")
    with DashboardServer(app) as server:
        action = f"{server.url}/runs/{run.id}/cancel"
        page.goto(action)
        expect(page.locator("input[name=csrf_token]")).to_have_value(csrf_of(server, page))

        missing = page.request.post(action, form={})
        assert missing.status == 403 and "CSRF" in missing.text()
        forged = page.request.post(action, form={"csrf_token": "0" * 64})
        assert forged.status == 403
        with new_page(browser) as other:  # another session's token is no good here
            other.goto(action)
            theirs = other.locator("input[name=csrf_token]").input_value()
        assert theirs != csrf_of(server, page)
        assert page.request.post(action, form={"csrf_token": theirs}).status == 403
        cross_site = page.request.post(
            action,
            form={"csrf_token": csrf_of(server, page)},
            headers={"Origin": "http://evil.example"},
        )
        assert cross_site.status == 403 and "another site" in cross_site.text()
        assert run.status() == "QUEUED"

        page.click(f"button:text-is('Cancel run #{run.id}')")  # the real form works
        expect(page.locator("#run-status")).to_have_text("CANCELLED")


def test_without_a_token_only_loopback_host_names_are_answered(app: durably.App) -> None:
    with DashboardServer(app) as server:
        assert request(server.port, "/").status == 200
        assert request(server.port, "/", headers={"Host": f"localhost:{server.port}"}).status == 200
        # A page elsewhere that rebinds its own name to 127.0.0.1 gets nothing.
        rebound = request(server.port, "/", headers={"Host": "attacker.example"})
        assert rebound.status == 421


def test_payloads_are_shown_escaped_and_never_run(
    app: durably.App, tasks: Tasks, page: Page
) -> None:
    script = "<script>window.__pwned = 1</script>"
    image = "<img src=x onerror=window.__pwned=2>"
    with app.worker(slots=2, durable_slots=2, poll_interval=0.2):
        shown = tasks.echo.enqueue({"html": script, "img": image})
        shown.result(30)
        failing = tasks.fails_once.enqueue(script)
        with pytest.raises(durably.RunFailed):
            failing.result(30)
    with DashboardServer(app) as server:
        raw = request(server.port, f"/runs/{shown.id}")
        assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in raw.body
        assert "<script>window" not in raw.body and "<img" not in raw.body
        assert "script-src 'self'" in raw.headers["content-security-policy"]
        for path in ("/", f"/runs/{shown.id}", f"/runs/{failing.id}"):
            page.goto(server.url + path)
            expect(page.locator("main")).to_contain_text(script)
            assert page.locator("script").count() == 1  # htmx, and nothing else
            assert page.locator("img").count() == 0
            assert page.evaluate("window.__pwned") is None
        expect(page.locator("#run-error")).to_contain_text(f"card declined for {script}")


def durably_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "DURABLY_DASHBOARD_TOKEN"}
    full_env.update({"PYTHONPATH": str(ROOT), **(env or {})})
    return subprocess.Popen(
        [sys.executable, "-m", "durably", "dashboard", *args],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_cli_refuses_to_serve_beyond_loopback_without_a_token(
    database_url: str, schema: str
) -> None:
    where = ["--database-url", database_url, "--schema", schema]
    public = durably_cli(*where, "--host", "0.0.0.0")
    _, err = public.communicate(timeout=60)
    assert public.returncode == 2
    assert err.strip().splitlines() == [
        "error: refusing to serve the dashboard on 0.0.0.0 without an access token: pass "
        "--token (or set DURABLY_DASHBOARD_TOKEN), or bind 127.0.0.1"
    ]
    short = durably_cli(*where, "--host", "0.0.0.0", env={"DURABLY_DASHBOARD_TOKEN": "abc"})
    _, err = short.communicate(timeout=60)
    assert short.returncode == 2
    assert len(err.strip().splitlines()) == 1
    assert "the access token is too short (3 characters)" in err
    assert bind_problem("0.0.0.0", TOKEN) is None
    assert bind_problem("::1", None) is None and bind_problem("localhost", None) is None


def serving(proc: subprocess.Popen[str], port: int) -> Reply:
    def answered() -> Reply | None:
        assert proc.poll() is None, proc.communicate()[1]
        try:
            return request(port, "/queues")
        except OSError:
            return None

    reply = wait_until(answered, 30, 0.1, what="the dashboard to answer")
    proc.terminate()
    proc.communicate(timeout=30)
    assert reply is not None
    return reply


def test_cli_serves_an_app_or_a_database_url(database_url: str, schema: str) -> None:
    where = ["--database-url", database_url, "--schema", schema]
    unmigrated = durably_cli(*where, "--port", str(free_port()))
    _, err = unmigrated.communicate(timeout=60)
    assert unmigrated.returncode == 1
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith(f"error: schema '{schema}' is at version 0, the dashboard needs")
    )

    port = free_port()  # APP: its App migrates the schema, as it would for a worker
    by_app = durably_cli(
        "tests.apps.dashboard_app:app", "--port", str(port), env={"DURABLY_TEST_SCHEMA": schema}
    )
    reply = serving(by_app, port)
    assert reply.status == 200 and f"<code>{schema}</code>" in reply.body

    port = free_port()
    by_url = durably_cli(*where, "--port", str(port), "--read-only")
    reply = serving(by_url, port)
    assert reply.status == 200 and "read-only" in reply.body
