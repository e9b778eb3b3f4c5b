"""The public-link surface: pages and bytes for anyone with a link's URL, no account.

`/s/{token}` shows the file (name, size, preview, download button) or the folder's
contents; a password-protected link first asks for the password and then remembers it in
a short-lived cookie scoped to that link's path. Every response here is HTML or bytes,
never the API's JSON, and nothing here logs the token. The rules (expiry, passwords,
throttling, confinement to the shared folder) live in app/sharing/links.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from litestar import Request, Response, Router, get, post
from litestar.datastructures import Cookie
from litestar.enums import RequestEncodingType
from litestar.params import Body
from litestar.response import Redirect, Template

from app.core import paths
from app.core.errors import CofferError
from app.files.archive import archive_file_name, zip_response, zip_stream
from app.files.reads import content_response, head_version_of
from app.files.thumbnail_routes import thumbnail_response
from app.files.thumbnails import ThumbnailService
from app.settings import Settings
from app.sharing.links import UNLOCK_COOKIE, UNLOCK_SECONDS, LinkProblem, LinkService, OpenLink
from app.storage.base import BlobStore
from ui.file_requests import file_request_upload, upload_page
from ui.formatting import human_size, previewable
from ui.previews import VIEW_ONLY_MAX_BYTES, preview_response

if TYPE_CHECKING:  # models only name types here: ui talks to services
    from app.db.files import FileNode

LINK_COOKIE = UNLOCK_COOKIE
PAGE_HEADERS = {"Referrer-Policy": "no-referrer", "Cache-Control": "private, no-store"}


def problem_page(exc: LinkProblem) -> Template:
    return Template(
        template_name="link_error.html",
        context={"title": exc.title, "message": exc.message},
        status_code=exc.status,
        headers=exc.headers,
    )


def _qs(relative: str) -> str:
    return f"?path={quote(relative)}" if relative else ""


def _join(relative: str, name: str) -> str:
    return f"{relative}/{name}" if relative else name


def _client(request: Request) -> str:
    return request.client.host if request.client else "-"


def _crumbs(opened: OpenLink, relative: str) -> list[dict[str, str]]:
    crumbs = [{"name": opened.root.name, "url": opened.base}]
    so_far = ""
    for part in [p for p in relative.split("/") if p]:
        so_far = _join(so_far, part)
        crumbs.append({"name": part, "url": f"{opened.base}{_qs(so_far)}"})
    return crumbs


@get("/s/{token:str}")
async def link_page(
    request: Request, token: str, links: LinkService, path: str | None = None
) -> Template:
    try:
        opened = await links.open(token)
        if not links.unlocked(opened, request.cookies.get(LINK_COOKIE, "")):
            return Template(
                template_name="link_password.html",
                context={"action": opened.base, "error": None},
            )
        if opened.link.upload_only:  # a file request: the upload form, never the contents
            return await upload_page(links, opened, PAGE_HEADERS)
        node, relative = await links.target(opened, path)
    except LinkProblem as exc:
        return problem_page(exc)
    if not relative:
        await links.counted(opened, "views")
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
        children, truncated = await links.children(node)
        context["truncated"] = truncated
        context["zip_url"] = f"{opened.base}/zip{_qs(relative)}"
        context["children"] = [
            {
                "name": c.name,
                "kind": c.kind,
                "size": human_size(c.size) if c.kind == "file" else "",
                "modified": c.modified_at.strftime("%Y-%m-%d %H:%M"),
                "url": f"{opened.base}{_qs(_join(relative, c.name))}",
                "download_url": f"{opened.base}/download{_qs(_join(relative, c.name))}",
            }
            for c in children
        ]
    return Template(template_name="link.html", context=context, headers=PAGE_HEADERS)


@post("/s/{token:str}", status_code=303)
async def unlock_link(
    request: Request,
    token: str,
    settings: Settings,
    links: LinkService,
    data: dict[str, str] = Body(media_type=RequestEncodingType.URL_ENCODED),
) -> Response[Any]:
    try:
        opened = await links.open(token)
        value = await links.unlock(opened, _client(request), data.get("password", ""))
    except LinkProblem as exc:
        return problem_page(exc)
    if value is None:
        return Template(
            template_name="link_password.html",
            context={"action": opened.base, "error": "That password is not right. Try again."},
            status_code=401,
        )
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
    request: Request, links: LinkService, token: str, path: str | None
) -> tuple[OpenLink, FileNode]:
    opened = await links.open(token)
    if not links.unlocked(opened, request.cookies.get(LINK_COOKIE, "")):
        raise LinkProblem(401, "Password required", "Open the link and enter its password.")
    node, _ = await links.target(opened, path)
    if node.kind != "file":
        raise LinkProblem(400, "Not a file", "Folders cannot be downloaded as a whole yet.")
    return opened, node


@get("/s/{token:str}/download")
async def link_download(
    request: Request, token: str, links: LinkService, store: BlobStore, path: str | None = None
) -> Response[Any]:
    try:
        opened, node = await _file_for_bytes(request, links, token, path)
        if not opened.link.allow_download:
            raise LinkProblem(403, "View only", "The owner has not allowed downloads.")
    except LinkProblem as exc:
        return problem_page(exc)
    response = await content_response(
        request,
        store,
        node,
        await head_version_of(node),
        extra_headers={"Referrer-Policy": "no-referrer"},
    )
    if response.status_code == 200 or request.headers.get("range", "").startswith("bytes=0-"):
        await links.counted(opened, "downloads")
    return response


@get("/s/{token:str}/zip")
async def link_zip(
    request: Request, token: str, links: LinkService, store: BlobStore, path: str | None = None
) -> Response[Any]:
    """The link's folder, or a folder `path` inside it, as a zip (downloads allowed only)."""
    try:
        opened = await links.open(token)
        if not links.unlocked(opened, request.cookies.get(LINK_COOKIE, "")):
            raise LinkProblem(401, "Password required", "Open the link and enter its password.")
        node, _ = await links.target(opened, path)
        if not opened.link.allow_download:
            raise LinkProblem(403, "View only", "The owner has not allowed downloads.")
    except LinkProblem as exc:
        return problem_page(exc)
    await links.counted(opened, "downloads")

    async def link_still_open(root: FileNode) -> bool:
        """Asked before each group of files: a link revoked, expired or turned view-only
        while its zip streams stops the archive there."""
        try:
            again = await links.open(token)
        except LinkProblem:
            return False
        inside = root.id == again.root.id or (
            root.owner_id == again.root.owner_id and paths.within(root.path, again.root.path)
        )
        return again.link.allow_download and not again.link.upload_only and inside

    return zip_response(
        archive_file_name(None, [node]),
        zip_stream(store, [node], allowed=link_still_open),
        **{"Referrer-Policy": "no-referrer"},
    )


