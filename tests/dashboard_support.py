"""Helpers for the dashboard tests: a real uvicorn server on a free loopback port, a headless
Chromium (Debian's package), plain HTTP requests, and screenshots for the docs."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from playwright.sync_api import Browser, Page, Playwright, ViewportSize, sync_playwright

import durably
from durably.dashboard import create_app
from tests.helpers import ROOT, wait_until

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = ROOT / "docs" / "img"
VIEWPORT: ViewportSize = {"width": 1280, "height": 800}


class DashboardServer:
    """The dashboard of ``app`` served by uvicorn in a thread, on a port the OS picks."""

    def __init__(self, app: durably.App, token: str | None = None, read_only: bool = False):
        web = create_app(app, token=token, read_only=read_only)
        config = uvicorn.Config(
            web, host="127.0.0.1", port=0, log_level="warning", server_header=False
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.port = 0

    def __enter__(self) -> DashboardServer:
        self.thread.start()
        wait_until(lambda: self.server.started, 20, what="the dashboard to start")
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(20)

    @property
    def url(self) -> str:
        """The server's base URL (no trailing slash)."""
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Reply:
    """An HTTP response read whole, with the time it took."""

    status: int
    headers: dict[str, str]
    body: str
    seconds: float

    @property
    def server_ms(self) -> float:
        """The server's own time (its Server-Timing header), in milliseconds."""
        return float(self.headers["server-timing"].split("dur=")[1])


def request(
    port: int,
    path: str,
    method: str = "GET",
    body: str | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    """One HTTP request to the dashboard on loopback, timed from send to the last byte."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    sent = {"Content-Type": "application/x-www-form-urlencoded"} if body is not None else {}
    started = time.perf_counter()
    conn.request(method, path, body=body, headers={**sent, **(headers or {})})
    response = conn.getresponse()
    text = response.read().decode()
    seconds = time.perf_counter() - started
    conn.close()
    found = {k.lower(): v for k, v in response.getheaders()}
    return Reply(response.status, found, text, seconds)


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def chromium() -> Iterator[Browser]:
    """Headless Chromium from Debian's package (Playwright cannot download its own here)."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (as .ci/run does)")
    playwright: Playwright
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def new_page(browser: Browser) -> Iterator[Page]:
    """A fresh page (its own cookies) at the screenshot size; fails on any page error."""
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield page
    finally:
        context.close()
    assert not errors, f"the page raised: {errors}"


def screenshot(page: Page, name: str, **options: Any) -> Path:
    """Save a screenshot of what the page shows under docs/img/ (small PNG, 1280x800)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"dashboard-{name}.png"
    page.screenshot(path=str(path), **options)
    return path
