"""Version history and the trash: list, read and restore old versions; list, restore and
purge trashed items.

Restoring never rewrites history: an old version comes back as a new head version, and a
trashed folder comes back with everything trashed with it (and nothing trashed before).
A folder restore uses the same crash-safe `pending_op` scheme as move and trash.
"""

from __future__ import annotations

from typing import Any

from app.core import paths
from app.core.clock import iso, now
from app.core.errors import BadRequest, NotFound
from app.core.query import match
from app.db.files import ChunkMapPage, FileNode, FileVersion, delete_chunk_maps
from app.files.accounting import RESTORED, charge, release, withdraw_read_urls
from app.files.context import FilesContext
from app.files.recovery import finish_pending_op, trashed_size
from app.files.schemas import FileOut, TrashItemOut, TrashListOut, VersionOut
from app.files.scope import Caller, node_by_path, open_node, own_scope, parse_id, reload
from app.files.tree import FILES, TreeService
from app.files.uploads import UploadService
from app.protocol import FILE_RESTORED


def version_out(version: FileVersion) -> VersionOut:
    return VersionOut(
        version=version.version,
        size=version.size,
        content_hash=version.content_hash,
        modified_at=iso(version.committed_at or version.created_at),
        author_device=version.author_device,
        damaged=version.damaged,
    )


def trash_out(node: FileNode) -> TrashItemOut:
    return TrashItemOut(
        id=str(node.id),
        path=node.path,
        name=node.name,
        kind=node.kind,
        size=node.size,
        deleted_at=iso(node.deleted_at or node.modified_at),
    )


