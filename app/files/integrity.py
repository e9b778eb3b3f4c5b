"""Chunk integrity: what the store holds, what went bad, which files it hurts, and healing.

A chunk record (`StoredChunk`) is the authority on whether an upload may count on a chunk:
- `stored`: present and verified (on write for the local store; for S3 by the server's
  check of the signed checksum on PUT, or by hashing it in the bucket where the server does
  not check: app/storage/s3.py). Every read re-verifies; a mismatch marks it `corrupt`, an
  absent blob `missing`, and the scrub finds the same slowly in the background.
- A bad chunk flags every version that uses it (and the file, when it is the head) as
  `damaged`. The next PUT of the same bytes, by any client that still has them (an
  upload asks for every chunk that is not `stored`), turns it back to `stored` and clears
  the flags of versions whose chunks are all good again.
- `deleting`: garbage collection is removing it (see gc.py); nothing may count on it, and
  a PUT arriving meanwhile is asked to retry.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime
from typing import Any

from beanie import PydanticObjectId
from pymongo.errors import BulkWriteError, DuplicateKeyError

from app.core.clock import now_ms
from app.core.errors import CorruptData, ServiceUnavailable
from app.core.query import match
from app.db.files import (
    ChunkMapPage,
    FileNode,
    FileVersion,
    StoredChunk,
    chunk_map_page_ids,
)
from app.storage.base import BlobStore

log = logging.getLogger("coffer.integrity")
BATCH = 500
# States of a chunk whose bytes the store does not (verifiably) hold.
_BAD_STATES = ["corrupt", "missing", "unverified"]
_background: set[asyncio.Task[Any]] = set()


def chunk_id(owner: str, sha256: str) -> str:
    return f"{owner}:{sha256}"


async def record_stored_chunk(owner: str, sha256: str, size: int, *, verified: bool) -> None:
    """A verified copy of the chunk is in the store now: mark it stored (and heal).

    Refused with 503 while garbage collection is deleting the chunk: the blob just
    written may be removed under it, so the client must send it again a moment later.
    """
    t = now_ms()
    stored = {"state": "stored", "verified": verified, "size": size, "put_ms": t, "used_ms": t}
    coll = StoredChunk.get_pymongo_collection()
    # One write in the common case (new, or stored already), as an upload sends hundreds
    # of chunks: upserted unless it exists in another state, which refuses the insert.
    try:
        await coll.update_one(
            {"_id": chunk_id(owner, sha256), "state": {"$nin": [*_BAD_STATES, "deleting"]}},
            {
                "$set": stored,
                "$setOnInsert": {
                    "owner_id": owner,
                    "sha256": sha256,
                    "created_at": datetime.now(UTC),
                },
            },
            upsert=True,
        )
        return
    except DuplicateKeyError:
        pass  # it had gone bad, or garbage collection is deleting it
    # A chunk that had gone bad comes back: the files that use it may be whole again.
    revived = await coll.update_one(
        {"_id": chunk_id(owner, sha256), "state": {"$in": _BAD_STATES}}, {"$set": stored}
    )
    if revived.modified_count:
        log.warning("chunk %s of %s healed by a new upload", sha256, owner)
        await heal(owner)
        return
    raise ServiceUnavailable(
        "this chunk is being garbage-collected; send it again in a second",
        code="chunk_busy",
        headers={"Retry-After": "1"},
    )


async def record_stored_chunks(owner: str, sizes: dict[str, int]) -> set[str]:
    """`record_stored_chunk` for many chunks the server wrote itself (a batch's inline
    files), in a few writes whatever their number. Returns the hashes garbage collection
    is deleting right now: their files must be sent again a moment later."""
    if not sizes:
        return set()
    coll = StoredChunk.get_pymongo_collection()
    ids = {chunk_id(owner, sha): sha for sha in sizes}
    found = {
        doc["_id"]: doc.get("state", "stored")
        async for doc in coll.find({"_id": {"$in": list(ids)}}, {"state": 1})
    }
    t = now_ms()
    busy = {ids[i] for i, state in found.items() if state == "deleting"}
    bad = [i for i, state in found.items() if state in ("corrupt", "missing", "unverified")]
    good = [i for i, state in found.items() if state == "stored"]
    fresh = [i for i in ids if i not in found]
    if good:
        await coll.update_many(
            {"_id": {"$in": good}, "state": "stored"}, {"$set": {"put_ms": t, "used_ms": t}}
        )
    if bad:
        await coll.update_many(
            {"_id": {"$in": bad}, "state": {"$in": ["corrupt", "missing", "unverified"]}},
            {"$set": {"state": "stored", "verified": True, "put_ms": t, "used_ms": t}},
        )
        log.warning("%d chunk(s) of %s healed by a new upload", len(bad), owner)
        await heal(owner)
    if fresh:
        docs = [
            {
                "_id": i,
                "owner_id": owner,
                "sha256": ids[i],
                "size": sizes[ids[i]],
                "state": "stored",
                "verified": True,
                "put_ms": t,
                "used_ms": t,
                "created_at": datetime.now(UTC),
            }
            for i in fresh
        ]
        try:
            await coll.insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            # Recorded meanwhile by another upload: fine unless GC is deleting it.
            raced = [docs[e["index"]]["_id"] for e in exc.details.get("writeErrors", [])]
            async for doc in coll.find({"_id": {"$in": raced}}, {"state": 1}):
                if doc.get("state") == "deleting":
                    busy.add(ids[doc["_id"]])
    return busy


async def touch_chunks(owner: str, hashes: Iterable[str]) -> None:
    """An upload counts on these chunks: keep garbage collection off them for its grace."""
    ids = [chunk_id(owner, sha) for sha in hashes]
    t = now_ms()
    for start in range(0, len(ids), 1000):
        await StoredChunk.get_pymongo_collection().update_many(
            {"_id": {"$in": ids[start : start + 1000]}, "state": "stored"},
            {"$set": {"used_ms": t}},
        )


async def read_verified_chunk(store: BlobStore, owner: str, sha256: str, size: int) -> bytes:
    """The chunk's bytes, verified against its hash (unless the store vouches for them:
    it wrote and hashed them moments ago); a mismatch is refused and recorded."""
    try:
        buf, vouched = await store.read_checked(owner, sha256)
    except FileNotFoundError:
        _in_background(mark_chunk(owner, sha256, "missing"))
        raise CorruptData(f"chunk {sha256} is missing from storage") from None
    if len(buf) == size and vouched:
        return buf
    # hashlib releases the GIL: hashing in a thread overlaps with sending the last chunk.
    if len(buf) != size or await asyncio.to_thread(_hex_sha256, buf) != sha256:
        _in_background(mark_chunk(owner, sha256, "corrupt"))
        raise CorruptData(f"chunk {sha256} is damaged in storage; refusing to serve it")
    return buf


async def read_joined(store: BlobStore, owner: str, shas: Iterable[str]) -> bytearray:
    """These stored chunks one after the other, unverified (a delta's bases: what is built
    on them is hashed). FileNotFoundError if one is gone."""
    joined = bytearray()
    for sha in shas:
        joined += await store.read_all(owner, sha)
    return joined


def _hex_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _in_background(coro: Any) -> None:
    """Run bookkeeping after the error is answered (kept referenced until it finishes)."""
    task = asyncio.get_running_loop().create_task(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)


async def mark_chunk(owner: str, sha256: str, state: str, seen_put_ms: int | None = None) -> bool:
    """Mark a stored chunk corrupt or missing, and flag the files that use it.

    `seen_put_ms`: the scrub's reading of the record before it hashed the blob; if the chunk
    was PUT again since, the bytes it judged are gone and the mark is not made.
    """
    query: dict[str, Any] = {"_id": chunk_id(owner, sha256), "state": "stored"}
    if seen_put_ms is not None:
        query["put_ms"] = seen_put_ms
    result = await StoredChunk.get_pymongo_collection().update_one(
        query, {"$set": {"state": state}}
    )
    if not result.modified_count:
        return False
    log.error("chunk %s of owner %s is %s", sha256, owner, state)
    await flag_damaged(owner, {sha256})
    return True


async def owner_chunk_pages(owner: str) -> AsyncIterator[dict[str, Any]]:
    """Every chunk-map page ({"version_id", "chunks"}) of every version of the owner:
    committed, historic, trashed or a pending upload's."""
    page_ids = [
        page_id
        async for doc in FileVersion.get_pymongo_collection().find(
            match(owner_id=owner), {"_id": 1, "chunk_count": 1}
        )
        for page_id in chunk_map_page_ids(str(doc["_id"]), doc.get("chunk_count", 0))
    ]
    for start in range(0, len(page_ids), BATCH):
        async for page in ChunkMapPage.get_pymongo_collection().find(
            {"_id": {"$in": page_ids[start : start + BATCH]}}, {"version_id": 1, "chunks": 1}
        ):
            yield page


