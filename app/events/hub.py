"""Wake-ups for waiting feed readers, within one process and across instances via Redis.

A notification carries no data, only "recipient R has something new": readers always
read the durable feed from their cursor. So a lost notification (Redis down, a missed
pub/sub message) costs latency, never an event: waiting readers re-check the feed on
their own, every `poll_without_redis` seconds while the pub/sub link is down and every
`poll_with_redis` seconds while it is up (cheap insurance against a dropped message).

The same channel carries "credential C was revoked" (logout, a device cut off, a password
change), so every instance closes the WebSockets and ends the long-polls opened with it at
once. A lost notice is caught by the connection's own periodic re-check of its credential.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import defaultdict
from dataclasses import dataclass

import redis.asyncio as aioredis

log = logging.getLogger("coffer.events")
CHANNEL = "coffer:events"


@dataclass
class Revocation:
    revoked: bool = False


class Hub:
    def __init__(
        self,
        redis_url: str | None,
        *,
        poll_with_redis: float = 10.0,
        poll_without_redis: float = 0.5,
    ) -> None:
        self.redis_url = redis_url
        self.poll_with_redis = poll_with_redis
        self.poll_without_redis = poll_without_redis
        self._waiters: dict[str, set[asyncio.Event]] = defaultdict(set)
        # Live connections by the credential that opened them: credential -> wake events.
        self._credentials: dict[str, dict[asyncio.Event, Revocation]] = defaultdict(dict)
        self._redis: aioredis.Redis | None = None
        self._listener: asyncio.Task[None] | None = None
        self._redis_down_until = 0.0
        self.connected = False  # is the pub/sub listener subscribed right now?

    # ------------------------------------------------------------- local waiting

    def subscribe(self, recipient: str) -> asyncio.Event:
        event = asyncio.Event()
        self._waiters[recipient].add(event)
        return event

    def unsubscribe(self, recipient: str, event: asyncio.Event) -> None:
        waiters = self._waiters.get(recipient)
        if waiters is not None:
            waiters.discard(event)
            if not waiters:
                del self._waiters[recipient]

    def notify_local(self, recipient: str) -> None:
        for event in self._waiters.get(recipient, ()):
            event.set()

    def notify_all_local(self) -> None:
        for waiters in self._waiters.values():
            for event in waiters:
                event.set()

    def watch_credential(self, credential_id: str, wake: asyncio.Event) -> Revocation:
        """Mark the returned Revocation (and set `wake`) when this credential is revoked."""
        revocation = Revocation()
        self._credentials[credential_id][wake] = revocation
        return revocation

    def unwatch_credential(self, credential_id: str, wake: asyncio.Event) -> None:
        watchers = self._credentials.get(credential_id)
        if watchers is not None:
            watchers.pop(wake, None)
            if not watchers:
                del self._credentials[credential_id]

    def _revoke_local(self, credential_ids: list[str]) -> None:
        for credential_id in credential_ids:
            for wake, revocation in self._credentials.get(credential_id, {}).items():
                revocation.revoked = True
                wake.set()

    async def credentials_revoked(self, credential_ids: list[str]) -> None:
        """Tell every instance that connections opened with these credentials must end."""
        if not credential_ids:
            return
        self._revoke_local(credential_ids)
        await self._publish({"x": credential_ids})

    async def wait(self, event: asyncio.Event, longest: float) -> bool:
        """Wait for a wake-up, at most `longest` seconds (less while Redis is down)."""
        poll = self.poll_with_redis if self.connected else self.poll_without_redis
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), max(0.0, min(longest, poll)))
        woken = event.is_set()
        event.clear()
        return woken

    # ------------------------------------------------------------- across instances

    async def notify(self, recipient: str) -> None:
        """Wake readers of `recipient` here and on every other instance."""
        self.notify_local(recipient)
        await self._publish({"r": recipient})

    async def _publish(self, message: dict[str, object]) -> None:
        if not self.redis_url or time.monotonic() < self._redis_down_until:
            return
        try:
            await asyncio.wait_for(self._client().publish(CHANNEL, json.dumps(message)), 1.0)
        except (OSError, TimeoutError, aioredis.RedisError) as exc:
            # Other instances fall back to polling; don't retry on every event meanwhile.
            self._redis_down_until = time.monotonic() + 2.0
            log.warning("event notification via Redis failed: %s", exc)

    def _client(self) -> aioredis.Redis:
        if self._redis is None:
            if not self.redis_url:
                raise RuntimeError("no Redis configured")
            self._redis = aioredis.from_url(
                self.redis_url, socket_connect_timeout=1, socket_timeout=None
            )
        return self._redis

    def start(self) -> None:
        if self.redis_url and self._listener is None:
            self._listener = asyncio.create_task(self._listen())

    async def _listen(self) -> None:
        backoff = 0.1
        while True:
            pubsub = None
            try:
                pubsub = self._client().pubsub(ignore_subscribe_messages=True)
                await pubsub.subscribe(CHANNEL)
                self.connected = True
                # Anything published while we were not subscribed is unknown: wake all.
                self.notify_all_local()
                backoff = 0.1
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        try:
                            body = json.loads(message["data"])
                            if "x" in body:
                                self._revoke_local([str(c) for c in body["x"]])
                            else:
                                self.notify_local(body["r"])
                        except (ValueError, KeyError, TypeError):
                            continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # connection lost: reconnect with backoff
                log.info("Redis pub/sub unavailable (%s); retrying in %.1fs", exc, backoff)
            finally:
                self.connected = False
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener
        if self._redis is not None:
            with contextlib.suppress(Exception):
                await self._redis.aclose()
