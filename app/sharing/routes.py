"""HTTP routes of the sharing API: grants, "Shared with me", public link management."""

from __future__ import annotations

from litestar import Controller, delete, get, post

from app.core.crypto import PasswordHashing
from app.sharing.schemas import (
    LinkListOut,
    LinkOut,
    LinkRequest,
    SharedItemOut,
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
    async def grant(self, file_id: str, data: ShareRequest, sharing: SharingService) -> ShareOut:
        return ShareOut(**await sharing.grant(file_id, data.username, data.role))

    @get("/share")
    async def list_grants(self, file_id: str, sharing: SharingService) -> ShareListOut:
        return ShareListOut(items=[ShareOut(**g) for g in await sharing.list_grants(file_id)])

    @delete("/share/{username:str}", status_code=204)
    async def revoke(self, file_id: str, username: str, sharing: SharingService) -> None:
        await sharing.revoke(file_id, username)

    @post("/links", status_code=201)
    async def create_link(
        self, file_id: str, data: LinkRequest, sharing: SharingService, passwords: PasswordHashing
    ) -> LinkOut:
        link = await sharing.create_link(
            passwords, file_id, data.password, data.expires_at, data.allow_download
        )
        return LinkOut(**link)

    @get("/links")
    async def list_links(self, file_id: str, sharing: SharingService) -> LinkListOut:
        return LinkListOut(items=[LinkOut(**k) for k in await sharing.list_links(file_id)])


@get("/api/shared", tags=["sharing"])
async def shared_with_me(sharing: SharingService) -> SharedListOut:
    return SharedListOut(items=[SharedItemOut(**i) for i in await sharing.shared_with_me()])


@delete("/api/links/{token:str}", status_code=204, tags=["sharing"])
async def revoke_link(token: str, sharing: SharingService) -> None:
    await sharing.revoke_link(token)
