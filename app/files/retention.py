"""Retention: thin old versions (as Nextcloud does) and empty the trash after a while.

Thinning keeps every version of the last day, one per hour for the last week, one per
day up to the retention limit, nothing older; and always the newest `keep_min` versions
and the head. Dropping a version deletes its metadata only; its chunks stay until garbage
collection finds nothing else references them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from beanie import PydanticObjectId

from app.files.history import HistoryService
from app.files.models import ChunkMapPage, FileNode, FileVersion
from app.files.service import as_utc

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


def versions_to_drop(
    versions: Sequence[tuple[int, datetime]],
    now: datetime,
    retention: timedelta,
    keep_min: int,
) -> set[int]:
    """Which version numbers to drop, given (number, committed_at) of every version."""
    newest_first = sorted(versions, key=lambda v: v[0], reverse=True)
    keep = {number for number, _ in newest_first[:keep_min]}
    taken_buckets: set[tuple[str, int]] = set()
    drop: set[int] = set()
    for number, when in newest_first:
        age = now - as_utc(when)
        if number in keep:
            continue
        if age <= DAY:
            continue  # every version of the last day
        if age > retention:
            drop.add(number)
            continue
        # Keep the newest version in each hour (first week) or day (after).
        bucket = (
            ("h", int(as_utc(when).timestamp() // 3600))
            if age <= 7 * DAY
            else (
                "d",
                int(as_utc(when).timestamp() // 86400),
            )
        )
        if bucket in taken_buckets:
            drop.add(number)
        else:
            taken_buckets.add(bucket)
    return drop


async def thin_versions(now: datetime, retention: timedelta, keep_min: int) -> int:
    """Apply the thinning rule to every file with more than `keep_min` versions."""
    dropped = 0
    counts: dict[str, int] = {}
    async for doc in FileVersion.get_pymongo_collection().find(
        {"state": "committed"}, {"file_id": 1}
    ):
        counts[doc["file_id"]] = counts.get(doc["file_id"], 0) + 1
    for file_id, count in counts.items():
        if count <= keep_min:
            continue
        node = await FileNode.get(PydanticObjectId(file_id))
        head = node.head_version_id if node else None
        found = await FileVersion.find(
            FileVersion.file_id == file_id, FileVersion.state == "committed"
        ).to_list()
        drop = versions_to_drop(
            [(v.version or 0, v.committed_at or v.created_at) for v in found],
            now,
            retention,
            keep_min,
        )
        for version in found:
            if version.version in drop and str(version.id) != head:
                await ChunkMapPage.find(ChunkMapPage.version_id == str(version.id)).delete()
                await version.delete()
                dropped += 1
    return dropped


async def empty_trash(now: datetime, retention: timedelta) -> int:
    """Purge every trashed item deleted longer ago than `retention`."""
    cutoff_ms = int((now - retention).timestamp() * 1000)
    purged = 0
    async for node in FileNode.find({"trash_root": True, "deleted_ms": {"$lt": cutoff_ms}}):
        await HistoryService.purge_node(node)
        purged += 1
    return purged
