"""HTTP routes of the sharing API: grants, "Shared with me", public link management."""

from __future__ import annotations

from litestar import Controller, delete, get, post

from app.files.scope import Caller
from app.sharing.links import LinkService
from app.sharing.schemas import (
    LinkListOut,
    LinkOut,
    LinkRequest,
    SharedListOut,
    ShareListOut,
    ShareOut,
    ShareRequest,
)
from app.sharing.service import SharingService


class ShareController(Controller):
    path = "/api/file/{file_id:str}"
    tags = ["sharing"]

    @post("/share", status_code=201)
    async def grant(
        self, file_id: str, data: ShareRequest, caller: Caller, sharing: SharingService
    ) -> ShareOut:
        return await sharing.grant(caller, file_id, data.username, data.role)

    @get("/share")
    async def list_grants(
        self, file_id: str, caller: Caller, sharing: SharingService
    ) -> ShareListOut:
        return ShareListOut(items=await sharing.list_grants(caller, file_id))

    @delete("/share/{username:str}", status_code=204)
    async def revoke(
        self, file_id: str, username: str, caller: Caller, sharing: SharingService
    ) -> None:
        await sharing.revoke(caller, file_id, username)

    @post("/links", status_code=201)
    async def create_link(
        self, file_id: str, data: LinkRequest, caller: Caller, links: LinkService
    ) -> LinkOut:
        return await links.create(
            caller,
            file_id,
            data.password,
            data.expires_at,
            data.allow_download,
            data.upload_only,
            data.max_bytes,
        )

    @get("/links")
    async def list_links(self, file_id: str, caller: Caller, links: LinkService) -> LinkListOut:
        return LinkListOut(items=await links.list(caller, file_id))


@get("/api/shared", tags=["sharing"])
async def shared_with_me(caller: Caller, sharing: SharingService) -> SharedListOut:
    return SharedListOut(items=await sharing.shared_with_me(caller))


@delete("/api/shared/{file_id:str}", status_code=204, tags=["sharing"])
async def leave_share(file_id: str, caller: Caller, sharing: SharingService) -> None:
    """Leave something shared with you (your grant on it goes; the owner keeps the files)."""
    await sharing.leave(caller, file_id)


@delete("/api/links/{token:str}", status_code=204, tags=["sharing"])
async def revoke_link(token: str, caller: Caller, links: LinkService) -> None:
    await links.revoke(caller, token)
