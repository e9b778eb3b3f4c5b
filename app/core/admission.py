"""Admission control: an overloaded web instance answers 503 + Retry-After, never a hang.

Each instance admits at most `limit` HTTP requests at once; a request beyond that waits
up to `wait_seconds` for a place, then is refused with 503 `overloaded` and `Retry-After`,
so clients (the sync client, the browser, a load balancer) back off or go to another
instance instead of timing out with no answer. Requests that are idle by design are not
counted: WebSockets, long-polls of the event feed (`wait` > 0), and the health and
metrics probes (a load balancer must still see an overloaded instance as alive). A place
is held until the response is fully sent, so slow downloads count as the work they are.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from litestar.types import ASGIApp, Receive, Scope, Send

from app.core.errors import send_error

EXEMPT_PATHS = ("/healthz", "/readyz", "/metrics")
FEED_PATH = "/api/file/events"


def idle_by_design(scope: Scope) -> bool:
    """Requests that wait on purpose and must not take a place (pure: unit-tested)."""
    path = scope.get("path", "")
    if path in EXEMPT_PATHS:
        return True
    if path == FEED_PATH:
        query = scope.get("query_string", b"").decode("latin-1")
        for part in query.split("&"):
            name, _, value = part.partition("=")
            if name == "wait":
                try:
                    return float(value) > 0
                except ValueError:
                    return False
    return False


def admission(limit: int, wait_seconds: float) -> Callable[[ASGIApp], ASGIApp]:
    """ASGI middleware factory (0: no limit). Litestar wraps each route in its own copy
    of a middleware, so the places are made here, once, and shared by every route."""
    places = asyncio.Semaphore(max(limit, 1))

    def middleware(app: ASGIApp) -> ASGIApp:
        if limit <= 0:
            return app

        async def handle(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http" or idle_by_design(scope):
                await app(scope, receive, send)
                return
            try:
                await asyncio.wait_for(places.acquire(), wait_seconds)
            except TimeoutError:
                await send_error(
                    send,
                    503,
                    "overloaded",
                    "this server is busy; try again in a moment",
                    {"Retry-After": "2"},
                )
                return
            try:
                await app(scope, receive, send)
            finally:
                places.release()

        return handle

    return middleware
