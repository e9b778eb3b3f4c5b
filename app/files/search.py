"""Search by name: the caller's own tree and everything shared with them, one page at a time.

What matches: the query is a substring of the name once both have their accents dropped
and their case folded (`paths.search_key`: "resume" finds "Résumé.pdf", "STRASSE" finds
"Straße"). Each node carries that form of its name in `search_key`, written wherever a
name is written (create, rename, move, restore, batch create).

The query shape is chosen by measurement on the embedded server (nx-27017, 10,000 files of
one user among 110,000 stored): an `owner_id` `$eq` plus a `path_key` range walks the
(owner_id, path_key) index and tests the escaped-substring regex on that owner's rows only:
35 ms when nothing matches (every row read: the worst case), 3 ms for a common word (the
limit stops the walk). A plain equality, an `$in`, or an n-gram array (multikey) field made
nx-27017 read the whole collection instead (340 ms, growing with every user's files).
MongoDB answers the same shape from the same index.

Order, and the cursor: the caller's own tree first, then each item shared with them in the
order of its id; within each, path order (so a folder's hits stay together). The cursor
names the source and the last path key returned, so paging never repeats or skips an item
that did not move meanwhile. A share inside another share of the same owner is searched
once, through the outer one.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, replace

import msgspec
from bson import ObjectId

from app.acl.access import Access
from app.acl.derived import shared_with
from app.core import paths
from app.core.errors import BadRequest
from app.core.query import match
from app.db.accounts import User
from app.db.files import FileNode, MaintenanceState
from app.db.sharing import ROLE_RANK, Share
from app.files.schemas import FileOut
from app.files.scope import Caller, Scope, own_scope

MAX_QUERY = 200
MAX_LIMIT = 200
MAX_CURSOR = 16384  # base64 of a source id and a path key (paths are at most 4,096 chars)
OWN = ""  # the source key of the caller's own tree; shares use their root's file id
BACKFILL_ID = "search_keys"


class SearchHit(FileOut, kw_only=True):
    """A file object plus where it is: its folder as the caller sees it, and that
    folder's id when the caller can open it (None: the top of their tree, or "Shared with
    me" for an item shared with them directly)."""

    folder: str
    folder_id: str | None


class SearchOut(msgspec.Struct):
    items: list[SearchHit]
    cursor: str | None


@dataclass(frozen=True)
class Source:
    key: str  # OWN, or the share root's file id
    scope: Scope
    root: FileNode | None  # the shared item (None: the caller's own tree)
    # Items shared with the caller inside this one, with their roles: a hit below one of
    # them has the stronger of the two roles (viewer on /A, editor on /A/Sub).
    inner: tuple[tuple[FileNode, str], ...] = ()

    def range(self) -> dict[str, str]:
        if self.root is None:
            return {"$gt": "/", "$lt": "/\U0010ffff"}
        return paths.subtree_range(self.root.path_key)

    def hit(self, node: FileNode) -> SearchHit:
        scope, best = self.scope, self.scope.access.role
        for inner_root, role in self.inner:
            if ROLE_RANK[role] > ROLE_RANK[best] and paths.within(node.path, inner_root.path):
                best = role
        if best != scope.access.role:
            scope = scope.with_access(replace(scope.access, role=best))
        out = scope.out(node)
        if self.root is not None and node.id == self.root.id:
            folder, folder_id = "", None  # "Shared with me"
        else:
            folder, folder_id = paths.split(out.path)[0], node.parent_id
        return SearchHit(**msgspec.structs.asdict(out), folder=folder, folder_id=folder_id)


def parse_query(raw: object) -> str:
    """The query as names are compared, or 400."""
    text = raw.strip() if isinstance(raw, str) else ""
    if not text:
        raise BadRequest("type something to search for", code="bad_query")
    if len(text) > MAX_QUERY:
        raise BadRequest(f"a search is at most {MAX_QUERY} characters", code="bad_query")
    key = paths.search_key(text)
    if not key.strip():
        raise BadRequest("type something to search for", code="bad_query")
    return key


def encode_cursor(source: str, after: str) -> str:
    raw = json.dumps([source, after], ensure_ascii=False).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, str]:
    if len(cursor) > MAX_CURSOR:
        raise BadRequest("that cursor is not one this server gave out", code="bad_cursor")
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        source, after = json.loads(base64.urlsafe_b64decode(padded))
        if isinstance(source, str) and isinstance(after, str):
            return source, after
    except (ValueError, TypeError, RecursionError):
        pass
    raise BadRequest("that cursor is not one this server gave out", code="bad_cursor")


