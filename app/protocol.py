"""The wire protocol shared by the server and every client: hashes, chunk limits, events.

This is the one module of `app` that the sync client imports (an import-linter contract
keeps it so): nothing here may import anything else of the app, or anything the client
does not install.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Final

import msgspec

KIB: Final = 1024
MIB: Final = 1024 * KIB

# Chunking: the size clients cut files into, and the range the server accepts (every
# chunk but the last at least MIN_CHUNK_SIZE; none over MAX_CHUNK_SIZE).
CHUNK_SIZE: Final = 4 * MIB
MIN_CHUNK_SIZE: Final = 64 * KIB
MAX_CHUNK_SIZE: Final = 16 * MIB
MAX_CHUNKS: Final = 16384


def content_hash(chunk_sha256s: Iterable[str]) -> str:
    """A file's content hash (Dropbox's scheme): SHA-256 over the concatenated binary
    SHA-256 digests of its chunks, in order."""
    h = hashlib.sha256()
    for sha in chunk_sha256s:
        h.update(bytes.fromhex(sha))
    return h.hexdigest()


# Event types of the change feed.
FILE_CREATED: Final = "file.created"
FILE_UPDATED: Final = "file.updated"
FILE_MOVED: Final = "file.moved"
FILE_DELETED: Final = "file.deleted"
FILE_RESTORED: Final = "file.restored"
SHARE_ADDED: Final = "share.added"
SHARE_REMOVED: Final = "share.removed"
EVENT_TYPES: Final = (
    FILE_CREATED,
    FILE_UPDATED,
    FILE_MOVED,
    FILE_DELETED,
    FILE_RESTORED,
    SHARE_ADDED,
    SHARE_REMOVED,
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


class Feed(msgspec.Struct):
    """A page of the feed: events after the cursor asked for, and the cursor to ask next."""

    events: list[Event]
    cursor: int
    has_more: bool
