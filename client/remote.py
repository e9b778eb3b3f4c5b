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

    async def scan(self) -> RemoteTree:
        """List the whole synced tree (empty when the synced folder does not exist)."""
        tree = RemoteTree()
        pending: list[tuple[str, str | None]] = [(self.root, self.shared_root_id)]
        while pending:
            folder, folder_id = pending.pop()
            try:
                items = await self.list_children(folder, folder_id)
            except ApiError as exc:
                if exc.status == 404 and folder == self.root:
                    return tree
                raise
            for item in items:
                rel = self.rel_of(item["path"])
                if rel is None or self.ignore(rel):
                    continue
                if item["kind"] == "folder":
                    tree.folders[rel] = item
                    pending.append((item["path"], item["id"]))
                else:
                    tree.files[rel] = item
        return tree

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
