"""Who may touch a file: the caller's role on a node, from the ACL, on every request.

Access is decided from the ACL on every request (never from the derived view): the
owner has every right; anyone else needs a live grant on the node or on one of its
ancestors. The strongest grant wins; the outermost shared folder is the recipient's
"root", and every path they see is shown relative to it ("/<root name>/...").

Renaming, moving or deleting a node changes its parent's contents, so a recipient needs
write access on the parent as well (the role there may be weaker: viewer on /A, editor on
/A/Sub), and a node that itself carries a grant for the caller is the owner's to change.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from app.core import paths
from app.core.query import match
from app.db.files import FileNode
from app.db.sharing import ROLE_RANK, ROLES, Share


@dataclass(frozen=True)
class Access:
    role: str  # "owner", "editor" or "viewer"
    root_id: str | None = None  # the shared folder (or file) the grant comes from
    root_path: str | None = None
    root_name: str | None = None
    # The caller's role on the node's parent folder (None: no access there at all).
    parent_role: str | None = "owner"
    # The node itself carries a live grant for the caller.
    granted_here: bool = False

    @property
    def is_owner(self) -> bool:
        return self.role == "owner"

    @property
    def can_write(self) -> bool:
        return ROLE_RANK[self.role] >= ROLE_RANK["editor"]

    @property
    def can_detach(self) -> bool:
        """May rename, move or delete the node (take it out of its parent)."""
        if self.is_owner:
            return True
        parent_writable = self.parent_role is not None and ROLE_RANK[self.parent_role] >= 2
        return self.can_write and parent_writable and not self.granted_here

    def view_path(self, owner_path: str) -> str:
        """The path as this caller sees it."""
        if self.root_path is None or self.root_name is None:
            return owner_path
        return paths.relative_path(owner_path, self.root_path, self.root_name)


OWNER = Access(role="owner")


async def ancestor_nodes(node: FileNode) -> list[FileNode]:
    """The live folders above a live node, outermost first."""
    keys = [paths.path_key(p) for p in paths.ancestors(node.path)]
    # One indexed lookup per level: `$in` on live_key would read every file of the owner.
    # A path as live_key is a live node (the trash's are "trash:<id>"): no deleted_at test.
    found = await asyncio.gather(
        *(FileNode.find_one(match(owner_id=node.owner_id, live_key=key)) for key in keys)
    )
    return [n for n in found if n is not None]


async def resolve_access(user_id: str, node: FileNode) -> Access | None:
    """The caller's rights on a live node; None means it does not exist for them."""
    if node.owner_id == user_id:
        return OWNER
    if node.deleted_at is not None:
        return None
    chain = [*await ancestor_nodes(node), node]
    grants = await Share.find(
        {"_id": {"$in": [f"{n.id}:{user_id}" for n in chain]}, "role": {"$in": list(ROLES)}}
    ).to_list()
    if not grants:
        return None
    granted = {g.file_id: g.role for g in grants if g.role}
    role = max(granted.values(), key=ROLE_RANK.__getitem__)
    above = [granted[str(n.id)] for n in chain[:-1] if str(n.id) in granted]
    root = next(n for n in chain if str(n.id) in granted)
    return Access(
        role=role,
        root_id=str(root.id),
        root_path=root.path,
        root_name=root.name,
        parent_role=max(above, key=ROLE_RANK.__getitem__) if above else None,
        granted_here=str(node.id) in granted,
    )
