"""Granting, changing and revoking shares; "Shared with me"; creating and revoking links.

Only a file's owner manages its shares and links (`FileService.open(..., "manage")`).
Every grant change is one write to the ACL document that also stores the change in its
outbox, then the change feed delivers `share.added` / `share.removed` exactly once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from beanie import PydanticObjectId
from pymongo.errors import DuplicateKeyError

from app.auth.models import User
from app.core.crypto import PasswordHashing
from app.core.query import match
from app.errors import BadRequest, Conflict, NotFound
from app.events.service import make_change
from app.files.models import FileNode
from app.files.service import FileService, file_out, iso, withdraw_read_urls
from app.sharing.access import Access
from app.sharing.models import ROLES, Share, SharedWithMe, ShareLink

MAX_LINK_PASSWORD = 1024


def now() -> datetime:
    return datetime.now(UTC)


def link_token(secret_key: str, nonce: str) -> str:
    """The link's token: 256 bits derived from a 128-bit random nonce and the server key."""
    digest = hmac.new(secret_key.encode(), b"link:" + bytes.fromhex(nonce), hashlib.sha256)
    return base64.urlsafe_b64encode(digest.digest()).decode().rstrip("=")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def grant_out(grant: Share) -> dict[str, Any]:
    return {
        "file_id": grant.file_id,
        "username": grant.username,
        "role": grant.role,
        "created_at": iso(grant.created_at),
        "updated_at": iso(grant.updated_at),
    }


@dataclass
class SharingService:
    files: FileService  # the caller's file service

    @property
    def caller(self) -> User:
        return self.files.user

    # ------------------------------------------------------------ user shares

    async def _recipient(self, username: object) -> User:
        if not isinstance(username, str) or not username:
            raise BadRequest("username is required", code="invalid_username")
        user = await User.find_one(match(username_key=username.casefold()))
        if user is None:
            raise NotFound(f"there is no user {username!r}", code="unknown_user")
        if user.id == self.caller.id:
            raise BadRequest("you cannot share with yourself", code="self_share")
        return user

    async def grant(self, file_id: str, username: object, role: object) -> dict[str, Any]:
        if role not in ROLES:
            raise BadRequest("role must be 'viewer' or 'editor'", code="invalid_role")
        _, node = await self.files.open(file_id, "manage")
        recipient = await self._recipient(username)
        return grant_out(await self._write(node, recipient, str(role)))

    async def revoke(self, file_id: str, username: str) -> None:
        _, node = await self.files.open(file_id, "manage")
        recipient = await self._recipient(username)
        grant = await Share.get(f"{node.id}:{recipient.id}")
        if grant is None or grant.role is None:
            raise NotFound(f"{node.name} is not shared with {username}", code="not_shared")
        await self._write(node, recipient, None)

    async def _write(self, node: FileNode, recipient: User, role: str | None) -> Share:
        """Set the recipient's role (None: revoke) with the change in the outbox."""
        share_id = f"{node.id}:{recipient.id}"
        feed = self.files.feed
        for _ in range(5):
            current = await Share.get(share_id)
            if current is not None and current.role == role:
                return current  # nothing changes, nothing to announce
            if current is not None:
                await feed.flush_node(current)
            change = make_change(
                "share.added" if role else "share.removed",
                node,
                self.caller.username,
                audience=[{"id": str(recipient.id), "new": [node.path, node.name], "old": None}],
                owner=self.caller.username,
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
                    granted_by=self.caller.username,
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
            await feed.changed("acl", share_id, change)
            fresh = await Share.get(share_id)
            assert fresh is not None
            return fresh
        raise Conflict("the share changed meanwhile; try again", code="conflict")

    async def list_grants(self, file_id: str) -> list[dict[str, Any]]:
        _, node = await self.files.open(file_id, "manage")
        grants = [
            g for g in await Share.find(match(file_id=str(node.id))).to_list() if g.role in ROLES
        ]
        return [grant_out(g) for g in sorted(grants, key=lambda g: g.username.casefold())]

    async def shared_with_me(self) -> list[dict[str, Any]]:
        """From the derived view (what to list); file details are read fresh."""
        rows = await SharedWithMe.find(match(recipient_id=str(self.caller.id))).to_list()
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
            items.append({**file_out(node, access, row.owner), "shared_at": iso(row.shared_at)})
        return items

    # ------------------------------------------------------------ public links

    def _link_out(self, link: ShareLink) -> dict[str, Any]:
        token = link_token(self.files.settings.resolved_secret_key(), link.nonce)
        return {
            "token": token,
            "url": f"{self.files.base_url.rstrip('/')}/s/{token}",
            "file_id": link.file_id,
            "expires_at": iso(link.expires_at) if link.expires_at else None,
            "allow_download": link.allow_download,
            "has_password": link.password_hash is not None,
            "views": link.views,
            "downloads": link.downloads,
            "created_at": iso(link.created_at),
        }

    async def create_link(
        self,
        passwords: PasswordHashing,
        file_id: str,
        password: object = None,
        expires_at: object = None,
        allow_download: object = True,
    ) -> dict[str, Any]:
        _, node = await self.files.open(file_id, "manage")
        if not isinstance(allow_download, bool):
            raise BadRequest("allow_download must be true or false", code="invalid_link")
        password_hash = None
        if password is not None and password != "":
            if not isinstance(password, str) or len(password) > MAX_LINK_PASSWORD:
                raise BadRequest("password must be a string", code="invalid_password")
            password_hash = await passwords.hash(password)
        expiry = parse_expiry(expires_at)
        nonce = secrets.token_hex(16)
        link = ShareLink(
            file_id=str(node.id),
            owner_id=node.owner_id,
            nonce=nonce,
            token_hash=token_hash(link_token(self.files.settings.resolved_secret_key(), nonce)),
            password_hash=password_hash,
            expires_at=expiry,
            allow_download=allow_download,
            created_at=now(),
        )
        await link.insert()
        return self._link_out(link)

    async def list_links(self, file_id: str) -> list[dict[str, Any]]:
        _, node = await self.files.open(file_id, "manage")
        links = await ShareLink.find(match(file_id=str(node.id), revoked=False)).to_list()
        return [self._link_out(link) for link in sorted(links, key=lambda k: k.created_at)]

    async def revoke_link(self, token: str) -> None:
        link = await ShareLink.find_one(match(token_hash=token_hash(token)))
        if link is None or link.owner_id != str(self.caller.id):
            raise NotFound("no such link", code="unknown_link")
        await ShareLink.get_pymongo_collection().update_one(
            {"_id": link.id}, {"$set": {"revoked": True}}
        )


def parse_expiry(value: object) -> datetime | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BadRequest("expires_at must be an ISO-8601 timestamp", code="invalid_expiry")
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise BadRequest("expires_at must be an ISO-8601 timestamp", code="invalid_expiry") from exc
    if when.tzinfo is None:
        raise BadRequest("expires_at needs a timezone (e.g. Z)", code="invalid_expiry")
    if when <= now():
        raise BadRequest("expires_at must be in the future", code="invalid_expiry")
    return when.astimezone(UTC)


async def verify_link_password(passwords: PasswordHashing, link: ShareLink, password: str) -> bool:
    if link.password_hash is None:
        return True
    return await passwords.verify(link.password_hash, password[:MAX_LINK_PASSWORD])
