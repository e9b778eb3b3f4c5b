"""Request and response bodies of the batch API (many files in one request)."""

from __future__ import annotations

import msgspec

from app.files.schemas import FileOut, MissingChunk, UploadRequest


class BatchFileIn(UploadRequest):
    """One file of a batch upload: where (as for `POST /api/file`), its chunk list, and
    for a small file its bytes (`data`, base64), which commits it in the same request."""

    data: str | None = None


class BatchUploadRequest(msgspec.Struct):
    files: list[BatchFileIn]


class BatchError(msgspec.Struct):
    code: str
    message: str
    status: int  # the HTTP status this file alone would have got


class BatchFileResult(msgspec.Struct, omit_defaults=True):
    """What happened to one file of a batch, by its position in the request.

    `status`: "committed" (`file` is the file object), "upload" (send `missing` chunks, then
    commit `upload_id` with `POST /api/batch/commit`) or "error" (`error`).
    """

    index: int
    status: str
    file: FileOut | None = None
    file_id: str | None = None
    upload_id: str | None = None
    missing: list[MissingChunk] | None = None
    error: BatchError | None = None


class BatchUploadOut(msgspec.Struct):
    results: list[BatchFileResult]


class BatchCommitItem(msgspec.Struct):
    file_id: str
    upload_id: str


class BatchCommitRequest(msgspec.Struct):
    uploads: list[BatchCommitItem]


class BatchFolderIn(msgspec.Struct):
    """A folder to have: `path` in your tree, or `name` (may hold "a/b") in `parent_id`."""

    path: str | None = None
    parent_id: str | None = None
    name: str | None = None


class BatchFoldersRequest(msgspec.Struct):
    folders: list[BatchFolderIn]


class BatchIdsRequest(msgspec.Struct):
    ids: list[str]


class BatchMoveItem(msgspec.Struct):
    id: str
    path: str | None = None
    name: str | None = None
    parent_id: str | None = None


class BatchMoveRequest(msgspec.Struct):
    moves: list[BatchMoveItem]


class BatchItemResult(msgspec.Struct, omit_defaults=True):
    """One item of a batch delete, move or commit: `file` on success, else `error`."""

    index: int
    status: str  # "ok" or "error"
    file: FileOut | None = None
    error: BatchError | None = None
    missing: list[MissingChunk] | None = None


class BatchItemsOut(msgspec.Struct):
    results: list[BatchItemResult]
