"""The dashboard's actions (retry, replay, fork, cancel) and its login.

An action is two requests: a GET shows what it will do and a form to confirm it, the POST does
it. Every POST carries the session's CSRF token (checked by :func:`checked_form`); in read-only
mode both are refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from ..errors import DurablyError
from ..records import ENDED, NOT_ENDED, RETRYABLE, Status
from .security import SESSION_COOKIE, checked_form, safe_next, session_cookie
from .state import dashboard
from .views import INTEGER, path_id, whole_number


@dataclass(frozen=True)
class Action:
    """What an action does, and to which runs it applies."""

    verb: str
    statuses: tuple[str, ...]
    explains: str
    refused: str


ACTIONS = {
    "retry": Action(
        "Retry",
        RETRYABLE,
        "The run goes back to the queue with its event log kept: a durable run resumes after "
        "its last checkpoint, nothing it already recorded is done again.",
        "only a failed or cancelled run can be retried",
    ),
    "replay": Action(
        "Replay",
        ENDED,
        "The run executes again from scratch: its event log is archived (kept for audit) and "
        "every step, child and wait happens again.",
        "only a run that has ended can be replayed",
    ),
    "cancel": Action(
        "Cancel",
        NOT_ENDED,
        "The run and every unfinished run below it are cancelled; a running async task is "
        "interrupted, a sync one sees ctx.cancelled.",
        "only a run that has not ended can be cancelled",
    ),
    "fork": Action(
        "Fork",
        tuple(Status),
        "A new run of the same task and input starts with the first N events of this run's "
        "log copied, and executes live from event N on. This run is untouched.",
        "only a durable run can be forked",
    ),
}


def _action(request: Request) -> tuple[str, Action]:
    if dashboard(request).guard.read_only:
        raise HTTPException(403, "refused: this dashboard is read-only")
    name = str(request.path_params["action"])
    if name not in ACTIONS:
        raise HTTPException(404, f"there is no action {name[:20]!r}")
    return name, ACTIONS[name]


async def confirm(request: Request) -> Response:
    """What the action will do to this run, and the form that confirms it."""
    name, action = _action(request)
    run_id = path_id(request, "run_id")
    run = await dashboard(request).console.run_detail_async(run_id)
    if run is None:
        raise HTTPException(404, f"run {run_id} does not exist")
    applies = run["status"] in action.statuses and (name != "fork" or run["durable"])
    at = request.query_params.get("at", "").strip()
    at_event = whole_number(at, "at", INTEGER) if at else run["events"]
    return dashboard(request).render(
        request,
        "confirm.html",
        {
            "run": run,
            "name": name,
            "action": action,
            "applies": applies,
            "at_event": min(at_event, run["events"]),
        },
    )


async def perform(request: Request) -> Response:
    """Do the confirmed action, then show the run it produced or changed."""
    name, action = _action(request)
    form = await checked_form(request)
    run_id = path_id(request, "run_id")
    app = dashboard(request).app
    if name == "fork":
        at_event = whole_number(str(form.get("at_event", "")).strip(), "at_event", INTEGER)
        try:
            forked = await app.fork_async(run_id, at_event)
        except DurablyError:
            raise HTTPException(409, f"refused: {action.refused}") from None
        return RedirectResponse(f"/runs/{forked.id}?notice=forked", 303)
    done = await {
        "retry": app.retry_async,
        "replay": app.replay_async,
        "cancel": app.cancel_async,
    }[name](run_id)
    if not done:
        raise HTTPException(409, f"refused: {action.refused} (run {run_id})")
    notice = {"retry": "retried", "replay": "replayed", "cancel": "cancelled"}[name]
    return RedirectResponse(f"/runs/{run_id}?notice={notice}", 303)


async def login_form(request: Request) -> Response:
    """The login form (only when the dashboard has an access token)."""
    if dashboard(request).guard.token is None:
        return RedirectResponse("/", 303)
    context = {"next": safe_next(request.query_params.get("next")), "failed": False}
    return dashboard(request).render(request, "login.html", context)


async def login(request: Request) -> Response:
    """Check the token; on success start a session (an HttpOnly, SameSite=Strict cookie)."""
    guard = dashboard(request).guard
    form = await request.form()
    target = safe_next(str(form.get("next", "/")))
    token = form.get("token")
    if not guard.token_ok(token if isinstance(token, str) else None):
        context = {"next": target, "failed": True}
        return dashboard(request).render(request, "login.html", context, status_code=401)
    _, cookie = guard.new_session()
    response = RedirectResponse(target, 303)
    response.headers.append("set-cookie", session_cookie(cookie, request.url.scheme == "https"))
    return response


async def logout(request: Request) -> Response:
    """End the session: the cookie is cleared."""
    await checked_form(request)
    response = RedirectResponse("/login" if dashboard(request).guard.token else "/", 303)
    response.headers.append("set-cookie", f"{SESSION_COOKIE}=; Path=/; Max-Age=0; HttpOnly")
    return response
