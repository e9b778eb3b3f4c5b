"""The recipient-partitioned "Shared with me" view, derived from the ACL.

Run by the fan-out of a share change (normally in the worker) before the recipient's
`share.added` event is appended, so a client that reacts to the event finds the item.
Idempotent: it copies the grant's current state, whatever order retries run in.

Readers use `shared_with`: the view with the grant changes not derived yet laid over it,
so the list follows the ACL at once, as access does, even while the worker is down.
"""

from __future__ import annotations

from typing import Any

from beanie import PydanticObjectId

from app.core.query import match
from app.db.accounts import User
from app.db.sharing import Share, SharedWithMe


def _row_fields(grant: Share, owner: str) -> dict[str, Any]:
    """A live grant's "Shared with me" row (`owner`: the owner's username)."""
    return {
        "recipient_id": grant.user_id,
        "file_id": grant.file_id,
        "owner_id": grant.owner_id,
        "owner": owner,
        "role": grant.role,
        "shared_at": grant.created_at,
    }


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
        {"$set": _row_fields(grant, owner.username if owner else "?")},
        upsert=True,
    )


async def shared_with(recipient_id: str) -> list[SharedWithMe]:
    """The recipient's "Shared with me" rows, with the grant changes whose fan-out has not
    run yet (the worker down or behind) applied: a new grant listed, a revoked one gone.

    Access reads the ACL, so without this a share would open but not be listed (or be
    listed but not open) until the worker caught up. The recipient's events still wait
    for the fan-out, which derives the row first: a device that hears `share.added` finds
    the item, and one that listed it early applies the event as a no-op."""
    # The pending changes first: a change is marked done only after its row is derived, so
    # whatever was done before this read is in the rows read next.
    pending = await Share.find(match(user_id=recipient_id, outbox_pending=True)).to_list()
    rows = {
        r.file_id: r for r in await SharedWithMe.find(match(recipient_id=recipient_id)).to_list()
    }
    owner_ids = [PydanticObjectId(g.owner_id) for g in pending if g.role is not None]
    owners: dict[str, str] = {}
    if owner_ids:
        found = await User.find({"_id": {"$in": owner_ids}}).to_list()
        owners = {str(u.id): u.username for u in found}
    for grant in pending:
        if grant.role is None:
            rows.pop(grant.file_id, None)
            continue
        rows[grant.file_id] = SharedWithMe(
            id=f"{recipient_id}:{grant.file_id}",
            **_row_fields(grant, owners.get(grant.owner_id, "?")),
        )
    return list(rows.values())
