"""The scrub: re-hash every stored chunk, slowly, and record what went bad.

Runs in the worker every 10 minutes, reading at most `scrub_bytes_per_second` for at most
`scrub_run_seconds`; it walks the chunks in (owner, sha256) order and saves its cursor
after every batch, so a restarted worker resumes where the last run stopped.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from app.core.clock import now_ms
from app.core.failpoints import failpoint
from app.core.query import match
from app.db.files import MaintenanceState, StoredChunk
from app.files.integrity import hash_in_store, heal, mark_chunk
from app.storage.base import BlobStore


async def scrub(
    store: BlobStore, *, bytes_per_second: int, budget_seconds: float
) -> dict[str, int]:
    """Re-hash stored chunks in (owner, sha256) order from where the last run stopped.

    Reads at most `bytes_per_second` and stops after `budget_seconds`; the cursor
    ("<owner>:<sha256>", the chunk's `_id`) is saved after every batch, so a killed run
    loses at most one batch of work.
    """
    coll = MaintenanceState.get_pymongo_collection()
    await coll.update_one({"_id": "scrub"}, {"$setOnInsert": {"cursor": ""}}, upsert=True)
    state = await coll.find_one({"_id": "scrub"}) or {}
    cursor: str = state.get("cursor", "")
    stats = {"checked": 0, "bytes": 0, "corrupt": 0, "missing": 0, "recovered": 0, "passes": 0}
    started = time.monotonic()
    deadline = started + budget_seconds
    while time.monotonic() < deadline:
        batch = await _next_chunks(cursor, 100)
        if not batch:
            cursor = ""
            stats["passes"] += 1
            await coll.update_one(
                {"_id": "scrub"},
                {"$set": {"cursor": "", "last_pass_ms": now_ms()}, "$inc": {"passes": 1}},
            )
            break
        for doc in batch:
            cursor = doc["_id"]
            if doc.get("state") == "deleting":
                continue
            await _scrub_one(store, doc, stats)
            # Pace the reads: never more than bytes_per_second on average.
            ahead = stats["bytes"] / bytes_per_second - (time.monotonic() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)
            if time.monotonic() >= deadline:
                break
        await coll.update_one({"_id": "scrub"}, {"$set": {"cursor": cursor}})
        await failpoint("scrub.batch_saved")
    return stats


async def _next_chunks(cursor: str, limit: int) -> list[dict[str, Any]]:
    """The chunks after `cursor` in (owner, sha256) order, through the (owner_id, sha256)
    index: an `_id` range would make the embedded server read every chunk per batch."""
    chunks = StoredChunk.get_pymongo_collection()
    owner, _, sha = cursor.partition(":")
    if owner:
        batch = (
            await chunks.find(match(owner_id=owner, sha256={"$gt": sha}))
            .sort("sha256", 1)
            .limit(limit)
            .to_list()
        )
        if batch:
            return batch
    following = (
        await chunks.find({"owner_id": {"$gt": owner}}, {"owner_id": 1})
        .sort("owner_id", 1)
        .limit(1)
        .to_list()
    )
    if not following:
        return []
    return (
        await chunks.find(match(owner_id=following[0]["owner_id"]))
        .sort("sha256", 1)
        .limit(limit)
        .to_list()
    )


async def _scrub_one(store: BlobStore, doc: dict[str, Any], stats: dict[str, int]) -> None:
    owner, sha, size = doc["owner_id"], doc["sha256"], doc["size"]
    found = await hash_in_store(store, owner, sha, size)
    stats["checked"] += 1
    stats["bytes"] += size
    was = doc.get("state", "stored")
    if found == was:
        if found == "stored" and not doc.get("verified"):
            await StoredChunk.get_pymongo_collection().update_one(
                {"_id": doc["_id"], "put_ms": doc.get("put_ms", 0)}, {"$set": {"verified": True}}
            )
        return
    if found == "stored":
        # Good bytes where the record said bad (an operator put the blob back, or a PUT
        # raced this read): believe the bytes and heal.
        result = await StoredChunk.get_pymongo_collection().update_one(
            {"_id": doc["_id"], "state": was}, {"$set": {"state": "stored", "verified": True}}
        )
        if result.modified_count:
            stats["recovered"] += 1
            await heal(owner)
        return
    if was != "stored":  # e.g. an adopted blob that turns out bad: no file counts on it
        await StoredChunk.get_pymongo_collection().update_one(
            {"_id": doc["_id"], "state": was}, {"$set": {"state": found}}
        )
    elif await mark_chunk(owner, sha, found, seen_put_ms=doc.get("put_ms", 0)):
        stats[found] += 1
