"""The web dashboard driven in real headless Chromium against the real database, with a real
worker: listing runs, a durable run's children and event log, retry, replay, fork at an event,
cancel, the non-determinism comparison, queues, workers and the chart. The screenshots in
docs/img/ are taken here."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from playwright.sync_api import Browser, Page, expect

import durably
from durably.worker import Worker
from tests.apps.dashboard_app import Tasks, register
from tests.dashboard_support import DashboardServer, chromium, new_page, screenshot
from tests.helpers import wait_until

expect.set_options(timeout=15_000)


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


@pytest.fixture
def server(app: durably.App, tasks: Tasks) -> Iterator[DashboardServer]:
    with DashboardServer(app) as running:
        yield running


@pytest.fixture
def worker(app: durably.App, tasks: Tasks) -> Iterator[Worker]:
    with app.worker(slots=4, durable_slots=10, evict_after=0.5, poll_interval=0.2) as running:
        yield running


def test_runs_page_lists_runs_filters_them_and_updates_live(
    app: durably.App, tasks: Tasks, server: DashboardServer, worker: Worker, page: Page
) -> None:
    order = tasks.process_order.enqueue("o-1")
    failed = tasks.fails_once.enqueue("t-1")
    order.result(30)
    with pytest.raises(durably.RunFailed):
        failed.result(30)
    waiting = tasks.await_approval.enqueue("o-2")
    wait_until(lambda: waiting.status() == "WAITING", what="the approval to wait")
    later = tasks.echo.options(delay=3600).enqueue("in an hour")

    page.goto(server.url + "/")
    expect(page.locator(f"tr[data-run='{order.id}'] .status")).to_have_text("COMPLETED")
    expect(page.locator(f"tr[data-run='{failed.id}'] .status")).to_have_text("FAILED")
    expect(page.locator(f"tr[data-run='{failed.id}'] td.err")).to_have_text("ValueError")
    expect(page.locator(f"tr[data-run='{waiting.id}'] .status")).to_have_text("WAITING")
    expect(page.locator(f"tr[data-run='{later.id}'] .due")).to_contain_text("delayed · due")
    # Three children of the order, each listed with its parent.
    expect(page.locator("tr[data-run]")).to_have_count(7)

    # A run enqueued while the page is open shows up without a reload (htmx polls the table),
    # and its status follows the run.
    late = tasks.echo.enqueue("late")
    expect(page.locator(f"tr[data-run='{late.id}'] .status")).to_have_text("COMPLETED")
    screenshot(page, "runs")

    page.select_option("select[name=status]", "FAILED")
    page.click("form.filters button[type=submit]")
    expect(page).to_have_url(re.compile(r"status=FAILED"))
    expect(page.locator("tr[data-run]")).to_have_count(1)
    expect(page.locator(f"tr[data-run='{failed.id}']")).to_be_visible()

    page.goto(server.url + "/?task=process_order&window=15m")
    expect(page.locator("tr[data-run]")).to_have_count(1)
    expect(page.locator(f"tr[data-run='{order.id}']")).to_be_visible()
    page.goto(server.url + "/?queue=elsewhere")
    expect(page.locator("td.empty")).to_have_text("No runs match.")
    page.goto(server.url + "/?status=nonsense&since=yesterday")
    expect(page.locator(".error-line").first).to_contain_text("'NONSENSE' is not one of")
    expect(page.locator(".error-line").nth(1)).to_contain_text("'yesterday' is not a time")


def due_time(db: psycopg.Connection[Any], schema: str, run_id: int) -> datetime:
    """When a run is due (its run_at), in UTC."""
    row = db.execute(f'SELECT run_at FROM "{schema}".runs WHERE id = %s', (run_id,)).fetchone()
    assert row is not None
    at: datetime = row[0]
    return at.astimezone(UTC)


def test_delayed_runs_are_marked_with_their_due_time_and_filtered(
    app: durably.App,
    tasks: Tasks,
    server: DashboardServer,
    page: Page,
    db: psycopg.Connection[Any],
    schema: str,
) -> None:
    # No worker: every run stays QUEUED, due now or later.
    due = tasks.echo.enqueue("now")
    later = tasks.echo.options(delay=3600).enqueue("in an hour")
    soon = tasks.echo.options(delay=3600, queue="reports").enqueue("in an hour too")
    db.execute(
        f'UPDATE "{schema}".runs SET concurrency_key = %s, fairness_key = %s WHERE id = %s',
        ("customer-7", "tenant-a", later.id),
    )
    at = due_time(db, schema, later.id)

    page.goto(server.url + "/")
    row = page.locator(f"tr[data-run='{later.id}']")
    expect(row.locator(".status")).to_have_text("QUEUED")
    # The time of day when it is due today (UTC), else with its date.
    expect(row.locator(".due")).to_have_text(
        re.compile(rf"^delayed · due (\d{{4}}-\d\d-\d\d )?{at:%H:%M:%S} UTC$")
    )
    expect(page.locator(f"tr[data-run='{due.id}'] .status")).to_have_text("QUEUED")
    expect(page.locator(f"tr[data-run='{due.id}'] .due")).to_have_count(0)

    page.select_option("select[name=status]", "DELAYED")
    page.click("form.filters button[type=submit]")
    expect(page).to_have_url(re.compile(r"status=DELAYED"))
    rows = page.locator("tr[data-run]")
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_have_attribute("data-run", str(soon.id))
    expect(rows.nth(1)).to_have_attribute("data-run", str(later.id))
    # Its time comes: the live table drops it, as the filter is read on the database clock.
    db.execute(
        f"UPDATE \"{schema}\".runs SET run_at = now() - interval '1 second' WHERE id = %s",
        (soon.id,),
    )
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-run", str(later.id))
    page.goto(server.url + "/?status=delayed&queue=reports")
    expect(page.locator("td.empty")).to_have_text("No runs match.")

    # The queues page links a queue's delayed runs.
    page.goto(server.url + "/queues")
    page.click("tr[data-queue='default'] td:nth-child(3) a")
    expect(page).to_have_url(re.compile(r"queue=default&status=DELAYED$"))
    expect(rows).to_have_count(1)

    page.click(f"a[href='/runs/{later.id}']")
    expect(page.locator("#run-status")).to_have_text("QUEUED")
    expect(page.locator("#run-delayed")).to_have_text("delayed")
    expect(page.locator("#run-due")).to_have_text(
        re.compile(rf"^{at:%Y-%m-%d %H:%M:%S} · in (59 m \d+ s|1 h 0 m)$")
    )
    expect(page.locator("#run-concurrency-key")).to_have_text("customer-7")
    expect(page.locator("#run-fairness-key")).to_have_text("tenant-a")

    page.goto(f"{server.url}/runs/{due.id}")
    expect(page.locator("#run-status")).to_have_text("QUEUED")
    expect(page.locator("#run-due")).to_have_text(
        re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d · [\d.]+ m?s ago$")
    )
    expect(page.locator("#run-delayed")).to_have_count(0)
    expect(page.locator("#run-concurrency-key")).to_have_count(0)
    expect(page.locator("#run-fairness-key")).to_have_count(0)


def test_runs_are_paged_by_keyset(
    app: durably.App, tasks: Tasks, server: DashboardServer, page: Page
) -> None:
    ids = [h.id for h in tasks.echo.enqueue_many([(i,) for i in range(120)])]
    page.goto(server.url + "/")
    rows = page.locator("tr[data-run]")
    expect(rows).to_have_count(50)
    expect(rows.first).to_have_attribute("data-run", str(ids[-1]))

    page.click("a[rel=next]")  # Older
    expect(page).to_have_url(re.compile(rf"before={ids[-50]}"))
    expect(rows.first).to_have_attribute("data-run", str(ids[-51]))
    page.click("a[rel=next]")
    expect(rows).to_have_count(20)
    expect(rows.last).to_have_attribute("data-run", str(ids[0]))
    expect(page.locator("a[rel=next]")).to_have_count(0)  # the oldest page

    page.click("a[rel=prev]")  # Newer
    expect(rows).to_have_count(50)
    expect(rows.first).to_have_attribute("data-run", str(ids[-51]))
    expect(rows.last).to_have_attribute("data-run", str(ids[-100]))


def test_durable_run_shows_children_and_event_log(
    app: durably.App, tasks: Tasks, server: DashboardServer, worker: Worker, page: Page
) -> None:
    order = tasks.process_order.enqueue("o-42")
    order.result(30)
    log = app.event_log(order.id)
    assert [e["kind"] for e in log] == ["child", "child", "child", "step"]

    page.goto(f"{server.url}/runs/{order.id}")
    expect(page.locator("#run-status")).to_have_text("COMPLETED")
    expect(page.locator("#run-input")).to_have_text('"o-42"')
    expect(page.locator("#run-output")).to_contain_text('"extra": 42')
    expect(page.locator("#events h2")).to_contain_text("4 events")
    expect(page.locator("#event-rows tr")).to_have_count(4)
    for event in log:
        row = page.locator(f"#event-{event['seq']}")
        expect(row.locator(".kind")).to_have_text(event["kind"])
        expect(row.locator("td.name")).to_contain_text(event["name"])
        expect(row.locator("td.key code")).to_have_attribute("title", event["key"])
        expect(row.locator("svg.tl rect.bar")).to_have_count(1)
    expect(page.locator("#event-0 td.payload").nth(1)).to_contain_text('"charged": 100')
    expect(page.locator("#event-3 td.payload").nth(1)).to_have_text("42")
    children = [e["child_id"] for e in log if e["child_id"]]
    expect(page.locator("#children tr[data-child]")).to_have_count(3)
    for child in children:
        expect(page.locator(f"#children tr[data-child='{child}'] .status")).to_have_text(
            "COMPLETED"
        )
    screenshot(page, "run")

    # Children are links, and a child links back to its parent.
    page.click(f"#event-0 a[href='/runs/{children[0]}']")
    expect(page.locator("h1")).to_contain_text(f"Run #{children[0]} charge_payment")
    expect(page.locator("#run-output")).to_have_text('{"order": "o-42", "charged": 100}')
    page.click("#parent-link")
    expect(page).to_have_url(f"{server.url}/runs/{order.id}")

    # Each event opens in full.
    page.click(f"#event-3 a[href='/runs/{order.id}/events/3']")
    expect(page.locator("h1")).to_contain_text("Event #3")
    expect(page.locator("pre.json").first).to_have_text("[[20, 22]]")
    expect(page.locator("pre.json").nth(1)).to_have_text("42")


def test_retry_a_failed_run(
    app: durably.App, tasks: Tasks, server: DashboardServer, worker: Worker, page: Page
) -> None:
    failed = tasks.fails_once.enqueue("t-9")
    with pytest.raises(durably.RunFailed):
        failed.result(30)

    page.goto(f"{server.url}/runs/{failed.id}")
    expect(page.locator("#run-status")).to_have_text("FAILED")
    expect(page.locator("#run-error")).to_contain_text("ValueError: card declined for t-9")
    expect(page.locator("#run-traceback")).to_contain_text("Traceback (most recent call last)")
    page.click("a.button:text-is('Retry')")
    expect(page.locator("h1")).to_have_text(f"Retry run #{failed.id}?")
    page.click(f"button:text-is('Retry run #{failed.id}')")

    expect(page).to_have_url(f"{server.url}/runs/{failed.id}?notice=retried")
    expect(page.locator(".notice")).to_contain_text("Queued again")
    expect(page.locator("#run-status")).to_have_text("COMPLETED")  # the summary polls
    expect(page.locator("#run-output")).to_have_text('"ok: t-9"')
    expect(page.locator("#run-attempts")).to_have_text("2")
    run = app.get_run(failed.id)
    assert run is not None and run.status == "COMPLETED" and run.result == "ok: t-9"


def test_fork_a_durable_run_at_an_event(
    app: durably.App, tasks: Tasks, server: DashboardServer, worker: Worker, page: Page
) -> None:
    source = tasks.process_order.enqueue("o-7")
    source.result(30)
    before = app.event_log(source.id)

    page.goto(f"{server.url}/runs/{source.id}")
    page.click("#event-1 a.act")  # "fork here": keep event 0, execute live from event 1
    expect(page.locator("h1")).to_have_text(f"Fork run #{source.id}?")
    expect(page.locator("input[name=at_event]")).to_have_value("1")
    page.click(f"button:text-is('Fork run #{source.id}')")

    expect(page).to_have_url(re.compile(r"/runs/\d+\?notice=forked$"))
    fork_id = int(re.findall(r"/runs/(\d+)", page.url)[0])
    assert fork_id != source.id
    expect(page.locator("#run-status")).to_have_text("COMPLETED")
    page.reload()
    expect(page.locator("#event-rows tr")).to_have_count(4)
    forked = app.event_log(fork_id)
    # Event 0 was copied (the same child run); events 1 and 2 were spawned anew by the fork.
    assert forked[0]["child_id"] == before[0]["child_id"]
    assert {e["child_id"] for e in forked[1:3]}.isdisjoint({e["child_id"] for e in before})
    expect(page.locator(f"#event-0 a[href='/runs/{before[0]['child_id']}']")).to_be_visible()
    expect(page.locator("#run-output")).to_contain_text('"extra": 42')
    assert app.event_log(source.id) == before  # the source is untouched


def test_cancel_a_waiting_run(
    app: durably.App, tasks: Tasks, server: DashboardServer, worker: Worker, page: Page
) -> None:
    waiting = tasks.await_approval.enqueue("o-5")
    wait_until(lambda: waiting.status() == "WAITING", what="the run to wait for its event")

    page.goto(f"{server.url}/runs/{waiting.id}")
    expect(page.locator("#run-status")).to_have_text("WAITING")
    expect(page.locator("#run-summary")).to_contain_text("event approved:o-5")
    page.click("a.button:text-is('Cancel')")
    expect(page.locator("h1")).to_have_text(f"Cancel run #{waiting.id}?")
    page.click(f"button:text-is('Cancel run #{waiting.id}')")

    expect(page).to_have_url(f"{server.url}/runs/{waiting.id}?notice=cancelled")
    expect(page.locator("#run-status")).to_have_text("CANCELLED")
    assert waiting.status() == "CANCELLED"
    # Nothing left to cancel: the action is gone, and asking for it says why.
    expect(page.locator("a.button:text-is('Cancel')")).to_have_count(0)
    page.goto(f"{server.url}/runs/{waiting.id}/cancel")
    expect(page.locator(".error-line")).to_contain_text("only a run that has not ended")


def test_replay_a_finished_run(
    app: durably.App, tasks: Tasks, server: DashboardServer, worker: Worker, page: Page
) -> None:
    order = tasks.process_order.enqueue("o-8")
    order.result(30)

    page.goto(f"{server.url}/runs/{order.id}/replay")
    page.click(f"button:text-is('Replay run #{order.id}')")
    expect(page).to_have_url(f"{server.url}/runs/{order.id}?notice=replayed")
    expect(page.locator("#run-status")).to_have_text("COMPLETED")
    page.reload()
    expect(page.locator("#events h2")).to_contain_text("4 events · 4 archived by replays")


def test_non_determinism_shows_recorded_and_current_side_by_side(
    app: durably.App, tasks: Tasks, server: DashboardServer, worker: Worker, page: Page
) -> None:
    run = tasks.changing.enqueue("o-3")
    with pytest.raises(durably.RunFailed, match="NonRetryableError"):
        run.result(30)
    tasks.code["step"] = "refund_payment"  # the code changed under the run
    assert app.retry(run.id)
    with pytest.raises(durably.RunFailed, match="NonDeterminismError"):
        run.result(30)

    page.goto(f"{server.url}/runs/{run.id}")
    sides = page.locator("#mismatch .side")
    expect(page.locator("#mismatch h3").first).to_have_text("Event #0: recorded vs current")
    expect(sides.nth(0)).to_contain_text("Recorded in the event log")
    expect(sides.nth(0).locator("dd").nth(1)).to_have_text("reserve_stock")
    expect(sides.nth(0).locator("dd").nth(2)).to_have_text('["o-3"]')
    expect(sides.nth(1)).to_contain_text("What the code does now")
    expect(sides.nth(1).locator("dd").nth(1)).to_have_text("refund_payment")
    expect(sides.nth(1).locator("dd").nth(2)).to_have_text('["o-3"]')


HISTORY_SQL = """
INSERT INTO "{schema}".runs (task, queue, status, args, attempt, created_at, started_at,
                             finished_at)
