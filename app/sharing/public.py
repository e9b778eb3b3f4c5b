"""Public link pages: anyone with a link's URL, no account needed.

`/s/{token}` shows the file (name, size, preview, download button) or the folder's
contents; a password-protected link first asks for the password and then remembers it in
a short-lived cookie scoped to that link's path. Every response here is HTML or bytes,
never the API's JSON, and no handler logs the token.

A folder link serves only what lies inside the folder: `path` is a relative path that is
normalised (no `..`, no NUL, ...) and looked up under the folder's own path, among live
items of the same owner.
"""

from __future__ import annotations

import hashlib
import hmac
import mimetypes
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from beanie import PydanticObjectId
from litestar import Request, Response, get, post
from litestar.datastructures import Cookie
from litestar.enums import RequestEncodingType
from litestar.params import Body
from litestar.response import Redirect, Template

from app.core.crypto import PasswordHashing
from app.core.query import match
from app.core.ratelimit import give_back, take_attempt
from app.errors import CofferError
from app.files import paths
from app.files.models import FileNode
from app.files.routes import content_response
from app.files.service import as_utc, head_version_of
from app.settings import Settings
from app.sharing.models import ShareLink
from app.sharing.service import token_hash, verify_link_password
from app.storage.base import BlobStore

PUBLIC = {"public": True}
UNLOCK_SECONDS = 3600
LINK_COOKIE = "coffer_link"
PREVIEW_TYPES = ("image/", "text/", "application/pdf", "video/", "audio/")
LIST_LIMIT = 1000
# Preview bytes are shown by the browser itself; a sandbox keeps an SVG or HTML file
# from running script in our origin.
PREVIEW_HEADERS = {
    "Content-Security-Policy": "sandbox; default-src 'none'; img-src 'self'; "
    "media-src 'self'; style-src 'unsafe-inline'"
}


