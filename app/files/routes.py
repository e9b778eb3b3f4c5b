"""The files API (thin: parse, call a service with the caller, return its typed answer)."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, delete, get, patch, post
from litestar.params import Parameter

from app.core.errors import BadRequest
from app.files.activity import ActivityOut, folder_activity
from app.files.history import HistoryService
from app.files.reads import ReadService, content_response, head_version_of
from app.files.schemas import (
    CommitRequest,
    FileOut,
    ListOut,
    ManifestOut,
    MoveRequest,
    NewFolderRequest,
    RestoreRequest,
    TrashListOut,
    UploadOut,
    UploadProgressOut,
    UploadRequest,
    VersionOut,
)
from app.files.scope import Caller, open_node
from app.files.search import SearchOut, SearchService
from app.files.tree import TreeService
from app.files.uploads import UploadService
from app.storage.base import BlobStore


class FileController(Controller):
    path = "/api/file"
    tags = ["files"]

    @post("/", status_code=201)
    async def register_upload(
        self, data: UploadRequest, caller: Caller, uploads: UploadService
    ) -> UploadOut:
        return await uploads.register(caller, data)

    @post("/{file_id:str}/commit", status_code=200)
    async def commit(
        self, file_id: str, data: CommitRequest, caller: Caller, uploads: UploadService
    ) -> FileOut:
        return await uploads.commit(caller, file_id, data.upload_id)

    @get("/")
    async def list_folder(
        self,
        caller: Caller,
        tree: TreeService,
        path: str = "/",
        folder_id: str | None = Parameter(default=None, query="id"),
        limit: int = Parameter(default=500, ge=1, le=1000),
        cursor: str | None = None,
    ) -> ListOut:
        """List a folder: `path` in your own tree, or `id` of any folder you can see."""
        return await tree.list_folder(caller, path, folder_id, limit, cursor)

    @get("/{file_id:str}")
    async def get_file(
        self,
        file_id: str,
        caller: Caller,
        reads: ReadService,
        chunk_offset: int = Parameter(default=0, ge=0),
        chunk_limit: int = Parameter(default=1000, ge=1, le=4096),
    ) -> ManifestOut:
        return await reads.describe(caller, file_id, chunk_offset, chunk_limit)

    @get("/{file_id:str}/content")
    async def content(
        self,
        file_id: str,
        caller: Caller,
        history: HistoryService,
        store: BlobStore,
        request: Request,
        version: int | None = Parameter(default=None, ge=1),
    ) -> Response[Any]:
        """The head's bytes, or those of an earlier `version`."""
        _, node = await open_node(caller, file_id)
        if version is None:
            chosen = await head_version_of(node)
        else:
            if node.kind != "file":
                raise BadRequest("folders have no versions", code="is_a_folder")
            chosen = await history.version(node, version)
        return await content_response(request, store, node, chosen)

    @get("/{file_id:str}/versions")
    async def versions(
        self, file_id: str, caller: Caller, history: HistoryService
    ) -> list[VersionOut]:
        """Newest first: `[{"version","size","content_hash","modified_at","author_device"}]`."""
        return await history.versions(caller, file_id)

    @post("/{file_id:str}/versions/{number:int}/restore", status_code=200)
    async def restore_version(
        self, file_id: str, number: int, caller: Caller, history: HistoryService
    ) -> FileOut:
        return await history.restore_version(caller, file_id, number)

    @patch("/{file_id:str}")
    async def move(
        self, file_id: str, data: MoveRequest, caller: Caller, tree: TreeService
    ) -> FileOut:
        return await tree.move(caller, file_id, data)

    @delete("/{file_id:str}", status_code=204)
    async def trash(self, file_id: str, caller: Caller, tree: TreeService) -> None:
        await tree.trash(caller, file_id)


@get("/api/search", tags=["files"])
async def search(
    caller: Caller,
    search: SearchService,
    q: str = "",
    limit: int = Parameter(default=50, ge=1, le=200),
    cursor: str | None = None,
) -> SearchOut:
    """Files and folders whose name contains `q` (accents and case ignored), in your tree
    and in everything shared with you; `cursor` from the last page for the next one."""
    return await search.search(caller, q, limit, cursor)


@get("/api/activity", tags=["files"])
async def activity(
    caller: Caller,
    path: str = "/",
    folder_id: str | None = Parameter(default=None, query="id"),
    limit: int = Parameter(default=50, ge=1, le=200),
) -> ActivityOut:
    """Recent changes in a folder and below it (`path` in your tree, or `id` of any folder
    you can see), newest first, from your own event feed: who did what, and when."""
    return await folder_activity(caller, path, folder_id, limit)


@post("/api/folder", status_code=201, tags=["files"])
async def create_folder(data: NewFolderRequest, caller: Caller, tree: TreeService) -> FileOut:
    return await tree.create_folder(caller, data)


@get("/api/upload/{upload_id:str}", tags=["files"])
async def upload_progress(
    upload_id: str,
    caller: Caller,
    reads: ReadService,
    offset: int = Parameter(default=0, query="chunk_offset", ge=0),
    limit: int = Parameter(default=1000, query="chunk_limit", ge=1, le=1000),
) -> UploadProgressOut:
    """An upload still going: its chunks, with URLs for those the server already has
    (streaming sync), and whether it committed or was abandoned."""
    return await reads.upload_progress(caller, upload_id, offset, limit)


class TrashController(Controller):
    path = "/api/trash"
    tags = ["trash"]

    @get("/")
    async def list_trash(
        self,
        caller: Caller,
        history: HistoryService,
        limit: int = Parameter(default=500, ge=1, le=1000),
        cursor: str | None = None,
    ) -> TrashListOut:
        return await history.trash(caller, limit, cursor)

    @post("/{trash_id:str}/restore", status_code=200)
    async def restore(
        self,
        trash_id: str,
        caller: Caller,
        history: HistoryService,
        data: RestoreRequest | None = None,
    ) -> FileOut:
        return await history.restore(caller, trash_id, data.path if data else None)

    @delete("/{trash_id:str}", status_code=204)
    async def purge(self, trash_id: str, caller: Caller, history: HistoryService) -> None:
        await history.purge(caller, trash_id)
