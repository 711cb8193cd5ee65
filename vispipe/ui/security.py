"""What keeps other web pages and other names out of the UI.

Every request passes `RequestGuard`, an ASGI middleware, in this order:

1. `Host` must be a name the server was started for (`UISettings.allowed_hosts`):
   a page of another site whose name was re-pointed at this machine (DNS
   rebinding) is refused.
2. With a token, the request needs it: `Authorization: Bearer TOKEN`, the
   `vispipe_token` cookie, or `?token=TOKEN` on a GET, which sets the cookie and
   redirects to the same URL without the token (so it leaves the address bar).
3. A state-changing request (POST ...) from a browser must come from this
   server's own pages: a same-origin `Origin` (or, without one, `Referer`), and
   the session's CSRF token (`require_csrf`). A script that sends the token in
   `Authorization` is no browser page and needs neither.
4. Every response gets `SECURITY_HEADERS`: a Content-Security-Policy without
   inline script, no framing, no MIME sniffing, no referrer to other sites.

The CSRF token is an HMAC of the `vispipe_session` cookie (random, HttpOnly,
SameSite=Strict) under a key made at start (`app.state.csrf_key`): pages
carry it in a hidden form field and a `<meta>` tag that `static/app.js` sends
as `X-CSRF-Token`.

Example:

```python
app = FastAPI(dependencies=[Depends(require_csrf)])
app.state.csrf_key = secrets.token_bytes(32)
app.add_middleware(RequestGuard, settings=settings)
```
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any
from urllib.parse import urlencode, urlsplit

from fastapi import HTTPException, Request
from starlette.datastructures import MutableHeaders
from starlette.requests import HTTPConnection
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vispipe.ui.settings import UISettings

__all__ = ["TOKEN_COOKIE", "SESSION_COOKIE", "CSRF_FIELD", "CSRF_HEADER", "SECURITY_HEADERS",
           "RequestGuard", "require_csrf", "csrf_token", "remember_session"]

TOKEN_COOKIE = "vispipe_token"
SESSION_COOKIE = "vispipe_session"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
_SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
# `same-origin`, not `no-referrer`: under `no-referrer` Chromium sends
# `Origin: null` with a page's own form posts, which the origin check must
# refuse. No URL of the UI is ever sent to another site either way; the one
# URL that holds the token gets `no-referrer` (`_TOKEN_REDIRECT_HEADERS`).
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"),
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
}
_TOKEN_REDIRECT_HEADERS = {"referrer-policy": "no-referrer", "cache-control": "no-store"}
_COOKIE = {"httponly": True, "samesite": "strict", "path": "/"}


def _host_name(host: str) -> str:
    """The name part of a `Host` value: no port, no IPv6 brackets, lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host[1:]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _origin_of(url: str) -> tuple[str, int] | None:
    """(host, port) of an http(s) URL, such as an `Origin` or `Referer`; else None."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not host or parts.scheme not in ("http", "https"):
        return None
    return host, port or (443 if parts.scheme == "https" else 80)


def csrf_token(request: Request) -> str:
    """The CSRF token of the request's session, for a page's forms and `<meta>` tag.

    A browser without a session cookie gets a new session: `remember_session`
    sets its cookie on the page.
    """
    session = request.cookies.get(SESSION_COOKIE) or getattr(request.state, "new_session", None)
    if not session:
        session = request.state.new_session = secrets.token_hex(16)
    return _sign(request.app.state.csrf_key, session)


def remember_session(request: Request, response: Response) -> None:
    """Sets the cookie of a session that `csrf_token` started for this request."""
    session = getattr(request.state, "new_session", None)
    if session:
        response.set_cookie(SESSION_COOKIE, session, **_COOKIE)


def _sign(key: bytes, session: str) -> str:
    return hmac.new(key, session.encode(), hashlib.sha256).hexdigest()


async def require_csrf(request: Request) -> None:
    """Refuses (403) a browser's state-changing request without its session's CSRF token.

    Used as a dependency of every route; safe methods and requests that
    carry the token in `Authorization` (scripts, not pages) pass.
    """
    if request.method in _SAFE_METHODS or request.scope.get("state", {}).get("bearer"):
        return
    offered = request.headers.get(CSRF_HEADER)
    if offered is None:
        form = await request.form()
        value = form.get(CSRF_FIELD)
        offered = value if isinstance(value, str) else ""
    session = request.cookies.get(SESSION_COOKIE, "")
    expected = _sign(request.app.state.csrf_key, session) if session else ""
    if not expected or not hmac.compare_digest(offered.encode(), expected.encode()):
        raise HTTPException(403, "The form's CSRF token is missing or out of date; expected "
                                 "the token of a page of this server (reload the page and "
                                 "submit again).")


class RequestGuard:
    """ASGI middleware: Host, token, same-origin checks and security headers.

    Args:
        app: The application.
        settings: The UI settings (token, allowed hosts).
    """

    def __init__(self, app: ASGIApp, settings: UISettings):
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})  # "bearer": authenticated by header

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        refusal = self._check(HTTPConnection(scope), state)
        if refusal is not None:
            await refusal(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)

    def _check(self, conn: HTTPConnection, state: dict[str, Any]) -> Response | None:
        """The refusal (or the token redirect) for this request; None to let it through."""
        host = conn.headers.get("host", "")
        allowed = self.settings.allowed_hosts
        if "*" not in allowed and _host_name(host) not in allowed:
            return PlainTextResponse(
                f"vispipe ui: Host {host!r} is not a name this server was started for "
                f"(expected one of {', '.join(allowed)}); a page reaching it under another "
                "name is refused. Start `vispipe ui --allowed-host NAME` to use that name.",
                status_code=400)
        token = self.settings.token
        if token:
            refusal = self._check_token(conn, token, state)
            if refusal is not None:
                return refusal
        if conn.scope["method"] not in _SAFE_METHODS and not state.get("bearer"):
            return self._check_origin(conn, host)
        return None

    def _check_token(self, conn: HTTPConnection, token: str,
                     state: dict[str, Any]) -> Response | None:
        header = conn.headers.get("authorization", "")
        if header[:7].lower() == "bearer ":
            if _same(header[7:], token):
                state["bearer"] = True
                return None
            return _unauthorized(conn, "the Authorization header's token is not this server's")
        offered = conn.query_params.get("token")
        if offered is not None and conn.scope["method"] in ("GET", "HEAD"):
            if not _same(offered, token):
                return _unauthorized(conn, "the URL's token is not this server's")
            # Into a cookie, and out of the address bar (and of history).
            query = urlencode([(k, v) for k, v in conn.query_params.multi_items() if k != "token"])
            response = RedirectResponse(conn.url.path + (f"?{query}" if query else ""),
                                        status_code=303, headers=_TOKEN_REDIRECT_HEADERS)
            response.set_cookie(TOKEN_COOKIE, token, **_COOKIE)
            return response
        if _same(conn.cookies.get(TOKEN_COOKIE, ""), token):
            return None
        return _unauthorized(conn, "no token was given")

    @staticmethod
    def _check_origin(conn: HTTPConnection, host: str) -> Response | None:
        """A browser's state-changing request must come from this server's own pages."""
        scheme = conn.url.scheme
        own = _origin_of(f"{scheme}://{host}")
        sent = conn.headers.get("origin")
        what = "Origin"
        if sent is None:
            sent, what = conn.headers.get("referer"), "Referer"
        if sent is not None and own is not None and _origin_of(sent) == own:
            return None
        told = f"{what} {sent!r}" if sent is not None else "no Origin or Referer header"
        return PlainTextResponse(
            f"vispipe ui: cross-site request refused: it has {told}; expected one from this "
            f"server's own pages ({scheme}://{host}).", status_code=403)


def _same(offered: str, token: str) -> bool:
    return hmac.compare_digest(offered.encode(), token.encode())


_LOGIN_HELP = ("Open the URL that `vispipe ui` printed (it ends in ?token=...), or send "
               "`Authorization: Bearer TOKEN`.")


def _unauthorized(conn: HTTPConnection, why: str) -> Response:
    """401. A page opened from another site lacks the SameSite=Strict cookie:
    it reloads itself once, as this site, and then has it."""
    if (conn.headers.get("sec-fetch-site") == "cross-site"
            and conn.headers.get("sec-fetch-mode") == "navigate"
            and conn.scope["method"] == "GET"):
        return HTMLResponse('<!doctype html><meta http-equiv="refresh" content="0">'
                            f"<p>vispipe ui: a valid token is required. {_LOGIN_HELP}</p>",
                            status_code=401)
    return PlainTextResponse(f"vispipe ui: a valid token is required ({why}). {_LOGIN_HELP}",
                             status_code=401)
