"""Following the server's change feed: the WebSocket while it works, long-poll otherwise.

Events arrive in order after the cursor kept in the sync state (`meta.cursor`); each batch
is handed to a callback together with the cursor after it, and the callback moves the
stored cursor on once the batch is applied, so a crash replays events rather than skips
them. Heartbeats on the socket carry the cursor too (no events for us meanwhile).
When the socket cannot connect, the feed is long-polled for a minute before the socket
is tried again; an unreachable server is retried with backoff.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import httpx
import msgspec

from app.protocol import HEARTBEAT, Event, Feed
from client.api import CofferClient
from client.errors import ApiError
from client.state import SyncState

# Events with the feed's cursor after them.
EventsHandler = Callable[[list[Event], str], Awaitable[None]]

CURSOR = "cursor"  # the sync state's meta key


class FeedFollower:
    """Follows the feed of the account behind `api`, from the cursor in `state`."""

    LONG_POLL_SECONDS = 60.0  # then the socket is tried again
    BATCH = 1000  # events handled together at most
    POLL_WAIT = 25  # seconds the server holds one long-poll
    POLL_TIMEOUT = 40  # seconds we wait for its answer

    def __init__(
        self,
        api: CofferClient,
        state: SyncState,
        on_events: EventsHandler,
        log: Callable[[str], None],
    ) -> None:
        self.api = api
        self.state = state
        self.on_events = on_events
        self.log = log

    def cursor(self) -> str:
        return self.state.get_meta(CURSOR) or "latest"

    async def follow(self) -> None:
        """Follow the feed until cancelled."""
        delay = 0.5
        while True:
            try:
                await self.follow_socket()
                delay = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.log(f"push channel unavailable ({exc}); long-polling")
                try:
                    polled = await self.long_poll_for(self.LONG_POLL_SECONDS)
                except Exception as poll_exc:
                    # Keep following: a feed that stopped would leave only the rescans.
                    self.log(f"feed error ({poll_exc}); retrying")
                    polled = False
                if not polled:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 30)

    async def follow_socket(self) -> None:
        from websockets.asyncio.client import connect  # only live sync needs it

        url = self.api.socket_url("/api/ws")
        async with connect(
            f"{url}?cursor={self.cursor()}",
            additional_headers=self.api.auth_headers,
            open_timeout=10,
        ) as socket:
            while True:
                # Events come one per message; whatever has already arrived is handled as
                # one batch (1,000 new files: a handful of batch downloads, not 1,000).
                batch = [json.loads(await socket.recv())]
                while len(batch) < self.BATCH:
                    try:
                        batch.append(json.loads(await asyncio.wait_for(socket.recv(), 0.01)))
                    except TimeoutError:
                        break
                events = [msgspec.convert(m, Event) for m in batch if m.get("type") != HEARTBEAT]
                if events:
                    await self.on_events(events, str(events[-1].seq))
                elif batch:
                    self.state.set_meta(CURSOR, str(batch[-1]["cursor"]))

    async def long_poll_for(self, seconds: float) -> bool:
        """Long-poll for a while (then the socket is tried again); False if unreachable."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while loop.time() < deadline:
            try:
                body = await self.api.events(
                    self.cursor(), wait=self.POLL_WAIT, http_timeout=self.POLL_TIMEOUT
                )
            except (httpx.HTTPError, ApiError):
                return False
            page = msgspec.convert(body, Feed)
            await self.on_events(page.events, str(page.cursor))
        return True