class LinkPageError(Exception):
    def __init__(self, status: int, title: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.title, self.message, self.extra = status, title, message, extra


@dataclass
class OpenLink:
    token: str
    link: ShareLink
    root: FileNode

    @property
    def base(self) -> str:
        return f"/s/{self.token}"


def error_page(exc: LinkPageError) -> Template:
    return Template(
        template_name="link_error.html",
        context={"title": exc.title, "message": exc.message},
        status_code=exc.status,
        headers={k: str(v) for k, v in exc.extra.items()},
    )


async def open_link(token: str) -> OpenLink:
    link = await ShareLink.find_one(match(token_hash=token_hash(token)))
    if link is None:
        raise LinkPageError(404, "Link not found", "This link does not exist. Check the address.")
    if link.revoked:
        raise LinkPageError(410, "Link revoked", "The owner has turned this link off.")
    if link.expires_at is not None and as_utc(link.expires_at) <= datetime.now(UTC):
        raise LinkPageError(410, "Link expired", "This link has expired.")
    root = await FileNode.get(PydanticObjectId(link.file_id))
    if root is None or root.deleted_at is not None or not root.committed:
        raise LinkPageError(410, "No longer available", "The shared item was deleted.")
    return OpenLink(token, link, root)


def _unlock_signature(settings: Settings, link: ShareLink, expires: int) -> str:
    message = f"unlock:{link.id}:{expires}:{link.password_hash}".encode()
    key = settings.resolved_secret_key().encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def unlocked(request: Request, settings: Settings, opened: OpenLink) -> bool:
    if opened.link.password_hash is None:
        return True
    value = request.cookies.get(LINK_COOKIE, "")
    link_id, _, rest = value.partition(".")
    expires_raw, _, signature = rest.partition(".")
    if link_id != str(opened.link.id) or not expires_raw.isdigit():
        return False
    expires = int(expires_raw)
    expected = _unlock_signature(settings, opened.link, expires)
    return expires > time.time() and hmac.compare_digest(signature, expected)


async def target(opened: OpenLink, raw_path: str | None) -> tuple[FileNode, str]:
    """The item `raw_path` names inside the link's folder, and its path shown to visitors."""
    if not raw_path or raw_path.strip("/") == "":
        return opened.root, ""
    if opened.root.kind != "folder":
        raise LinkPageError(404, "Not found", "This link is to a single file.")
    try:
        relative = paths.normalize_path("/" + raw_path.lstrip("/"))
    except CofferError as exc:
        raise LinkPageError(400, "Bad path", exc.message) from None
    node = await FileNode.find_one(
        match(
            owner_id=opened.root.owner_id,
            live_key=paths.path_key(paths.join(opened.root.path, relative)),
        )
    )
    if node is None or not node.committed:
        raise LinkPageError(404, "Not found", "There is no such item in this shared folder.")
    return node, relative.lstrip("/")


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"


def previewable(name: str) -> str | None:
    kind = mimetypes.guess_type(name)[0] or ""
    return kind if kind.startswith(PREVIEW_TYPES) else None


def _qs(relative: str) -> str:
    return f"?path={quote(relative)}" if relative else ""


def _client(request: Request) -> str:
    return request.client.host if request.client else "-"


@get("/s/{token:str}", opt=PUBLIC, include_in_schema=False)
async def link_page(
    request: Request, token: str, settings: Settings, path: str | None = None
) -> Template:
    try:
        opened = await open_link(token)
        if not unlocked(request, settings, opened):
            return Template(
                template_name="link_password.html",
                context={"action": opened.base, "error": None},
            )
        node, relative = await target(opened, path)
    except LinkPageError as exc:
        return error_page(exc)
    if not relative:
        await ShareLink.get_pymongo_collection().update_one(
            {"_id": opened.link.id}, {"$inc": {"views": 1}}
        )
    context: dict[str, Any] = {
        "name": node.name,
        "kind": node.kind,
        "size": human_size(node.size),
        "modified": node.modified_at.strftime("%Y-%m-%d %H:%M UTC"),
        "allow_download": opened.link.allow_download,
        "base": opened.base,
        "crumbs": _crumbs(opened, relative),
    }
    if node.kind == "file":
        context["preview"] = previewable(node.name)
        context["preview_url"] = f"{opened.base}/preview{_qs(relative)}"
        context["download_url"] = f"{opened.base}/download{_qs(relative)}"
    else:
        children = (
            await FileNode.find(
                match(
                    owner_id=node.owner_id, parent_id=str(node.id), deleted_at=None, committed=True
                )
            )
            .sort("+name_key")
            .limit(LIST_LIMIT + 1)
            .to_list()
        )
        context["truncated"] = len(children) > LIST_LIMIT
        context["children"] = [
            {
                "name": c.name,
                "kind": c.kind,
                "size": human_size(c.size) if c.kind == "file" else "",
                "modified": c.modified_at.strftime("%Y-%m-%d %H:%M"),
                "url": f"{opened.base}{_qs(_join(relative, c.name))}",
                "download_url": f"{opened.base}/download{_qs(_join(relative, c.name))}",
            }
            for c in children[:LIST_LIMIT]
        ]
    return Template(
        template_name="link.html",
        context=context,
        headers={"Referrer-Policy": "no-referrer", "Cache-Control": "private, no-store"},
    )


def _join(relative: str, name: str) -> str:
    return f"{relative}/{name}" if relative else name


def _crumbs(opened: OpenLink, relative: str) -> list[dict[str, str]]:
    crumbs = [{"name": opened.root.name, "url": opened.base}]
    so_far = ""
    for part in [p for p in relative.split("/") if p]:
        so_far = _join(so_far, part)
        crumbs.append({"name": part, "url": f"{opened.base}{_qs(so_far)}"})
    return crumbs


@post("/s/{token:str}", opt=PUBLIC, include_in_schema=False, status_code=303)
async def unlock_link(
    request: Request,
    token: str,
    settings: Settings,
    passwords: PasswordHashing,
    data: dict[str, str] = Body(media_type=RequestEncodingType.URL_ENCODED),
) -> Response[Any]:
    try:
        opened = await open_link(token)
    except LinkPageError as exc:
        return error_page(exc)
    # Counted before checking, so concurrent guesses cannot slip past the limit.
    wait = await take_attempt(
        "linkpw",
        _client(request),
        settings.link_password_attempts,
        settings.link_password_window_seconds,
    )
    if wait:
        return error_page(
            LinkPageError(
                429,
                "Too many attempts",
                "Too many wrong passwords from your address. Try again in "
                f"{(wait + 59) // 60} minute(s).",
                **{"Retry-After": wait},
            )
        )
    if not await verify_link_password(passwords, opened.link, data.get("password", "")):
        return Template(
            template_name="link_password.html",
            context={"action": opened.base, "error": "That password is not right. Try again."},
            status_code=401,
        )
    await give_back("linkpw", _client(request), settings.link_password_window_seconds)
    expires = int(time.time()) + UNLOCK_SECONDS
    value = f"{opened.link.id}.{expires}.{_unlock_signature(settings, opened.link, expires)}"
    return Redirect(
        path=opened.base,
        status_code=303,
        cookies=[
            Cookie(
                key=LINK_COOKIE,
                value=value,
                max_age=UNLOCK_SECONDS,
                path=opened.base,
                httponly=True,
                samesite="lax",
                secure=settings.cookie_secure,
            )
        ],
    )


async def _file_for_bytes(
    request: Request, token: str, settings: Settings, path: str | None
) -> tuple[OpenLink, FileNode]:
    opened = await open_link(token)
    if not unlocked(request, settings, opened):
        raise LinkPageError(401, "Password required", "Open the link and enter its password.")
    node, _ = await target(opened, path)
    if node.kind != "file":
        raise LinkPageError(400, "Not a file", "Folders cannot be downloaded as a whole yet.")
    return opened, node


@get("/s/{token:str}/download", opt=PUBLIC, include_in_schema=False)
async def link_download(
    request: Request, token: str, settings: Settings, store: BlobStore, path: str | None = None
) -> Response[Any]:
    try:
        opened, node = await _file_for_bytes(request, token, settings, path)
        if not opened.link.allow_download:
            raise LinkPageError(403, "View only", "The owner has not allowed downloads.")
    except LinkPageError as exc:
        return error_page(exc)
    response = await content_response(
        request,
        store,
        node,
        await head_version_of(node),
        extra_headers={"Referrer-Policy": "no-referrer"},
    )
    if response.status_code == 200 or request.headers.get("range", "").startswith("bytes=0-"):
        await ShareLink.get_pymongo_collection().update_one(
            {"_id": opened.link.id}, {"$inc": {"downloads": 1}}
        )
    return response


@get("/s/{token:str}/preview", opt=PUBLIC, include_in_schema=False)
async def link_preview(
    request: Request, token: str, settings: Settings, store: BlobStore, path: str | None = None
) -> Response[Any]:
    try:
        opened, node = await _file_for_bytes(request, token, settings, path)
        media_type = previewable(node.name)
        if media_type is None:
            raise LinkPageError(415, "No preview", "This kind of file cannot be previewed.")
        view_only = not opened.link.allow_download
        cap = VIEW_ONLY_MAX_BYTES.get(media_type.split("/")[0], VIEW_ONLY_MAX_BYTES["application"])
        if view_only and cap and node.size > cap and not media_type.startswith("text/"):
            raise LinkPageError(
                415, "No preview", "This file is too large to show on a view-only link."
            )
    except LinkPageError as exc:
        return error_page(exc)
    return await preview_response(request, store, node, media_type, view_only=view_only)


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
