"""The folder tree: create folders, list them, move and rename, and trash.

Every change is one compare-and-set on the node's `rev` that also stores the change in the
node's outbox; a folder move or trash records its `pending_op` in that same write and is
carried to the descendants afterwards (app/files/recovery.py finishes it after a crash).
"""

from __future__ import annotations

import base64
from typing import Any

from beanie import PydanticObjectId
from pymongo.errors import BulkWriteError, DuplicateKeyError

from app.acl.access import resolve_access
from app.acl.audience import audience_for, audience_in, owner_shares
from app.core import paths
from app.core.clock import epoch_ms, now
from app.core.errors import BadRequest, Conflict, NotFound
from app.core.failpoints import failpoint
from app.core.query import match
from app.db.files import FileNode
from app.db.outbox import AudienceEntry, Change
from app.events.changes import make_change
from app.files.accounting import add_usage
from app.files.context import FilesContext
from app.files.recovery import finish_pending_op
from app.files.schemas import FileOut, ListOut, MoveRequest, NewFolderRequest
from app.files.scope import (
    Caller,
    Scope,
    node_by_path,
    open_folder,
    open_node,
    own_scope,
    target_path,
)
from app.protocol import FILE_CREATED, FILE_DELETED, FILE_MOVED, FILE_RESTORED

FILES = "files"  # the outbox source name of file nodes (see app/wiring.py)


def new_node(scope: Scope, path: str, parent: FileNode | None, **fields: Any) -> FileNode:
    _, name = paths.split(path)
    t = now()
    return FileNode(
        owner_id=scope.owner_id,
        parent_id=str(parent.id) if parent else None,
        name=name,
        name_key=name.casefold(),
        search_key=paths.search_key(name),
        path=path,
        path_key=paths.path_key(path),
        live_key=paths.path_key(path),
        created_at=t,
        modified_at=t,
        **fields,
    )


def node_document(node: FileNode) -> dict[str, Any]:
    """The node as the raw document a bulk insert writes (validation already happened)."""
    return {
        "_id": node.id,
        **{k: getattr(node, k) for k in FileNode.model_fields if k not in ("id", "revision_id")},
    }


def change_of(
    scope: Scope,
    type_: str,
    node: FileNode,
    audience: list[AudienceEntry],
    *,
    old_path: str | None = None,
    **over: Any,
) -> Change:
    return make_change(
        type_,
        node,
        scope.actor,
        old_path=old_path,
        audience=audience,
        owner=scope.owner.username,
        **over,
    )


async def audience_of(
    scope: Scope, node_id: str, path: str, old_path: str | None = None, *, descendants: bool = False
) -> list[AudienceEntry]:
    return await audience_for(
        scope.owner_id, node_id, path, old_path, includes_descendants=descendants
    )


