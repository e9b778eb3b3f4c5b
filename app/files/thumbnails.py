"""Thumbnails of images: asked for by the web, made by the worker, cached per content hash.

The flow:
- `GET /api/file/{id}/thumbnail?size=256` (ThumbnailService): after the usual access
  check, one `_id` lookup of (owner, content hash, size) in the `thumbnails` collection
  (app/db/thumbnails.py). Ready: the bytes, cacheable forever (the key is the content).
  Failed: 404 `no_thumbnail`. Not there yet: the job is queued, deduplicated by an arq job
  id made of the same key, and the caller is told to come back (202). With Redis down the
  answer is the same 202; nothing waits on Redis.
- The job (`make_thumbnail`, run by the worker on its own arq queue so a folder of 500
  photos never delays event fan-out) reads the version's bytes from the blob store, chunk
  by verified chunk, into a temporary file (bounded by `thumbnail_max_bytes`, deleted
  after), and has the decoding child process render it (app/files/imaging.py). Either way
  it writes one document: "ready" with the WebP, or "failed" with the reason, so a broken
  image or a bomb is tried once per content, never in a loop. Damaged or unverified
  versions are left alone (no document): they may heal, and an unverified content hash is
  only the uploader's claim, which must not name a thumbnail another file would show.
- Removal: `collect_thumbnails` (a daily worker job) deletes every thumbnail, ready or
  failed, whose content hash no version of its owner references any more (purged from the
  trash, thinned by version retention). Until that run, a thumbnail outlives its last
  file by up to a day; it is only ever served to someone who may read a file with those
  exact bytes. A thumbnail whose decoding failed for a passing reason (the time limit on
  a machine under load) stays failed until its content is gone: upload the image again
  under a different content, or delete its document, to retry.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from beanie import PydanticObjectId
from bson.errors import InvalidId

from app.core.clock import now_ms
from app.core.errors import BadRequest, CorruptData, NotFound, UnsupportedMediaType
from app.core.http import ByteRange
from app.core.query import match
from app.db.files import FileNode, FileVersion
from app.db.thumbnails import Thumbnail, thumbnail_id
from app.files.image_kinds import image_format
from app.files.imaging import MEDIA_TYPE, Renderer
from app.files.reads import stream_content
from app.files.scope import Caller, open_node
from app.settings import Settings
from app.storage.base import BlobStore

log = logging.getLogger("coffer.thumbnails")

# The arq queue thumbnail jobs go to (a worker of its own: see jobs/thumbnails.py).
THUMBNAIL_QUEUE = "coffer:thumbnails"
JOB = "make_thumbnail"
# Sizes (the longer side's bound, in pixels) the API makes: the grid, and the lightbox
# (which browsers need for HEIC, AVIF on old browsers, and photos too big to show whole).
SIZES = (256, 1024)
CACHE_FOREVER = "private, max-age=31536000, immutable"

Enqueue = Callable[..., Awaitable[bool]]


@dataclass(frozen=True)
class Ready:
    data: bytes
    media_type: str
    etag: str
    content_hash: str


@dataclass(frozen=True)
class Pending:
    queued: bool  # False: Redis could not take the job now; asking again retries


def etag_of(content_hash: str, box: int) -> str:
    return f'"{content_hash}-{box}"'


def check_size(box: int) -> None:
    if box not in SIZES:
        raise BadRequest(f"size must be one of {', '.join(map(str, SIZES))}", code="bad_size")


def no_thumbnail(why: str) -> NotFound:
    return NotFound(why, code="no_thumbnail")


class ThumbnailService:
    """The web side: look a thumbnail up, or have one made."""

    def __init__(self, settings: Settings, enqueue: Enqueue) -> None:
        self.settings = settings
        self.enqueue = enqueue

    async def for_caller(self, caller: Caller, file_id: str, box: int) -> Ready | Pending:
        """The thumbnail of a file the caller may read (404 for anyone else, like every
        other read)."""
        check_size(box)
        _, node = await open_node(caller, file_id)
        return await self.for_node(node, box)

    async def for_node(self, node: FileNode, box: int) -> Ready | Pending:
        """The thumbnail of a node the caller was already allowed to read (a public
        link's file)."""
        check_size(box)
        if node.kind != "file" or image_format(node.name) is None:
            raise UnsupportedMediaType(
                "thumbnails are made of JPEG, PNG, GIF, WebP, AVIF and HEIC images only",
                code="not_an_image",
            )
        if node.size == 0 or node.content_hash is None or not node.head_version_id:
            raise no_thumbnail("this file is empty")
        if node.size > self.settings.thumbnail_max_bytes:
            raise no_thumbnail("this image is too large for a thumbnail")
        if node.damaged:
            raise no_thumbnail("this file's data is damaged")
        if not node.hash_verified:
            # Its content hash is still a claim: wait for the worker to check it (seconds).
            # Checked before the cache: a claimed hash must never find another file's
            # thumbnail (that would tell a share editor the owner has those bytes).
            return Pending(queued=False)
        doc = await Thumbnail.get(thumbnail_id(node.owner_id, node.content_hash, box))
        if doc is not None:
            if doc.state != "ready":
                raise no_thumbnail("this image could not be read")
            etag = etag_of(doc.content_hash, box)
            return Ready(doc.data, doc.media_type, etag, node.content_hash)
        queued = await self.enqueue(
            JOB,
            node.head_version_id,
            box,
            job_id=f"thumb:{thumbnail_id(node.owner_id, node.content_hash, box)}",
            queue=THUMBNAIL_QUEUE,
        )
        return Pending(queued=queued)


async def make_thumbnail(
    store: BlobStore, renderer: Renderer, settings: Settings, version_id: str, box: int
) -> str:
    """Make and cache the thumbnail of a committed version's bytes; what happened."""
    try:
        version = await FileVersion.get(PydanticObjectId(version_id))
    except (InvalidId, TypeError, ValueError):
        version = None
    if (
        version is None
        or version.state != "committed"
        or not version.hash_verified
        or version.damaged
        or box not in SIZES
    ):
        return "skipped"
    key = thumbnail_id(version.owner_id, version.content_hash, box)
    if await Thumbnail.get_pymongo_collection().find_one({"_id": key}, {"_id": 1}):
        return "cached"
    if version.size == 0 or version.size > settings.thumbnail_max_bytes:
        await _record(version, box, None, "too_large" if version.size else "empty")
        return "failed"
    with tempfile.TemporaryDirectory(prefix="coffer-thumb-") as tmp:
        src, out = Path(tmp) / "image", Path(tmp) / "thumbnail.webp"
        try:
            with src.open("wb") as fh:
                byte_range = ByteRange(0, version.size - 1)
                async for piece in stream_content(store, version, byte_range):
                    await asyncio.to_thread(fh.write, piece)
        except (CorruptData, NotFound) as exc:
            # The bytes are damaged or gone, not the image: it may be healed, so remember
            # nothing (the next request asks again).
            log.warning("thumbnail of version %s: data unreadable (%s)", version_id, exc)
            return "unreadable"
        reason = await renderer.render(src, out, box)
        data = out.read_bytes() if reason is None else None
    await _record(version, box, data, reason or "")
    if reason:
        log.info("no thumbnail for version %s: %s", version_id, reason)
        return "failed"
    return "ready"


async def _record(version: FileVersion, box: int, data: bytes | None, reason: str) -> None:
    fields = {
        "owner_id": version.owner_id,
        "content_hash": version.content_hash,
        "box": box,
        "state": "ready" if data is not None else "failed",
        "data": data or b"",
        "media_type": MEDIA_TYPE if data is not None else "",
        "reason": reason,
        "made_ms": now_ms(),
    }
    await Thumbnail.get_pymongo_collection().update_one(
        {"_id": thumbnail_id(version.owner_id, version.content_hash, box)},
        {"$set": fields},
        upsert=True,
    )


async def collect_thumbnails(batch: int = 5000) -> dict[str, int]:
    """Delete thumbnails whose content no version of their owner has any more."""
    thumbs = Thumbnail.get_pymongo_collection()
    versions = FileVersion.get_pymongo_collection()
    after, kept, removed = "", 0, 0
    while True:
        docs = await (
            thumbs.find({"_id": {"$gt": after}}, {"owner_id": 1, "content_hash": 1})
            .sort("_id", 1)
            .limit(batch)
            .to_list()
        )
        if not docs:
            return {"kept": kept, "removed": removed}
        after = docs[-1]["_id"]
        by_owner: dict[str, set[str]] = defaultdict(set)
        for doc in docs:
            by_owner[doc["owner_id"]].add(doc["content_hash"])
        live: set[tuple[str, str]] = set()
        for owner, hashes in by_owner.items():
            # One indexed walk of the owner's versions per batch (`$in` on content_hash
            # would read every version of every owner on the embedded server).
            async for v in versions.find(match(owner_id=owner), {"content_hash": 1}):
                if v.get("content_hash") in hashes:
                    live.add((owner, v["content_hash"]))
        gone = [d["_id"] for d in docs if (d["owner_id"], d["content_hash"]) not in live]
        if gone:
            await thumbs.delete_many({"_id": {"$in": gone}})
        removed += len(gone)
        kept += len(docs) - len(gone)
