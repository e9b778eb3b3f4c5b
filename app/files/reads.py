"""Reading files: the manifest (chunk list with signed read URLs), the bytes, streamed,
and an upload's progress for devices that fetch it while it is still going.

Every chunk is re-verified against its hash as it is read (app/files/integrity.py): a bad
chunk is never served. Memory stays at about two chunks however large the file.
"""

from __future__ import annotations

import asyncio
import mimetypes
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from beanie import PydanticObjectId
from bson.errors import InvalidId
from litestar import Request, Response
from litestar.response import Stream

from app.core.clock import as_utc, now
from app.core.errors import BadRequest, CorruptData, NotFound
from app.core.http import ByteRange, content_disposition, parse_range
from app.core.query import match
from app.db.files import (
    PAGE_SIZE,
    ChunkMapPage,
    FileNode,
    FileVersion,
    StoredChunk,
    UploadSession,
)
from app.files.context import FilesContext
from app.files.integrity import read_verified_chunk
from app.files.schemas import ChunkOut, ManifestOut, StreamChunkOut, UploadProgressOut
from app.files.scope import Caller, Scope, open_node
from app.storage.base import BlobStore


async def head_version_of(node: FileNode) -> FileVersion:
    if node.kind != "file":
        raise BadRequest(f"{node.name} is a folder", code="is_a_folder")
    version = (
        await FileVersion.get(PydanticObjectId(node.head_version_id))
        if node.head_version_id
        else None
    )
    if version is None:
        raise NotFound("no such file")
    return version


class ReadService:
    def __init__(self, ctx: FilesContext) -> None:
        self.store = ctx.store

    async def describe(self, caller: Caller, file_id: str, offset: int, limit: int) -> ManifestOut:
        scope, node = await open_node(caller, file_id)
        return await self.manifest(scope, node, offset, limit)

    async def manifest(self, scope: Scope, node: FileNode, offset: int, limit: int) -> ManifestOut:
        """The file object with one page of its chunk list and signed read URLs."""
        out = scope.out(node)
        fields = {f: getattr(out, f) for f in out.__struct_fields__}
        if node.kind != "file":
            return ManifestOut(**fields, chunk_count=0, chunks=[], next_chunk_offset=None)
        version = await head_version_of(node)
        offset = max(0, offset)
        limit = max(1, min(limit, 4096))
        end = min(offset + limit, version.chunk_count)
        chunks = await version_chunks_page(version, offset, limit)
        epoch = scope.owner.url_epoch
        urls = await asyncio.gather(
            *(
                self.store.download_url(scope.caller.base_url, scope.owner_id, sha, size, epoch)
                for _, sha, size in chunks
            )
        )
        return ManifestOut(
            **fields,
            chunk_count=version.chunk_count,
            chunks=[
                ChunkOut(index=i, sha256=sha, size=size, url=url)
                for (i, sha, size), url in zip(chunks, urls, strict=True)
            ],
            next_chunk_offset=end if end < version.chunk_count else None,
        )

    async def upload_progress(
        self, caller: Caller, upload_id: str, offset: int, limit: int
    ) -> UploadProgressOut:
        """A page of an upload's chunk list, with read URLs for the chunks the server has:
        what streaming sync fetches while the upload is still going. Anyone who may read
        the file may follow its upload; chunks count as there only when this upload sent
        them or the owner made it (a share editor's upload must not reveal, through its
        chunk list, which chunks the owner already holds)."""
        try:
            session = await UploadSession.get(PydanticObjectId(upload_id))
        except (InvalidId, TypeError, ValueError):
            session = None
        if session is None:
            raise NotFound("no such upload", code="upload_not_found")
        scope, _ = await open_node(caller, session.file_id, include_pending=True)
        if scope.owner_id != session.owner_id:
            raise NotFound("no such upload", code="upload_not_found")
        version = await FileVersion.get(PydanticObjectId(session.version_id))
        gone = version is None or (not session.committed and as_utc(session.expires_at) <= now())
        state = "gone" if gone else "committed" if session.committed else "uploading"
        out = UploadProgressOut(
            upload_id=upload_id,
            file_id=session.file_id,
            state=state,
            size=session.size,
            content_hash=version.content_hash if version else session.content_hash,
            chunk_count=session.chunk_count,
            chunks=[],
        )
        if version is None or state != "uploading":
            return out
        offset, limit = max(0, offset), max(1, min(limit, 1000))
        chunks = await version_chunks_page(version, offset, limit)
        by_owner = session.uploader_id in (None, session.owner_id)
        query: dict[str, object] = {"state": "stored"}
        if not by_owner:
            query["put_ms"] = {"$gte": session.created_ms}
        ids = [f"{session.owner_id}:{sha}" for _, sha, _ in chunks]
        there = {
            doc["sha256"]
            async for doc in StoredChunk.get_pymongo_collection().find(
                {"_id": {"$in": ids}, **match(query)}, {"sha256": 1}
            )
        }
        epoch = scope.owner.url_epoch
        for i, sha, size in chunks:
            url = None
            if sha in there:
                url = await self.store.download_url(
                    caller.base_url, session.owner_id, sha, size, epoch
                )
            out.chunks.append(StreamChunkOut(index=i, sha256=sha, size=size, url=url))
        end = offset + len(chunks)
        out.next_chunk_offset = end if end < session.chunk_count else None
        return out


