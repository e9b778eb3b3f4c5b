"""Finishing writes a crash cut short: commit follow-ups and folder operations.

No transactions (nx-27017 has none that isolate), so each change has one single-document
commit point that also records what must follow it:
- a file commit's compare-and-set records its `commit_tail` (mark the version committed,
  count its bytes);
- a folder move, trash or restore records its `pending_op` on the folder, in the write that
  performs it on the folder; the descendants are then rewritten idempotently.
Whoever comes next finishes them: the retried request, the next writer of the node, web
start-up, and the worker every 30 s (`finish_interrupted_writes`).
"""

from __future__ import annotations

from typing import Any

from beanie import PydanticObjectId
from pymongo import UpdateOne

from app.core import paths
from app.core.query import match
from app.db.files import CommitTail, FileNode, FileVersion
from app.files.accounting import add_usage

# Descendants are rewritten in bulk writes of this many.
WRITE_BATCH = 500


async def finish_commit(node: FileNode) -> None:
    """Complete a commit whose compare-and-set a crash separated from its follow-up."""
    if node.commit_tail:
        await finish_commit_tail(node.id, node.owner_id, node.commit_tail)


async def finish_commit_tail(
    node_id: PydanticObjectId | None, owner: str, tail: CommitTail
) -> None:
    """Mark the new head's version committed, then clear the marker and count its bytes.

    Idempotent: the version update may repeat; only the call that clears the marker adds
    to the owner's usage, so a retry never counts twice (a crash right between those two
    writes loses one file's delta from the usage figure, never any data).
    """
    await FileVersion.get_pymongo_collection().update_one(
        {"_id": PydanticObjectId(tail["version_id"])},
        {"$set": {"version": tail["version"], "state": "committed", "committed_at": tail["at"]}},
    )
    cleared = await FileNode.get_pymongo_collection().update_one(
        {"_id": node_id, "commit_tail.version_id": tail["version_id"]},
        {"$set": {"commit_tail": None}},
    )
    if cleared.modified_count:
        await add_usage(owner, tail["usage_delta"])


async def finish_pending_op(folder: FileNode) -> None:
    """Carry a folder move or trash through to everything below it (idempotent)."""
    op = folder.pending_op
    if not op:
        return
    col = FileNode.get_pymongo_collection()
    if op["op"] == "move":
        old_key = paths.path_key(op["from"])
        prefix_len = len(op["from"])
        # The live descendants: live_key is the path key of a live node ("trash:<id>" in
        # the trash), so its range is exactly them, in the unique (owner_id, live_key) index.
        query = match(owner_id=folder.owner_id, live_key=paths.subtree_range(old_key))
        batch: list[UpdateOne] = []
        async for doc in col.find(query, {"path": 1}):
            new_path = op["to"] + doc["path"][prefix_len:]
            key = paths.path_key(new_path)
            batch.append(
                UpdateOne(
                    {"_id": doc["_id"], "path_key": {"$ne": key}},
                    {"$set": {"path": new_path, "path_key": key, "live_key": key}},
                )
            )
            if len(batch) >= WRITE_BATCH:
                await col.bulk_write(batch, ordered=False)
                batch = []
        if batch:
            await col.bulk_write(batch, ordered=False)
    elif op["op"] == "trash":
        # The live descendants, by live_key as for a move.
        query = match(owner_id=folder.owner_id, live_key=paths.subtree_range(folder.path_key))
        batch = []
        async for doc in col.find(query, {"_id": 1}):
            batch.append(
                UpdateOne(
                    {"_id": doc["_id"], "deleted_at": None},
                    {
                        "$set": {
                            "deleted_at": folder.deleted_at,
                            "live_key": f"trash:{doc['_id']}",
                            "trash_root_id": str(folder.id),
                        }
                    },
                )
            )
            if len(batch) >= WRITE_BATCH:
                await col.bulk_write(batch, ordered=False)
                batch = []
        if batch:
            await col.bulk_write(batch, ordered=False)
    elif op["op"] == "restore":
        await _restore_descendants(folder, op)
    # Clear the marker unless the folder changed again since (then its new op stands).
    cleared = await col.update_one(
        {"_id": folder.id, "rev": folder.rev, "pending_op.op": op["op"]},
        {"$set": {"pending_op": None}},
    )
    if op["op"] == "trash" and cleared.modified_count:
        # Counted once, by whoever cleared the marker (the request and the worker's sweep
        # may both run this): what the trash took, every descendant being in it by now.
        await add_usage(folder.owner_id, -await trashed_size(folder))


async def trashed_size(node: FileNode) -> int:
    """Bytes of the committed files in the trash with `node` (what trashing it took from
    the owner's usage, and what restoring it brings back)."""
    if node.kind == "file":
        return node.size if node.committed else 0
    total = 0
    async for doc in FileNode.get_pymongo_collection().find(
        match(trash_root_id=str(node.id)), {"kind": 1, "size": 1, "committed": 1}
    ):
        if doc.get("kind") == "file" and doc.get("committed"):
            total += doc.get("size", 0)
    return total


async def _restore_descendants(folder: FileNode, op: dict[str, Any]) -> None:
    """Bring back everything trashed together with a restored folder, under its new path."""
    col = FileNode.get_pymongo_collection()
    prefix_len = len(op["from"])
    restored = 0
    batch: list[UpdateOne] = []
    query = match(trash_root_id=op["root"])
    async for doc in col.find(query, {"path": 1, "kind": 1, "size": 1, "committed": 1}):
        if doc["_id"] == folder.id:
            continue
        new_path = op["to"] + doc["path"][prefix_len:]
        key = paths.path_key(new_path)
        if doc.get("kind") == "file" and doc.get("committed"):
            restored += doc.get("size", 0)
        batch.append(
            UpdateOne(
                {"_id": doc["_id"], "trash_root_id": op["root"]},
                {
                    "$set": {
                        "deleted_at": None,
                        "trash_root_id": None,
                        "path": new_path,
                        "path_key": key,
                        "live_key": key,
                    }
                },
            )
        )
        if len(batch) >= WRITE_BATCH:
            await col.bulk_write(batch, ordered=False)
            batch = []
    if batch:
        await col.bulk_write(batch, ordered=False)
    if not op.get("charged"):  # restores recorded before quotas were charged up front
        await add_usage(folder.owner_id, restored)


async def finish_interrupted_writes() -> int:
    """Complete every commit follow-up and folder operation a crashed web process left
    half done, in one scan of the tree (web start-up and the worker). Returns how many."""
    # Two indexed range queries, not an `$or` with `$exists` (which the embedded server
    # answers by reading every file).
    seen: set[PydanticObjectId] = set()
    for marker in ("commit_tail.version_id", "pending_op.op"):
        async for node in FileNode.find({marker: {"$gt": ""}}):
            if node.id in seen:
                continue
            seen.add(node.id)  # type: ignore[arg-type]
            await finish_commit(node)
            await finish_pending_op(node)
    return len(seen)
