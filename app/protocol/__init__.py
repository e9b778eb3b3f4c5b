"""The wire protocol shared by the server and every client: hashes, chunk limits, events.

This is the one package of `app` that the sync client imports (an import-linter contract
keeps it so): nothing here may import anything else of the app, or anything the client
does not install. `delta.py`: the delta chunk format edits are sent in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Final

import msgspec
import zstandard

KIB: Final = 1024
MIB: Final = 1024 * KIB

# Chunking: the size clients cut files into, and the range the server accepts (every
# chunk but the last at least MIN_CHUNK_SIZE; none over MAX_CHUNK_SIZE).
CHUNK_SIZE: Final = 4 * MIB
MIN_CHUNK_SIZE: Final = 64 * KIB
MAX_CHUNK_SIZE: Final = 16 * MIB
MAX_CHUNKS: Final = 16384


# Compression on the wire: a body (chunk, batch) goes zstd-compressed, level 1, when a
# sample of its first COMPRESS_SAMPLE bytes shrinks below 90 %; hashes are always over the
# uncompressed bytes.
ZSTD: Final = "zstd"
COMPRESS_SAMPLE: Final = 64 * KIB


def worth_compressing(sample: bytes | memoryview) -> bool:
    """Whether data that begins like this shrinks enough under zstd to pay for it (not for
    random or already compressed bytes)."""
    sample = sample[:COMPRESS_SAMPLE]
    return len(zstandard.ZstdCompressor(level=1).compress(sample)) < 0.9 * len(sample)


def compress_if_worth_it(data: bytes) -> bytes | None:
    """The bytes zstd-compressed (level 1), or None when they would not shrink enough."""
    if not data or not worth_compressing(data):
        return None
    packed = zstandard.ZstdCompressor(level=1).compress(data)
    return packed if len(packed) < 0.9 * len(data) else None


# The content hash is over fixed blocks, whatever chunks a transfer used.
BLOCK_SIZE: Final = 4 * MIB


def content_hash(block_sha256s: Iterable[str]) -> str:
    """A file's content hash (Dropbox's definition): SHA-256 over the concatenated binary
    SHA-256 digests of its BLOCK_SIZE blocks, in order (the last may be shorter; an empty
    file has no block). Identical bytes always have the same content hash: from the
    browser, the sync client or any other client, however each cut the file to send it.

    Given the digests of a file's *chunks*, this is its content hash only when the chunks
    are the blocks (`blocks_aligned`); otherwise hash the bytes (`ContentHasher`)."""
    h = hashlib.sha256()
    for sha in block_sha256s:
        h.update(bytes.fromhex(sha))
    return h.hexdigest()


def blocks_aligned(chunk_sizes: Iterable[int]) -> bool:
    """Whether chunks of these sizes are exactly the file's blocks (each BLOCK_SIZE but
    the last, which is not empty): then `content_hash` of their digests is the file's."""
    sizes = list(chunk_sizes)
    return all(s == BLOCK_SIZE for s in sizes[:-1]) and (not sizes or 0 < sizes[-1] <= BLOCK_SIZE)


class ContentHasher:
    """The content hash of bytes fed in order, in any pieces, and the SHA-256 of each of
    their blocks (memory: one block digest per 4 MiB, nothing of the bytes)."""

    def __init__(self) -> None:
        self._blocks: list[bytes] = []
        self._block = hashlib.sha256()
        self._in_block = 0

    def update(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            take = min(len(view), BLOCK_SIZE - self._in_block)
            self._block.update(view[:take])
            self._in_block += take
            view = view[take:]
            if self._in_block == BLOCK_SIZE:
                self._blocks.append(self._block.digest())
                self._block = hashlib.sha256()
                self._in_block = 0

    def block_digests(self) -> list[str]:
        """The SHA-256 (hex) of each block so far, the last one short if it is."""
        last = [self._block.digest()] if self._in_block else []
        return [digest.hex() for digest in self._blocks + last]

    def hexdigest(self) -> str:
        return content_hash(self.block_digests())


# Event types of the change feed.
FILE_CREATED: Final = "file.created"
FILE_UPDATED: Final = "file.updated"
FILE_MOVED: Final = "file.moved"
FILE_DELETED: Final = "file.deleted"
FILE_RESTORED: Final = "file.restored"
SHARE_ADDED: Final = "share.added"
SHARE_REMOVED: Final = "share.removed"
# A large upload began: devices may fetch its chunks as they arrive (`upload_id`), and
# finish when its file.created / file.updated arrives. A hint, never a change of state.
UPLOAD_STARTED: Final = "upload.started"
EVENT_TYPES: Final = (
    FILE_CREATED,
    FILE_UPDATED,
    FILE_MOVED,
    FILE_DELETED,
    FILE_RESTORED,
    SHARE_ADDED,
    SHARE_REMOVED,
    UPLOAD_STARTED,
)
HEARTBEAT: Final = "heartbeat"  # a WebSocket message that is not an event


class Event(msgspec.Struct, omit_defaults=True):
    """One event of a recipient's feed, as `GET /api/file/events` and the WebSocket send it.

    `path` (and `old_path`) are as the recipient sees them: under "/<shared name>/" for
    what was shared with them.
    """

    seq: int
    type: str
    file_id: str | None
    path: str | None
    kind: str | None
    version: int | None
    size: int | None
    content_hash: str | None
    actor: str | None
    at: str
    old_path: str | None = None
    owner: str | None = None
    role: str | None = None
    username: str | None = None
    upload_id: str | None = None  # upload.started: the upload to stream from


class Feed(msgspec.Struct):
    """A page of the feed: events after the cursor asked for, and the cursor to ask next."""

    events: list[Event]
    cursor: int
    has_more: bool