async def _versions_using(owner: str, hashes: set[str]) -> list[str]:
    """Ids of the owner's versions whose chunk maps contain any of these hashes."""
    hits: list[str] = []
    async for page in owner_chunk_pages(owner):
        if page["version_id"] not in hits and any(sha in hashes for sha, _ in page["chunks"]):
            hits.append(page["version_id"])
    return hits


async def _set_damaged(version_ids: list[str], damaged: bool) -> None:
    """Flag (or clear) these versions, and each file whose head one of them is."""
    versions = FileVersion.get_pymongo_collection()
    for vid in version_ids:
        doc = await versions.find_one_and_update(
            {"_id": PydanticObjectId(vid)}, {"$set": {"damaged": damaged}}, {"file_id": 1}
        )
        if doc is not None:
            await FileNode.get_pymongo_collection().update_one(
                match({"_id": PydanticObjectId(doc["file_id"]), "head_version_id": vid}),
                {"$set": {"damaged": damaged}},
            )


async def flag_damaged(owner: str, hashes: set[str]) -> int:
    """Flag every version (and head file) of the owner that uses one of these chunks."""
    hits = await _versions_using(owner, hashes)
    await _set_damaged(hits, True)
    return len(hits)


async def version_chunks(version_id: str, chunk_count: int) -> set[str]:
    return {
        sha
        async for page in ChunkMapPage.get_pymongo_collection().find(
            {"_id": {"$in": chunk_map_page_ids(version_id, chunk_count)}}, {"chunks": 1}
        )
        for sha, _ in page["chunks"]
    }


