"""Sharing with users: granting, changing and revoking roles; "Shared with me".

Only a file's owner manages its shares (`open_node(..., "manage")`). Every grant change is
one write to the ACL document that also stores the change in its outbox; the change feed
then delivers `share.added` / `share.removed` exactly once (after the worker has derived
the recipient's "Shared with me" row, see app/acl/derived.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from beanie import PydanticObjectId
from pymongo.errors import DuplicateKeyError

from app.acl.access import Access
from app.acl.derived import shared_with
from app.core.clock import iso, now
from app.core.errors import BadRequest, Conflict, NotFound
from app.core.query import match
from app.db.accounts import User
from app.db.files import FileNode
from app.db.sharing import ROLES, Share
from app.events.changes import make_change
from app.events.feed import ChangeFeed
from app.files.accounting import withdraw_read_urls
from app.files.scope import Caller, file_out, open_node, parse_id
from app.protocol import SHARE_ADDED, SHARE_REMOVED
from app.sharing.schemas import SharedItemOut, ShareOut


def grant_out(grant: Share) -> ShareOut:
    return ShareOut(
        file_id=grant.file_id,
        username=grant.username,
        role=grant.role,
        created_at=iso(grant.created_at),
        updated_at=iso(grant.updated_at),
    )


ACL = "acl"  # the outbox source name of grants (see app/wiring.py)


@dataclass(frozen=True)
class SharingService:
    feed: ChangeFeed

    # ------------------------------------------------------------ user shares

    async def _recipient(self, caller: Caller, username: object) -> User:
        if not isinstance(username, str) or not username:
            raise BadRequest("username is required", code="invalid_username")
        user = await User.find_one(match(username_key=username.casefold()))
        if user is None:
            raise NotFound(f"there is no user {username!r}", code="unknown_user")
        if user.id == caller.user.id:
            raise BadRequest("you cannot share with yourself", code="self_share")
        return user

    async def grant(self, caller: Caller, file_id: str, username: object, role: object) -> ShareOut:
        if role not in ROLES:
            raise BadRequest("role must be 'viewer' or 'editor'", code="invalid_role")
        _, node = await open_node(caller, file_id, "manage")
        recipient = await self._recipient(caller, username)
        return grant_out(await self._write(caller, node, recipient, str(role)))

    async def revoke(self, caller: Caller, file_id: str, username: str) -> None:
        _, node = await open_node(caller, file_id, "manage")
        recipient = await self._recipient(caller, username)
        grant = await Share.get(f"{node.id}:{recipient.id}")
        if grant is None or grant.role is None:
            raise NotFound(f"{node.name} is not shared with {username}", code="not_shared")
        await self._write(caller, node, recipient, None)

    async def leave(self, caller: Caller, file_id: str) -> None:
        """The caller gives up what was shared with them: their own grant on this item goes,
        as if the owner had removed it. Nothing is copied or moved: the owner's files stay
        the owner's, and what the caller's devices synced of it is removed from them."""
        grant = await Share.get(f"{parse_id(file_id)}:{caller.user_id}")
        node = await FileNode.get(parse_id(file_id))
        if grant is None or grant.role is None or node is None:
            raise NotFound("nothing with this id is shared with you", code="not_shared")
        owner = await User.get(PydanticObjectId(node.owner_id))
        owner_name = owner.username if owner else grant.granted_by
        await self._write(caller, node, caller.user, None, owner_name=owner_name)

    async def _write(
        self,
        caller: Caller,
        node: FileNode,
        recipient: User,
        role: str | None,
        owner_name: str | None = None,
    ) -> Share:
        """Set the recipient's role (None: revoke) with the change in the outbox.
        `owner_name`: the owner's username when the caller is not the owner (leaving)."""
        share_id = f"{node.id}:{recipient.id}"
        feed = self.feed
        for _ in range(5):
            current = await Share.get(share_id)
            if current is not None and current.role == role:
                return current  # nothing changes, nothing to announce
            if current is not None:
                await feed.flush_node(current)
            change = make_change(
                SHARE_ADDED if role else SHARE_REMOVED,
                node,
                caller.user.username,
                audience=[{"id": str(recipient.id), "new": [node.path, node.name], "old": None}],
                owner=owner_name or caller.user.username,
                role=role,
                username=recipient.username,
            )
            t = now()
            if current is None:
                grant = Share(
                    id=share_id,
                    file_id=str(node.id),
                    owner_id=node.owner_id,
                    user_id=str(recipient.id),
                    username=recipient.username,
                    role=role,  # type: ignore[arg-type]
                    granted_by=caller.user.username,
                    created_at=t,
                    updated_at=t,
                    outbox=change,
                    outbox_pending=True,
                )
                try:
                    await grant.insert()
                except DuplicateKeyError:
                    continue  # a concurrent grant: re-read and go again
            else:
                fields: dict[str, Any] = {"role": role, "updated_at": t, "rev": current.rev + 1}
                if current.role is None:
                    fields["created_at"] = t  # a new grant after a revoke
                result = await Share.get_pymongo_collection().update_one(
                    {"_id": share_id, "rev": current.rev},
                    {"$set": {**fields, "outbox": change, "outbox_pending": True}},
                )
                if result.modified_count != 1:
                    continue
            if role is None:
                await withdraw_read_urls(node.owner_id)
            await feed.changed(ACL, share_id, change)
            fresh = await Share.get(share_id)
            if fresh is None:
                raise Conflict("the share changed meanwhile; try again", code="conflict")
            return fresh
        raise Conflict("the share changed meanwhile; try again", code="conflict")

    async def list_grants(self, caller: Caller, file_id: str) -> list[ShareOut]:
        _, node = await open_node(caller, file_id, "manage")
        grants = [
            g for g in await Share.find(match(file_id=str(node.id))).to_list() if g.role in ROLES
        ]
        return [grant_out(g) for g in sorted(grants, key=lambda g: g.username.casefold())]

    async def shared_with_me(self, caller: Caller) -> list[SharedItemOut]:
        """From the derived view (what to list, app/acl/derived.shared_with); file details
        are read fresh."""
        rows = await shared_with(caller.user_id)
        if not rows:
            return []
        nodes = {
            str(n.id): n
            for n in await FileNode.find(
                {"_id": {"$in": [PydanticObjectId(r.file_id) for r in rows]}, "deleted_at": None}
            ).to_list()
        }
        items = []
        for row in sorted(rows, key=lambda r: r.shared_at, reverse=True):
            node = nodes.get(row.file_id)
            if node is None:
                continue  # in the owner's trash
            access = Access(
                role=row.role, root_id=row.file_id, root_path=node.path, root_name=node.name
            )
            out = file_out(node, access, row.owner)
            fields = {f: getattr(out, f) for f in out.__struct_fields__}
            items.append(SharedItemOut(**fields, shared_at=iso(row.shared_at)))
        return items
