"""Request and response bodies of the files API."""

from __future__ import annotations

from typing import Any

import msgspec


class ChunkIn(msgspec.Struct):
    sha256: str
    size: int


class UploadRequest(msgspec.Struct):
    path: str
    size: int
    chunks: list[ChunkIn]
    base_version: int | None = None


class MissingChunk(msgspec.Struct):
    index: int
    sha256: str
    size: int
    url: str


class UploadOut(msgspec.Struct):
    file_id: str
    upload_id: str
    missing: list[MissingChunk]


class CommitRequest(msgspec.Struct):
    upload_id: str


class PathRequest(msgspec.Struct):
    path: str


class FileOut(msgspec.Struct):
    id: str
    path: str
    name: str
    kind: str
    size: int
    content_hash: str | None
    version: int
    modified_at: str


class ListOut(msgspec.Struct):
    items: list[FileOut]
    cursor: str | None


class ChunkOut(msgspec.Struct):
    index: int
    sha256: str
    size: int
    url: str


class ManifestOut(msgspec.Struct):
    id: str
    path: str
    name: str
    kind: str
    size: int
    content_hash: str | None
    version: int
    modified_at: str
    chunk_count: int
    chunks: list[ChunkOut]
    next_chunk_offset: int | None


JSON = dict[str, Any]
