"""Storage accounting: the owner's usage figure, quota charges, and read-URL withdrawal.

Growth is charged *before* a commit point, in one conditional write (so concurrent
commits can never together pass the quota), and that same write records a claim: which
versions the bytes are for. The commit releases the claim; if the process dies in between,
`settle_claims` (the worker, every 30 s) looks at what became of those versions and gives
back the bytes of every one that never committed. So usage counts each byte once, crash
or not.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from beanie import PydanticObjectId
from bson import ObjectId

from app.core.clock import now_ms
from app.core.errors import InsufficientStorage
from app.core.query import match
from app.db.accounts import User
from app.db.files import FileNode, FileVersion
from app.files.scope import Scope

# What a claim covers: (file node id, version id, bytes) per file; RESTORED instead of a
# version id for bytes a trash restore brings back.
ClaimItem = tuple[str, str, int]
RESTORED = "restored"


async def add_usage(owner_id: str, delta: int) -> None:
    if delta:
        await User.get_pymongo_collection().update_one(
            {"_id": PydanticObjectId(owner_id)}, {"$inc": {"usage_bytes": delta}}
        )


async def charge(scope: Scope, items: Sequence[ClaimItem]) -> str | None:
    """Add the items' bytes to the scope owner's usage if they stay within the quota (507
    otherwise), recording the claim in the same write. Returns the claim's id (None when
    nothing is charged); `release` or `refund` it once the commit is decided."""
    size = sum(item[2] for item in items)
    if size <= 0:
        return None
    owner = scope.owner
    query: dict[str, Any] = {"_id": owner.id}
    if owner.quota_bytes:
        query["usage_bytes"] = {"$lte": owner.quota_bytes - size}
    claim = str(ObjectId())
    result = await User.get_pymongo_collection().update_one(
        query,
        {
            "$inc": {"usage_bytes": size, "claims_rev": 1},
            "$set": {
                f"claims.{claim}": {"at": now_ms(), "items": [list(i) for i in items]},
                "has_claims": True,
            },
        },
    )
    if result.modified_count != 1:
        whose = "your" if scope.access.is_owner else "the owner's"
        raise InsufficientStorage(
            f"this file would exceed {whose} storage quota", code="quota_exceeded"
        )
    return claim


async def release(owner_id: str, claim: str | None, refund: int = 0) -> None:
    """The commit is decided: forget the claim, giving back `refund` bytes of it (files
    that did not commit) in the same write."""
    if claim is None:
        return
    await User.get_pymongo_collection().update_one(
        {"_id": PydanticObjectId(owner_id), f"claims.{claim}.at": {"$gt": 0}},
        {"$inc": {"usage_bytes": -refund}, "$unset": {f"claims.{claim}": ""}},
    )


async def _committed(node_id: str, version_id: str) -> bool:
    node = await FileNode.get(PydanticObjectId(node_id))
    if node is None:
        return False
    if version_id == RESTORED:
        return node.deleted_at is None
    if node.head_version_id == version_id:
        return True
    version = await FileVersion.get(PydanticObjectId(version_id))
    return version is not None and version.state == "committed" and version.file_id == node_id


async def settle_claims(older_than_seconds: float) -> int:
    """Give back the bytes of claims a dead process left behind, for every version that
    never committed (the worker, every 30 s). A claim younger than `older_than_seconds`
    may belong to a commit still under way and is left alone. Returns how many settled."""
    settled = 0
    stale = now_ms() - int(older_than_seconds * 1000)
    users = User.get_pymongo_collection()
    async for user in users.find(match(has_claims=True), {"claims": 1, "claims_rev": 1}):
        claims = user.get("claims") or {}
        for claim, body in claims.items():
            if body.get("at", 0) > stale:
                continue
            refund = 0
            for node_id, version_id, size in body.get("items", []):
                if not await _committed(node_id, version_id):
                    refund += size
            await release(str(user["_id"]), claim, refund)
            settled += 1
        if not claims:
            # Nothing open: stop looking at this user, unless a charge came in meanwhile.
            await users.update_one(
                {"_id": user["_id"], "claims_rev": user.get("claims_rev", 0)},
                {"$set": {"has_claims": False}},
            )
    return settled


async def withdraw_read_urls(owner_id: str) -> None:
    """Make every chunk-read URL handed out for this owner's files stop working (after a
    revoke or a purge): they carry the owner's URL epoch, which moves on here."""
    await User.get_pymongo_collection().update_one(
        {"_id": PydanticObjectId(owner_id)}, {"$inc": {"url_epoch": 1}}
    )


def check_quota(scope: Scope, old_size: int, new_size: int) -> None:
    """The early refusal at registration (the commit charges for real)."""
    quota = scope.owner.quota_bytes
    if quota and scope.owner.usage_bytes - old_size + new_size > quota:
        whose = "your" if scope.access.is_owner else "the owner's"
        raise InsufficientStorage(
            f"this upload would exceed {whose} storage quota", code="quota_exceeded"
        )
