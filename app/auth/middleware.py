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
from app.errors import Forbidden, Unauthorized

SESSION_COOKIE = "coffer_session"
CSRF_COOKIE = "coffer_csrf"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


class IdentityMiddleware(ASGIMiddleware):
    scopes = ("http", "websocket")  # type: ignore[assignment]

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        principal = None
        headers = dict(scope.get("headers") or [])
        authz = headers.get(b"authorization", b"").decode("latin-1")
        if authz[:7].lower() == "bearer ":
            principal = await service.resolve_bearer(authz[7:].strip())
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
                principal = await service.resolve_session(cookie)
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
