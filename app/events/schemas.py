"""Response bodies of the change feed."""

from __future__ import annotations

import msgspec


class EventOut(msgspec.Struct, omit_defaults=True):
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


class FeedOut(msgspec.Struct):
    events: list[EventOut]
    cursor: int
    has_more: bool
