"""Per-recipient events and their sequence counters.

`seq` is strictly increasing per recipient (a `$inc` counter), so a device's cursor is one
integer. Two unique indexes make delivery exactly-once: (recipient, seq) and
(recipient, change_id), so a retried fan-out can never deliver a change twice.
"""

from __future__ import annotations

from beanie import Document
from pymongo import ASCENDING, IndexModel

from app.core.clock import Instant

# An event type that fills a sequence hole left by a writer that died between taking a
# seq and writing its event. Never shown to clients; cursors simply move past it.
HOLE = "hole"


class Event(Document):
    recipient_id: str
    seq: int
    change_id: str
    type: str
    file_id: str | None = None
    owner_id: str | None = None
    path: str | None = None
    old_path: str | None = None
    kind: str | None = None
    version: int | None = None
    size: int | None = None
    content_hash: str | None = None
    actor: str | None = None
    owner: str | None = None  # the owner's username, on events of shared files
    role: str | None = None  # share events: the role granted
    username: str | None = None  # share events: who the file was shared with
    upload_id: str | None = None  # upload.started: which upload
    # A share recipient's event: the ids of the shared items they saw the change through.
    # Readers show it only while one of those shares is still granted since before the
    # change (see EventRegistry.gate): a change that reaches the feed after its
    # share.removed must not bring the file back.
    via: list[str] | None = None
    at: Instant
    # nx-27017 compares datetimes only to the whole second; `since` lookups use this.
    at_ms: int = 0

    class Settings:
        name = "events"
        indexes = [
            IndexModel([("recipient_id", ASCENDING), ("seq", ASCENDING)], unique=True),
            IndexModel([("recipient_id", ASCENDING), ("change_id", ASCENDING)], unique=True),
            IndexModel([("recipient_id", ASCENDING), ("at_ms", ASCENDING)]),
        ]


class EventCounter(Document):
    id: str  # recipient id
    seq: int = 0

    class Settings:
        name = "event_counters"
