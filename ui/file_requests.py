"""The file-request surface: the upload page of an upload-only link, and its upload route.

`GET /s/{token}` of an upload-only link renders `link_upload.html` (public.py hands it
over, after the same password step as any link): a name field, a file picker and a drop
area; static/js/file-request.js sends each file as the raw body of
`POST /s/{token}/upload?name=<file name>&from=<uploader name>` (with Content-Length).
That route answers JSON, like the API, since a script reads it: 201
`{"status": "received", "size": N}` and nothing about the folder, or an
`{"error": {"code", "message"}}`. Anonymous by design (the only cookie is the link's own
unlock cookie), so a cross-site request is refused outright. The rules live in
app/sharing/requests.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from litestar import Request, post
from litestar.exceptions import InternalServerException
from litestar.params import Parameter
from litestar.response import Template

from app.core.errors import BadRequest, Forbidden
from app.core.http import cross_site
from app.files.uploads import UploadService
from app.settings import Settings
from app.sharing.links import UNLOCK_COOKIE, LinkService, OpenLink
from app.sharing.requests import UPLOADER_MAX_CHARS, FileRequests
from ui.formatting import human_size


async def upload_page(links: LinkService, opened: OpenLink, headers: dict[str, str]) -> Template:
    """The page of an upload-only link: where to send files, never what is there."""
    await links.counted(opened, "views")
    return Template(
        template_name="link_upload.html",
        context={
            "name": opened.root.name,
            "upload_url": f"{opened.base}/upload",
            "max_bytes": opened.link.max_bytes or "",
            "max_size": human_size(opened.link.max_bytes) if opened.link.max_bytes else "",
            "name_max": UPLOADER_MAX_CHARS,
        },
        headers=headers,
    )


async def _body(request: Request) -> AsyncIterator[bytes]:
    """The request body as it arrives; a client that goes away mid-body is a cut-short
    upload (a 400 nobody reads), not a server error."""
    try:
        async for piece in request.stream():
            yield piece
    except InternalServerException:  # Litestar's "client disconnected prematurely"
        raise BadRequest("the upload was cut short", code="size_mismatch") from None


@post("/s/{token:str}/upload", status_code=201, request_max_body_size=None)
async def file_request_upload(
    request: Request,
    token: str,
    links: LinkService,
    uploads: UploadService,
    settings: Settings,
    name: str | None = None,
    uploader: str | None = Parameter(query="from", default=None),
) -> dict[str, Any]:
    if cross_site(request.headers):
        raise Forbidden("uploads must come from the link's own page", code="cross_site")
    requests = FileRequests(links, uploads)
    opened = await requests.open(token, request.cookies.get(UNLOCK_COOKIE, ""))
    size = await requests.receive(
        opened,
        address=request.client.host if request.client else "-",
        base_url=settings.public_url or str(request.base_url),
        name=name,
        uploader=uploader,
        length=request.headers.get("content-length"),
        body=_body(request),
    )
    return {"status": "received", "size": size}