class TreeService:
    def __init__(self, ctx: FilesContext) -> None:
        self.ctx = ctx
        self.feed = ctx.feed

    # ---------------------------------------------------------------- folders

    async def ensure_folder(self, scope: Scope, path: str) -> FileNode | None:
        """The live folder at `path`, created with its parents if missing; None for root."""
        if path == "/":
            return None
        parent: FileNode | None = None
        for folder_path in [*paths.ancestors(path), path]:
            node = await node_by_path(scope.owner_id, folder_path)
            if node is None:
                node = await self._create_folder_node(scope, folder_path, parent)
            if node.kind != "folder":
                raise Conflict(
                    f"{scope.shown(node.path)} is a file, not a folder", code="not_a_folder"
                )
            parent = node
        return parent

    async def ensure_folders(self, scope: Scope, wanted: list[str]) -> dict[str, FileNode]:
        """`ensure_folder` for many paths at once (a folder tree arriving in bulk): each
        path is looked up once, and below a missing folder nothing is looked up at all;
        the missing ones are inserted together, parents first, with one event each.
        Returns every folder on the way by path. A file in the way raises Conflict."""
        todo = sorted(
            {a for p in wanted if p != "/" for a in [*paths.ancestors(p), p]},
            key=lambda p: (p.count("/"), paths.path_key(p)),
        )
        found: dict[str, FileNode] = {}
        missing: set[str] = set()
        for path in todo:
            parent_path = paths.split(path)[0]
            if parent_path in missing:
                missing.add(path)  # below a missing folder: missing too, no lookup
                continue
            node = await node_by_path(scope.owner_id, path)
            if node is None:
                missing.add(path)
            elif node.kind != "folder":
                raise Conflict(
                    f"{scope.shown(node.path)} is a file, not a folder", code="not_a_folder"
                )
            else:
                found[path] = node
        if not missing:
            return found
        shares = await owner_shares(scope.owner_id)
        made: list[FileNode] = []
        for path in (p for p in todo if p in missing):  # parents first
            parent = found.get(paths.split(path)[0])
            node = new_node(scope, path, parent, kind="folder")
            node.id = PydanticObjectId()
            node.outbox = change_of(
                scope, FILE_CREATED, node, audience_in(shares, str(node.id), path, None)
            )
            node.outbox_pending = True
            found[path] = node
            made.append(node)
        try:
            await FileNode.get_pymongo_collection().insert_many(
                [node_document(n) for n in made], ordered=True
            )
        except BulkWriteError as exc:
            # Someone made some of them meanwhile: ours up to there stand (ordered), the
            # rest the one-by-one way, which takes theirs.
            inserted = exc.details.get("nInserted", 0)
            await self.feed.changed_many(
                FILES, [(str(n.id), n.outbox) for n in made[:inserted] if n.outbox]
            )
            for n in made[inserted:]:
                found[n.path] = await self.ensure_folder(scope, n.path)  # type: ignore[assignment]
            return found
        await self.feed.changed_many(FILES, [(str(n.id), n.outbox) for n in made if n.outbox])
        return found

    async def _create_folder_node(
        self, scope: Scope, path: str, parent: FileNode | None
    ) -> FileNode:
        node = new_node(scope, path, parent, kind="folder")
        node.id = PydanticObjectId()
        change = change_of(scope, FILE_CREATED, node, await audience_of(scope, str(node.id), path))
        node.outbox, node.outbox_pending = change, True
        try:
            await node.insert()
        except DuplicateKeyError:
            # Someone created it first: theirs is as good as ours.
            existing = await node_by_path(scope.owner_id, path)
            if existing is None:
                raise Conflict("the folder changed while it was being created") from None
            return existing
        await self.feed.changed(FILES, str(node.id), change)
        return node

    async def create_folder(self, caller: Caller, req: NewFolderRequest) -> FileOut:
        scope, path = await target_path(caller, req.path, req.parent_id, req.name)
        if path == "/":
            raise BadRequest("the root folder always exists", code="invalid_path")
        existing = await node_by_path(scope.owner_id, path)
        if existing is not None:
            raise Conflict(f"{scope.shown(existing.path)} already exists", code="exists")
        node = await self.ensure_folder(scope, path)
        if node is None:
            raise BadRequest("the root folder always exists", code="invalid_path")
        return scope.out(node)

    async def list_folder(
        self,
        caller: Caller,
        raw_path: object,
        folder_id: str | None,
        limit: int,
        cursor: str | None,
    ) -> ListOut:
        """One page of a folder's children, by path in the caller's tree or by id."""
        scope = own_scope(caller)
        parent_id = None
        if folder_id is not None:
            scope, folder = await open_folder(caller, folder_id)
            parent_id = str(folder.id)
        else:
            path = paths.normalize_path(raw_path if raw_path else "/")
            if path != "/":
                found = await node_by_path(scope.owner_id, path)
                if found is None or not found.committed:
                    raise NotFound(f"{path} does not exist")
                if found.kind != "folder":
                    raise BadRequest(f"{path} is a file, not a folder", code="not_a_folder")
                parent_id = str(found.id)
        limit = max(1, min(limit, 1000))
        query = match(owner_id=scope.owner_id, parent_id=parent_id, deleted_at=None, committed=True)
        if cursor:
            query["name_key"] = {"$gt": decode_cursor(cursor)}
        nodes = await FileNode.find(query).sort("+name_key").limit(limit + 1).to_list()
        next_cursor = None
        if len(nodes) > limit:
            nodes = nodes[:limit]
            next_cursor = encode_cursor(nodes[-1].name_key)
        return ListOut(items=[scope.out(n) for n in nodes], cursor=next_cursor)

    async def list_tree(
        self,
        caller: Caller,
        folder_id: str | None,
        limit: int,
        cursor: str | None,
        path: str | None = None,
    ) -> ListOut:
        """One page of everything below the caller's root, a folder of theirs (`path`), or
        a folder they can see (`folder_id`), in path order: one indexed range scan on
        (owner, path key) per page."""
        scope = own_scope(caller)
        below: dict[str, str] = {"$gt": "/", "$lt": "/\U0010ffff"}
        if folder_id is not None:
            scope, folder = await open_folder(caller, folder_id)
            below = paths.subtree_range(folder.path_key)
        elif path is not None and paths.normalize_path(path) != "/":
            found = await node_by_path(scope.owner_id, paths.normalize_path(path))
            if found is None or not found.committed:
                raise NotFound(f"{path} does not exist")
            if found.kind != "folder":
                raise BadRequest(f"{path} is a file, not a folder", code="not_a_folder")
            below = paths.subtree_range(found.path_key)
        if cursor:
            below = {**below, "$gt": max(below["$gt"], decode_cursor(cursor))}
        limit = max(1, min(limit, 1000))
        nodes = (
            await FileNode.find(match(owner_id=scope.owner_id, path_key=below))
            .sort("+path_key")
            .limit(limit + 1)
            .to_list()
        )
        next_cursor = encode_cursor(nodes[limit - 1].path_key) if len(nodes) > limit else None
        # Trashed items keep their path key and uncommitted uploads are not shown: they
        # are skipped here (the page may hold fewer than `limit`; the cursor still moves).
        return ListOut(
            items=[scope.out(n) for n in nodes[:limit] if n.deleted_at is None and n.committed],
            cursor=next_cursor,
        )

    # ---------------------------------------------------------------- move / trash

    async def move(self, caller: Caller, file_id: str, req: MoveRequest) -> FileOut:
        """Rename or move: to an absolute `path` in the owner's own tree, or by `name`
        and/or `parent_id` (any tree the caller may write to, within one owner's)."""
        scope, node = await open_node(caller, file_id, "write")
        scope.check_detach("rename or move")
        if req.path is not None:
            if not scope.access.is_owner:
                raise BadRequest(
                    "inside a shared folder, move with name and parent_id", code="invalid_path"
                )
            new_path = paths.normalize_path(req.path)
        else:
            if req.name is None and req.parent_id is None:
                raise BadRequest("give path, or name and/or parent_id", code="invalid_path")
            name = node.name if req.name is None else req.name
            if not isinstance(name, str) or "/" in name:
                raise BadRequest("name must be a single path segment", code="invalid_path")
            parent_path = paths.split(node.path)[0]
            if req.parent_id is not None:
                dest, parent = await open_folder(caller, req.parent_id, "write")
                if dest.owner_id != scope.owner_id:
                    raise BadRequest(
                        "cannot move between different owners' files", code="invalid_move"
                    )
                parent_path = parent.path
            new_path = paths.join(parent_path, name)
        updated = await self.move_node(scope, node, new_path)
        access = await resolve_access(caller.user_id, updated)
        return scope.with_access(access or scope.access).out(updated)

    async def move_node(self, scope: Scope, node: FileNode, new_path: str) -> FileNode:
        if new_path == "/":
            raise BadRequest("cannot move onto the root folder", code="invalid_path")
        if new_path == node.path:
            return node
        new_key = paths.path_key(new_path)
        if node.kind == "folder" and new_key.startswith(node.path_key + "/"):
            raise BadRequest("cannot move a folder into itself", code="invalid_move")
        if new_key != node.path_key and await node_by_path(scope.owner_id, new_path) is not None:
            raise Conflict(f"{scope.shown(new_path)} already exists", code="exists")
        parent_path, name = paths.split(new_path)
        parent = await self.ensure_folder(scope, parent_path)
        op = {"op": "move", "from": node.path, "to": new_path} if node.kind == "folder" else None
        try:
            updated, change = await self.compare_and_set(
                scope,
                node,
                FILE_MOVED,
                {
                    "path": new_path,
                    "path_key": new_key,
                    "live_key": new_key,
                    "name": name,
                    "name_key": name.casefold(),
                    "search_key": paths.search_key(name),
                    "parent_id": str(parent.id) if parent else None,
                    "pending_op": op,
                },
            )
        except DuplicateKeyError:
            raise Conflict(f"{scope.shown(new_path)} already exists", code="exists") from None
        await failpoint("move.after_folder")
        if op:
            await finish_pending_op(updated)
        await self.feed.changed(FILES, str(node.id), change)
        return updated

    async def trash(self, caller: Caller, file_id: str) -> None:
        scope, node = await open_node(caller, file_id, "write")
        scope.check_detach("delete")
        await self.trash_node(scope, node)

    async def trash_node(self, scope: Scope, node: FileNode) -> FileNode:
        t = now()
        op = {"op": "trash"} if node.kind == "folder" else None
        updated, change = await self.compare_and_set(
            scope,
            node,
            FILE_DELETED,
            {
                "deleted_at": t,
                "live_key": f"trash:{node.id}",
                "trash_root_id": str(node.id),
                "trash_root": True,
                "deleted_ms": epoch_ms(t),
                "pending_op": op,
            },
        )
        if node.kind == "file" and node.committed:
            await add_usage(scope.owner_id, -node.size)
        if op:
            await finish_pending_op(updated)
        await self.feed.changed(FILES, str(node.id), change)
        return updated

    async def compare_and_set(
        self,
        scope: Scope,
        node: FileNode,
        change_type: str,
        changes: dict[str, Any],
        *,
        trashed: bool = False,
    ) -> tuple[FileNode, Change]:
        """Apply `changes` (recording them in the outbox) only if nobody changed the node
        since we read it, else 409. The caller announces the change once it is complete.
        `trashed`: the node is in the trash (a restore); otherwise it must still be live."""
        await self.feed.flush_node(node)
        after = node.model_copy(update=changes)
        old_path = node.path if after.path != node.path else None
        audience = await audience_of(
            scope,
            str(node.id),
            after.path,
            old_path,
            descendants=change_type in (FILE_DELETED, FILE_RESTORED) and node.kind == "folder",
        )
        change = change_of(scope, change_type, after, audience, old_path=old_path)
        live = {} if trashed else {"deleted_at": None}
        result = await FileNode.get_pymongo_collection().update_one(
            {"_id": node.id, "rev": node.rev, **live},
            {"$set": {**changes, "rev": node.rev + 1, "outbox": change, "outbox_pending": True}},
        )
        if result.modified_count != 1:
            raise Conflict("the file changed meanwhile; try again", code="conflict")
        fresh = await FileNode.get(node.id)
        if fresh is None:
            raise Conflict("the file was deleted meanwhile", code="conflict")
        return fresh, change


def encode_cursor(name_key: str) -> str:
    return base64.urlsafe_b64encode(name_key.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        return base64.b64decode(padded, altchars=b"-_", validate=True).decode()
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest("invalid cursor", code="invalid_cursor") from exc