async def all_stored(owner: str, hashes: set[str]) -> bool:
    ids = [chunk_id(owner, sha) for sha in hashes]
    good = 0
    for start in range(0, len(ids), 1000):
        # A projected find, not count_documents (which the embedded server answers by
        # reading the whole collection).
        good += len(
            await StoredChunk.get_pymongo_collection()
            .find({"_id": {"$in": ids[start : start + 1000]}, "state": "stored"}, {"_id": 1})
            .to_list()
        )
    return good == len(ids)


async def heal(owner: str) -> int:
    """Clear the damaged flag of the owner's versions whose chunks are all stored again."""
    healed: list[str] = []
    async for version in FileVersion.get_pymongo_collection().find(
        match(owner_id=owner, damaged=True), {"_id": 1, "chunk_count": 1}
    ):
        vid = str(version["_id"])
        if await all_stored(owner, await version_chunks(vid, version.get("chunk_count", 0))):
            healed.append(vid)
    await _set_damaged(healed, False)
    return len(healed)


async def hash_in_store(store: BlobStore, owner: str, sha256: str, size: int) -> str:
    """'stored', 'corrupt' or 'missing': the blob as it is in the store now."""
    if await store.stat(owner, sha256) is None:
        return "missing"
    hasher = hashlib.sha256()
    length = 0
    try:
        async for piece in store.read(owner, sha256):
            length += len(piece)
            await asyncio.to_thread(hasher.update, piece)
    except FileNotFoundError:
        return "missing"
    return "stored" if length == size and hasher.hexdigest() == sha256 else "corrupt"
