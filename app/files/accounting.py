"""Storage accounting: the owner's usage figure, quota charges, and read-URL withdrawal."""

from __future__ import annotations

from typing import Any

from beanie import PydanticObjectId

from app.core.errors import InsufficientStorage
from app.db.accounts import User
from app.files.scope import Scope


async def add_usage(owner_id: str, delta: int) -> None:
    if delta:
        await User.get_pymongo_collection().update_one(
            {"_id": PydanticObjectId(owner_id)}, {"$inc": {"usage_bytes": delta}}
        )


async def charge(scope: Scope, size: int) -> None:
    """Add `size` to the scope owner's usage if it stays within their quota, in one
    conditional write (507 otherwise), so concurrent commits can never together pass the
    quota. Charged before a commit point: a crash between the two leaves the usage figure
    too high by `size`, erring on the side of the quota."""
    owner = scope.owner
    query: dict[str, Any] = {"_id": owner.id}
    if owner.quota_bytes:
        query["usage_bytes"] = {"$lte": owner.quota_bytes - size}
    result = await User.get_pymongo_collection().update_one(query, {"$inc": {"usage_bytes": size}})
    if result.modified_count != 1:
        whose = "your" if scope.access.is_owner else "the owner's"
        raise InsufficientStorage(
            f"this file would exceed {whose} storage quota", code="quota_exceeded"
        )


def check_quota(scope: Scope, old_size: int, new_size: int) -> None:
    """The early refusal at registration (the commit charges for real)."""
    quota = scope.owner.quota_bytes
    if quota and scope.owner.usage_bytes - old_size + new_size > quota:
        whose = "your" if scope.access.is_owner else "the owner's"
        raise InsufficientStorage(
            f"this upload would exceed {whose} storage quota", code="quota_exceeded"
        )


async def withdraw_read_urls(owner_id: str) -> None:
    """Make every chunk-read URL handed out for this owner's files stop working (after a
    revoke or a purge): they carry the owner's URL epoch, which moves on here."""
    await User.get_pymongo_collection().update_one(
        {"_id": PydanticObjectId(owner_id)}, {"$inc": {"url_epoch": 1}}
    )