@get("/s/{token:str}/preview")
async def link_preview(
    request: Request, token: str, links: LinkService, store: BlobStore, path: str | None = None
) -> Response[Any]:
    try:
        opened, node = await _file_for_bytes(request, links, token, path)
        media_type = previewable(node.name)
        if media_type is None:
            raise LinkProblem(415, "No preview", "This kind of file cannot be previewed.")
        view_only = not opened.link.allow_download
        cap = VIEW_ONLY_MAX_BYTES.get(media_type.split("/")[0], VIEW_ONLY_MAX_BYTES["application"])
        if view_only and cap and node.size > cap and not media_type.startswith("text/"):
            raise LinkProblem(
                415, "No preview", "This file is too large to show on a view-only link."
            )
    except LinkProblem as exc:
        return problem_page(exc)
    return await preview_response(request, store, node, media_type, view_only=view_only)


@get("/s/{token:str}/thumbnail")
async def link_thumbnail(
    request: Request,
    token: str,
    links: LinkService,
    thumbnails: ThumbnailService,
    path: str | None = None,
    size: int = 256,
    v: str | None = None,
) -> Response[Any]:
    """An image's thumbnail for a folder link's grid: the API's answers (202 while it is
    made), with problems as pages like the rest of the link."""
    try:
        _, node = await _file_for_bytes(request, links, token, path)
        result = await thumbnails.for_node(node, size)
    except LinkProblem as exc:
        return problem_page(exc)
    except CofferError as exc:
        return problem_page(LinkProblem(exc.status_code, "No thumbnail", exc.message))
    return thumbnail_response(request, result, v)


def public_router() -> Router:
    """Anyone may call these: no session, no CSRF header (the unlock form is same-site by
    SameSite cookies and carries nothing a forger could use)."""
    return Router(
        path="/",
        route_handlers=[
            link_page,
            unlock_link,
            link_download,
            link_preview,
            link_zip,
            file_request_upload,
            link_thumbnail,
        ],
        include_in_schema=False,
    )
