"""Access control for the dashboard: the access token, sessions, CSRF, and the headers that keep
run payloads inert.

- Without a token the server only listens on loopback (the CLI refuses anything else), and only
  answers requests whose Host is a loopback name, so a web page elsewhere cannot reach it by
  DNS rebinding.
- With a token, every request needs it: a session cookie set by the login form (HttpOnly,
  SameSite=Strict) or an ``Authorization: Bearer <token>`` header.
- Every session has a CSRF token (an HMAC of the session id), sent in a hidden field of each
  action form and checked on every POST; a POST whose Origin is another site is refused too.
- Every page is sent with a Content-Security-Policy that allows scripts from the dashboard's own
  /static only, so even a payload that escaped escaping could not run.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import Any
from urllib.parse import quote, urlsplit

from starlette.datastructures import FormData, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import is_loopback

SESSION_COOKIE = "durably_session"
SESSION_TTL = 12 * 3600
CSRF_FIELD = "csrf_token"
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
}
# Reachable without a session: the login form and the static files it uses.
PUBLIC_PATHS = ("/login", "/favicon.ico")


class Guard:
    """The dashboard's secrets and checks, one per server process.

    Sessions are signed with a key made at start-up, so restarting the dashboard logs everyone
    out, and a stolen cookie dies with the process that issued it.
    """

    def __init__(self, token: str | None, read_only: bool) -> None:
        self.token = token
        self.read_only = read_only
        self._key = secrets.token_bytes(32)

    def _mac(self, purpose: str, value: str) -> str:
        return hmac.new(self._key, f"{purpose}:{value}".encode(), hashlib.sha256).hexdigest()

    def new_session(self) -> tuple[str, str]:
        """A new session: (its id, the cookie value that proves it)."""
        body = f"{secrets.token_urlsafe(18)}.{int(time.time())}"
        return body.split(".")[0], f"{body}.{self._mac('session', body)}"

    def session_id(self, cookie: str | None) -> str | None:
        """The session id of a cookie this process signed and that has not expired."""
        if not cookie or cookie.count(".") != 2:
            return None
        sid, issued, mac = cookie.split(".")
        if not hmac.compare_digest(mac, self._mac("session", f"{sid}.{issued}")):
            return None
        if not issued.isdigit() or time.time() - int(issued) > SESSION_TTL:
            return None
        return sid

    def csrf_token(self, sid: str) -> str:
        """The CSRF token of a session (what its forms must send back)."""
        return self._mac("csrf", sid)

    def csrf_ok(self, sid: str | None, submitted: Any) -> bool:
        """True when ``submitted`` is the CSRF token of session ``sid``."""
        if sid is None or not isinstance(submitted, str):
            return False
        return hmac.compare_digest(submitted, self.csrf_token(sid))

    def token_ok(self, candidate: str | None) -> bool:
        """True when ``candidate`` is the access token (compared in constant time)."""
        if self.token is None or candidate is None:
            return False
        digest = hashlib.sha256
        return hmac.compare_digest(
            digest(candidate.encode()).digest(), digest(self.token.encode()).digest()
        )

    def bearer_ok(self, authorization: str | None) -> bool:
        """True for an ``Authorization: Bearer <token>`` header carrying the access token."""
        scheme, _, credentials = (authorization or "").partition(" ")
        return scheme.lower() == "bearer" and self.token_ok(credentials.strip())


def session_cookie(value: str, secure: bool, max_age: int = SESSION_TTL) -> str:
    """A Set-Cookie value: HttpOnly (no script reads it), SameSite=Strict (no other site's page
    sends it)."""
    cookie = f"{SESSION_COOKIE}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict"
    return cookie + "; Secure" if secure else cookie


def safe_next(target: str | None) -> str:
    """Where to go after logging in: a path of this site only (never //other.host/...)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


class GuardMiddleware:
    """Checks Host, authentication and Origin on every request; adds the security headers and,
    when needed, a fresh session cookie to every response."""

    def __init__(self, app: ASGIApp, guard: Guard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        guard = self.guard
        sid = guard.session_id(request.cookies.get(SESSION_COOKIE))
        bearer = guard.bearer_ok(request.headers.get("authorization"))
        new_cookie = None
        if sid is None and guard.token is None:
            sid, new_cookie = guard.new_session()
        send = _with_headers(send, scope, new_cookie)
        refusal = self._refusal(request, authenticated=sid is not None or bearer)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        scope.setdefault("state", {}).update(sid=sid, bearer=bearer, guard=guard)
        await self.app(scope, receive, send)

    def _refusal(self, request: Request, authenticated: bool) -> Response | None:
        if self.guard.token is None and not is_loopback(request.url.hostname or ""):
            return PlainTextResponse("this dashboard only answers to localhost", 421)
        if request.method == "POST" and not _same_origin(request):
            return PlainTextResponse("refused: the form was posted from another site", 403)
        path = request.url.path
        if self.guard.token is None or authenticated:
            return None
        if path.startswith("/static/") or path in PUBLIC_PATHS:
            return None
        if request.headers.get("hx-request"):
            return PlainTextResponse("log in again", 401, headers={"HX-Redirect": "/login"})
        if request.method == "GET":
            target = path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse("/login?next=" + quote(target, safe=""), 303)
        return PlainTextResponse(
            "authentication required: log in at /login or send Authorization: Bearer <token>", 401
        )


def _with_headers(send: Send, scope: Scope, new_cookie: str | None) -> Send:
    secure = scope.get("scheme") == "https"
    static = str(scope.get("path", "")).startswith("/static/")
    started = time.perf_counter()

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = MutableHeaders(scope=message)
            # Pages are rendered whole before they start, so this is the server's full time.
            headers["server-timing"] = f"app;dur={(time.perf_counter() - started) * 1000:.1f}"
            for name, value in SECURITY_HEADERS.items():
                headers[name] = value
            if not static:
                headers["cache-control"] = "no-store"
            if new_cookie is not None:
                headers.append("set-cookie", session_cookie(new_cookie, secure))
        await send(message)

    return sending


def _same_origin(request: Request) -> bool:
    # Browsers send Origin with every POST; a client that sends none still needs the CSRF token.
    origin = request.headers.get("origin")
    if origin is None:
        return True
    parts = urlsplit(origin)
    return parts.netloc != "" and parts.netloc == request.headers.get("host")


async def checked_form(request: Request) -> FormData:
    """The posted form, once its CSRF token matched the session's (bearer clients need none:
    a browser never adds that header by itself, so no other site can forge it)."""
    form = await request.form()
    state = request.state
    if not state.bearer and not state.guard.csrf_ok(state.sid, form.get(CSRF_FIELD)):
        raise HTTPException(403, "refused: missing or wrong CSRF token; reload the page and retry")
    return form
