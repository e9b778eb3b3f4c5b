"""The server side of a synced folder: addressing its paths and listing its tree.

The synced folder is a folder of the account (by path; created when missing) or a folder
another user shared with us. A shared tree is not in our own path namespace, so there every
item is addressed by ids: listed by folder id, and named to the server as parent id + name
(the parent's id comes from the sync state). Relative paths (`rel`) are '/'-separated and
relative to the synced folder, on both sides.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from client.api import CofferClient
from client.errors import ApiError, ParentNotSynced
from client.ignore import Ignore
from client.state import SyncState

# A file or folder object as the API returns it (id, path, kind, version, content_hash...).
RemoteItem = dict[str, Any]


@dataclass
class RemoteTree:
    """Every file and folder under the synced folder, by relative path, ignored ones left
    out."""

    files: dict[str, RemoteItem] = field(default_factory=dict)
    folders: dict[str, RemoteItem] = field(default_factory=dict)


class Remote:
    """The synced folder on the server, as the sync addresses and lists it."""

    def __init__(self, api: CofferClient, root: str, state: SyncState, ignore: Ignore) -> None:
        self.api = api
        self.root = "/" + root.strip("/") if root.strip("/") else "/"
        self.state = state
        self.ignore = ignore
        # Set when the remote root is a folder another user shared with us: such a tree is
        # addressed by ids (parent_id + name), as it is not in our own path namespace.
        self.shared_root_id: str | None = None

    # ---------------------------------------------------------------- addressing

    def path(self, rel: str) -> str:
        """The server path of a relative path."""
        return self.root.rstrip("/") + "/" + rel

    def rel_of(self, remote: str) -> str | None:
        """The relative path of a server path, or None when outside the synced folder."""
        if self.root == "/":
            return remote.lstrip("/") or None
        prefix = self.root + "/"
        if remote.casefold().startswith(prefix.casefold()):
            return remote[len(prefix) :] or None
        return None

    def target(self, rel: str) -> dict[str, str]:
        """How to name `rel` to the server: a path in our tree, or parent id + name."""
        if self.shared_root_id is None:
            return {"path": self.path(rel)}
        parent, _, name = rel.rpartition("/")
        parent_id = self.shared_root_id
        if parent:
            entry = self.state.get(parent)
            if entry is None or entry.file_id is None:
                raise ParentNotSynced(f"folder {parent} is not synced yet")
            parent_id = entry.file_id
        return {"parent_id": parent_id, "name": name}

    def target_below_synced(self, rel: str) -> dict[str, str]:
        """Like `target`, for a path whose parents may not be synced yet: named from the
        nearest synced folder above it ("name" may then hold several levels)."""
        if self.shared_root_id is None:
            return {"path": self.path(rel)}
        parts = rel.split("/")
        for cut in range(len(parts) - 1, 0, -1):
            entry = self.state.get("/".join(parts[:cut]))
            if entry is not None and entry.file_id is not None:
                return {"parent_id": entry.file_id, "name": "/".join(parts[cut:])}
        return {"parent_id": self.shared_root_id, "name": rel}

    async def resolve_root(self) -> None:
        """Own folder (created if missing), or a folder shared with us of that name."""
        self.shared_root_id = None
        if self.root == "/":
            return
        try:
            await self.api.list_page({"path": self.root}, limit=1)
            return
        except ApiError as exc:
            if exc.status != 404:
                raise
        for item in await self.api.shared_with_me():
            if item["kind"] == "folder" and item["path"].casefold() == self.root.casefold():
                self.shared_root_id = item["id"]
                return
        await self.create_folder({"path": self.root})

    # ---------------------------------------------------------------- listing

    async def list_children(self, path: str, folder_id: str | None) -> list[RemoteItem]:
        if self.shared_root_id is None or folder_id is None:
            return await self.api.list(path)
        return await self.api.list_by_id(folder_id)

    async def scan(self, under: str = "") -> RemoteTree:
        """The whole synced tree, or the part below the folder `under` (relative): pages of
        a recursive listing, one request per 1,000 items whatever the number of folders.
        Empty when that folder does not exist on the server."""
        tree = RemoteTree()
        where: dict[str, str]
        if under:
            folder = await self.find(under)
            if folder is None or folder["kind"] != "folder":
                return tree
            tree.folders[under] = folder
            where = {"id": folder["id"]}
        elif self.shared_root_id is not None:
            where = {"id": self.shared_root_id}
        else:
            where = {} if self.root == "/" else {"path": self.root}
        cursor = None
        while True:
            try:
                page = await self.api.tree_page(where, cursor=cursor)
            except ApiError as exc:
                if exc.status == 404:
                    return tree
                raise
            for item in page["items"]:
                rel = self.rel_of(item["path"])
                if rel is None or self.ignore(rel):
                    continue
                if item["kind"] == "folder":
                    tree.folders[rel] = item
                else:
                    tree.files[rel] = item
            cursor = page["cursor"]
            if not cursor:
                return tree

    async def find(self, rel: str) -> RemoteItem | None:
        """The server's item at a relative path (by listing its folder), or None."""
        parent, _, _ = rel.rpartition("/")
        folder_id = self.shared_root_id
        if parent and self.shared_root_id is not None:
            entry = self.state.get(parent)
            if entry is None or entry.file_id is None:
                return None
            folder_id = entry.file_id
        try:
            items = await self.list_children(self.path(parent) if parent else self.root, folder_id)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        wanted = self.path(rel).casefold()
        return next((i for i in items if i["path"].casefold() == wanted), None)

    async def latest_cursor(self) -> int | None:
        """The feed's position now (None when the feed cannot be read)."""
        try:
            body = await self.api.events("latest")
        except ApiError:
            return None
        return int(body["cursor"])

    # ---------------------------------------------------------------- changes

    async def create_folder(self, target: dict[str, str]) -> RemoteItem | None:
        """Make a folder; None when something of that name is already there."""
        try:
            return await self.api.create_folder(target)
        except ApiError as exc:
            if exc.code != "exists":
                raise
            return None

    async def delete(self, file_id: str) -> None:
        """Move a file or folder to the trash (already gone is fine)."""
        try:
            await self.api.delete(file_id)
        except ApiError as exc:
            if exc.status != 404:
                raise
