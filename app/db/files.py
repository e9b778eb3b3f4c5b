"""Files, versions, chunk maps, stored chunks and upload sessions (all partitioned by owner).

Rules that shape these documents (see DESIGN.md):
- nx-27017 gives no transactions, so every state change is one single-document write that
  is the commit point, and anything before it is invisible or harmless when left behind.
- References to other documents (owner_id, parent_id, ...) are hex strings, not ObjectIds:
  nx-27017 0.8 fails to match equality on ObjectId fields other than `_id` (checked:
  `find({"owner_id": oid})` returns nothing), while strings match and index correctly.
- A file's chunk list can be 12,800+ entries: it lives in `ChunkMapPage` documents of
  `PAGE_SIZE` entries, written once and never rewritten in place.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal, Protocol

from beanie import Document
from pymongo import ASCENDING, DESCENDING, IndexModel
from typing_extensions import TypedDict

from app.core.clock import Instant
from app.db.outbox import Change

PAGE_SIZE = 1024


class CommitTail(TypedDict):
    """What follows a commit's compare-and-set (see app/files/recovery.py)."""

    version_id: str  # the version to mark committed
    version: int  # its number
    at: datetime
    usage_delta: int  # bytes to add to the owner's usage when the tail is cleared


class PendingOp(TypedDict, total=False):
    """A folder operation still being carried to the folder's descendants."""

    op: Literal["move", "trash", "restore"]
    # "move", "restore": the folder's path before and after.
    # "restore": the trash root whose members come back; "charged": the quota was charged
    # up front (restores recorded before that count their bytes when they finish).
    to: str
    root: str
    charged: bool


class FileNode(Document):
    """One file or folder in an owner's tree."""

    owner_id: str
    parent_id: str | None = None  # None: at the root
    name: str
    name_key: str  # casefolded name: sort key and case-insensitive uniqueness
    # The name without accents, casefolded (paths.search_key): what search matches. Empty
    # on nodes written before search existed until `backfill_search_keys` has run.
    search_key: str = ""
    path: str
    path_key: str  # casefolded path, for lookups and subtree range scans
    # Unique per owner: the path key while live, "trash:<id>" once in the trash, so that
    # any number of trashed items may share a path while live ones may not.
    live_key: str
    kind: Literal["file", "folder"]
    # False for a file whose first upload has not been committed: invisible to listings.
    committed: bool = True
    size: int = 0
    content_hash: str | None = None
    version: int = 0
    head_version_id: str | None = None
    # Bumped by every change: the compare-and-set token for concurrent writers.
    rev: int = 0
    created_at: Instant
    modified_at: Instant
    deleted_at: Instant | None = None
    trash_root_id: str | None = None
    # True on the item a user deleted (what the trash lists), not on what was inside it.
    trash_root: bool = False
    deleted_ms: int = 0  # when it was trashed, epoch ms: the trash's sort key
    # A folder move or trash still being applied to the folder's descendants.
    pending_op: dict[str, Any] | None = None  # a PendingOp ("from" is a keyword in Python)
    # The head version uses a chunk the store lost or holds damaged (see integrity.py).
    damaged: bool = False
    # False while the head's content hash is the uploader's claim, not yet checked against
    # the stored bytes (large files whose chunks are not the 4 MiB blocks; see verify.py).
    hash_verified: bool = True
    # What follows a commit's compare-and-set (mark the version committed, count the bytes),
    # recorded in that same write so a crash cannot leave the head's version "pending" (where
    # upload expiry would drop it). Cleared by `finish_commit`; see service.py.
    commit_tail: CommitTail | None = None
    # The outbox: the last change made to this node, and whether every recipient's feed
    # has it yet (see app/events/feed.py).
    outbox: Change | None = None
    outbox_pending: bool = False

    class Settings:
        name = "files"
        indexes = [
            IndexModel([("owner_id", ASCENDING), ("live_key", ASCENDING)], unique=True),
            # A folder's live listing: every equality of its filter, then the sort key
            # (a server that plans only filters an index covers needs all of them).
            IndexModel(
                [
                    ("owner_id", ASCENDING),
                    ("parent_id", ASCENDING),
                    ("deleted_at", ASCENDING),
                    ("committed", ASCENDING),
                    ("name_key", ASCENDING),
                ]
            ),
            IndexModel([("owner_id", ASCENDING), ("path_key", ASCENDING)]),
            IndexModel([("outbox_pending", ASCENDING), ("outbox.at", ASCENDING)]),
            IndexModel(
                [("owner_id", ASCENDING), ("trash_root", ASCENDING), ("deleted_ms", ASCENDING)]
            ),
            # Trash retention, across owners.
            IndexModel([("trash_root", ASCENDING), ("deleted_ms", ASCENDING)]),
            IndexModel([("trash_root_id", ASCENDING)]),
            # Crash recovery finds half-done writes by these (see finish_interrupted_writes).
            IndexModel([("commit_tail.version_id", ASCENDING)]),
            IndexModel([("pending_op.op", ASCENDING)]),
        ]


