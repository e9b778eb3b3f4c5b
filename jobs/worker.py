"""arq worker: the jobs and cron schedule, and their shared start-up (MongoDB, blob store).

Jobs are idempotent: any may run twice or be interrupted and re-run by the next sweep.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from arq import cron
from arq.connections import RedisSettings
from beanie import PydanticObjectId

from app.core.query import match
from app.core.ratelimit import forget_expired
from app.db import connect
from app.events.hub import Hub
from app.events.service import OUTBOX_SOURCES, ChangeFeed, outbox_id
from app.files.gc import GarbageCollector, pause_file_for
from app.files.integrity import scrub
from app.files.models import FileNode, FileVersion, UploadSession
from app.files.retention import empty_trash, thin_versions
from app.files.service import delete_chunk_maps, finish_commit, finish_interrupted_writes
from app.settings import get_settings
from app.storage.factory import open_store

log = logging.getLogger("coffer.worker")
settings = get_settings()


async def startup(ctx: dict[str, Any]) -> None:
    ctx["mongo"] = await connect(settings)
    ctx["store"] = await open_store(settings)
    ctx["hub"] = Hub(settings.redis)
    ctx["feed"] = ChangeFeed(ctx["hub"])


async def shutdown(ctx: dict[str, Any]) -> None:
    await ctx["hub"].close()
    await ctx["store"].close()
    await ctx["mongo"].close()


async def fan_out_change(ctx: dict[str, Any], source: str, doc_id: str, change_id: str) -> bool:
    """Deliver one change to every recipient (queued by the web after a write)."""
    doc = await OUTBOX_SOURCES[source].get(outbox_id(source, doc_id))
    if doc is None or not doc.outbox_pending or not doc.outbox or doc.outbox["id"] != change_id:
        return False  # already delivered, or superseded (its successor flushed it first)
    await ctx["feed"].flush(source, doc_id, doc.outbox)
    return True


async def sweep_outboxes(ctx: dict[str, Any]) -> int:
    """Deliver changes whose fan-out was lost (crash, Redis or worker down)."""
    return await ctx["feed"].sweep(older_than=2.0)


async def finish_interrupted_ops(ctx: dict[str, Any]) -> int:
    """Complete commits and folder moves/trashes a crashed web process left half done."""
    return await finish_interrupted_writes()


async def expire_uploads(ctx: dict[str, Any]) -> int:
    """Drop upload sessions past their expiry, with their never-committed versions.

    The chunks they stored stay: they are owned, deduplicated data that a later upload
    may reuse, and only garbage collection decides when nothing references them.
    """
    expired = 0
    async for session in UploadSession.find(UploadSession.expires_at < datetime.now(UTC)):
        node = await FileNode.get(PydanticObjectId(session.file_id))
        if node is not None:
            await finish_commit(node)  # a head version is never "pending" past this
        version = await FileVersion.get(PydanticObjectId(session.version_id))
        if version is not None and version.state == "pending":
            await delete_chunk_maps([version])
            await version.delete()
        if node is not None and not node.committed:
            others = [
                s
                for s in await UploadSession.find(match(file_id=session.file_id)).to_list()
                if s.id != session.id
            ]
            if not others:
                await node.delete()
        await ctx["store"].discard_upload(session.owner_id, str(session.id))
        await session.delete()
        expired += 1
    return expired


async def apply_retention(ctx: dict[str, Any]) -> dict[str, int]:
    """Thin old versions, empty the trash of items past retention and drop old password
    throttle counters (hourly)."""
    now = datetime.now(UTC)
    return {
        "versions_dropped": await thin_versions(
            now, timedelta(days=settings.version_retention_days), settings.keep_min_versions
        ),
        "trash_purged": await empty_trash(now, timedelta(days=settings.trash_retention_days)),
        "throttles_forgotten": await forget_expired(),
    }


async def scrub_chunks(ctx: dict[str, Any], budget_seconds: float | None = None) -> dict[str, int]:
    """Re-hash stored chunks, rate-limited, resuming where the last run stopped."""
    return await scrub(
        ctx["store"],
        bytes_per_second=settings.scrub_bytes_per_second,
        budget_seconds=settings.scrub_run_seconds if budget_seconds is None else budget_seconds,
    )


async def collect_garbage(
    ctx: dict[str, Any], grace_seconds: float | None = None
) -> dict[str, int]:
    """Delete chunks no version references and no upload used within the grace period."""
    return await GarbageCollector(
        ctx["store"],
        grace_seconds=settings.gc_grace_seconds if grace_seconds is None else grace_seconds,
        pause_file=pause_file_for(settings.data_dir.resolve()),
        lease_seconds=settings.gc_lease_seconds,
    ).run()


class WorkerSettings:
    functions = [
        fan_out_change,
        sweep_outboxes,
        finish_interrupted_ops,
        expire_uploads,
        apply_retention,
        scrub_chunks,
        collect_garbage,
    ]
    cron_jobs = [
        cron(sweep_outboxes, second=set(range(0, 60, 2)), run_at_startup=True),
        cron(finish_interrupted_ops, second={0, 30}, run_at_startup=True),
        cron(expire_uploads, minute={7, 37}, second=0),
        cron(apply_retention, minute={17}, second=0),
        cron(scrub_chunks, minute=set(range(3, 60, 10)), second=0),
        cron(collect_garbage, hour={1, 7, 13, 19}, minute={47}, second=0),
    ]
    on_startup = startup
    on_shutdown = shutdown
    redis_settings = RedisSettings.from_dsn(settings.redis)
    poll_delay = settings.arq_poll_delay
    max_jobs = 20
    job_timeout = 3600
    keep_result = 60
