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
from pydantic import BaseModel, Field

from app.core.clock import as_utc
from app.core.query import match
from app.db.files import FileNode, FileVersion, delete_chunk_maps
from app.files.history import HistoryService

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


class VersionAge(BaseModel):
    """The fields of a version that thinning looks at."""

    id: PydanticObjectId = Field(alias="_id")
    file_id: str
    version: int | None = None
    chunk_count: int = 0
    committed_at: datetime | None = None
    created_at: datetime


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
    """Apply the thinning rule to every file with more than `keep_min` versions.

    One pass over the committed versions in file order (the (file_id, version) index), so
    only one file's versions are in memory at a time, however many files there are.
    """
    dropped = 0
    group: list[VersionAge] = []
    async for version in (
        FileVersion.find(match(state="committed")).sort("+file_id", "-version").project(VersionAge)
    ):
        if group and version.file_id != group[0].file_id:
            dropped += await _thin_file(group, now, retention, keep_min)
            group = []
        group.append(version)
    if group:
        dropped += await _thin_file(group, now, retention, keep_min)
    return dropped


async def _thin_file(
    versions: list[VersionAge], now: datetime, retention: timedelta, keep_min: int
) -> int:
    if len(versions) <= keep_min:
        return 0
    node = await FileNode.get(PydanticObjectId(versions[0].file_id))
    head = node.head_version_id if node else None
    drop = versions_to_drop(
        [(v.version or 0, v.committed_at or v.created_at) for v in versions],
        now,
        retention,
        keep_min,
    )
    dropped = 0
    for version in versions:
        if version.version in drop and str(version.id) != head:
            await delete_chunk_maps([version])
            await FileVersion.get_pymongo_collection().delete_one({"_id": version.id})
            dropped += 1
    return dropped


async def empty_trash(now: datetime, retention: timedelta) -> int:
    """Purge every trashed item deleted longer ago than `retention`."""
    cutoff_ms = int((now - retention).timestamp() * 1000)
    purged = 0
    async for node in FileNode.find(match(trash_root=True, deleted_ms={"$lt": cutoff_ms})):
        await HistoryService.purge_node(node)
        purged += 1
    return purged
