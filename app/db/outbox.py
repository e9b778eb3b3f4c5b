"""The outbox record stored with a change, typed (see app/events/ for how it is delivered).

A change is the document's state right after the write plus who must hear of it (its
audience, computed by the writer: app/acl/audience.py). It is stored in the same
single-document write as the change itself.
"""

from __future__ import annotations

from datetime import datetime

from typing_extensions import TypedDict


class AudienceEntry(TypedDict, total=False):
    """How one recipient (besides the owner) sees a change.

    `new`/`old`: [root_path, root_name] of the shared item the node is seen through after
    and before the change (None: not visible to them then), `new_root`/`old_root` that
    item's id. `roots`: shared items *below* a trashed or restored folder, [root_id,
    root_name, kind] each.
    """

    id: str
    new: list[str] | None
    old: list[str] | None
    new_root: str
    old_root: str
    roots: list[list[str]]


class Change(TypedDict, total=False):
    id: str  # unique per change: recipients' feeds are unique on (recipient, change id)
    type: str
    file_id: str
    owner_id: str
    path: str
    old_path: str | None
    kind: str
    version: int | None
    size: int | None
    content_hash: str | None
    actor: str
    at: datetime
    audience: list[AudienceEntry]
    owner: str | None  # the owner's username
    role: str | None  # share events: the role granted (None: revoked)
    username: str | None  # share events: the recipient
    upload_id: str | None  # upload.started: which upload


# The fields of a change that become an event's fields.
EVENT_FIELDS = (
    "type",
    "file_id",
    "owner_id",
    "path",
    "old_path",
    "kind",
    "version",
    "size",
    "content_hash",
    "actor",
    "at",
    "owner",
    "role",
    "username",
    "upload_id",
)
