"""Request and response bodies of the sharing API."""

from __future__ import annotations

import msgspec

from app.files.schemas import FileOut


class ShareRequest(msgspec.Struct):
    username: str
    role: str


class ShareOut(msgspec.Struct):
    file_id: str
    username: str
    role: str | None
    created_at: str
    updated_at: str


class ShareListOut(msgspec.Struct):
    items: list[ShareOut]


class SharedItemOut(FileOut):
    shared_at: str = ""


class SharedListOut(msgspec.Struct):
    items: list[SharedItemOut]


class LinkRequest(msgspec.Struct):
    password: str | None = None
    expires_at: str | None = None
    allow_download: bool = True
    upload_only: bool = False
    max_bytes: int | None = None


class LinkOut(msgspec.Struct):
    token: str
    url: str
    file_id: str
    expires_at: str | None
    allow_download: bool
    has_password: bool
    views: int
    downloads: int
    created_at: str
    upload_only: bool = False
    max_bytes: int | None = None


class LinkListOut(msgspec.Struct):
    items: list[LinkOut]