SELECT 'build_report', 'reports', CASE WHEN n <= k % 3 THEN 'FAILED' ELSE 'COMPLETED' END,
       '{{"args": [], "kwargs": {{}}}}', 1, t, t, t
FROM generate_series(5, 45) AS k,
     LATERAL generate_series(1, 3 + k % 7 + k % 3) AS n,
     LATERAL (SELECT now() - make_interval(mins => k)) AS at(t)
"""


def test_queues_workers_and_the_chart(
    app: durably.App,
    tasks: Tasks,
    server: DashboardServer,
    worker: Worker,
    page: Page,
    db: psycopg.Connection[Any],
    schema: str,
) -> None:
    # The last 45 minutes of another queue's history: a few runs a minute, some failed.
    history = db.execute(HISTORY_SQL.format(schema=schema) + " RETURNING status").fetchall()
    done = sum(1 for (status,) in history if status == "COMPLETED")
    failed = len(history) - done
    for i in range(3):
        tasks.process_order.enqueue(f"o-{i}").result(30)
    with pytest.raises(durably.RunFailed):
        tasks.fails_once.enqueue("t-2").result(30)
    tasks.echo.options(delay=3600).enqueue("later")
    tasks.await_approval.enqueue("o-9")
    # The page lists queues with work or a worker: give the history's queue a delayed run.
    tasks.echo.options(delay=3600, queue="reports").enqueue("next report")

    page.goto(server.url + "/workers")
    row = page.locator(f"tr[data-worker='{worker.id}']")
    expect(row.locator(".status")).to_have_text("alive")
    expect(row.locator("td.num").nth(1)).to_have_text("0 / 4")
    expect(row).to_contain_text("ago")
    screenshot(page, "workers")

    page.goto(server.url + "/queues")
    queue = page.locator("tr[data-queue='default'] td")
    expect(queue.nth(2)).to_have_text("1")  # delayed
    expect(queue.nth(4)).to_have_text("1", timeout=20_000)  # the approval, once suspended
    expect(queue.nth(7)).to_have_text("12")  # completed in the last minute: 3 orders x 4
    expect(queue.nth(8)).to_have_text("1")  # failed in the last minute
    chart = page.locator("#throughput-chart")
    expect(chart.locator("rect.completed")).to_have_count(60)
    totals = f"{done + 12} completed, {failed + 1} failed"
    expect(page.locator("#queues h2")).to_contain_text(totals)
    # Each minute's bar says what it counts: 24 minutes ago, 3 + 24 % 7 completed, 24 % 3 failed.
    expect(chart.locator("title", has_text="6 completed, 0 failed")).not_to_have_count(0)
    expect(page.locator("tr[data-queue='reports'] td").nth(7)).to_have_text("0")
    screenshot(page, "queues")