class HistoryService:
    def __init__(self, ctx: FilesContext, tree: TreeService, uploads: UploadService) -> None:
        self.ctx = ctx
        self.tree = tree
        self.uploads = uploads

    # ------------------------------------------------------------------ versions

    async def versions(self, caller: Caller, file_id: str) -> list[VersionOut]:
        _, node = await open_node(caller, file_id)
        if node.kind != "file":
            raise BadRequest("folders have no versions", code="is_a_folder")
        found = (
            await FileVersion.find(match(file_id=str(node.id), state="committed"))
            .sort("-version")
            .to_list()
        )
        return [version_out(v) for v in found]

    async def version(self, node: FileNode, number: int) -> FileVersion:
        found = await FileVersion.find_one(
            match(file_id=str(node.id), version=number, state="committed")
        )
        if found is None:
            raise NotFound(f"version {number} does not exist (any more)", code="no_version")
        return found

    async def restore_version(self, caller: Caller, file_id: str, number: int) -> FileOut:
        scope, node = await open_node(caller, file_id, "write")
        if node.kind != "file":
            raise BadRequest("folders have no versions", code="is_a_folder")
        old = await self.version(node, number)
        if node.content_hash == old.content_hash:
            return scope.out(node)  # already the head's content
        copy = FileVersion(
            file_id=str(node.id),
            owner_id=node.owner_id,
            size=old.size,
            content_hash=old.content_hash,
            hash_verified=old.hash_verified,
            claimed_hash=old.claimed_hash,
            chunk_count=old.chunk_count,
            author_device=caller.device,
            restored_from=number,
            damaged=old.damaged,
            created_at=now(),
        )
        await copy.insert()
        pages = [
            ChunkMapPage(
                id=f"{copy.id}:{page.page}",
                version_id=str(copy.id),
                page=page.page,
                start_offset=page.start_offset,
                chunks=page.chunks,
            )
            async for page in ChunkMapPage.find(match(version_id=str(old.id)))
        ]
        if pages:
            await ChunkMapPage.insert_many(pages)
        head = await self.uploads.advance_head(scope, node, copy, None)
        if head is None:  # another restore of the same bytes got there first: drop the copy
            await delete_chunk_maps([copy])
            await copy.delete()
            return scope.out(await reload(scope, str(node.id)))
        return scope.out(head)

    # ------------------------------------------------------------------ trash

    async def _trashed(self, caller: Caller, trash_id: str) -> FileNode:
        node = await FileNode.get(parse_id(trash_id))
        if (
            node is None
            or node.owner_id != caller.user_id
            or node.deleted_at is None
            or not node.trash_root
        ):
            raise NotFound("no such item in your trash", code="not_in_trash")
        return node

    async def trash(self, caller: Caller, limit: int, cursor: str | None) -> TrashListOut:
        """What the caller deleted (each deleted item once, not everything under it)."""
        owner = caller.user_id
        items: list[FileNode] = []
        deleted_ms: dict[str, Any] = {}
        if cursor:
            ms, _, last_id = cursor.partition("-")
            if not ms.isdigit() or len(last_id) != 24:
                raise BadRequest("invalid cursor", code="invalid_cursor")
            # Items deleted in the cursor's very millisecond, after it in (_id desc) order:
            # read apart and filtered here, since an `$or` or an `_id` range would make the
            # embedded server read every file.
            ties = await FileNode.find(
                match(owner_id=owner, trash_root=True, deleted_ms=int(ms))
            ).to_list()
            after = parse_id(last_id)
            items = sorted((n for n in ties if n.id < after), key=lambda n: n.id, reverse=True)
            deleted_ms = {"$lt": int(ms)}
        if len(items) <= limit:
            items += (
                await FileNode.find(
                    match(owner_id=owner, trash_root=True, deleted_ms=deleted_ms or {"$gte": 0})
                )
                .sort([("deleted_ms", -1), ("_id", -1)])
                .limit(limit + 1 - len(items))
                .to_list()
            )
        last = items[limit - 1] if len(items) > limit else None
        next_cursor = f"{last.deleted_ms}-{last.id}" if last else None
        return TrashListOut(items=[trash_out(n) for n in items[:limit]], cursor=next_cursor)

    async def restore(self, caller: Caller, trash_id: str, raw_path: object = None) -> FileOut:
        node = await self._trashed(caller, trash_id)
        scope = own_scope(caller)
        wanted = paths.normalize_path(raw_path) if raw_path is not None else node.path
        if wanted == "/":
            raise BadRequest("cannot restore onto the root folder", code="invalid_path")
        target = await self._free_path(scope.owner_id, wanted, node.kind)
        parent_path, name = paths.split(target)
        parent = await self.tree.ensure_folder(scope, parent_path)
        key = paths.path_key(target)
        op = (
            {
                "op": "restore",
                "from": node.path,
                "to": target,
                "root": str(node.id),
                "charged": True,
            }
            if node.kind == "folder"
            else None
        )
        changes = {
            "deleted_at": None,
            "trash_root_id": None,
            "trash_root": False,
            "path": target,
            "path_key": key,
            "live_key": key,
            "name": name,
            "name_key": name.casefold(),
            "search_key": paths.search_key(name),
            "parent_id": str(parent.id) if parent else None,
            "pending_op": op,
        }
        # What comes back counts against the quota again: charged before the commit point
        # (refused with 507 if it no longer fits), given back if the restore loses a race.
        size = await trashed_size(node)
        claim = await charge(scope, [(str(node.id), RESTORED, size)])
        try:
            restored, change = await self.tree.compare_and_set(
                scope, node, FILE_RESTORED, changes, trashed=True
            )
        except BaseException:
            await release(scope.owner_id, claim, refund=size)
            raise
        await release(scope.owner_id, claim)
        if op:
            await finish_pending_op(restored)
        await self.ctx.feed.changed(FILES, str(node.id), change)
        return scope.out(restored)

    @staticmethod
    async def _free_path(owner_id: str, wanted: str, kind: str) -> str:
        """`wanted`, or "name (restored N).ext" if something live has that path now."""
        if await node_by_path(owner_id, wanted) is None:
            return wanted
        parent, name = paths.split(wanted)
        has_extension = kind == "file" and "." in name[1:]
        stem, dot, ext = name.rpartition(".") if has_extension else (name, "", "")
        for n in range(1, 1000):
            label = "restored" if n == 1 else f"restored {n}"
            candidate = f"{stem} ({label}){dot}{ext}"
            path = paths.join(parent, candidate)
            if await node_by_path(owner_id, path) is None:
                return path
        raise BadRequest("too many items with that name", code="exists")

    async def purge(self, caller: Caller, trash_id: str) -> None:
        await self.purge_node(await self._trashed(caller, trash_id))

    @staticmethod
    async def purge_node(node: FileNode) -> None:
        """Delete a trashed item and everything trashed with it, with their versions.
        Their chunks stay until garbage collection finds nothing else uses them."""
        doomed = [
            doc["_id"]
            async for doc in FileNode.get_pymongo_collection().find(
                match(trash_root_id=str(node.id)), {"_id": 1}
            )
        ]
        for start in range(0, len(doomed), 500):
            ids = doomed[start : start + 500]
            # One indexed query per file: `$in` on file_id would read every version.
            versions: list[FileVersion] = []
            for file_id in ids:
                versions += await FileVersion.find(match(file_id=str(file_id))).to_list()
            if versions:
                await delete_chunk_maps(versions)
                await FileVersion.get_pymongo_collection().delete_many(
                    {"_id": {"$in": [v.id for v in versions]}}
                )
            # The trashed item itself last: a crash leaves it listed, so purge can rerun.
            await FileNode.get_pymongo_collection().delete_many(
                {"_id": {"$in": [i for i in ids if i != node.id]}}
            )
        await FileNode.get_pymongo_collection().delete_one({"_id": node.id})
        await withdraw_read_urls(node.owner_id)
