"""The rules of the file tree: upload, commit, list, read, move and trash.

Consistency without transactions (nx-27017 has none that isolate):
- A new version becomes visible through one compare-and-set on the file document
  (`rev`); its chunk map and chunks are written before, so a crash leaves at worst an
  unreferenced pending version, never a half-visible one. The same write records what
  must follow it (`commit_tail`: mark the version committed, count its bytes), which
  `finish_commit` completes if a crash cuts it short.
- A folder move or trash touches many documents. The folder's own document records the
  operation (`pending_op`) in the same write that performs it on the folder; the
  descendants are then rewritten idempotently and the marker cleared.
`finish_interrupted_writes` completes both kinds after a crash (start-up and the worker).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from beanie import PydanticObjectId
from bson.errors import InvalidId
from pymongo import UpdateOne
from pymongo.errors import DuplicateKeyError

from app.auth.models import User
from app.core.query import match
from app.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    InsufficientStorage,
    NotFound,
    RangeNotSatisfiable,
    ServiceUnavailable,
)
from app.events.service import ChangeFeed, epoch_ms, make_change
from app.failpoints import failpoint
from app.files import paths
from app.files.integrity import (
    read_verified_chunk,
    record_stored_chunk,
    touch_chunks,
)
from app.files.models import (
    PAGE_SIZE,
    ChunkMapPage,
    FileNode,
    FileVersion,
    StoredChunk,
    UploadSession,
    chunk_map_page_ids,
)
from app.files.schemas import ChunkIn, MoveRequest, NewFolderRequest, UploadRequest
from app.settings import Settings
from app.sharing.access import OWNER, Access, audience_for, resolve_access
from app.storage.base import BlobStore

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
BULK_BATCH = 500
EMPTY_CONTENT_HASH = hashlib.sha256(b"").hexdigest()


def now() -> datetime:
    return datetime.now(UTC)


def as_utc(dt: datetime) -> datetime:
    """Datetimes are stored in UTC; some reads hand them back naive."""
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def content_hash_of(chunk_hashes: Sequence[str]) -> str:
    """Dropbox's scheme: SHA-256 over the concatenated binary chunk digests."""
    h = hashlib.sha256()
    for sha in chunk_hashes:
        h.update(bytes.fromhex(sha))
    return h.hexdigest()


def file_out(node: FileNode, access: Access = OWNER, owner: str | None = None) -> dict[str, Any]:
    """The file object of the API, with the path as the caller sees it."""
    out = {
        "id": str(node.id),
        "path": access.view_path(node.path),
        "name": node.name,
        "kind": node.kind,
        "size": node.size,
        "content_hash": node.content_hash,
        "version": node.version,
        "modified_at": iso(node.modified_at),
        "role": access.role,
        "damaged": node.damaged,
    }
    if owner is not None:
        out["owner"] = owner
    return out


def parse_id(raw: str) -> PydanticObjectId:
    try:
        return PydanticObjectId(raw)
    except (InvalidId, TypeError, ValueError) as exc:
        raise NotFound("no such file") from exc


