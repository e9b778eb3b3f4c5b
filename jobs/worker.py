"""arq worker: the jobs and their cron schedule, and their shared start-up (MongoDB, store).

Jobs are idempotent: any may run twice or be interrupted and re-run by the next sweep.
`worker_settings(settings)` builds arq's settings class; nothing is read at import time.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from arq import cron
from arq.connections import RedisSettings

from app.core import failpoints
from app.core.ratelimit import forget_expired
from app.db import connect
from app.files.accounting import settle_claims
from app.files.context import FilesContext
from app.files.maintenance import expiry
from app.files.maintenance.gc import GarbageCollector, pause_file_for
from app.files.maintenance.retention import empty_trash, thin_versions
from app.files.maintenance.scrub import scrub
from app.files.recovery import finish_interrupted_writes
from app.files.thumbnails import collect_thumbnails
from app.files.tree import TreeService
from app.files.verify import verify_pending_hashes
from app.settings import Settings
from app.storage.factory import open_store
from app.wiring import feed_for, hub_for
from jobs.thumbnails import Thumbnailer

log = logging.getLogger("coffer.worker")


async def startup(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx["settings"]
    failpoints.configure(settings.failpoints)
    ctx["mongo"] = await connect(settings)
    ctx["store"] = await open_store(settings)
    ctx["hub"] = hub_for(settings)
    ctx["feed"] = feed_for(settings, ctx["hub"])
    ctx["tree"] = TreeService(FilesContext(settings, ctx["store"], ctx["feed"]))
    ctx["thumbnailer"] = Thumbnailer(ctx)  # its own arq queue (jobs/thumbnails.py)
    await ctx["thumbnailer"].start()
    log.info("worker ready")


async def shutdown(ctx: dict[str, Any]) -> None:
    await ctx["thumbnailer"].close()
    await ctx["hub"].close()
    await ctx["store"].close()
    await ctx["mongo"].close()


async def fan_out_change(ctx: dict[str, Any], source: str, doc_id: str, change_id: str) -> bool:
    """Deliver one change to every recipient (queued by the web after a write)."""
    registered = ctx["feed"].registry.sources[source]
    doc = await registered.model.get(registered.doc_id(doc_id))
    if doc is None or not doc.outbox_pending or not doc.outbox or doc.outbox["id"] != change_id:
        return False  # already delivered, or superseded (its successor flushed it first)
    await ctx["feed"].flush(source, doc_id, doc.outbox)
    return True


async def sweep_outboxes(ctx: dict[str, Any]) -> int:
    """Deliver changes whose fan-out was lost (crash, Redis or worker down)."""
    return await ctx["feed"].sweep(older_than=ctx["settings"].sweep_after_seconds)


async def finish_interrupted_ops(ctx: dict[str, Any]) -> int:
    """Complete commits and folder moves/trashes a crashed web process left half done, and
    settle the quota claims of commits it never decided."""
    settled = await settle_claims(ctx["settings"].claim_settle_seconds)
    return await finish_interrupted_writes() + settled


async def verify_hashes(ctx: dict[str, Any]) -> int:
    """Hash the stored bytes of large files whose content hash is still their uploader's
    claim; correct and announce any claim that was wrong (app/files/verify.py)."""
    return await verify_pending_hashes(ctx["store"], ctx["tree"])


async def expire_uploads(ctx: dict[str, Any]) -> int:
    """Drop upload sessions past their expiry, with their never-committed versions."""
    return await expiry.expire_uploads(ctx["store"]) + await expiry.expire_dav_uploads()


async def apply_retention(ctx: dict[str, Any]) -> dict[str, int]:
    """Thin old versions, empty the trash of items past retention and drop old password
    throttle counters (hourly)."""
    settings: Settings = ctx["settings"]
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
    settings: Settings = ctx["settings"]
    return await scrub(
        ctx["store"],
        bytes_per_second=settings.scrub_bytes_per_second,
        budget_seconds=settings.scrub_run_seconds if budget_seconds is None else budget_seconds,
    )


async def collect_garbage(
    ctx: dict[str, Any], grace_seconds: float | None = None
) -> dict[str, int]:
    """Delete chunks no version references and no upload used within the grace period."""
    settings: Settings = ctx["settings"]
    return await GarbageCollector(
        ctx["store"],
        grace_seconds=settings.gc_grace_seconds if grace_seconds is None else grace_seconds,
        pause_file=pause_file_for(settings.data_dir.resolve()),
        lease_seconds=settings.gc_lease_seconds,
    ).run()


async def remove_thumbnails(ctx: dict[str, Any]) -> dict[str, int]:
    """Delete cached thumbnails of content no version references any more (daily)."""
    return await collect_thumbnails()


def worker_settings(settings: Settings) -> type:
    """arq's settings class for a worker with these settings."""

    async def on_startup(ctx: dict[str, Any]) -> None:
        ctx["settings"] = settings
        await startup(ctx)

    class WorkerSettings:
        functions = [
            fan_out_change,
            sweep_outboxes,
            finish_interrupted_ops,
            verify_hashes,
            expire_uploads,
            apply_retention,
            scrub_chunks,
            collect_garbage,
            remove_thumbnails,
        ]
        cron_jobs = [
            cron(sweep_outboxes, second=set(range(0, 60, 2)), run_at_startup=True),
            cron(finish_interrupted_ops, second={0, 30}, run_at_startup=True),
            cron(verify_hashes, second=set(range(5, 60, 10)), run_at_startup=True),
            cron(expire_uploads, minute={7, 37}, second=0),
            cron(apply_retention, minute={17}, second=0),
            cron(scrub_chunks, minute=set(range(3, 60, 10)), second=0),
            cron(collect_garbage, hour={1, 7, 13, 19}, minute={47}, second=0),
            cron(remove_thumbnails, hour={3}, minute={53}, second=0),
        ]
        on_shutdown = shutdown
        redis_settings = RedisSettings.from_dsn(settings.redis)
        poll_delay = settings.arq_poll_delay
        max_jobs = 20
        job_timeout = 3600
        keep_result = 60

    WorkerSettings.on_startup = on_startup  # type: ignore[attr-defined]
    return WorkerSettings
