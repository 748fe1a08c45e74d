"""The dashboard's read-only pages: runs, a run with its event log, queues, workers.

Every list is a keyset page read through the operator's console (``Console.runs_page_async``
and friends), so a page costs the same however many runs are stored. Parts that change on their own
(the runs table, a live run's summary, queues, workers, the chart) are also served alone as
fragments, which htmx polls and swaps in place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from starlette.datastructures import QueryParams
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from ..records import ENDED
from ..serde import storable_problem
from .render import FILTER_STATUSES, chart, nondeterminism
from .state import dashboard

# The largest values the database stores: run ids are bigint, event sequence numbers integer.
BIGINT = 2**63 - 1
INTEGER = 2**31 - 1
RUNS_PAGE = 50
EVENTS_PAGE = 200
CHILDREN_PAGE = 100
# Queue depths are counted up to this many runs (then shown as "10,000+"), so that a backlog of
# millions costs no more to show than one of ten thousand.
QUEUE_COUNT_CAP = 10_000
WINDOWS = {"15m": 900.0, "1h": 3600.0, "24h": 86400.0, "7d": 604800.0}
NOTICES = {
    "retried": "Queued again: the run resumes after its last checkpoint.",
    "replayed": "Replaying from scratch: the old event log was archived.",
    "cancelled": "Cancelled, with every unfinished run below it.",
    "forked": "This run is a fork: its event log starts with the events copied from the source.",
}


def whole_number(text: str, name: str, maximum: int = BIGINT) -> int:
    """``text`` as an int from 0 to ``maximum``, else a 400 answer. ASCII digits only:
    ``str.isdigit`` also accepts characters such as '²' that ``int`` refuses."""
    if not (text.isascii() and text.isdigit()) or len(text) > 19 or int(text) > maximum:
        raise HTTPException(
            400, f"{name}={text[:40]!r} is not valid: give a whole number from 0 to {maximum}"
        )
    return int(text)


def _int_param(
    params: QueryParams, name: str, default: int | None = None, maximum: int = BIGINT
) -> int | None:
    text = params.get(name, "").strip()
    return whole_number(text, name, maximum) if text else default


def path_id(request: Request, name: str, maximum: int = BIGINT) -> int:
    """An id or sequence number from the path (the route admits ASCII digits only); one past
    what the database stores names nothing, so it is not found."""
    value = int(request.path_params[name])
    if value > maximum:
        raise HTTPException(404, f"there is no {name.replace('_', ' ')} {value}")
    return value


def text_param(params: QueryParams, name: str, limit: int = 200) -> str:
    """A text parameter, cut to ``limit`` characters; a 400 answer when PostgreSQL could not
    store it (a NUL character or a lone surrogate): it could match nothing."""
    text = params.get(name, "").strip()[:limit]
    problem = storable_problem(text)
    if problem:
        raise HTTPException(400, f"{name} is not valid: {problem}")
    return text


def _moment(text: str, name: str, errors: list[str]) -> datetime | None:
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        errors.append(f"{name}: {text[:40]!r} is not a time like 2026-01-31T14:00 (UTC)")
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass
class RunQuery:
    """The runs page's filters and page position, read from its query string."""

    status: str = ""
    task: str = ""
    queue: str = ""
    window: str = ""
    since: str = ""
    until: str = ""
    before: int | None = None
    after: int | None = None
    errors: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, params: QueryParams) -> RunQuery:
        """Read the query string; a bad filter is reported (one line each) and ignored."""
        q = cls(
            status=text_param(params, "status").upper(),
            task=text_param(params, "task"),
            queue=text_param(params, "queue"),
            window=text_param(params, "window"),
            since=text_param(params, "since", 40),
            until=text_param(params, "until", 40),
            before=_int_param(params, "before"),
            after=_int_param(params, "after"),
        )
        if q.status and q.status not in FILTER_STATUSES:
            q.errors.append(f"status: {q.status[:20]!r} is not one of {', '.join(FILTER_STATUSES)}")
            q.status = ""
        if q.window and q.window not in WINDOWS:
            q.errors.append(f"window: {q.window[:20]!r} is not one of {', '.join(WINDOWS)}")
            q.window = ""
        return q

    def filters(self) -> dict[str, Any]:
        """Keyword arguments for ``Console.runs_page_async``; a bad time is reported and ignored."""
        return {
            "status": self.status or None,
            "task": self.task or None,
            "queue": self.queue or None,
            "within": WINDOWS.get(self.window),
            "created_after": _moment(self.since, "since", self.errors),
            "created_before": _moment(self.until, "until", self.errors),
        }

    def link(self, **page: int) -> str:
        """This query's string with another page position (``before=`` or ``after=``)."""
        kept = {
            "status": self.status,
            "task": self.task,
            "queue": self.queue,
            "window": self.window,
            "since": self.since,
            "until": self.until,
        }
        return urlencode({k: v for k, v in {**kept, **page}.items() if v})

    @property
    def live(self) -> bool:
        """The newest page follows new runs as they come; an older page stays put."""
        return self.before is None and self.after is None


async def _runs(request: Request) -> dict[str, Any]:
    q = RunQuery.parse(request.query_params)
    console = dashboard(request).console
    filters = q.filters()
    rows = await console.runs_page_async(
        **filters, limit=RUNS_PAGE + 1, before_id=q.before, after_id=q.after
    )
    if q.after is not None:
        newer, older, rows = len(rows) > RUNS_PAGE, True, rows[-RUNS_PAGE:]
    else:
        older, newer, rows = len(rows) > RUNS_PAGE, q.before is not None, rows[:RUNS_PAGE]
    return {"q": q, "runs": rows, "older": older, "newer": newer}


