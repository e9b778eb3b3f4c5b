"""Garbage collection of chunks: delete what no version references, never what an upload
counts on.

Why it is safe against the dedup race (an upload told to skip a chunk GC is deleting):
1. References are read first: every chunk of every version of the owner (committed,
   pending uploads, historic, trashed). A version created after this read counted on its
   chunks through `touch_chunks`, which stamps `used_ms` now.
2. A candidate (unreferenced, `used_ms` older than the grace period) is marked `deleting`
   by a conditional write that fails if anything touched it meanwhile. From then on no
   upload counts on it: registering asks for it again, committing refuses it (409
   missing_chunks), and a PUT of it is answered 503 "retry" (local store) or, for S3,
   re-verified at commit only once the record is gone.
3. Only then is the blob deleted, and last the record. A run killed anywhere leaves
   records in `deleting`, which the next run finishes first.
`tests/test_integrity.py` drives each interleaving against a real database and store.

Blobs with no record at all (a crash between writing a blob and recording it, or a
presigned S3 PUT never committed) are adopted as `unverified` records, so the same
protocol collects them on a later run instead of a racy delete-by-listing.

A committed version that no file node knows (a batch upload killed between writing its
versions and its nodes: app/files/batch.py) is invisible garbage: once older than the grace
period it is deleted with its chunk map before references are read, so its chunks go too.

A backup pauses collection (`run/gc-paused-until` in the data dir): a run checks the pause
after marking a batch and puts the batch back, so no blob a snapshot references goes away.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pymongo.errors import DuplicateKeyError

from app.core.clock import as_utc, now_ms
from app.core.failpoints import failpoint
from app.core.query import match
from app.db.accounts import User
from app.db.files import FileNode, FileVersion, MaintenanceState, StoredChunk, delete_chunk_maps
from app.files.integrity import chunk_id, owner_chunk_pages
from app.storage.base import BlobStore

log = logging.getLogger("coffer.gc")
COLLECTABLE = ["stored", "corrupt", "missing", "unverified"]


@dataclass(frozen=True)
class _Versioned:
    id: Any
    chunk_count: int


def pause_file_for(data_dir: Path) -> Path:
    return data_dir / "run" / "gc-paused-until"


def gc_paused(pause_file: Path | None) -> bool:
    if pause_file is None:
        return False
    try:
        return int(pause_file.read_text().strip() or 0) > now_ms()
    except (FileNotFoundError, ValueError):
        return False


class ScratchSets:
    """The referenced hashes and the candidates of one owner's collection, kept in a
    temporary SQLite file rather than in memory: an owner may have millions of chunks,
    and the collector's memory must not grow with how much they store."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="coffer-gc-")
        self.db = sqlite3.connect(Path(self._dir.name) / "gc.db")
        self.db.executescript(
            """
            PRAGMA journal_mode=OFF;
            PRAGMA synchronous=OFF;
            CREATE TABLE refs (sha256 TEXT PRIMARY KEY) WITHOUT ROWID;
            CREATE TABLE candidates (state TEXT NOT NULL, id TEXT NOT NULL);
            """
        )

    def __enter__(self) -> ScratchSets:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.db.close()
        self._dir.cleanup()

    def add_refs(self, hashes: Iterable[str]) -> None:
        self.db.executemany("INSERT OR IGNORE INTO refs VALUES (?)", ((h,) for h in hashes))

    def add_candidates(self, docs: list[dict[str, Any]]) -> None:
        """Keep those of these chunk records that no version references."""
        self.db.executemany(
            "INSERT INTO candidates SELECT ?, ? WHERE NOT EXISTS"
            " (SELECT 1 FROM refs WHERE sha256 = ?)",
            ((d["state"], d["_id"], d["sha256"]) for d in docs),
        )

    def candidate_batches(self, size: int) -> Iterator[tuple[str, list[str]]]:
        rows = self.db.execute("SELECT state, id FROM candidates ORDER BY state, rowid")
        state, ids = "", []
        for row_state, chunk in rows:
            if ids and (row_state != state or len(ids) >= size):
                yield state, ids
                ids = []
            state = row_state
            ids.append(chunk)
        if ids:
            yield state, ids


