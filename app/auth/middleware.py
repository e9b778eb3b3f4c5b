"""Who is calling: resolve a bearer token or session cookie on every request.

The middleware only identifies (anonymous is allowed through with user None); the
`require_user` guard on the /api router decides, so a route opts out explicitly with
`opt={"public": True}` and never by forgetting something.
"""

from __future__ import annotations

from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send

from app.auth import service
from app.core.errors import Forbidden, Unauthorized, UnsupportedMediaType
from app.core.http import SAFE_METHODS, cross_site, has_body, media_type
from app.settings import Settings

SESSION_COOKIE = "coffer_session"
CSRF_COOKIE = "coffer_csrf"
CSRF_HEADER = "x-csrf-token"


class IdentityMiddleware(ASGIMiddleware):
    scopes = ("http", "websocket")  # type: ignore[assignment]

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        principal = None
        headers = dict(scope.get("headers") or [])
        client = scope.get("client")
        address = client[0] if client else "-"
        authz = headers.get(b"authorization", b"").decode("latin-1")
        if authz[:7].lower() == "bearer ":
            principal = await service.resolve_bearer(self.settings, authz[7:].strip(), address)
            if principal is None:
                # A wrong token is an error even on public routes: say so instead of
                # silently treating the caller as anonymous.
                scope["user"] = None
                scope["auth"] = "invalid"
                await next_app(scope, receive, send)
                return
        else:
            cookie = _cookie(headers.get(b"cookie", b"").decode("latin-1"), SESSION_COOKIE)
            if cookie:
                principal = await service.resolve_session(cookie, address)
        scope["user"] = principal.user if principal else None
        scope["auth"] = principal
        await next_app(scope, receive, send)


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


def require_user(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    if handler.opt.get("public"):
        return
    principal = connection.scope.get("auth")
    if not isinstance(principal, service.Principal):
        raise Unauthorized("sign in or send a valid bearer token")
    if (
        principal.via == "session"
        and connection.scope["type"] == "http"
        and connection.scope["method"] not in SAFE_METHODS
        and connection.headers.get(CSRF_HEADER) != principal.csrf_token
    ):
        raise Forbidden("missing or wrong CSRF token", code="csrf")


def refuse_forged_requests(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    """Unsafe API requests must come from our own pages (or a non-browser client) and, if
    they have a body, say it is JSON.

    A cross-site `<form enctype="text/plain">` can POST a JSON-looking body with a cookie
    attached: login CSRF (signing a victim into the attacker's account) and CSRF on any
    cookie-setting route. Browsers cannot send `application/json` cross-site without a
    CORS preflight, which we never answer, so insisting on it closes the class.
    The chunk PUT route takes raw bytes and is authorised by its URL signature instead.
    """
    scope = connection.scope
    path = scope.get("path", "")
    if scope["type"] != "http" or scope["method"] in SAFE_METHODS:
        return
    if not path.startswith("/api/") or path.startswith("/api/blob/"):
        return
    headers = connection.headers
    if cross_site(headers):
        raise Forbidden("this request must come from this site", code="cross_site")
    if has_body(headers) and media_type(headers) != "application/json":
        raise UnsupportedMediaType("send the body as application/json", code="not_json")
