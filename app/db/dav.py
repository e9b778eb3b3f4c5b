"""WebDAV's own state: locks (shared by every web instance, so a lock taken through one
is honoured by all) and dead properties (stored per file, so they follow it on a move)."""

from __future__ import annotations

from typing import Any

from beanie import Document
from pymongo import ASCENDING, IndexModel


class DavLock(Document):
    """One WebDAV lock. `root` is the locked resource's reference URL (owner id + path
    key: the same resource whoever reaches it); `expire` epoch seconds."""

    id: str  # type: ignore[assignment]  # the lock token
    root: str
    expire: float
    lock: dict[str, Any]

    class Settings:
        name = "dav_locks"
        indexes = [IndexModel([("root", ASCENDING)])]


class DavProperties(Document):
    """A file's or folder's dead properties: {"{namespace}name": "<xml/>"}."""

    id: str  # type: ignore[assignment]  # the file node's id
    owner_id: str | None = None  # whose tree: a listing skips the lookups if none has any
    props: dict[str, str] = {}

    class Settings:
        name = "dav_properties"
        indexes = [IndexModel([("owner_id", ASCENDING)])]


class DavUpload(Document):
    """A Nextcloud chunked upload (v2) in progress: its parts, each already stored as
    chunks, assembled into a file by `MOVE .../.file`. Expired after a day idle (the
    worker's upload expiry drops it; its chunks are then garbage)."""

    id: str  # type: ignore[assignment]  # "<user id>:<upload name>"
    user_id: str
    destination: str | None = None
    # Whose chunk namespace the parts went into (the destination's owner): chunks are kept
    # per owner, so the parts only make a file in that owner's tree.
    owner_id: str | None = None
    created_ms: int
    touched_ms: int
    # part name (a number, "00001") -> [[sha256, size], ...]
    parts: dict[str, list[list[Any]]] = {}
    # Once assembled: the MOVE's answer {"status", "file_id", "etag"}, given again to a
    # client that retries it (it timed out waiting), until the upload expires.
    done: dict[str, Any] | None = None

    class Settings:
        name = "dav_uploads"
        indexes = [IndexModel([("touched_ms", ASCENDING)]), IndexModel([("user_id", ASCENDING)])]