def nested(root: FileNode, others: list[FileNode]) -> bool:
    """`root` lies inside another shared folder of the same owner (searched through it)."""
    return any(
        o.owner_id == root.owner_id
        and o.kind == "folder"
        and paths.within(root.path_key, o.path_key)
        for o in others
        if o.id != root.id
    )


class SearchService:
    async def _sources(self, caller: Caller) -> list[Source]:
        """The caller's tree, then each item shared with them (outermost only), in a
        fixed handful of indexed reads however many shares there are: a live grant on the
        item itself is what proves access (the ACL decides, not the derived list, which
        may lag a revoke), so no ancestor walk is needed per share."""
        sources = [Source(OWN, own_scope(caller), None)]
        me = caller.user_id
        rows = await shared_with(me)
        if not rows:
            return sources
        grant_ids = [f"{r.file_id}:{me}" for r in rows]
        grants = {
            g.file_id: g
            for g in await Share.find({"_id": {"$in": grant_ids}}).to_list()
            if g.role is not None
        }
        node_ids = [ObjectId(f) for f in grants if ObjectId.is_valid(f)]
        roots = [
            n
            for n in await FileNode.find({"_id": {"$in": node_ids}, "deleted_at": None}).to_list()
            if n.committed
        ]
        owner_ids = [ObjectId(o) for o in {n.owner_id for n in roots}]
        owners = {str(u.id): u for u in await User.find({"_id": {"$in": owner_ids}}).to_list()}
        roots = [n for n in roots if n.owner_id in owners]
        for root in sorted(roots, key=lambda n: str(n.id)):
            if nested(root, roots):
                continue
            role = str(grants[str(root.id)].role)
            access = Access(
                role=role, root_id=str(root.id), root_path=root.path, root_name=root.name
            )
            inner = tuple(
                (o, str(grants[str(o.id)].role))
                for o in roots
                if o.id != root.id
                and o.owner_id == root.owner_id
                and paths.within(o.path_key, root.path_key)
            )
            scope = Scope(caller, owners[root.owner_id], access)
            sources.append(Source(str(root.id), scope, root, inner))
        return sources

    async def search(
        self, caller: Caller, raw_query: object, limit: int, cursor: str | None
    ) -> SearchOut:
        key = parse_query(raw_query)
        limit = max(1, min(limit, MAX_LIMIT))
        start, after = decode_cursor(cursor) if cursor else (OWN, None)
        pattern = re.escape(key)
        hits: list[tuple[Source, FileNode]] = []
        for source in await self._sources(caller):
            if source.key < start:
                continue  # done on an earlier page (OWN, "", sorts first)
            resume = after if source.key == start else None
            want = limit + 1 - len(hits)
            root = source.root
            if root is not None and resume is None and key in root.search_key:
                hits.append((source, root))
                want -= 1
            if want > 0:
                below = source.range()
                if resume is not None and resume > below["$gt"]:
                    below = {**below, "$gt": resume}
                query = match(
                    owner_id=source.scope.owner_id,
                    path_key=below,
                    search_key={"$regex": pattern},
                    deleted_at=None,
                    committed=True,
                )
                found = await FileNode.find(query).sort("+path_key").limit(want).to_list()
                hits.extend((source, node) for node in found)
            if len(hits) > limit:
                break
        next_cursor = None
        if len(hits) > limit:
            hits = hits[:limit]
            last_source, last = hits[-1]
            next_cursor = encode_cursor(last_source.key, last.path_key)
        return SearchOut(items=[s.hit(n) for s, n in hits], cursor=next_cursor)


async def backfill_search_keys(batch: int = 500) -> int:
    """Give nodes written before search existed their `search_key` (once per database).

    `$exists` reads the whole collection on nx-27017, so a marker document records that
    the pass is done and later starts skip it. Safe to run on several instances at once:
    every write sets the same value.
    """
    state = MaintenanceState.get_pymongo_collection()
    if await state.find_one({"_id": BACKFILL_ID, "passes": {"$gte": 1}}):
        return 0
    files = FileNode.get_pymongo_collection()
    done = 0
    while True:
        docs = await files.find({"search_key": {"$exists": False}}).limit(batch).to_list()
        for doc in docs:
            await files.update_one(
                {"_id": doc["_id"]}, {"$set": {"search_key": paths.search_key(doc["name"])}}
            )
        done += len(docs)
        if len(docs) < batch:
            break
    await state.update_one({"_id": BACKFILL_ID}, {"$set": {"passes": 1}}, upsert=True)
    return done
