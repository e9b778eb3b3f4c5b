"""The change feed over HTTP (cursor reads, long-poll) and WebSocket (backlog, then push)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import msgspec
from litestar import Request, WebSocket, get, websocket
from litestar.exceptions import WebSocketDisconnect
from litestar.params import Parameter

from app.core.errors import BadRequest, Unauthorized
from app.events.feed import ChangeFeed, event_out
from app.events.hub import Hub
from app.protocol import HEARTBEAT, Feed
from app.settings import Settings

# Long-polls answer within this many seconds (proxies and browsers cut idle requests
# near 60 s).
MAX_WAIT = 55.0
# Whether the credential behind a connection still works (the auth domain provides it).
CredentialCheck = Callable[[Any], Awaitable[bool]]


async def _start_cursor(
    feed: ChangeFeed, recipient: str, cursor: str | None, since: str | None
) -> int | None:
    """The numeric cursor asked for; None for `latest`."""
    if cursor == "latest":
        return None
    if cursor is None and since:
        try:
            when = datetime.fromisoformat(since)
        except ValueError as exc:
            raise BadRequest("since must be an ISO-8601 timestamp", code="invalid_since") from exc
        if when.tzinfo is None:
            raise BadRequest("since needs a timezone (e.g. Z)", code="invalid_since")
        return await feed.cursor_at(recipient, when)
    try:
        value = int(cursor or 0)
    except ValueError as exc:
        raise BadRequest("cursor must be an integer or 'latest'", code="invalid_cursor") from exc
    if value < 0:
        raise BadRequest("cursor must not be negative", code="invalid_cursor")
    return value


@get("/api/file/events", tags=["events"])
async def read_events(
    request: Request,
    feed: ChangeFeed,
    hub: Hub,
    cursor: str | None = None,
    since: str | None = None,
    limit: int = Parameter(default=500, ge=1, le=1000),
    wait: float = Parameter(default=0, ge=0, le=MAX_WAIT),
) -> Feed:
    principal = request.scope["auth"]
    recipient = str(principal.user.id)
    start = await _start_cursor(feed, recipient, cursor, since)
    if start is None:
        return Feed(events=[], cursor=await feed.latest(recipient), has_more=False)
    deadline = time.monotonic() + wait
    wake = hub.subscribe(recipient)  # before reading, so no wake-up falls in between
    revocation = hub.watch_credential(principal.credential_id, wake)
    try:
        while True:
            if revocation.revoked:
                raise Unauthorized("this session or device token was revoked", code="revoked")
            events, new_cursor, has_more = await feed.read(recipient, start, limit)
            remaining = deadline - time.monotonic()
            if events or new_cursor != start or remaining <= 0:
                return Feed(
                    events=[event_out(e) for e in events],
                    cursor=new_cursor,
                    has_more=has_more,
                )
            await hub.wait(wake, remaining)
    finally:
        hub.unsubscribe(recipient, wake)
        hub.unwatch_credential(principal.credential_id, wake)


@websocket("/api/ws")
async def events_socket(
    socket: WebSocket,
    feed: ChangeFeed,
    hub: Hub,
    settings: Settings,
    credential_alive: CredentialCheck,
    cursor: str | None = None,
) -> None:
    principal = socket.scope["auth"]
    origin = socket.headers.get("origin")
    if (
        principal.via == "session"
        and origin
        and urlsplit(origin).netloc != socket.headers.get("host")
    ):
        # A cookie travels with cross-site WebSocket requests: refuse other origins.
        await socket.close(code=4403, reason="cross-origin")
        return
    recipient = str(principal.user.id)
    try:
        position = await _start_cursor(feed, recipient, cursor or "latest", None)
    except BadRequest as exc:
        await socket.close(code=4400, reason=exc.message)
        return
    if position is None:
        position = await feed.latest(recipient)
    await socket.accept()
    wake = hub.subscribe(recipient)
    revocation = hub.watch_credential(principal.credential_id, wake)
    gone = asyncio.Event()

    async def watch_client() -> None:
        # Clients may send pings; we only need to notice when they leave.
        try:
            while True:
                await socket.receive_data(mode="text")
        except (WebSocketDisconnect, RuntimeError):
            gone.set()
            wake.set()

    watcher = asyncio.create_task(watch_client())
    last_sent = time.monotonic()
    try:
        while not gone.is_set():
            if revocation.revoked:
                await socket.close(code=4401, reason="credential revoked")
                return
            events, position_after, has_more = await feed.read(recipient, position, 500)
            for event in events:
                await socket.send_data(msgspec.json.encode(event_out(event)).decode())
            if events:
                last_sent = time.monotonic()
            position = position_after
            if has_more:
                continue
            idle = time.monotonic() - last_sent
            heartbeat = settings.heartbeat_seconds
            if idle >= heartbeat:
                # The backstop for a revocation notice lost on the way (Redis down).
                if not await credential_alive(principal):
                    await socket.close(code=4401, reason="credential revoked")
                    return
                await socket.send_json({"type": HEARTBEAT, "cursor": position})
                last_sent = time.monotonic()
                idle = 0
            await hub.wait(wake, heartbeat - idle)
    except WebSocketDisconnect:
        pass
    finally:
        hub.unsubscribe(recipient, wake)
        hub.unwatch_credential(principal.credential_id, wake)
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await watcher
