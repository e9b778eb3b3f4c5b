"""Expiry of abandoned uploads: sessions past their expiry go, with what they left behind.

The chunks they stored stay: they are owned, deduplicated data that a later upload may
reuse, and only garbage collection decides when nothing references them. What a session
staged in a store that cannot verify on write (S3) and never had accepted is dropped.
"""

from __future__ import annotations

from beanie import PydanticObjectId

from app.core.clock import epoch_ms, now
from app.core.query import match
from app.db.dav import DavUpload
from app.db.files import FileNode, FileVersion, UploadSession, delete_chunk_maps
from app.files.recovery import finish_commit
from app.storage.base import BlobStore


async def expire_uploads(store: BlobStore) -> int:
    expired = 0
    # A datetime range: the embedded server reads every session for it, which is fine
    # twice an hour (expires_at is indexed on real MongoDB).
    async for session in UploadSession.find({"expires_at": {"$lt": now()}}):
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
        await store.discard_upload(session.owner_id, str(session.id))
        await session.delete()
        expired += 1
    return expired


# A Nextcloud chunked upload left alone this long is dropped (as Nextcloud does); its
# parts' chunks stay until garbage collection, whose grace (a day) outlasts this. One
# already assembled is kept an hour, to answer a retried MOVE the same way.
DAV_UPLOAD_IDLE_MS = 24 * 3600 * 1000
DAV_UPLOAD_DONE_MS = 3600 * 1000


async def expire_dav_uploads() -> int:
    """Drop Nextcloud chunked uploads idle for a day, and assembled ones after an hour."""
    t = epoch_ms(now())
    uploads = DavUpload.get_pymongo_collection()
    idle = await uploads.delete_many({"touched_ms": {"$lt": t - DAV_UPLOAD_IDLE_MS}})
    # Which of the others are done is read here: a filter on `touched_ms` alone is one an
    # index answers on every server.
    done = [
        d["_id"]
        async for d in uploads.find({"touched_ms": {"$lt": t - DAV_UPLOAD_DONE_MS}}, {"done": 1})
        if d.get("done") is not None
    ]
    if done:
        await uploads.delete_many({"_id": {"$in": done}})
    return idle.deleted_count + len(done)
