"""HTTP routes of the files API (thin: parse, authorize via the service, shape the answer)."""

from __future__ import annotations

import mimetypes
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

from litestar import Controller, Request, Response, delete, get, patch, post
from litestar.params import Parameter
from litestar.response import Stream

from app.errors import BadRequest, CorruptData
from app.files.history import HistoryService
from app.files.models import FileNode, FileVersion
from app.files.schemas import (
    CommitRequest,
    FileOut,
    ListOut,
    ManifestOut,
    MoveRequest,
    NewFolderRequest,
    RestoreRequest,
    TrashItemOut,
    TrashListOut,
    UploadOut,
    UploadRequest,
    VersionOut,
)
from app.files.service import ByteRange, FileService, parse_range, stream_content
from app.storage.base import BlobStore


class FileController(Controller):
    path = "/api/file"
    tags = ["files"]

    @post("/", status_code=201)
    async def register_upload(self, data: UploadRequest, files: FileService) -> UploadOut:
        return UploadOut(**_convert(await files.register_upload(data)))

    @post("/{file_id:str}/commit", status_code=200)
    async def commit(self, file_id: str, data: CommitRequest, files: FileService) -> FileOut:
        return FileOut(**await files.commit(file_id, data.upload_id))

    @get("/")
    async def list_folder(
        self,
        files: FileService,
        path: str = "/",
        folder_id: str | None = Parameter(default=None, query="id"),
        limit: int = Parameter(default=500, ge=1, le=1000),
        cursor: str | None = None,
    ) -> ListOut:
        """List a folder: `path` in your own tree, or `id` of any folder you can see."""
        items, next_cursor = await files.list_folder(path, folder_id, limit, cursor)
        return ListOut(items=[FileOut(**i) for i in items], cursor=next_cursor)

    @get("/{file_id:str}")
    async def get_file(
        self,
        file_id: str,
        files: FileService,
        chunk_offset: int = Parameter(default=0, ge=0),
        chunk_limit: int = Parameter(default=1000, ge=1, le=4096),
    ) -> ManifestOut:
        return ManifestOut(**_convert(await files.describe(file_id, chunk_offset, chunk_limit)))

    @get("/{file_id:str}/content")
    async def content(
        self,
        file_id: str,
        files: FileService,
        history: HistoryService,
        request: Request,
        version: int | None = Parameter(default=None, ge=1),
    ) -> Response[Any]:
        """The head's bytes, or those of an earlier `version`."""
        scoped, node = await files.open(file_id)
        if version is None:
            chosen = await scoped.head_version(node)
        else:
            if node.kind != "file":
                raise BadRequest("folders have no versions", code="is_a_folder")
            chosen = await history.version(node, version)
        return await content_response(request, files.store, node, chosen)

    @get("/{file_id:str}/versions")
    async def versions(self, file_id: str, history: HistoryService) -> list[VersionOut]:
        """Newest first: `[{"version","size","content_hash","modified_at","author_device"}]`."""
        return [VersionOut(**v) for v in await history.versions(file_id)]

    @post("/{file_id:str}/versions/{number:int}/restore", status_code=200)
    async def restore_version(self, file_id: str, number: int, history: HistoryService) -> FileOut:
        return FileOut(**await history.restore_version(file_id, number))

    @patch("/{file_id:str}")
    async def move(self, file_id: str, data: MoveRequest, files: FileService) -> FileOut:
        return FileOut(**await files.move(file_id, data))

    @delete("/{file_id:str}", status_code=204)
    async def trash(self, file_id: str, files: FileService) -> None:
        await files.trash(file_id)


@post("/api/folder", status_code=201, tags=["files"])
async def create_folder(data: NewFolderRequest, files: FileService) -> FileOut:
    return FileOut(**await files.create_folder(data))


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


class TrashController(Controller):
    path = "/api/trash"
    tags = ["trash"]

    @get("/")
    async def list_trash(
        self,
        history: HistoryService,
        limit: int = Parameter(default=500, ge=1, le=1000),
        cursor: str | None = None,
    ) -> TrashListOut:
        items, next_cursor = await history.trash(limit, cursor)
        return TrashListOut(items=[TrashItemOut(**i) for i in items], cursor=next_cursor)

    @post("/{trash_id:str}/restore", status_code=200)
    async def restore(
        self, trash_id: str, history: HistoryService, data: RestoreRequest | None = None
    ) -> FileOut:
        return FileOut(**await history.restore(trash_id, data.path if data else None))

    @delete("/{trash_id:str}", status_code=204)
    async def purge(self, trash_id: str, history: HistoryService) -> None:
        await history.purge(trash_id)


def content_disposition(name: str, disposition: str = "attachment") -> str:
    fallback = name.encode("ascii", "replace").decode().replace('"', "_").replace("?", "_")
    return f"{disposition}; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for piece in rest:
        yield piece


def _convert(payload: dict[str, Any]) -> dict[str, Any]:
    """Nested dicts -> msgspec structs for the response schema types."""
    from app.files.schemas import ChunkOut, MissingChunk

    if "missing" in payload:
        payload["missing"] = [MissingChunk(**m) for m in payload["missing"]]
    if "chunks" in payload:
        payload["chunks"] = [ChunkOut(**c) for c in payload["chunks"]]
    return payload