class FileVersion(Document):
    file_id: str
    owner_id: str
    version: int | None = None  # assigned when committed
    state: Literal["pending", "committed"] = "pending"
    size: int
    content_hash: str
    chunk_count: int
    author_device: str | None = None
    restored_from: int | None = None  # made by restoring this earlier version
    damaged: bool = False  # uses a chunk marked corrupt or missing
    created_at: Instant
    committed_at: Instant | None = None
    # The content hash is derived from the chunk list when the chunks are the 4 MiB blocks;
    # otherwise it is the uploader's claim (`claimed_hash`) until the server has hashed the
    # stored bytes: at commit for files up to `verify_hash_at_commit_max`, else in the
    # worker. A claim that does not match is never kept (app/files/verify.py).
    hash_verified: bool = True
    claimed_hash: str | None = None

    class Settings:
        name = "file_versions"
        indexes = [
            IndexModel([("file_id", ASCENDING), ("version", DESCENDING)]),
            # A file's committed versions (history, restore).
            IndexModel([("file_id", ASCENDING), ("state", ASCENDING), ("version", DESCENDING)]),
            IndexModel([("owner_id", ASCENDING)]),
            IndexModel([("hash_verified", ASCENDING), ("state", ASCENDING)]),
        ]


def chunk_map_page_ids(version_id: str, chunk_count: int) -> list[str]:
    """The `_id`s of a version's chunk-map pages (lookups by `_id` are always indexed)."""
    return [f"{version_id}:{n}" for n in range(-(-chunk_count // PAGE_SIZE))]


class HasChunkMap(Protocol):
    id: Any
    chunk_count: int


async def delete_chunk_maps(versions: Sequence[HasChunkMap]) -> None:
    """Delete these versions' chunk-map pages (by `_id`: always an indexed delete)."""
    ids = [pid for v in versions for pid in chunk_map_page_ids(str(v.id), v.chunk_count)]
    for start in range(0, len(ids), 1000):
        await ChunkMapPage.get_pymongo_collection().delete_many(
            {"_id": {"$in": ids[start : start + 1000]}}
        )


class ChunkMapPage(Document):
    """Entries [page*PAGE_SIZE, (page+1)*PAGE_SIZE) of a version's ordered chunk list."""

    id: str  # "<version_id>:<page>"
    version_id: str
    page: int
    start_offset: int  # byte offset in the file of this page's first chunk
    chunks: list[tuple[str, int]]  # (sha256 hex, size)

    class Settings:
        name = "chunk_maps"
        indexes = [IndexModel([("version_id", ASCENDING), ("start_offset", ASCENDING)])]


class StoredChunk(Document):
    """A chunk held by the blob store for one owner (dedup never crosses owners)."""

    id: str  # "<owner_id>:<sha256>"
    owner_id: str
    sha256: str
    size: int
    # "deleting": garbage collection is removing it; no upload may count on it.
    # "unverified": a blob found in the store with no record (see gc.py).
    state: Literal["stored", "corrupt", "missing", "deleting", "unverified"] = "stored"
    verified: bool = False
    created_at: Instant
    # When the chunk was last PUT (epoch ms; nx-27017 compares datetimes by the second):
    # a share editor's upload may skip only chunks PUT since it began.
    put_ms: int = 0
    # When an upload last counted on this chunk (PUT it, or was told to skip it): garbage
    # collection leaves alone whatever was used within its grace period.
    used_ms: int = 0

    class Settings:
        name = "chunks"
        indexes = [
            # Garbage collection: an owner's chunks in one state, unused since a time.
            IndexModel([("owner_id", ASCENDING), ("state", ASCENDING), ("used_ms", ASCENDING)]),
            IndexModel([("owner_id", ASCENDING), ("sha256", ASCENDING)]),
        ]


class UploadSession(Document):
    owner_id: str
    file_id: str
    version_id: str
    path: str
    size: int
    content_hash: str
    chunk_count: int
    base_version: int | None = None
    device: str | None = None
    uploader_id: str | None = None  # who registered it: the owner or a share editor
    created_ms: int = 0
    # Kept after commit (until expiry) so that a retried commit is answered, not 404.
    committed: bool = False
    created_at: Instant
    expires_at: Instant

    class Settings:
        name = "upload_sessions"
        indexes = [
            IndexModel(
                [("owner_id", ASCENDING), ("file_id", ASCENDING), ("content_hash", ASCENDING)]
            ),
            IndexModel([("expires_at", ASCENDING)]),
        ]


class MaintenanceState(Document):
    """Progress of a background pass (scrub cursor, GC lease), so a restart resumes it."""

    id: str  # "scrub", "gc"
    cursor: str = ""
    passes: int = 0
    last_pass_ms: int = 0
    lease_until_ms: int = 0
    stats: dict[str, int] = {}

    class Settings:
        name = "maintenance"
