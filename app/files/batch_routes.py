"""The batch API: many files per request (upload, commit, delete, move, download) and the
recursive listing a first sync reads the whole tree with.

`POST /api/batch/download` answers `application/x-coffer-files`: for each requested id, in
order, one line of JSON (`{"index","id","path","version","size","content_hash","chunks"}`,
`chunks` being `[[sha256, size], ...]`, or `{"index","id","error":{...}}`) and then, unless
it is an error, exactly `size` bytes of that file (files of up to 1,024 chunks). It
streams: memory stays at about one chunk whatever the batch holds.
"""

from __future__ import annotations

from litestar import Controller, Request, get, post
from litestar.params import Parameter
from litestar.response import Stream

from app.core.encoding import ZSTD, accepts_zstd, zstd_stream
from app.files.batch import BatchService
from app.files.batch_schemas import (
    BatchCommitRequest,
    BatchFoldersRequest,
    BatchIdsRequest,
    BatchItemsOut,
    BatchMoveRequest,
    BatchUploadOut,
    BatchUploadRequest,
)
from app.files.schemas import ListOut
from app.files.scope import Caller
from app.files.tree import TreeService
from app.protocol import COMPRESS_SAMPLE, worth_compressing

# The largest request body a batch may have: 16 MiB of inline data as base64 plus the
# manifests of a thousand files (the service checks the configured limits exactly).
BATCH_BODY_MAX = 40 * 1024 * 1024
FILES_MEDIA_TYPE = "application/x-coffer-files"


class BatchController(Controller):
    path = "/api/batch"
    tags = ["batch"]

    @post("/upload", status_code=200, request_max_body_size=BATCH_BODY_MAX)
    async def upload(
        self, data: BatchUploadRequest, caller: Caller, batch: BatchService
    ) -> BatchUploadOut:
        """Register up to 1,000 files; small ones (`data`, base64) commit right here."""
        return await batch.upload(caller, data)

    @post("/commit", status_code=200)
    async def commit(
        self, data: BatchCommitRequest, caller: Caller, batch: BatchService
    ) -> BatchItemsOut:
        return await batch.commit(caller, data)

    @post("/folders", status_code=200)
    async def folders(
        self, data: BatchFoldersRequest, caller: Caller, batch: BatchService
    ) -> BatchItemsOut:
        """Have up to 1,000 folders (created with their parents where missing)."""
        return await batch.folders(caller, data)

    @post("/delete", status_code=200)
    async def delete(
        self, data: BatchIdsRequest, caller: Caller, batch: BatchService
    ) -> BatchItemsOut:
        return await batch.delete(caller, data)

    @post("/move", status_code=200)
    async def move(
        self, data: BatchMoveRequest, caller: Caller, batch: BatchService
    ) -> BatchItemsOut:
        return await batch.move(caller, data)

    @post("/download", status_code=200)
    async def download(
        self, request: Request, data: BatchIdsRequest, caller: Caller, batch: BatchService
    ) -> Stream:
        body = batch.download(caller, data.ids)
        headers = {"Cache-Control": "private, no-store", "Vary": "Accept-Encoding"}
        if accepts_zstd(request.headers.get("accept-encoding")):
            body, packed = await zstd_stream(body, worth_compressing, COMPRESS_SAMPLE)
            if packed:
                headers["Content-Encoding"] = ZSTD
        return Stream(body, media_type=FILES_MEDIA_TYPE, headers=headers)


@get("/api/tree", tags=["files"])
async def list_tree(
    caller: Caller,
    tree: TreeService,
    folder_id: str | None = Parameter(default=None, query="id"),
    path: str | None = None,
    limit: int = Parameter(default=1000, ge=1, le=1000),
    cursor: str | None = None,
) -> ListOut:
    """Everything below your root, your folder `path`, or folder `id`, in path order, one
    page per call: what a first sync reads instead of listing folder by folder."""
    return await tree.list_tree(caller, folder_id, limit, cursor, path)
