"""The recipient-partitioned "Shared with me" view, derived from the ACL.

Run by the fan-out of a share change (normally in the worker) before the recipient's
`share.added` event is appended, so a client that reacts to the event finds the item.
Idempotent: it copies the grant's current state, whatever order retries run in.
"""

from __future__ import annotations

from beanie import PydanticObjectId

from app.db.accounts import User
from app.db.sharing import Share, SharedWithMe


async def derive_shared_with_me(share_id: str) -> None:
    grant = await Share.get(share_id)
    if grant is None:
        return
    row_id = f"{grant.user_id}:{grant.file_id}"
    if grant.role is None:
        await SharedWithMe.find({"_id": row_id}).delete()
        return
    owner = await User.get(PydanticObjectId(grant.owner_id))
    await SharedWithMe.get_pymongo_collection().update_one(
        {"_id": row_id},
        {
            "$set": {
                "recipient_id": grant.user_id,
                "file_id": grant.file_id,
                "owner_id": grant.owner_id,
                "owner": owner.username if owner else "?",
                "role": grant.role,
                "shared_at": grant.created_at,
            }
        },
        upsert=True,
    )
