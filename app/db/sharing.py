"""Sharing documents: the ACL, its derived "Shared with me" view, public links.

- `Share` (collection "acl") is the authority: every access check reads it. A revoke keeps
  the document as a tombstone (role None) so that its outbox can carry `share.removed`
  through the same exactly-once fan-out as file changes.
- `SharedWithMe` is partitioned by recipient and derived from the ACL by the fan-out step
  (normally the worker): it lists what to show, it never grants anything.
- `ShareLink` stores a random nonce and the token's hash, never the token: the token is
  HMAC(secret key, nonce), so the owner can be shown it again but a database dump alone
  does not open any link. An `upload_only` link is a file request (app/sharing/requests.py).
"""

from __future__ import annotations

from typing import Literal

from beanie import Document
from pymongo import ASCENDING, IndexModel

from app.core.clock import Instant
from app.db.outbox import Change

Role = Literal["viewer", "editor"]
ROLES: tuple[str, ...] = ("viewer", "editor")
ROLE_RANK = {"viewer": 1, "editor": 2, "owner": 3}


class Share(Document):
    id: str  # "<file_id>:<user_id>": one grant per file and user
    file_id: str
    owner_id: str
    user_id: str
    username: str
    role: Role | None  # None: revoked (a tombstone that carries the share.removed event)
    granted_by: str
    created_at: Instant
    updated_at: Instant
    rev: int = 0  # compare-and-set token, like FileNode.rev
    outbox: Change | None = None
    outbox_pending: bool = False

    class Settings:
        name = "acl"
        indexes = [
            IndexModel([("owner_id", ASCENDING), ("role", ASCENDING)]),
            IndexModel([("file_id", ASCENDING)]),
            IndexModel([("user_id", ASCENDING), ("role", ASCENDING)]),
            # A recipient's grant changes not derived yet (app/acl/derived.shared_with).
            IndexModel([("user_id", ASCENDING), ("outbox_pending", ASCENDING)]),
            IndexModel([("outbox_pending", ASCENDING), ("outbox.at", ASCENDING)]),
        ]


class SharedWithMe(Document):
    id: str  # "<recipient_id>:<file_id>"
    recipient_id: str
    file_id: str
    owner_id: str
    owner: str  # owner's username
    role: Role
    shared_at: Instant

    class Settings:
        name = "shared_with_me"
        indexes = [IndexModel([("recipient_id", ASCENDING), ("shared_at", ASCENDING)])]


class ShareLink(Document):
    file_id: str
    owner_id: str
    nonce: str  # hex; token = HMAC(secret, nonce)
    token_hash: str  # sha256 of the token: how a request finds its link
    password_hash: str | None = None
    expires_at: Instant | None = None
    allow_download: bool = True
    # A file request: visitors may only add files to the folder (never list or read it),
    # each at most `max_bytes` (None: only the owner's quota limits them).
    upload_only: bool = False
    max_bytes: int | None = None
    revoked: bool = False
    views: int = 0
    downloads: int = 0
    received_bytes: int = 0  # file requests: bytes of the files committed through the link
    created_at: Instant

    class Settings:
        name = "share_links"
        indexes = [
            IndexModel([("token_hash", ASCENDING)], unique=True),
            IndexModel([("file_id", ASCENDING), ("revoked", ASCENDING)]),
        ]