async def version_chunks_page(
    version: FileVersion, offset: int, limit: int
) -> list[tuple[int, str, int]]:
    """(index, sha256, size) of the version's chunks [offset, offset + limit)."""
    end = min(offset + limit, version.chunk_count)
    if offset >= end:
        return []
    page_ids = [f"{version.id}:{n}" for n in range(offset // PAGE_SIZE, (end - 1) // PAGE_SIZE + 1)]
    chunks = []
    async for page in ChunkMapPage.find({"_id": {"$in": page_ids}}).sort("+page"):
        base = page.page * PAGE_SIZE
        for i, (sha, size) in enumerate(page.chunks):
            if offset <= base + i < end:
                chunks.append((base + i, sha, size))
    return chunks


async def chunk_spans(
    version: FileVersion, byte_range: ByteRange
) -> AsyncIterator[tuple[str, int, int, int]]:
    """(sha, size, skip, take) for every chunk overlapping the range, in order."""
    first = (
        await ChunkMapPage.find(
            match(version_id=str(version.id), start_offset={"$lte": byte_range.start})
        )
        .sort("-start_offset")
        .limit(1)
        .to_list()
    )
    if not first:
        return
    page_no, offset = first[0].page, first[0].start_offset
    while offset <= byte_range.end:
        page = await ChunkMapPage.get(f"{version.id}:{page_no}")
        if page is None:
            raise NotFound("file data is incomplete")
        for sha, size in page.chunks:
            chunk_end = offset + size - 1
            if chunk_end >= byte_range.start and offset <= byte_range.end:
                skip = max(0, byte_range.start - offset)
                take = min(chunk_end, byte_range.end) - offset + 1 - skip
                yield sha, size, skip, take
            offset += size
            if offset > byte_range.end:
                return
        page_no += 1


async def stream_content(
    store: BlobStore, version: FileVersion, byte_range: ByteRange
) -> AsyncIterator[bytes]:
    """Yield the range's bytes, one verified chunk at a time, prefetching the next one."""
    spans = chunk_spans(version, byte_range)
    pending: asyncio.Task[bytes] | None = None
    current: tuple[str, int, int, int] | None = None
    try:
        async for span in spans:
            task = asyncio.create_task(
                read_verified_chunk(store, version.owner_id, span[0], span[1])
            )
            if pending is not None and current is not None:
                data = await pending
                yield data[current[2] : current[2] + current[3]]
            pending, current = task, span
        if pending is not None and current is not None:
            data = await pending
            pending = None
            yield data[current[2] : current[2] + current[3]]
    finally:
        if pending is not None and not pending.done():
            pending.cancel()


async def content_response(
    request: Request,
    store: BlobStore,
    node: FileNode,
    version: FileVersion,
    *,
    disposition: str = "attachment",
    media_type: str | None = None,
    extra_headers: dict[str, str] | None = None,
    first_bytes: int | None = None,
) -> Response[Any]:
    """A file's bytes: ETag/304, a single Range (206/416), streamed chunk by chunk.

    `first_bytes`: serve only the file's start, whatever the request asks (a view-only
    preview of a text file).
    """
    etag = f'"{version.content_hash}"'
    headers = {
        "ETag": etag,
        "Accept-Ranges": "bytes",
        "Content-Disposition": content_disposition(node.name, disposition),
        "Cache-Control": "private, no-cache",
        "X-Content-Type-Options": "nosniff",
        **(extra_headers or {}),
    }
    media_type = media_type or mimetypes.guess_type(node.name)[0] or "application/octet-stream"
    if version.damaged:
        raise CorruptData(
            "this version uses data the server lost or found corrupt; upload it again from "
            "a device that has it, or restore another version",
            code="damaged_file",
        )
    if first_bytes is not None:
        headers.pop("Accept-Ranges")
        etag = headers["ETag"] = f'"{version.content_hash}-{first_bytes}"'
    if request.headers.get("if-none-match") == etag:
        return Response(b"", status_code=304, headers=headers)
    if version.size == 0:
        return Response(b"", headers=headers, media_type=media_type)
    if first_bytes is not None:
        requested = None
        byte_range = ByteRange(0, min(version.size, first_bytes) - 1)
    else:
        requested = parse_range(request.headers.get("range"), version.size)
        byte_range = requested or ByteRange(0, version.size - 1)
    headers["Content-Length"] = str(byte_range.length)
    status = 200
    if requested:
        status = 206
        headers["Content-Range"] = f"bytes {requested.start}-{requested.end}/{version.size}"
    body = stream_content(store, version, byte_range)
    # Read (and verify) the first chunk before answering, so damaged data is refused
    # with a clear error instead of a truncated 200.
    first = await anext(body)
    return Stream(_prepend(first, body), status_code=status, headers=headers, media_type=media_type)


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for piece in rest:
        yield piece


async def read_ahead(
    store: BlobStore, owner: str, chunks: list[tuple[str, int]], ahead: int = 4
) -> AsyncIterator[bytes]:
    """The chunks' verified bytes in order, with up to `ahead` reads in flight (small
    files one after another: batch downloads, zip archives)."""
    tasks: deque[asyncio.Task[bytes]] = deque()
    todo = iter(chunks)
    try:
        for sha, size in todo:
            tasks.append(asyncio.create_task(read_verified_chunk(store, owner, sha, size)))
            if len(tasks) >= ahead:
                yield await tasks.popleft()
        while tasks:
            yield await tasks.popleft()
    finally:
        for task in tasks:
            task.cancel()
