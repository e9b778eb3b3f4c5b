"""Queueing fan-out jobs on arq, without ever making a write wait on a dead Redis."""

from __future__ import annotations

import asyncio
import logging
import time

from arq import create_pool
from arq.connections import ArqRedis, RedisSettings

log = logging.getLogger("coffer.events")


class JobQueue:
    def __init__(self, redis_url: str) -> None:
        self.settings = RedisSettings.from_dsn(redis_url)
        self.settings.conn_timeout = 1
        self.settings.conn_retries = 0
        self._pool: ArqRedis | None = None
        self._down_until = 0.0

    async def enqueue_fanout(self, source: str, doc_id: str, change_id: str) -> bool:
        """True if queued (or already queued); False when Redis cannot take it now (the
        sweeper will pick it up)."""
        return await self.enqueue(
            "fan_out_change", source, doc_id, change_id, job_id=f"fanout:{change_id}"
        )

    async def enqueue(
        self, function: str, *args: object, job_id: str, queue: str | None = None
    ) -> bool:
        """Queue `function(*args)` once per `job_id` (on arq's `queue`, default the main
        one). True if queued or already queued; False when Redis cannot take it now."""
        if time.monotonic() < self._down_until:
            return False
        try:
            if self._pool is None:
                self._pool = await asyncio.wait_for(create_pool(self.settings), 2)
            await asyncio.wait_for(
                self._pool.enqueue_job(function, *args, _job_id=job_id, _queue_name=queue), 2
            )
            return True
        except Exception as exc:  # Redis down or slow: whoever asked tries again later
            self._down_until = time.monotonic() + 2.0
            log.warning("Redis unavailable for jobs (%s); %s left for later", exc, function)
            if self._pool is not None:
                pool, self._pool = self._pool, None
                try:
                    await pool.aclose()
                except Exception:  # already broken
                    log.debug("closing broken arq pool failed", exc_info=True)
            return False

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()
