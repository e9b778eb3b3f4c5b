"""The thumbnail API (thin: parse, call ThumbnailService, shape the HTTP answer).

`GET /api/file/{id}/thumbnail?size=256&v=<content hash>`:
- 200 `image/webp`, `ETag: "<content hash>-<size>"`; `Cache-Control` immutable for a year
  when `v` names the file's current content hash (the URL then changes with every new
  version), else `private, no-cache` (revalidated by ETag); `If-None-Match` -> 304;
- 202 `{"status": "pending"}` with `Retry-After: 1` while the worker makes it;
- 404 `no_thumbnail` when it cannot be made (broken, bomb, too large, damaged), 404
  `not_found` for a file the caller may not read, 415 `not_an_image`, 400 `bad_size`.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get
from litestar.params import Parameter

from app.files.scope import Caller
from app.files.thumbnails import CACHE_FOREVER, Pending, Ready, ThumbnailService

PENDING_HEADERS = {"Retry-After": "1", "Cache-Control": "no-store"}


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or etag in tags


def thumbnail_response(request: Request, result: Ready | Pending, v: str | None) -> Response[Any]:
    """The answer for a looked-up thumbnail (the API and public links alike)."""
    if isinstance(result, Pending):
        return Response({"status": "pending"}, status_code=202, headers=PENDING_HEADERS)
    headers = {
        "ETag": result.etag,
        "Cache-Control": CACHE_FOREVER if v == result.content_hash else "private, no-cache",
        "X-Content-Type-Options": "nosniff",
    }
    if etag_matches(request.headers.get("if-none-match"), result.etag):
        return Response(b"", status_code=304, headers=headers)
    return Response(result.data, media_type=result.media_type, headers=headers)


@get("/api/file/{file_id:str}/thumbnail", tags=["files"])
async def file_thumbnail(
    file_id: str,
    caller: Caller,
    thumbnails: ThumbnailService,
    request: Request,
    size: int = Parameter(default=256, ge=1, le=65536),
    v: str | None = Parameter(default=None, max_length=128),
) -> Response[Any]:
    """A small WebP of an image file (202 while it is being made; see the module doc)."""
    return thumbnail_response(request, await thumbnails.for_caller(caller, file_id, size), v)