async def runs_page(request: Request) -> Response:
    """The runs, newest first, filtered and paged; the newest page updates itself."""
    context = await _runs(request)
    q: RunQuery = context["q"]
    if q.after is not None and not context["runs"]:
        return RedirectResponse("/?" + q.link(), 303)
    tasks = await dashboard(request).console.task_names_async()
    return dashboard(request).render(request, "runs.html", {**context, "tasks": tasks})


async def runs_table(request: Request) -> Response:
    """The runs table alone, for htmx to poll."""
    return dashboard(request).render(request, "_runs_table.html", await _runs(request))


async def _run(request: Request) -> dict[str, Any]:
    run_id = path_id(request, "run_id")
    console = dashboard(request).console
    run = await console.run_detail_async(run_id)
    if run is None:
        raise HTTPException(404, f"run {run_id} does not exist in schema {console.schema!r}")
    mismatch = nondeterminism(run["error"])
    if mismatch is not None:
        mismatch["recorded"] = await console.event_detail_async(run_id, mismatch["seq"])
    end = run["finished_at"] or run["db_now"]
    return {"run": run, "mismatch": mismatch, "live": run["status"] not in ENDED, "end": end}


async def run_page(request: Request) -> Response:
    """One run: summary, input and output or error, children, and the first page of its log."""
    context = await _run(request)
    run_id = context["run"]["id"]
    console = dashboard(request).console
    # Without JavaScript, "more" links land here with the page position in the query string.
    start = _int_param(request.query_params, "from", 0, INTEGER) or 0
    after = _int_param(request.query_params, "after", 0) or 0
    events = await console.events_page_async(run_id, start, EVENTS_PAGE + 1)
    children = await console.children_page_async(run_id, after, CHILDREN_PAGE + 1)
    notice = NOTICES.get(request.query_params.get("notice", ""))
    return dashboard(request).render(
        request,
        "run.html",
        {**context, **_events_context(events), **_children_context(children), "notice": notice},
    )


async def run_summary(request: Request) -> Response:
    """A run's summary alone, polled while the run has not ended."""
    return dashboard(request).render(request, "_run_summary.html", await _run(request))


def _events_context(events: list[dict[str, Any]]) -> dict[str, Any]:
    more = len(events) > EVENTS_PAGE
    events = events[:EVENTS_PAGE]
    return {"events": events, "events_next": events[-1]["seq"] + 1 if more else None}


def _children_context(children: list[dict[str, Any]]) -> dict[str, Any]:
    more = len(children) > CHILDREN_PAGE
    children = children[:CHILDREN_PAGE]
    return {"children": children, "children_next": children[-1]["id"] if more else None}


async def run_events(request: Request) -> Response:
    """The next page of a run's event log: rows that replace its "more" row."""
    context = await _run(request)
    start = _int_param(request.query_params, "from", 0, INTEGER) or 0
    console = dashboard(request).console
    events = await console.events_page_async(context["run"]["id"], start, EVENTS_PAGE + 1)
    return dashboard(request).render(
        request, "_event_rows.html", {**context, **_events_context(events)}
    )


async def run_children(request: Request) -> Response:
    """The next page of a run's children."""
    context = await _run(request)
    after = _int_param(request.query_params, "after", 0) or 0
    console = dashboard(request).console
    children = await console.children_page_async(context["run"]["id"], after, CHILDREN_PAGE + 1)
    return dashboard(request).render(
        request, "_child_rows.html", {**context, **_children_context(children)}
    )


async def event_page(request: Request) -> Response:
    """One event of a run's log in full."""
    context = await _run(request)
    seq = path_id(request, "seq", INTEGER)
    event = await dashboard(request).console.event_detail_async(context["run"]["id"], seq)
    if event is None:
        raise HTTPException(404, f"run {context['run']['id']} has no event {seq}")
    return dashboard(request).render(request, "event.html", {**context, "event": event})


def _minutes(request: Request) -> int:
    minutes = _int_param(request.query_params, "minutes", 60) or 60
    return max(5, min(minutes, 1440))


async def _queues(request: Request) -> dict[str, Any]:
    console = dashboard(request).console
    minutes = _minutes(request)
    return {
        "queues": await console.queues_overview_async(60.0, QUEUE_COUNT_CAP),
        "cap": QUEUE_COUNT_CAP,
        "chart": chart(await console.throughput_async(minutes)),
        "minutes": minutes,
    }


async def queues_page(request: Request) -> Response:
    """Queue depths by status, oldest waiting age, last minute's throughput, and the chart."""
    return dashboard(request).render(request, "queues.html", await _queues(request))


async def queues_table(request: Request) -> Response:
    """The queues table and chart alone, for htmx to poll."""
    return dashboard(request).render(request, "_queues.html", await _queues(request))


async def workers_page(request: Request) -> Response:
    """Workers: alive or stopped, slots and runs held, last heartbeat."""
    workers = await dashboard(request).console.workers_overview_async()
    return dashboard(request).render(request, "workers.html", {"workers": workers})


async def workers_table(request: Request) -> Response:
    """The workers table alone, for htmx to poll."""
    workers = await dashboard(request).console.workers_overview_async()
    return dashboard(request).render(request, "_workers.html", {"workers": workers})
