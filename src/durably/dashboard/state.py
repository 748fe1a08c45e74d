"""What every request handler of the dashboard shares: the App, its console, the templates and
the guard, kept in the Starlette application's state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from ..console import Console
from .security import CSRF_FIELD, Guard

if TYPE_CHECKING:
    from ..app import App


@dataclass
class Dashboard:
    """What every request handler needs: the App, the templates and the guard."""

    app: App
    templates: Jinja2Templates
    guard: Guard

    @property
    def console(self) -> Console:
        """The operator's views of the App."""
        return Console(self.app)

    def render(
        self,
        request: Request,
        name: str,
        context: dict[str, Any] | None = None,
        status_code: int = 200,
    ) -> Response:
        """Render a template (autoescaped) with the page's common context."""
        return self.templates.TemplateResponse(request, name, context, status_code=status_code)

    def common(self, request: Request) -> dict[str, Any]:
        """Context every template gets: the CSRF token of the session, the mode, the schema."""
        sid = getattr(request.state, "sid", None)
        return {
            "csrf_field": CSRF_FIELD,
            "csrf": self.guard.csrf_token(sid) if sid else "",
            "read_only": self.guard.read_only,
            "auth": self.guard.token is not None and sid is not None,
            "schema": self.app.schema,
        }


def dashboard(request: Request) -> Dashboard:
    """The dashboard serving this request."""
    found: Dashboard = request.app.state.dashboard
    return found
