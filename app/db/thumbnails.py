"""Cached thumbnails: one small document per (owner, content hash, size).

The encoded image (tens of KB) lives in the document itself, so every web instance reads
it with one `_id` lookup whatever the blob store is (local disk on another machine, S3),
and nothing is written next to the owner's chunks. Keyed by content hash, not file id:
every copy, rename and version with the same bytes shares one thumbnail, and a new version
has a new key, so a cached one never goes stale. A failure is cached the same way, so
broken images and bombs are tried once per content, not on every request.
"""

from __future__ import annotations

from typing import Literal

from beanie import Document


def thumbnail_id(owner_id: str, content_hash: str, box: int) -> str:
    return f"{owner_id}:{content_hash}:{box}"


class Thumbnail(Document):
    id: str  # type: ignore[assignment]  # thumbnail_id(owner_id, content_hash, box)
    owner_id: str
    content_hash: str
    box: int  # fits in box x box pixels
    state: Literal["ready", "failed"]
    data: bytes = b""  # the encoded image when ready
    media_type: str = ""
    reason: str = ""  # why there is none, when failed
    made_ms: int = 0

    class Settings:
        name = "thumbnails"
