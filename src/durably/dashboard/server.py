"""The dashboard's ASGI application and the uvicorn server that serves it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import jinja2
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from ..errors import ConfigurationError, DurablyError
from ..storage import LATEST_VERSION
from . import DEFAULT_HOST, DEFAULT_PORT, actions, bind_problem, render, views
from .security import Guard, GuardMiddleware
from .state import Dashboard

if TYPE_CHECKING:
    from ..app import App

HERE = __file__.rsplit("/", 1)[0]


def _templates(common: Any) -> Jinja2Templates:
    # Autoescape for every template, whatever its name: nothing from a payload is ever markup.
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("durably.dashboard", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    render.register(env)
    return Jinja2Templates(env=env, context_processors=[common])


def _routes() -> list[Route | Mount]:
    return [
        Route("/", views.runs_page),
        Route("/runs/table", views.runs_table),
        Route("/runs/{run_id:int}", views.run_page),
        Route("/runs/{run_id:int}/summary", views.run_summary),
        Route("/runs/{run_id:int}/events", views.run_events),
        Route("/runs/{run_id:int}/events/{seq:int}", views.event_page),
        Route("/runs/{run_id:int}/children", views.run_children),
        Route("/runs/{run_id:int}/{action:str}", actions.confirm, methods=["GET"]),
        Route("/runs/{run_id:int}/{action:str}", actions.perform, methods=["POST"]),
        Route("/queues", views.queues_page),
        Route("/queues/table", views.queues_table),
        Route("/workers", views.workers_page),
        Route("/workers/table", views.workers_table),
        Route("/login", actions.login_form, methods=["GET"]),
        Route("/login", actions.login, methods=["POST"]),
        Route("/logout", actions.logout, methods=["POST"]),
        Route("/favicon.ico", lambda request: Response(status_code=204)),
        Mount("/static", StaticFiles(directory=f"{HERE}/static"), name="static"),
    ]


def create_app(app: App, *, token: str | None = None, read_only: bool = False) -> Starlette:
    """The dashboard of ``app``: every request needs ``token`` when one is given, and
    ``read_only`` hides and refuses the actions."""
    guard = Guard(token, read_only)
    dashboard: Dashboard | None = None

    def common(request: Request) -> dict[str, Any]:
        assert dashboard is not None
        return dashboard.common(request)

    @contextlib.asynccontextmanager
    async def lifespan(web: Starlette) -> AsyncIterator[None]:
        yield
        await app.aclose()  # the connections this server's event loop opened

    async def failed(request: Request, exc: Exception) -> Response:
        assert dashboard is not None
        if isinstance(exc, HTTPException):
            status, message = exc.status_code, str(exc.detail)
        else:  # a DurablyError: the database is away, the schema is not migrated...
            status, message = 503, str(exc)
        if request.headers.get("hx-request"):
            return Response(message, status, media_type="text/plain")
        return dashboard.render(request, "error.html", {"message": message}, status)

    web = Starlette(
        routes=_routes(),
        middleware=[Middleware(GuardMiddleware, guard=guard)],
        exception_handlers={HTTPException: failed, DurablyError: failed},
        lifespan=lifespan,
        max_body_size=64 * 1024,
    )
    dashboard = Dashboard(app, _templates(common), guard)
    web.state.dashboard = dashboard
    return web


def check_schema(app: App) -> None:
    """Refuse to serve a schema older than this code (its views need every migration)."""
    applied, needed = app.call(app.schema_version_async())
    if applied < needed:
        raise ConfigurationError(
            f"schema {app.schema!r} is at version {applied}, the dashboard needs "
            f"{LATEST_VERSION}: run `durably db migrate` (or start it with an App that migrates)"
        )


def serve(
    app: App,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    token: str | None = None,
    read_only: bool = False,
    log_level: str = "warning",
) -> None:
    """Serve the dashboard with uvicorn until SIGINT or SIGTERM."""
    import uvicorn

    problem = bind_problem(host, token)
    if problem is not None:
        raise ConfigurationError(problem)
    check_schema(app)
    app.close()  # the check ran on the sync API's loop; the server opens its own connections
    web = create_app(app, token=token, read_only=read_only)
    uvicorn.run(web, host=host, port=port, log_level=log_level, server_header=False)
