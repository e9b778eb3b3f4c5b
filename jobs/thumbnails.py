"""The thumbnail worker: a second arq worker inside the worker process, on its own queue.

Why its own queue: arq runs jobs in queue order with one limit on concurrent jobs. A
folder of 500 photos opened in the grid queues 500 thumbnail jobs in a second; on the main
queue they would fill every job slot and delay event fan-out and the sweeps behind them
for minutes. Here they take at most `thumbnail_jobs` slots of their own (one renders
while the next one's bytes are read), and the main worker never waits for them.
It shares the main worker's start-up (database, blob store) and stops with it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from arq import create_pool
from arq.connections import RedisSettings
from arq.worker import Worker

from app.files import thumbnails
from app.files.imaging import Renderer
from app.settings import Settings
from jobs.outlast import OutlastingWorker


async def make_thumbnail(ctx: dict[str, Any], version_id: str, box: int) -> str:
    """Render and cache the thumbnail of one version's bytes (app/files/thumbnails.py)."""
    return await thumbnails.make_thumbnail(
        ctx["store"], ctx["renderer"], ctx["settings"], version_id, box
    )


class Thumbnailer:
    def __init__(self, ctx: dict[str, Any]) -> None:
        self.ctx = ctx
        self.worker: Worker | None = None
        self.renderer: Renderer | None = None

    async def start(self) -> None:
        settings: Settings = self.ctx["settings"]
        self.renderer = Renderer(
            max_pixels=settings.thumbnail_max_pixels,
            memory_bytes=settings.thumbnail_memory_bytes,
            timeout_seconds=settings.thumbnail_timeout_seconds,
        )
        pool = await create_pool(
            RedisSettings.from_dsn(settings.redis), default_queue_name=thumbnails.THUMBNAIL_QUEUE
        )
        self.worker = OutlastingWorker(
            functions=[make_thumbnail],
            queue_name=thumbnails.THUMBNAIL_QUEUE,
            redis_pool=pool,
            handle_signals=False,  # the main worker owns the signals and stops this one
            max_jobs=settings.thumbnail_jobs,
            # Reading up to thumbnail_max_bytes, waiting for the one render before it,
            # its own render: each bounded; this is the backstop.
            job_timeout=3 * settings.thumbnail_timeout_seconds + 60,
            # Results only block re-queueing the same key; the cached document is the result.
            keep_result=1,
            poll_delay=settings.arq_poll_delay,
            ctx={**self.ctx, "renderer": self.renderer},
        )
        self.worker.main_task = asyncio.create_task(self.worker.main())

    async def close(self) -> None:
        worker, self.worker = self.worker, None
        if worker is not None:
            running = [t for t in [worker.main_task, *worker.tasks.values()] if t is not None]
            for task in running:
                task.cancel()  # an interrupted job is simply asked for again
            await asyncio.gather(*running, return_exceptions=True)
            await worker.pool.close(close_connection_pool=True)
        if self.renderer is not None:
            await self.renderer.close()
