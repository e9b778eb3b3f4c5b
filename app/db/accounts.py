"""Users, browser sessions and device tokens. Tokens are stored only as SHA-256 hashes."""

from __future__ import annotations

from typing import Any

from beanie import Document
from pymongo import ASCENDING, IndexModel

from app.core.clock import Instant


class User(Document):
    username: str
    username_key: str  # casefolded: "Alice" and "alice" are one account
    password_hash: str
    quota_bytes: int = 0  # 0 = unlimited
    usage_bytes: int = 0
    created_at: Instant
    # Bumped when access to the user's files is taken away (a share revoked, a file purged):
    # signed chunk-read URLs carry it, so those handed out before stop working at once.
    url_epoch: int = 0
    # Quota charges not yet matched by a commit: claim id -> {"at", "items"} (see
    # app/files/accounting.py).
    claims: dict[str, Any] = {}
    has_claims: bool = False  # any claim may be open (cleared once none is)
    claims_rev: int = 0  # bumped by every charge
    # How the browser shows folders ("list" or "grid"): the user's choice on every device.
    view: str = "list"

    class Settings:
        name = "users"
        indexes = [
            IndexModel([("username_key", ASCENDING)], unique=True),
            IndexModel([("has_claims", ASCENDING)]),
        ]


class BrowserSession(Document):
    id: str  # sha256 of the cookie value
    user_id: str
    csrf_token: str
    created_at: Instant
    expires_at: Instant
    # Shown in the device list (recorded at most once a minute).
    last_used_at: Instant | None = None
    last_address: str | None = None
    user_agent: str | None = None

    class Settings:
        name = "sessions"
        indexes = [IndexModel([("user_id", ASCENDING)])]


class ApiToken(Document):
    """A device's bearer token; it ends when revoked, or after `token_idle_days` unused."""

    id: str  # sha256 of the bearer token
    user_id: str
    device_name: str
    created_at: Instant
    last_used_at: Instant | None = None
    last_address: str | None = None

    class Settings:
        name = "api_tokens"
        indexes = [IndexModel([("user_id", ASCENDING)])]
