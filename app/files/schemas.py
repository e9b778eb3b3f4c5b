"""Request and response bodies of the files API."""

from __future__ import annotations

import msgspec


class ChunkIn(msgspec.Struct):
    sha256: str
    size: int
    # Chunks of the file's current version this one probably shares bytes with (those at
    # its place, in order, at most MAX_DELTA_BASES): if the chunk is missing, the server
    # may answer with their pieces, and the chunk goes up as a delta against them
    # (app/protocol/delta.py).
    bases: list[str] | None = None


class UploadRequest(msgspec.Struct):
    """Where: `path` (own tree), or `parent_id` + `name`, or `file_id` (a new version)."""

    size: int
    chunks: list[ChunkIn]
    path: str | None = None
    parent_id: str | None = None
    name: str | None = None
    file_id: str | None = None
    base_version: int | None = None
    # The file's content hash as the uploader computed it (app/protocol). Optional when
    # the chunks are the 4 MiB blocks (the server derives it) or the file is at most
    # `verify_hash_at_commit_max` bytes (the server hashes it at commit).
    content_hash: str | None = None


class DeltaBase(msgspec.Struct):
    """What a missing chunk may be sent against: these stored chunks one after the other
    (`size` bytes in all), cut into pieces, (8-byte BLAKE2b hex, size) in order. The
    chunk's URL then takes a delta body, never the plain bytes."""

    sha256s: list[str]
    size: int
    pieces: list[tuple[str, int]]


class MissingChunk(msgspec.Struct):
    index: int
    sha256: str
    size: int
    url: str
    # Send these headers with the PUT (S3 signs the chunk's checksum into the URL).
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    # Content codings the URL accepts for the body ("zstd" for Coffer's own store; none
    # for a presigned S3 URL, which stores the body as sent).
    encodings: list[str] = msgspec.field(default_factory=list)
    base: DeltaBase | None = None


class UploadOut(msgspec.Struct):
    file_id: str
    upload_id: str
    missing: list[MissingChunk]


class CommitRequest(msgspec.Struct):
    upload_id: str


class NewFolderRequest(msgspec.Struct):
    """`path` in the caller's own tree, or `name` inside the folder `parent_id`."""

    path: str | None = None
    parent_id: str | None = None
    name: str | None = None


class MoveRequest(msgspec.Struct):
    """A new absolute `path` (owner only), or a new `name` and/or `parent_id`."""

    path: str | None = None
    name: str | None = None
    parent_id: str | None = None


class FileOut(msgspec.Struct):
    id: str
    path: str
    name: str
    kind: str
    size: int
    content_hash: str | None
    version: int
    modified_at: str
    role: str = "owner"
    owner: str | None = None
    # Uses a chunk the server lost or found corrupt: downloads fail until it is healed.
    damaged: bool = False
    # False while `content_hash` is the uploader's claim, not yet checked by the server.
    hash_verified: bool = True
    # An image kind: GET /api/file/{id}/thumbnail may have a picture of it
    # (app/files/thumbnails.py; it may still answer 404 no_thumbnail for broken bytes).
    thumbnail: bool = False


class ListOut(msgspec.Struct):
    items: list[FileOut]
    cursor: str | None


class ChunkOut(msgspec.Struct):
    index: int
    sha256: str
    size: int
    url: str


class ManifestOut(FileOut):
    """A file object with one page of its chunk list."""

    chunk_count: int = 0
    chunks: list[ChunkOut] = msgspec.field(default_factory=list)
    next_chunk_offset: int | None = None


class StreamChunkOut(msgspec.Struct, omit_defaults=True):
    index: int
    sha256: str
    size: int
    url: str | None = None  # once the server has it: fetch it from here


class UploadProgressOut(msgspec.Struct):
    """An upload in progress, for devices that fetch its chunks as they arrive (streaming
    sync): `state` "uploading", "committed" or "gone" (abandoned or expired)."""

    upload_id: str
    file_id: str
    state: str
    size: int
    content_hash: str
    chunk_count: int
    chunks: list[StreamChunkOut]
    next_chunk_offset: int | None = None


class VersionOut(msgspec.Struct):
    version: int | None
    size: int
    content_hash: str
    modified_at: str
    author_device: str | None
    damaged: bool = False


class TrashItemOut(msgspec.Struct):
    id: str
    path: str
    name: str
    kind: str
    size: int
    deleted_at: str


class TrashListOut(msgspec.Struct):
    items: list[TrashItemOut]
    cursor: str | None


class RestoreRequest(msgspec.Struct):
    path: str | None = None