@dataclass
class FileService:
    """File operations for one request's caller (handlers build one per request).

    `user` is the caller. `ns` is the user whose tree an operation works in: the caller's
    own, or a share owner's once `open` has checked the caller's grant (`access`). Quota,
    chunk storage and dedup are the namespace owner's; events name the caller as actor.
    """

    settings: Settings
    store: BlobStore
    user: User
    base_url: str
    feed: ChangeFeed
    device: str | None = None
    ns: User | None = None
    access: Access = OWNER

    @classmethod
    def for_caller(
        cls, settings: Settings, store: BlobStore, feed: ChangeFeed, principal: Any, base_url: str
    ) -> FileService:
        """The service for an authenticated request (`principal` from the auth layer)."""
        return cls(
            settings=settings,
            store=store,
            user=principal.user,
            base_url=settings.public_url or base_url,
            feed=feed,
            # Versions name the device that made them; a browser session has no name.
            device=principal.device_name or ("browser" if principal.via == "session" else None),
        )

    @property
    def namespace(self) -> User:
        return self.ns or self.user

    @property
    def owner(self) -> str:
        return str(self.namespace.id)

    @property
    def actor(self) -> str:
        return self.user.username

    def out(self, node: FileNode) -> dict[str, Any]:
        return file_out(node, self.access, self.namespace.username)

    # ---------------------------------------------------------------- lookups

    async def open(
        self, file_id: str, need: str = "read", *, include_pending: bool = False
    ) -> tuple[FileService, FileNode]:
        """The node with this id and a service scoped to its owner's tree, if the caller
        may `need` ("read", "write" or "manage") it. Without any access: 404, so that ids
        reveal nothing; with too little: 403."""
        node = await FileNode.get(parse_id(file_id))
        if (
            node is None
            or node.deleted_at is not None
            or (not node.committed and not include_pending)
        ):
            raise NotFound("no such file")
        access = await resolve_access(str(self.user.id), node)
        if access is None:
            raise NotFound("no such file")
        if need == "write" and not access.can_write:
            raise Forbidden("this is shared with you to view only", code="read_only")
        if need == "manage" and not access.is_owner:
            raise Forbidden("only the owner can manage sharing", code="not_owner")
        if access.is_owner:
            return self, node
        owner = await User.get(PydanticObjectId(node.owner_id))
        if owner is None:
            raise NotFound("no such file")
        return replace(self, ns=owner, access=access), node

    async def open_folder(self, folder_id: str, need: str = "read") -> tuple[FileService, FileNode]:
        scoped, folder = await self.open(folder_id, need)
        if folder.kind != "folder":
            raise BadRequest(
                f"{scoped.access.view_path(folder.path)} is a file, not a folder",
                code="not_a_folder",
            )
        return scoped, folder

    async def node_by_path(self, path: str) -> FileNode | None:
        return await FileNode.find_one(match(owner_id=self.owner, live_key=paths.path_key(path)))

    async def _audience(
        self, node_id: str, path: str, old_path: str | None = None, *, descendants: bool = False
    ) -> list[dict[str, Any]]:
        return await audience_for(
            self.owner, node_id, path, old_path, includes_descendants=descendants
        )

    def shown(self, path: str) -> str:
        """A path for messages to the caller (never the owner's path above a share)."""
        return self.access.view_path(path)

    async def _reload(self, node_id: str | PydanticObjectId) -> FileNode:
        node = await FileNode.get(PydanticObjectId(node_id))
        if node is None or node.owner_id != self.owner or node.deleted_at is not None:
            raise NotFound("no such file")
        return node

    async def target_path(
        self, path: object, parent_id: str | None, name: object, need: str = "write"
    ) -> tuple[FileService, str]:
        """Where a new item goes: an absolute `path` in the caller's own tree, or `name`
        (which may hold a relative path, "a/b.txt") inside the folder `parent_id` of any
        tree the caller may write to. Returns the service scoped to that tree."""
        if parent_id is not None:
            scoped, parent = await self.open_folder(parent_id, need)
            if not isinstance(name, str) or not name.strip("/"):
                raise BadRequest("name is required with parent_id", code="invalid_path")
            relative = paths.normalize_path("/" + name)
            full = paths.join(parent.path, relative)
            return scoped, full
        if path is None:
            raise BadRequest("give path, or parent_id and name", code="invalid_path")
        return self, paths.normalize_path(path)

    # ---------------------------------------------------------------- folders

    async def ensure_folder(self, path: str) -> FileNode | None:
        """The live folder at `path`, created with its parents if missing; None for root."""
        if path == "/":
            return None
        parent: FileNode | None = None
        for folder_path in [*paths.ancestors(path), path]:
            node = await self.node_by_path(folder_path)
            if node is None:
                node = await self._create_folder_node(folder_path, parent)
            if node.kind != "folder":
                raise Conflict(
                    f"{self.shown(node.path)} is a file, not a folder", code="not_a_folder"
                )
            parent = node
        return parent

    def _new_node(self, path: str, parent: FileNode | None, **fields: Any) -> FileNode:
        _, name = paths.split(path)
        t = now()
        return FileNode(
            owner_id=self.owner,
            parent_id=str(parent.id) if parent else None,
            name=name,
            name_key=name.casefold(),
            path=path,
            path_key=paths.path_key(path),
            live_key=paths.path_key(path),
            created_at=t,
            modified_at=t,
            **fields,
        )

    async def _create_folder_node(self, path: str, parent: FileNode | None) -> FileNode:
        node = self._new_node(path, parent, kind="folder")
        node.id = PydanticObjectId()
        change = self._change("file.created", node, await self._audience(str(node.id), path))
        node.outbox, node.outbox_pending = change, True
        try:
            await node.insert()
        except DuplicateKeyError:
            # Someone created it first: theirs is as good as ours.
            existing = await self.node_by_path(path)
            if existing is None:
                raise Conflict("the folder changed while it was being created") from None
            return existing
        await self.feed.changed("files", str(node.id), change)
        return node

    def _change(
        self,
        type_: str,
        node: FileNode,
        audience: list[dict[str, Any]],
        *,
        old_path: str | None = None,
        **over: Any,
    ) -> dict[str, Any]:
        return make_change(
            type_,
            node,
            self.actor,
            old_path=old_path,
            audience=audience,
            owner=self.namespace.username,
            **over,
        )

    async def create_folder(self, req: NewFolderRequest) -> dict[str, Any]:
        scoped, path = await self.target_path(req.path, req.parent_id, req.name)
        if path == "/":
            raise BadRequest("the root folder always exists", code="invalid_path")
        existing = await scoped.node_by_path(path)
        if existing is not None:
            raise Conflict(f"{scoped.shown(existing.path)} already exists", code="exists")
        node = await scoped.ensure_folder(path)
        assert node is not None
        return scoped.out(node)

    async def list_folder(
        self, raw_path: object, folder_id: str | None, limit: int, cursor: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of a folder's children, by path in the caller's tree or by id."""
        scoped = self
        parent_id = None
        if folder_id is not None:
            scoped, folder = await self.open_folder(folder_id)
            parent_id = str(folder.id)
        else:
            path = paths.normalize_path(raw_path if raw_path else "/")
            if path != "/":
                folder = await self.node_by_path(path)
                if folder is None or not folder.committed:
                    raise NotFound(f"{path} does not exist")
                if folder.kind != "folder":
                    raise BadRequest(f"{path} is a file, not a folder", code="not_a_folder")
                parent_id = str(folder.id)
        limit = max(1, min(limit, 1000))
        query = match(owner_id=scoped.owner, parent_id=parent_id, deleted_at=None, committed=True)
        if cursor:
            query["name_key"] = {"$gt": _decode_cursor(cursor)}
        nodes = await FileNode.find(query).sort("+name_key").limit(limit + 1).to_list()
        next_cursor = None
        if len(nodes) > limit:
            nodes = nodes[:limit]
            next_cursor = _encode_cursor(nodes[-1].name_key)
        return [scoped.out(n) for n in nodes], next_cursor

    # ---------------------------------------------------------------- upload

    def _check_chunks(self, size: int, chunks: list[ChunkIn]) -> list[str]:
        s = self.settings
        if not isinstance(size, int) or size < 0:
            raise BadRequest("size must be a non-negative integer", code="invalid_size")
        if size > s.max_file_size:
            raise BadRequest(f"files may be at most {s.max_file_size} bytes", code="too_large")
        if len(chunks) > s.max_chunks:
            raise BadRequest(f"at most {s.max_chunks} chunks per file", code="too_many_chunks")
        hashes = []
        total = 0
        last = len(chunks) - 1
        for i, c in enumerate(chunks):
            sha = c.sha256.lower() if isinstance(c.sha256, str) else ""
            if not SHA256_RE.fullmatch(sha):
                raise BadRequest(f"chunk {i}: sha256 must be 64 hex digits", code="invalid_chunk")
            lo = 1 if i == last else s.min_chunk_size
            if not lo <= c.size <= s.max_chunk_size:
                raise BadRequest(
                    f"chunk {i}: size {c.size} outside {lo}..{s.max_chunk_size} bytes",
                    code="invalid_chunk",
                )
            hashes.append(sha)
            total += c.size
        if total != size:
            raise BadRequest(
                f"chunk sizes add up to {total}, but size is {size}", code="size_mismatch"
            )
        return hashes

    async def register_upload(self, req: UploadRequest) -> dict[str, Any]:
        """Start (or resume) an upload: to `path`, into `parent_id` as `name`, or as a
        new version of `file_id`; the chunks to send are answered with their URLs."""
        if req.file_id is not None:
            scoped, existing = await self.open(req.file_id, "write", include_pending=True)
            if existing.kind != "file":
                raise Conflict(f"{scoped.shown(existing.path)} is a folder", code="is_a_folder")
            return await scoped._register(existing.path, req)
        scoped, path = await self.target_path(req.path, req.parent_id, req.name)
        return await scoped._register(path, req)

    async def _register(self, path: str, req: UploadRequest) -> dict[str, Any]:
        if path == "/":
            raise BadRequest("cannot upload to the root folder itself", code="invalid_path")
        hashes = self._check_chunks(req.size, req.chunks)
        content_hash = content_hash_of(hashes)

        node = await self.node_by_path(path)
        if node is not None and node.kind == "folder":
            raise Conflict(f"{self.shown(node.path)} is a folder", code="is_a_folder")
        old_size = node.size if node is not None and node.committed else 0
        quota = self.namespace.quota_bytes
        if quota and self.namespace.usage_bytes - old_size + req.size > quota:
            whose = "your" if self.access.is_owner else "the owner's"
            raise InsufficientStorage(
                f"this upload would exceed {whose} storage quota", code="quota_exceeded"
            )
        if req.base_version is not None and node is not None and node.version != req.base_version:
            raise Conflict(
                "the file changed since base_version", code="conflict", version=node.version
            )
        if node is None:
            node = await self._create_pending_file(path)

        sessions = await UploadSession.find(
            match(
                owner_id=self.owner,
                file_id=str(node.id),
                content_hash=content_hash,
                uploader_id=str(self.user.id),
                committed=False,
            )
        ).to_list()
        # Expiry is checked here, not in the filter: a datetime in a filter makes the
        # embedded server read every session.
        t = now()
        session = next((s for s in sessions if as_utc(s.expires_at) > t), None)
        resumed = session is not None
        if session is None:
            session = await self._new_session(node, path, req, hashes, content_hash)
        elif session.base_version != req.base_version:
            session.base_version = req.base_version
            await session.save()
        missing = await self._missing_chunks(
            hashes, req.chunks, session, probe_store=resumed, since_ms=self._dedup_since(session)
        )
        return {
            "file_id": str(node.id),
            "upload_id": str(session.id),
            "missing": await self._with_upload_urls(missing, str(session.id)),
        }

    def _dedup_since(self, session: UploadSession) -> int:
        """Which stored chunks an upload may skip: any of the owner's, for the owner; for
        a share editor only those PUT since their upload began, so that dedup never tells
        them whether the owner has some content."""
        return 0 if self.access.is_owner else session.created_ms

    async def _create_pending_file(self, path: str) -> FileNode:
        parent = await self.ensure_folder(paths.split(path)[0])
        node = self._new_node(path, parent, kind="file", committed=False)
        try:
            await node.insert()
        except DuplicateKeyError:
            existing = await self.node_by_path(path)
            if existing is None or existing.kind != "file":
                raise Conflict(f"{path} changed while registering", code="conflict") from None
            return existing
        return node

    async def _new_session(
        self,
        node: FileNode,
        path: str,
        req: UploadRequest,
        hashes: list[str],
        content_hash: str,
    ) -> UploadSession:
        version = FileVersion(
            file_id=str(node.id),
            owner_id=self.owner,
            size=req.size,
            content_hash=content_hash,
            chunk_count=len(hashes),
            author_device=self.device,
            created_at=now(),
        )
        await version.insert()
        pages = []
        offset = 0
        for page_no, start in enumerate(range(0, len(hashes), PAGE_SIZE)):
            entries = [
                (hashes[i], req.chunks[i].size)
                for i in range(start, min(start + PAGE_SIZE, len(hashes)))
            ]
            pages.append(
                ChunkMapPage(
                    id=f"{version.id}:{page_no}",
                    version_id=str(version.id),
                    page=page_no,
                    start_offset=offset,
                    chunks=entries,
                )
            )
            offset += sum(size for _, size in entries)
        if pages:
            await ChunkMapPage.insert_many(pages)
        session = UploadSession(
            owner_id=self.owner,
            file_id=str(node.id),
            version_id=str(version.id),
            path=path,
            size=req.size,
            content_hash=content_hash,
            chunk_count=len(hashes),
            base_version=req.base_version,
            device=self.device,
            uploader_id=str(self.user.id),
            created_at=now(),
            created_ms=epoch_ms(now()),
            expires_at=now() + timedelta(seconds=self.settings.upload_session_ttl_seconds),
        )
        await session.insert()
        return session

    async def _stored_set(self, hashes: set[str], since_ms: int = 0) -> set[str]:
        """Which of these chunk hashes the owner has stored (and not known corrupt)."""
        have: set[str] = set()
        # Touch before reading: garbage collection either sees the touch and keeps the
        # chunk, or marked it "deleting" first and the read below reports it missing.
        await touch_chunks(self.owner, hashes)
        ids = [f"{self.owner}:{h}" for h in hashes]
        query: dict[str, Any] = {"state": "stored"}
        if since_ms:
            query["put_ms"] = {"$gte": since_ms}
        for start in range(0, len(ids), 1000):
            async for chunk in StoredChunk.find(
                {"_id": {"$in": ids[start : start + 1000]}, **match(query)}
            ):
                have.add(chunk.sha256)
        return have

    async def _missing_chunks(
        self,
        hashes: list[str],
        chunks: list[ChunkIn],
        session: UploadSession,
        *,
        probe_store: bool,
        since_ms: int,
    ) -> list[tuple[int, str, int]]:
        """(index, sha, size) of the first occurrence of every chunk not yet stored."""
        have = await self._stored_set(set(hashes), since_ms)
        if probe_store and not self.store.verifies_on_write:
            # A resumed upload to S3: chunks this upload staged earlier are checked and
            # moved into place now, so they are not sent again.
            have |= await self._accept_staged(
                set(hashes) - have,
                dict(zip(hashes, (c.size for c in chunks), strict=True)),
                str(session.id),
            )
        missing = []
        seen: set[str] = set()
        for i, sha in enumerate(hashes):
            if sha not in have and sha not in seen:
                seen.add(sha)
                missing.append((i, sha, chunks[i].size))
        return missing

    async def _with_upload_urls(
        self, missing: list[tuple[int, str, int]], upload_id: str
    ) -> list[dict[str, Any]]:
        owner = str(self.owner)
        targets = await asyncio.gather(
            *(
                self.store.upload_url(self.base_url, owner, sha, size, upload_id)
                for _, sha, size in missing
            )
        )
        return [
            {"index": i, "sha256": sha, "size": size, "url": t.url, "headers": t.headers}
            for (i, sha, size), t in zip(missing, targets, strict=True)
        ]

    async def _accept_staged(
        self, hashes: set[str], sizes: dict[str, int], upload_id: str
    ) -> set[str]:
        """Check the chunks this upload staged (stores that cannot verify on write) and
        move the good ones into place; record them as stored."""
        owner = str(self.owner)
        sem = asyncio.Semaphore(8)

        async def verify(sha: str) -> str | None:
            async with sem:
                found = await self.store.accept_upload(owner, sha, sizes[sha], upload_id)
                if found != "stored":
                    return None
                try:
                    await record_stored_chunk(self.owner, sha, sizes[sha], verified=True)
                except ServiceUnavailable:
                    return None  # being garbage-collected: it must be sent again
                return sha

        results = await asyncio.gather(*(verify(sha) for sha in hashes))
        return {sha for sha in results if sha}

    async def commit(self, file_id: str, upload_id: str) -> dict[str, Any]:
        scoped, node = await self.open(file_id, "write", include_pending=True)
        return scoped.out(await scoped._commit(node, upload_id))

    async def _commit(self, node: FileNode, upload_id: str) -> FileNode:
        file_id = str(node.id)
        try:
            session = await UploadSession.get(PydanticObjectId(upload_id))
        except (InvalidId, TypeError, ValueError):
            session = None
        if (
            session is None
            or session.owner_id != self.owner
            or session.file_id != file_id
            or session.uploader_id not in (None, str(self.user.id))
        ):
            raise NotFound("no such upload for this file", code="upload_not_found")
        version = await FileVersion.get(PydanticObjectId(session.version_id))
        if session.committed or version is None:
            return await self._reload(file_id)  # a retried commit: it already happened
        if version.state == "committed":
            # Its commit landed before a crash and was finished since (maybe superseded by
            # a later commit): never make it the head again under a new number.
            await _close_session(session)
            return await self._reload(file_id)

        chunk_sizes: dict[str, int] = {}
        first_index: dict[str, int] = {}
        index = 0
        async for page in ChunkMapPage.find(match(version_id=str(version.id))).sort(
            "+start_offset"
        ):
            for sha, size in page.chunks:
                chunk_sizes.setdefault(sha, size)
                first_index.setdefault(sha, index)
                index += 1
        have = await self._stored_set(set(chunk_sizes), self._dedup_since(session))
        absent = set(chunk_sizes) - have
        if absent and not self.store.verifies_on_write:
            have |= await self._accept_staged(absent, chunk_sizes, str(session.id))
            absent = set(chunk_sizes) - have
        if absent:
            missing = sorted((first_index[sha], sha, chunk_sizes[sha]) for sha in absent)
            raise Conflict(
                f"{len(missing)} chunk(s) have not been uploaded yet",
                code="missing_chunks",
                missing=await self._with_upload_urls(missing, str(session.id)),
            )

        head = await self._advance_head(node, version, session.base_version)
        if head is None:
            # Same bytes as the head: nothing changed, so no new version and no event.
            await self._drop_pending(session, version)
            return await self._reload(file_id)
        await _close_session(session)
        return head

    async def _advance_head(
        self, node: FileNode, version: FileVersion, base_version: int | None
    ) -> FileNode | None:
        """Make `version` (pending, chunks all stored) the file's head: one compare-and-set
        on the node, retried on a concurrent change; None if it has the head's bytes."""
        file_id = str(node.id)
        while True:
            if node.head_version_id == str(version.id):
                # A retried commit whose compare-and-set landed before the web process died.
                await finish_commit(node)
                return await self._reload(file_id)
            if node.committed and node.content_hash == version.content_hash:
                return None
            if base_version is not None and node.version != base_version:
                raise Conflict(
                    "the file changed since base_version", code="conflict", version=node.version
                )
            await self.feed.flush_node(node)
            await finish_commit(node)  # the previous commit's, if a crash cut it short
            new_version = node.version + 1
            t = now()
            delta = version.size - (node.size if node.committed else 0)
            # Growth is charged against the quota *before* the commit point, atomically, so
            # concurrent commits can never together pass it; shrinking is credited after.
            charged = max(delta, 0)
            if charged:
                await self._charge(charged)
            tail = {
                "version_id": str(version.id),
                "version": new_version,
                "at": t,
                "usage_delta": delta - charged,
            }
            change = self._change(
                "file.updated" if node.committed else "file.created",
                node,
                await self._audience(file_id, node.path),
                version=new_version,
                size=version.size,
                content_hash=version.content_hash,
            )
            result = await FileNode.get_pymongo_collection().update_one(
                {"_id": node.id, "rev": node.rev, "deleted_at": None},
                {
                    "$set": {
                        "committed": True,
                        "version": new_version,
                        "head_version_id": str(version.id),
                        "damaged": version.damaged,
                        "size": version.size,
                        "content_hash": version.content_hash,
                        "modified_at": t,
                        "rev": node.rev + 1,
                        "outbox": change,
                        "outbox_pending": True,
                        "commit_tail": tail,
                    }
                },
            )
            if result.modified_count == 1:
                break
            await _add_usage(self.owner, -charged)  # lost the race: give it back, go again
            node = await self._reload(file_id)

        await failpoint("commit.after_head")
        await _finish_commit_tail(node.id, self.owner, tail)
        await self.feed.changed("files", file_id, change)
        return await self._reload(file_id)

    async def _charge(self, size: int) -> None:
        """Add `size` to the namespace owner's usage if it stays within their quota, in one
        conditional write (507 otherwise). A crash after this and before the commit point
        leaves the usage figure too high by this much: it errs on the side of the quota."""
        owner = self.namespace
        query: dict[str, Any] = {"_id": owner.id}
        if owner.quota_bytes:
            query["usage_bytes"] = {"$lte": owner.quota_bytes - size}
        result = await User.get_pymongo_collection().update_one(
            query, {"$inc": {"usage_bytes": size}}
        )
        if result.modified_count != 1:
            whose = "your" if self.access.is_owner else "the owner's"
            raise InsufficientStorage(
                f"this file would exceed {whose} storage quota", code="quota_exceeded"
            )

    async def _drop_pending(self, session: UploadSession, version: FileVersion) -> None:
        await delete_chunk_maps([version])
        await version.delete()
        await _close_session(session)

    # ---------------------------------------------------------------- download

    async def head_version(self, node: FileNode) -> FileVersion:
        return await head_version_of(node)

    async def describe(self, file_id: str, offset: int, limit: int) -> dict[str, Any]:
        scoped, node = await self.open(file_id)
        return await scoped.manifest(node, offset, limit)

    async def manifest(self, node: FileNode, offset: int, limit: int) -> dict[str, Any]:
        out = self.out(node)
        if node.kind != "file":
            return {**out, "chunk_count": 0, "chunks": [], "next_chunk_offset": None}
        version = await self.head_version(node)
        offset = max(0, offset)
        limit = max(1, min(limit, 4096))
        end = min(offset + limit, version.chunk_count)
        chunks = []
        owner = str(self.owner)
        if offset < end:
            page_ids = [
                f"{version.id}:{n}" for n in range(offset // PAGE_SIZE, (end - 1) // PAGE_SIZE + 1)
            ]
            async for page in ChunkMapPage.find({"_id": {"$in": page_ids}}).sort("+page"):
                base = page.page * PAGE_SIZE
                for i, (sha, size) in enumerate(page.chunks):
                    if offset <= base + i < end:
                        chunks.append((base + i, sha, size))
        epoch = self.namespace.url_epoch
        urls = await asyncio.gather(
            *(
                self.store.download_url(self.base_url, owner, sha, size, epoch)
                for _, sha, size in chunks
            )
        )
        return {
            **out,
            "chunk_count": version.chunk_count,
            "chunks": [
                {"index": i, "sha256": sha, "size": size, "url": url}
                for (i, sha, size), url in zip(chunks, urls, strict=True)
            ],
            "next_chunk_offset": end if end < version.chunk_count else None,
        }

    # ---------------------------------------------------------------- move / trash

    async def move(self, file_id: str, req: MoveRequest) -> dict[str, Any]:
        """Rename or move: to an absolute `path` in the owner's own tree, or by `name`
        and/or `parent_id` (any tree the caller may write to, within one owner's)."""
        scoped, node = await self.open(file_id, "write")
        scoped.check_detach("rename or move")
        if req.path is not None:
            if not scoped.access.is_owner:
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
                dest, parent = await self.open_folder(req.parent_id, "write")
                if dest.owner != scoped.owner:
                    raise BadRequest(
                        "cannot move between different owners' files", code="invalid_move"
                    )
                parent_path = parent.path
            new_path = paths.join(parent_path, name)
        updated = await scoped._move(node, new_path)
        access = await resolve_access(str(self.user.id), updated)
        return replace(scoped, access=access or scoped.access).out(updated)

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

    async def _move(self, node: FileNode, new_path: str) -> FileNode:
        if new_path == "/":
            raise BadRequest("cannot move onto the root folder", code="invalid_path")
        if new_path == node.path:
            return node
        new_key = paths.path_key(new_path)
        if node.kind == "folder" and new_key.startswith(node.path_key + "/"):
            raise BadRequest("cannot move a folder into itself", code="invalid_move")
        if new_key != node.path_key and await self.node_by_path(new_path) is not None:
            raise Conflict(f"{self.shown(new_path)} already exists", code="exists")
        parent_path, name = paths.split(new_path)
        parent = await self.ensure_folder(parent_path)
        op = {"op": "move", "from": node.path, "to": new_path} if node.kind == "folder" else None
        try:
            updated, change = await self._cas(
                node,
                "file.moved",
                {
                    "path": new_path,
                    "path_key": new_key,
                    "live_key": new_key,
                    "name": name,
                    "name_key": name.casefold(),
                    "parent_id": str(parent.id) if parent else None,
                    "pending_op": op,
                },
            )
        except DuplicateKeyError:
            raise Conflict(f"{self.shown(new_path)} already exists", code="exists") from None
        if op:
            await finish_pending_op(updated)
        await self.feed.changed("files", str(node.id), change)
        return updated

    async def trash(self, file_id: str) -> None:
        scoped, node = await self.open(file_id, "write")
        scoped.check_detach("delete")
        await scoped._trash(node)

    async def _trash(self, node: FileNode) -> FileNode:
        t = now()
        op = {"op": "trash"} if node.kind == "folder" else None
        updated, change = await self._cas(
            node,
            "file.deleted",
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
            await _add_usage(self.owner, -node.size)
        if op:
            await finish_pending_op(updated)
        await self.feed.changed("files", str(node.id), change)
        return updated

    async def _cas(
        self, node: FileNode, change_type: str, changes: dict[str, Any], *, trashed: bool = False
    ) -> tuple[FileNode, dict[str, Any]]:
        """Apply `changes` (recording them in the outbox) only if nobody changed the node
        since we read it, else 409. The caller announces the change once it is complete."""
        await self.feed.flush_node(node)
        after = node.model_copy(update=changes)
        old_path = node.path if after.path != node.path else None
        audience = await self._audience(
            str(node.id),
            after.path,
            old_path,
            descendants=change_type in ("file.deleted", "file.restored") and node.kind == "folder",
        )
        change = self._change(change_type, after, audience, old_path=old_path)
        # `trashed`: the node is in the trash (a restore); otherwise it must still be live.
        live = {} if trashed else {"deleted_at": None}
        result = await FileNode.get_pymongo_collection().update_one(
            {"_id": node.id, "rev": node.rev, **live},
            {"$set": {**changes, "rev": node.rev + 1, "outbox": change, "outbox_pending": True}},
        )
        if result.modified_count != 1:
            raise Conflict("the file changed meanwhile; try again", code="conflict")
        fresh = await FileNode.get(node.id)
        assert fresh is not None
        return fresh, change


async def head_version_of(node: FileNode) -> FileVersion:
    if node.kind != "file":
        raise BadRequest(f"{node.name} is a folder", code="is_a_folder")
    version = (
        await FileVersion.get(PydanticObjectId(node.head_version_id))
        if node.head_version_id
        else None
    )
    if version is None:
        raise NotFound("no such file")
    return version


class HasChunkMap(Protocol):
    id: Any
    chunk_count: int


async def delete_chunk_maps(versions: Sequence[HasChunkMap]) -> None:
    ids = [pid for v in versions for pid in chunk_map_page_ids(str(v.id), v.chunk_count)]
    for start in range(0, len(ids), 1000):
        await ChunkMapPage.get_pymongo_collection().delete_many(
            {"_id": {"$in": ids[start : start + 1000]}}
        )


async def _close_session(session: UploadSession) -> None:
    await UploadSession.get_pymongo_collection().update_one(
        {"_id": session.id},
        {"$set": {"committed": True, "expires_at": now() + timedelta(hours=1)}},
    )


async def finish_commit(node: FileNode) -> None:
    """Complete a commit whose compare-and-set a crash separated from its follow-up."""
    if node.commit_tail:
        await _finish_commit_tail(node.id, node.owner_id, node.commit_tail)


async def _finish_commit_tail(
    node_id: PydanticObjectId | None, owner: str, tail: dict[str, Any]
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
        await _add_usage(owner, tail["usage_delta"])


async def withdraw_read_urls(owner: str) -> None:
    """Make every chunk-read URL handed out for this owner's files stop working (after a
    revoke or a purge): they carry the owner's URL epoch, which moves on here."""
    await User.get_pymongo_collection().update_one(
        {"_id": PydanticObjectId(owner)}, {"$inc": {"url_epoch": 1}}
    )


async def _add_usage(owner: str, delta: int) -> None:
    if delta:
        await User.get_pymongo_collection().update_one(
            {"_id": PydanticObjectId(owner)}, {"$inc": {"usage_bytes": delta}}
        )


async def finish_pending_op(folder: FileNode) -> None:
    """Carry a folder move or trash through to everything below it (idempotent)."""
    op = folder.pending_op
    if not op:
        return
    col = FileNode.get_pymongo_collection()
    if op["op"] == "move":
        old_key = paths.path_key(op["from"])
        prefix_len = len(op["from"])
        query = match(
            owner_id=folder.owner_id, path_key=paths.subtree_range(old_key), deleted_at=None
        )
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
            if len(batch) >= BULK_BATCH:
                await col.bulk_write(batch, ordered=False)
                batch = []
        if batch:
            await col.bulk_write(batch, ordered=False)
    elif op["op"] == "trash":
        query = match(
            owner_id=folder.owner_id,
            path_key=paths.subtree_range(folder.path_key),
            deleted_at=None,
        )
        freed = 0
        batch = []
        async for doc in col.find(query, {"kind": 1, "size": 1, "committed": 1}):
            if doc.get("kind") == "file" and doc.get("committed"):
                freed += doc.get("size", 0)
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
            if len(batch) >= BULK_BATCH:
                await col.bulk_write(batch, ordered=False)
                batch = []
        if batch:
            await col.bulk_write(batch, ordered=False)
        await _add_usage(folder.owner_id, -freed)
    elif op["op"] == "restore":
        await _restore_descendants(folder, op)
    # Clear the marker unless the folder changed again since (then its new op stands).
    await col.update_one({"_id": folder.id, "rev": folder.rev}, {"$set": {"pending_op": None}})


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
        if len(batch) >= BULK_BATCH:
            await col.bulk_write(batch, ordered=False)
            batch = []
    if batch:
        await col.bulk_write(batch, ordered=False)
    if not op.get("charged"):  # restores recorded before quotas were charged up front
        await _add_usage(folder.owner_id, restored)


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


def _encode_cursor(name_key: str) -> str:
    return base64.urlsafe_b64encode(name_key.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> str:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        return base64.b64decode(padded, altchars=b"-_", validate=True).decode()
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest("invalid cursor", code="invalid_cursor") from exc


# -------------------------------------------------------------------- streaming reads


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # inclusive

    @property
    def length(self) -> int:
        return self.end - self.start + 1


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The single byte range a `Range` header asks for; None for the whole file.

    Multi-range and malformed headers are ignored (answered with the whole file), which
    RFC 9110 allows; an unsatisfiable range raises 416.
    """
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first, _, last = header[6:].strip().partition("-")
    try:
        if first == "":
            n = int(last)
            if n <= 0:
                raise ValueError
            start, end = max(0, size - n), size - 1
        else:
            start = int(first)
            end = int(last) if last else max(start, size - 1)
            if start < 0 or end < start:
                raise ValueError
    except ValueError:
        return None
    if start >= size:
        raise RangeNotSatisfiable(
            f"range starts beyond the file's {size} bytes",
            headers={"Content-Range": f"bytes */{size}"},
        )
    return ByteRange(start, min(end, size - 1))


async def chunk_spans(
    version: FileVersion, byte_range: ByteRange
) -> AsyncIterator[tuple[str, int, int, int]]:
    """(sha, size, skip, take) for every chunk overlapping the range, in order."""
    first = (
        await ChunkMapPage.find(
            match(version_id=str(version.id), start_offset={"$lte": byte_range.start})
        )
        .sort("-start_offset")
        .limit(1)
        .to_list()
    )
    if not first:
        return
    page_no, offset = first[0].page, first[0].start_offset
    while offset <= byte_range.end:
        page = await ChunkMapPage.get(f"{version.id}:{page_no}")
        if page is None:
            raise NotFound("file data is incomplete")
        for sha, size in page.chunks:
            chunk_end = offset + size - 1
            if chunk_end >= byte_range.start and offset <= byte_range.end:
                skip = max(0, byte_range.start - offset)
                take = min(chunk_end, byte_range.end) - offset + 1 - skip
                yield sha, size, skip, take
            offset += size
            if offset > byte_range.end:
                return
        page_no += 1


async def stream_content(
    store: BlobStore, version: FileVersion, byte_range: ByteRange
) -> AsyncIterator[bytes]:
    """Yield the range's bytes, one verified chunk at a time, prefetching the next one."""
    spans = chunk_spans(version, byte_range)
    pending: asyncio.Task[bytes] | None = None
    current: tuple[str, int, int, int] | None = None
    try:
        async for span in spans:
            task = asyncio.create_task(
                read_verified_chunk(store, version.owner_id, span[0], span[1])
            )
            if pending is not None and current is not None:
                data = await pending
                yield data[current[2] : current[2] + current[3]]
            pending, current = task, span
        if pending is not None and current is not None:
            data = await pending
            pending = None
            yield data[current[2] : current[2] + current[3]]
    finally:
        if pending is not None and not pending.done():
            pending.cancel()