class GarbageCollector:
    def __init__(
        self,
        store: BlobStore,
        *,
        grace_seconds: float,
        pause_file: Path | None = None,
        batch: int = 200,
        lease_seconds: float = 60,
    ) -> None:
        self.store = store
        self.grace_ms = int(grace_seconds * 1000)
        self.lease_ms = int(lease_seconds * 1000)
        self.pause_file = pause_file
        self.batch = batch
        self.chunks = StoredChunk.get_pymongo_collection()
        self.stats = {"deleted": 0, "bytes": 0, "finished": 0, "adopted": 0, "paused": 0}

    async def run(self) -> dict[str, int]:
        if not await self._take_lease():
            return {**self.stats, "skipped": 1}
        try:
            cutoff = now_ms() - self.grace_ms
            async for user in User.get_pymongo_collection().find({}, {"_id": 1}):
                owner = str(user["_id"])
                await self.finish_deleting(owner)
                await self.drop_orphan_versions(owner, cutoff)
                await self.adopt_orphans(owner, cutoff)
                if not await self.collect_owner(owner, cutoff):
                    self.stats["paused"] = 1
                    break
        finally:
            await MaintenanceState.get_pymongo_collection().update_one(
                {"_id": "gc"}, {"$set": {"lease_until_ms": 0, "stats": self.stats}}
            )
        log.info("garbage collection: %s", self.stats)
        return self.stats

    async def _take_lease(self) -> bool:
        """One collector at a time; a killed one's lease runs out after `lease_seconds`."""
        t = now_ms()
        try:
            await MaintenanceState.get_pymongo_collection().update_one(
                {"_id": "gc", "lease_until_ms": {"$lt": t}},
                {"$set": {"lease_until_ms": t + self.lease_ms}},
                upsert=True,
            )
        except DuplicateKeyError:
            return False
        return True

    async def _renew_lease(self) -> None:
        await MaintenanceState.get_pymongo_collection().update_one(
            {"_id": "gc"}, {"$set": {"lease_until_ms": now_ms() + self.lease_ms}}
        )

    async def finish_deleting(self, owner: str) -> None:
        """Complete the owner's deletions a killed run left half done (their chunks are
        unreferenced). Per owner: the (owner_id, state) index answers it."""
        docs = await self.chunks.find(
            match(owner_id=owner, state="deleting"), {"owner_id": 1, "sha256": 1}
        ).to_list()
        for start in range(0, len(docs), self.batch):
            part = docs[start : start + self.batch]
            await self._delete_blobs([(d["owner_id"], d["sha256"]) for d in part])
            result = await self.chunks.delete_many(
                {"_id": {"$in": [d["_id"] for d in part]}, "state": "deleting"}
            )
            self.stats["finished"] += result.deleted_count

    async def collect_owner(self, owner: str, cutoff: int) -> bool:
        """Delete the owner's unreferenced chunks; False if a backup paused collection."""
        with ScratchSets() as scratch:
            async for page in owner_chunk_pages(owner):
                scratch.add_refs(sha for sha, _ in page["chunks"])
            docs: list[dict[str, Any]] = []
            # One query per state, each an exact range of the (owner_id, state, used_ms)
            # index (`$in` on state plus a range on used_ms is not, on every server).
            for state in COLLECTABLE:
                async for doc in self.chunks.find(
                    match(owner_id=owner, state=state, used_ms={"$lt": cutoff}),
                    {"sha256": 1, "state": 1},
                ):
                    docs.append(doc)
                    if len(docs) >= 1000:
                        scratch.add_candidates(docs)
                        docs = []
            scratch.add_candidates(docs)
            for state, ids in scratch.candidate_batches(self.batch):
                if not await self._collect_batch(owner, state, ids, cutoff):
                    return False
        return True

    async def _collect_batch(self, owner: str, state: str, ids: list[str], cutoff: int) -> bool:
        await self._renew_lease()
        if gc_paused(self.pause_file):
            return False
        marked = await self.mark(state, ids, cutoff)
        if gc_paused(self.pause_file):
            # A backup began while this batch was being marked: put it back untouched.
            await self.chunks.update_many(
                {"_id": {"$in": [d["_id"] for d in marked]}, "state": "deleting"},
                {"$set": {"state": state}},
            )
            return False
        await self.sweep(owner, marked)
        await failpoint("gc.batch_done")
        return True

    async def mark(self, state: str, ids: list[str], cutoff: int) -> list[dict[str, Any]]:
        """Mark `deleting` those of `ids` still in `state` and untouched since `cutoff`."""
        await self.chunks.update_many(
            {"_id": {"$in": ids}, "state": state, "used_ms": {"$lt": cutoff}},
            {"$set": {"state": "deleting"}},
        )
        return await self.chunks.find(
            {"_id": {"$in": ids}, "state": "deleting"}, {"sha256": 1, "size": 1}
        ).to_list()

    async def sweep(self, owner: str, marked: list[dict[str, Any]]) -> None:
        """Delete the marked chunks' blobs, then their records."""
        await self._delete_blobs([(owner, d["sha256"]) for d in marked])
        result = await self.chunks.delete_many(
            {"_id": {"$in": [d["_id"] for d in marked]}, "state": "deleting"}
        )
        self.stats["deleted"] += result.deleted_count
        self.stats["bytes"] += sum(d.get("size", 0) for d in marked)

    async def _delete_blobs(self, blobs: list[tuple[str, str]]) -> None:
        sem = asyncio.Semaphore(16)

        async def delete(owner: str, sha: str) -> None:
            async with sem:
                await self.store.delete(owner, sha)

        await asyncio.gather(*(delete(owner, sha) for owner, sha in blobs))

    async def drop_orphan_versions(self, owner: str, cutoff: int) -> None:
        """Delete committed versions older than the grace period (and at least an hour,
        whatever the grace: a batch in flight writes its nodes within seconds) whose file
        node does not exist (a batch commit cut short between its two inserts)."""
        cutoff = min(cutoff, now_ms() - 3600 * 1000)
        nodes = {
            str(doc["_id"])
            async for doc in FileNode.get_pymongo_collection().find(
                match(owner_id=owner), {"_id": 1}
            )
        }
        doomed = [
            doc
            async for doc in FileVersion.get_pymongo_collection().find(
                match(owner_id=owner), {"file_id": 1, "chunk_count": 1, "created_at": 1}
            )
            if doc.get("file_id") not in nodes
            and as_utc(doc["created_at"]).timestamp() * 1000 < cutoff
        ]
        if not doomed:
            return
        await delete_chunk_maps([_Versioned(d["_id"], d.get("chunk_count", 0)) for d in doomed])
        await FileVersion.get_pymongo_collection().delete_many(
            {"_id": {"$in": [d["_id"] for d in doomed]}}
        )
        self.stats["orphan_versions"] = self.stats.get("orphan_versions", 0) + len(doomed)

    async def adopt_orphans(self, owner: str, cutoff: int) -> None:
        """Give blobs older than the grace period that have no record an `unverified` one."""
        batch: list[tuple[str, int]] = []
        async for sha, modified_ms in self.store.list_chunks(owner):
            if modified_ms < cutoff and len(sha) == 64:
                batch.append((sha, modified_ms))
            if len(batch) >= 1000:
                await self._adopt(owner, batch)
                batch = []
        if batch:
            await self._adopt(owner, batch)

    async def _adopt(self, owner: str, blobs: list[tuple[str, int]]) -> None:
        ids = [chunk_id(owner, sha) for sha, _ in blobs]
        known = {d["_id"] async for d in self.chunks.find({"_id": {"$in": ids}}, {"_id": 1})}
        for sha, modified_ms in blobs:
            if chunk_id(owner, sha) in known:
                continue
            doc: dict[str, Any] = {
                "owner_id": owner,
                "sha256": sha,
                "size": await self.store.stat(owner, sha) or 0,
                "state": "unverified",
                "verified": False,
                "put_ms": modified_ms,
                "used_ms": modified_ms,
                "created_at": datetime.now(UTC),
            }
            try:
                await self.chunks.insert_one({"_id": chunk_id(owner, sha), **doc})
                self.stats["adopted"] += 1
            except DuplicateKeyError:
                pass  # recorded by an upload meanwhile
