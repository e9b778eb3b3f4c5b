"""Who is working on which tree, with which rights: the immutable scope every file
operation takes explicitly.

A `Caller` is the person (and device) making the request. A `Scope` is where an operation
happens: the caller, the owner whose tree it is (the caller's own, or a share owner's), and
the caller's rights there. Quota, chunk storage and dedup are the owner's; events name the
caller as actor. Scopes are only ever made by `own_scope` or by `open_node` after it has
checked the caller's grant, and nothing can change one afterwards, so no operation can run
in a tree it did not check.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

from beanie import PydanticObjectId
from bson.errors import InvalidId

from app.acl.access import OWNER, Access, resolve_access
from app.core import paths
from app.core.clock import iso
from app.core.errors import BadRequest, Forbidden, NotFound
from app.core.query import match
from app.db.accounts import User
from app.db.files import FileNode
from app.files.image_kinds import thumbnail_possible
from app.files.schemas import FileOut

Need = Literal["read", "write", "manage"]


@dataclass(frozen=True)
class Caller:
    user: User
    device: str | None  # named in the versions it makes
    base_url: str  # where signed chunk URLs point

    @classmethod
    def of(cls, principal: Any, base_url: str) -> Caller:
        """The caller of an authenticated request (`principal` from the auth layer)."""
        # A browser session has no device name; its versions say "browser".
        device = principal.device_name or ("browser" if principal.via == "session" else None)
        return cls(user=principal.user, device=device, base_url=base_url)

    @property
    def user_id(self) -> str:
        return str(self.user.id)


@dataclass(frozen=True)
class Scope:
    caller: Caller
    owner: User
    access: Access

    @property
    def owner_id(self) -> str:
        return str(self.owner.id)

    @property
    def actor(self) -> str:
        return self.caller.user.username

    def shown(self, path: str) -> str:
        """A path for messages to the caller (never the owner's path above a share)."""
        return self.access.view_path(path)

    def out(self, node: FileNode) -> FileOut:
        return file_out(node, self.access, self.owner.username)

    def with_access(self, access: Access) -> Scope:
        return replace(self, access=access)

    def check_detach(self, what: str) -> None:
        """403 unless the caller may take the opened node out of its parent folder."""
        if self.access.can_detach:
            return
        if self.access.granted_here:
            raise Forbidden(f"only the owner can {what} an item shared with you", code="share_root")
        raise Forbidden(
            f"you can view, but not change, the folder this is in, so you cannot {what} it",
            code="read_only_parent",
        )


def own_scope(caller: Caller) -> Scope:
    return Scope(caller, caller.user, OWNER)


def file_out(node: FileNode, access: Access = OWNER, owner: str | None = None) -> FileOut:
    """The file object of the API, with the path as the caller sees it."""
    return FileOut(
        id=str(node.id),
        path=access.view_path(node.path),
        name=node.name,
        kind=node.kind,
        size=node.size,
        content_hash=node.content_hash,
        version=node.version,
        modified_at=iso(node.modified_at),
        role=access.role,
        owner=owner,
        damaged=node.damaged,
        hash_verified=node.hash_verified,
        thumbnail=thumbnail_possible(node.kind, node.name, node.size),
    )


def parse_id(raw: str) -> PydanticObjectId:
    try:
        return PydanticObjectId(raw)
    except (InvalidId, TypeError, ValueError) as exc:
        raise NotFound("no such file") from exc


async def node_by_path(owner_id: str, path: str) -> FileNode | None:
    """The live node at `path` in the owner's tree (one indexed lookup)."""
    return await FileNode.find_one(match(owner_id=owner_id, live_key=paths.path_key(path)))


async def reload(scope: Scope, node_id: str | PydanticObjectId) -> FileNode:
    node = await FileNode.get(PydanticObjectId(node_id))
    if node is None or node.owner_id != scope.owner_id or node.deleted_at is not None:
        raise NotFound("no such file")
    return node


async def open_node(
    caller: Caller, file_id: str, need: Need = "read", *, include_pending: bool = False
) -> tuple[Scope, FileNode]:
    """The node with this id and the scope of its owner's tree, if the caller may `need`
    it. Without any access: 404, so that ids reveal nothing; with too little: 403."""
    node = await FileNode.get(parse_id(file_id))
    if node is None or node.deleted_at is not None or (not node.committed and not include_pending):
        raise NotFound("no such file")
    access = await resolve_access(caller.user_id, node)
    if access is None:
        raise NotFound("no such file")
    if need == "write" and not access.can_write:
        raise Forbidden("this is shared with you to view only", code="read_only")
    if need == "manage" and not access.is_owner:
        raise Forbidden("only the owner can manage sharing", code="not_owner")
    if access.is_owner:
        return own_scope(caller), node
    owner = await User.get(PydanticObjectId(node.owner_id))
    if owner is None:
        raise NotFound("no such file")
    return Scope(caller, owner, access), node


async def open_folder(
    caller: Caller, folder_id: str, need: Need = "read"
) -> tuple[Scope, FileNode]:
    scope, folder = await open_node(caller, folder_id, need)
    if folder.kind != "folder":
        raise BadRequest(f"{scope.shown(folder.path)} is a file, not a folder", code="not_a_folder")
    return scope, folder


async def target_path(
    caller: Caller, path: object, parent_id: str | None, name: object, need: Need = "write"
) -> tuple[Scope, str]:
    """Where a new item goes: an absolute `path` in the caller's own tree, or `name`
    (which may hold a relative path, "a/b.txt") inside the folder `parent_id` of any tree
    the caller may write to."""
    if parent_id is not None:
        scope, parent = await open_folder(caller, parent_id, need)
        if not isinstance(name, str) or not name.strip("/"):
            raise BadRequest("name is required with parent_id", code="invalid_path")
        relative = paths.normalize_path("/" + name)
        return scope, paths.join(parent.path, relative)
    if path is None:
        raise BadRequest("give path, or parent_id and name", code="invalid_path")
    return own_scope(caller), paths.normalize_path(path)
