"""File previews shown inline by the browser (the owner's files and public links alike).

Preview bytes are shown by the browser itself, so they are served under a sandboxing CSP
(an SVG or HTML file can never run script in our origin) and text as text/plain.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from litestar import Request, Response

from app.files.reads import content_response, head_version_of
from app.storage.base import BlobStore

if TYPE_CHECKING:  # models only name types here: ui talks to services
    from app.db.files import FileNode

PREVIEW_HEADERS = {
    "Content-Security-Policy": "sandbox; default-src 'none'; img-src 'self'; "
    "media-src 'self'; style-src 'unsafe-inline'"
}

# What a view-only link shows: what a viewer's browser needs to display the file and no
# more. Text is cut to its first 256 KiB; images and PDFs are shown up to a size; audio
# and video stream (a browser needs the bytes to play them). Nothing else is served.
VIEW_ONLY_TEXT_BYTES = 256 * 1024
VIEW_ONLY_MAX_BYTES = {"image": 50 * 10**6, "application": 100 * 10**6, "audio": 0, "video": 0}


async def preview_response(
    request: Request,
    store: BlobStore,
    node: FileNode,
    media_type: str,
    *,
    view_only: bool = False,
) -> Response[Any]:
    """The file's bytes shown inline by the browser, never able to run script here."""
    is_text = media_type.startswith("text/")
    if is_text:
        media_type = "text/plain; charset=utf-8"  # shown, never rendered as HTML
    headers = {
        # Chromium's PDF viewer does not run in a sandbox; PDFs cannot script our origin.
        **({} if media_type == "application/pdf" else PREVIEW_HEADERS),
        "Referrer-Policy": "no-referrer",
    }
    if view_only:
        headers["Cache-Control"] = "private, no-store"
    return await content_response(
        request,
        store,
        node,
        await head_version_of(node),
        disposition="inline",
        media_type=media_type,
        extra_headers=headers,
        first_bytes=VIEW_ONLY_TEXT_BYTES if view_only and is_text else None,
    )
