"""Many files in one request: upload (small files with their bytes), commit, delete, move.

A batch is not a transaction: each file commits (or fails) on its own, and the answer
lists every file's outcome by its position in the request. What a batch saves is round
trips, to the client and to the database:
- New small files carry their bytes (base64) and are committed in the same request. For a
  batch of them the server reads what already exists at those paths with one range query,
  writes the chunks with one parallel fsync, records them, the versions, their chunk maps
  and the file nodes with one insert each, and appends every recipient's events with one
  counter increment and one insert: a handful of writes for a thousand files.
- Each file's commit point is still one single-document write: the insert of its node,
  which carries its outbox change and its commit tail (mark the version committed). A
  crash anywhere leaves each file either absent or whole; recovery (app/files/recovery.py)
  finishes the tails, the sweeper the fan-out.
- Everything else (larger files, new versions of existing files, files whose path is taken
  by an upload in progress) goes through the single-file paths, one by one.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
from beanie import PydanticObjectId
from pymongo.errors import BulkWriteError

from app.acl.access import OWNER, resolve_access
from app.acl.audience import OwnerShares, audience_in, owner_shares
from app.core import paths
from app.core.clock import now
from app.core.errors import (
    BadRequest,
    CofferError,
    Conflict,
    CorruptData,
    InsufficientStorage,
    NotFound,
    PayloadTooLarge,
)
from app.core.failpoints import failpoint
from app.core.query import match
from app.db.files import (
    PAGE_SIZE,
    ChunkMapPage,
    FileNode,
    FileVersion,
    chunk_map_page_ids,
)
from app.db.outbox import Change
from app.events.changes import make_change
from app.files.accounting import charge, release
from app.files.batch_schemas import (
    BatchCommitRequest,
    BatchError,
    BatchFileIn,
    BatchFileResult,
    BatchFolderIn,
    BatchFoldersRequest,
    BatchIdsRequest,
    BatchItemResult,
    BatchItemsOut,
    BatchMoveRequest,
    BatchUploadOut,
    BatchUploadRequest,
)
from app.files.context import FilesContext
from app.files.reads import read_ahead
from app.files.schemas import MoveRequest, UploadRequest
from app.files.scope import (
    Caller,
    Scope,
    open_folder,
    open_node,
    own_scope,
    parse_id,
)
from app.files.tree import FILES, TreeService, node_document
from app.files.uploads import UploadService
from app.files.verify import check_claim
from app.protocol import FILE_CREATED, content_hash


def _error(exc: CofferError) -> BatchError:
    return BatchError(code=exc.code, message=exc.message, status=exc.status_code)


@dataclass
class _Inline:
    """A small file of the batch with its bytes, on its way to the bulk commit."""

    index: int
    scope: Scope
    path: str
    data: bytes
    sha: str | None  # its one chunk (None for an empty file)
    req: BatchFileIn
    node: FileNode | None = None
    change: Change | None = None
    version_doc: dict[str, Any] = field(default_factory=dict)
    page_doc: dict[str, Any] | None = None
    node_doc: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Group:
    """The inline files of one owner's tree (one batch may touch several: shares)."""

    scope: Scope
    files: list[_Inline] = field(default_factory=list)


class BatchService:
    def __init__(self, ctx: FilesContext, tree: TreeService, uploads: UploadService) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.store = ctx.store
        self.feed = ctx.feed
        self.tree = tree
        self.uploads = uploads

    # ---------------------------------------------------------------- upload

    def _check_size(self, req: BatchUploadRequest) -> None:
        s = self.settings
        if not req.files:
            raise BadRequest("a batch needs at least one file", code="empty_batch")
        if len(req.files) > s.batch_max_files:
            raise BadRequest(f"at most {s.batch_max_files} files per batch", code="too_many_files")
        inline = 0
        for i, f in enumerate(req.files):
            if f.data is None:
                continue
            # base64: 4 characters for every 3 bytes.
            length = len(f.data) * 3 // 4 - (len(f.data) - len(f.data.rstrip("=")))
            if length > s.batch_inline_max_bytes:
                raise PayloadTooLarge(
                    f"file {i}: inline data is for files of at most "
                    f"{s.batch_inline_max_bytes} bytes; upload larger ones in chunks",
                    code="inline_too_large",
                    max_inline_bytes=s.batch_inline_max_bytes,
                )
            inline += length
        if inline > s.batch_inline_total_bytes:
            raise PayloadTooLarge(
                f"at most {s.batch_inline_total_bytes} bytes of inline data per batch",
                code="batch_too_large",
            )

    async def upload(self, caller: Caller, req: BatchUploadRequest) -> BatchUploadOut:
        self._check_size(req)
        results: dict[int, BatchFileResult] = {}
        groups: dict[str, _Group] = {}
        singles: list[tuple[int, Scope, str]] = []
        seen: set[tuple[str, str]] = set()
        folders: dict[str, tuple[Scope, FileNode]] = {}
        for i, f in enumerate(req.files):
            try:
                scope, path = await self._target(caller, f, folders)
                key = (scope.owner_id, paths.path_key(path))
                if key in seen:
                    raise BadRequest(
                        f"{scope.shown(path)} is in this batch twice", code="duplicate_path"
                    )
                seen.add(key)
                if path == "/":
                    raise BadRequest("cannot upload to the root folder", code="invalid_path")
                inline = self._inline(i, scope, path, f) if f.data is not None else None
            except CofferError as exc:
                results[i] = BatchFileResult(index=i, status="error", error=_error(exc))
                continue
            if inline is None:
                singles.append((i, scope, path))
            else:
                groups.setdefault(scope.owner_id, _Group(scope)).files.append(inline)
        self._check_quota(groups)
        for group in groups.values():
            await self._commit_inline(group, results, singles)
        for i, scope, path in singles:
            results[i] = await self._single(scope, path, req.files[i], i)
        return BatchUploadOut(results=[results[i] for i in range(len(req.files))])

    async def _target(
        self, caller: Caller, f: BatchFileIn, folders: dict[str, tuple[Scope, FileNode]]
    ) -> tuple[Scope, str]:
        """Where the file goes (as `target_path`, with each parent folder opened once)."""
        if f.file_id is not None:
            scope, existing = await open_node(caller, f.file_id, "write", include_pending=True)
            if existing.kind != "file":
                raise Conflict(f"{scope.shown(existing.path)} is a folder", code="is_a_folder")
            return scope, existing.path
        return await _place(caller, f.path, f.parent_id, f.name, folders)

    def _inline(self, index: int, scope: Scope, path: str, f: BatchFileIn) -> _Inline:
        hashes = self.uploads.check_chunks(f.size, f.chunks)
        try:
            data = base64.b64decode(f.data or "", validate=True)
        except (binascii.Error, ValueError) as exc:
            raise BadRequest("data must be base64", code="invalid_data") from exc
        if len(data) != f.size or len(hashes) > 1:
            raise BadRequest(
                f"inline data has {len(data)} bytes in {len(hashes)} chunk(s); "
                f"size says {f.size} (inline files are one chunk)",
                code="size_mismatch",
            )
        if hashes and hashlib.sha256(data).hexdigest() != hashes[0]:
            raise BadRequest("data does not match its SHA-256", code="hash_mismatch")
        claim = check_claim(f.content_hash)
        if claim is not None and claim != content_hash(hashes):
            raise BadRequest("content_hash does not match the data", code="hash_mismatch")
        return _Inline(index, scope, path, data, hashes[0] if hashes else None, f)

    def _check_quota(self, groups: dict[str, _Group]) -> None:
        """The whole batch's new bytes must fit, up front (each file is charged for real,
        atomically, when it commits)."""
        for group in groups.values():
            owner = group.scope.owner
            total = sum(len(f.data) for f in group.files)
            if owner.quota_bytes and owner.usage_bytes + total > owner.quota_bytes:
                whose = "your" if group.scope.access.is_owner else "the owner's"
                raise InsufficientStorage(
                    f"this batch would exceed {whose} storage quota", code="quota_exceeded"
                )

    async def _single(self, scope: Scope, path: str, f: BatchFileIn, index: int) -> BatchFileResult:
        """A file that takes the single-file path: registered (the client sends its
        chunks and commits), or, with inline bytes, stored and committed right here."""
        req = UploadRequest(size=f.size, chunks=f.chunks, path=path, base_version=f.base_version)
        try:
            if f.data is not None:
                inline = self._inline(index, scope, path, f)
                if inline.sha is not None:
                    await self.uploads.store_chunks(scope, {inline.sha: inline.data})
            registered = await self.uploads.register_in(scope, path, req)
            if f.data is None or registered.missing:
                return BatchFileResult(
                    index=index,
                    status="upload",
                    file_id=registered.file_id,
                    upload_id=registered.upload_id,
                    missing=registered.missing,
                )
            committed = await self.uploads.commit_in(
                scope, registered.file_id, registered.upload_id
            )
            return BatchFileResult(index=index, status="committed", file=committed)
        except CofferError as exc:
            return BatchFileResult(index=index, status="error", error=_error(exc))

    async def _commit_inline(
        self,
        group: _Group,
        results: dict[int, BatchFileResult],
        singles: list[tuple[int, Scope, str]],
    ) -> None:
        """Commit a group's new small files in bulk; hand the rest to the single path."""
        scope = group.scope
        files = sorted(group.files, key=lambda f: paths.path_key(f.path))
        keys = [paths.path_key(f.path) for f in files]
        # What lives at these paths now: one indexed range query over the batch's keys.
        existing = {
            n.live_key: n
            for n in await FileNode.find(
                match(owner_id=scope.owner_id, live_key={"$gte": keys[0], "$lte": keys[-1]})
            ).to_list()
        }
        new: list[_Inline] = []
        for f, key in zip(files, keys, strict=True):
            if key in existing:
                singles.append((f.index, scope, f.path))  # a new version, or a clash
            else:
                new.append(f)
        if not new:
            return
        # The bytes go to disk (and are made durable) while the documents are prepared
        # and the invisible ones written; only then does any file's commit point come.
        storing = asyncio.create_task(
            self.uploads.store_chunks(scope, {f.sha: f.data for f in new if f.sha})
        )
        try:
            shares = await owner_shares(scope.owner_id)
            parent_paths = sorted({paths.split(f.path)[0] for f in new})
            try:
                parents = await self.tree.ensure_folders(scope, parent_paths)
            except CofferError:
                parents = {}  # a file where a folder should be: each file finds out alone
            ready: list[_Inline] = []
            for f in new:
                try:
                    parent_path = paths.split(f.path)[0]
                    if parent_path != "/" and parent_path not in parents:
                        parents[parent_path] = await self.tree.ensure_folder(scope, parent_path)
                    self._prepare(f, parents.get(parent_path), shares)
                    ready.append(f)
                except CofferError as exc:
                    results[f.index] = BatchFileResult(
                        index=f.index, status="error", error=_error(exc)
                    )
            await self._insert_invisible(ready)
        finally:
            busy = await storing
        if busy:
            stalled = [f for f in ready if f.sha in busy]
            for f in stalled:
                results[f.index] = BatchFileResult(
                    index=f.index,
                    status="error",
                    error=BatchError(
                        code="chunk_busy",
                        message="a chunk of this file is being garbage-collected; send it again",
                        status=503,
                    ),
                )
            await self._forget(stalled)
            ready = [f for f in ready if f.sha not in busy]
        if not ready:
            return
        total = sum(len(f.data) for f in ready)
        items = [(str(f.node.id), str(f.version_doc["_id"]), len(f.data)) for f in ready if f.node]
        try:
            claim = await charge(scope, items)
        except CofferError as exc:
            for f in ready:
                results[f.index] = BatchFileResult(index=f.index, status="error", error=_error(exc))
            await self._forget(ready)
            return
        await failpoint("batch.before_nodes")
        committed = await self._insert(ready, results)
        await failpoint("batch.after_nodes")
        await release(scope.owner_id, claim, refund=total - sum(len(f.data) for f in committed))
        await self.feed.changed_many(
            FILES, [(str(f.node.id), f.change) for f in committed if f.node and f.change]
        )
        for f in committed:
            if f.node is not None:
                results[f.index] = BatchFileResult(
                    index=f.index, status="committed", file=scope.out(f.node)
                )

    def _prepare(self, f: _Inline, parent: FileNode | None, shares: OwnerShares) -> None:
        """The documents of a new file (version, chunk map, node with its change), built as
        plain dicts: a batch inserts thousands, and validation already happened."""
        scope = f.scope
        t = now()
        hashes = [f.sha] if f.sha else []
        node_id, version_id = PydanticObjectId(), PydanticObjectId()
        _, name = paths.split(f.path)
        key = paths.path_key(f.path)
        node = FileNode.model_construct(
            id=node_id,
            owner_id=scope.owner_id,
            parent_id=str(parent.id) if parent else None,
            name=name,
            name_key=name.casefold(),
            search_key=paths.search_key(name),
            path=f.path,
            path_key=key,
            live_key=key,
            kind="file",
            committed=True,
            size=len(f.data),
            content_hash=content_hash(hashes),
            version=1,
            head_version_id=str(version_id),
            rev=0,
            created_at=t,
            modified_at=t,
            deleted_at=None,
            trash_root_id=None,
            trash_root=False,
            deleted_ms=0,
            pending_op=None,
            damaged=False,
            commit_tail=None,
            outbox=None,
            outbox_pending=True,
        )
        change = make_change(
            FILE_CREATED,
            node,
            scope.actor,
            audience=audience_in(shares, str(node_id), f.path, None),
            owner=scope.owner.username,
        )
        node.outbox = change
        f.node, f.change = node, change
        # The version is committed as written: it is invisible until the node (this file's
        # commit point) points at it. A crash in between leaves a version no node has,
        # which garbage collection treats as garbage (app/files/maintenance/gc.py).
        f.version_doc = {
            "_id": version_id,
            "file_id": str(node_id),
            "owner_id": scope.owner_id,
            "version": 1,
            "state": "committed",
            "size": node.size,
            "content_hash": node.content_hash,
            "chunk_count": len(hashes),
            "author_device": scope.caller.device,
            "restored_from": None,
            "damaged": False,
            "created_at": t,
            "committed_at": t,
        }
        f.page_doc = (
            {
                "_id": f"{version_id}:0",
                "version_id": str(version_id),
                "page": 0,
                "start_offset": 0,
                "chunks": [[f.sha, len(f.data)]],
            }
            if f.sha
            else None
        )
        f.node_doc = node_document(node)

    @staticmethod
    async def _insert_invisible(files: list[_Inline]) -> None:
        """Versions and chunk maps: invisible until a node points at them."""
        if not files:
            return
        await FileVersion.get_pymongo_collection().insert_many(
            [f.version_doc for f in files], ordered=False
        )
        pages = [f.page_doc for f in files if f.page_doc is not None]
        if pages:
            await ChunkMapPage.get_pymongo_collection().insert_many(pages, ordered=False)

    @staticmethod
    async def _forget(files: list[_Inline]) -> None:
        """Drop the invisible documents of files that will not commit."""
        if not files:
            return
        await ChunkMapPage.get_pymongo_collection().delete_many(
            {"_id": {"$in": [f.page_doc["_id"] for f in files if f.page_doc]}}
        )
        await FileVersion.get_pymongo_collection().delete_many(
            {"_id": {"$in": [f.version_doc["_id"] for f in files]}}
        )

    async def _insert(
        self, files: list[_Inline], results: dict[int, BatchFileResult]
    ) -> list[_Inline]:
        """The nodes: each node's insert is that file's commit point. Returns the files
        committed."""
        failed: set[int] = set()
        try:
            await FileNode.get_pymongo_collection().insert_many(
                [f.node_doc for f in files], ordered=False
            )
        except BulkWriteError as exc:
            for error in exc.details.get("writeErrors", []):
                failed.add(error["index"])
        committed = [f for i, f in enumerate(files) if i not in failed]
        lost = [f for i, f in enumerate(files) if i in failed]
        for f in lost:  # someone created that path meanwhile: theirs stands
            results[f.index] = BatchFileResult(
                index=f.index,
                status="error",
                error=BatchError(
                    code="conflict",
                    message=f"{f.scope.shown(f.path)} was created meanwhile; try again",
                    status=409,
                ),
            )
        await self._forget(lost)
        return committed

    # ---------------------------------------------------------------- commit, delete, move

    async def commit(self, caller: Caller, req: BatchCommitRequest) -> BatchItemsOut:
        self._check_count(len(req.uploads))
        out = []
        for i, item in enumerate(req.uploads):
            try:
                f = await self.uploads.commit(caller, item.file_id, item.upload_id)
                out.append(BatchItemResult(index=i, status="ok", file=f))
            except CofferError as exc:
                missing = exc.extra.get("missing")
                out.append(
                    BatchItemResult(
                        index=i,
                        status="error",
                        error=_error(exc),
                        missing=missing if isinstance(missing, list) else None,
                    )
                )
        return BatchItemsOut(results=out)

    async def folders(self, caller: Caller, req: BatchFoldersRequest) -> BatchItemsOut:
        """Make sure each folder exists (with its parents): the existing one, or a new one.
        Unlike `POST /api/folder`, an existing folder is no error: a sync wants it there."""
        self._check_count(len(req.folders))
        results: dict[int, BatchItemResult] = {}
        # Where each goes, by owner's tree (a parent folder opened once), then each tree's
        # folders made together; if that fails (a file in the way), one by one.
        targets: dict[str, tuple[Scope, list[tuple[int, str]]]] = {}
        opened: dict[str, tuple[Scope, FileNode]] = {}
        for i, f in enumerate(req.folders):
            try:
                scope, path = await self._folder_target(caller, f, opened)
                targets.setdefault(scope.owner_id, (scope, []))[1].append((i, path))
            except CofferError as exc:
                results[i] = BatchItemResult(index=i, status="error", error=_error(exc))
        for scope, items in targets.values():
            try:
                made = await self.tree.ensure_folders(scope, [path for _, path in items])
            except CofferError:
                made = {}
            for i, path in items:
                try:
                    node = made.get(path) or await self.tree.ensure_folder(scope, path)
                    if node is None:
                        raise BadRequest("the root folder always exists", code="invalid_path")
                    results[i] = BatchItemResult(index=i, status="ok", file=scope.out(node))
                except CofferError as exc:
                    results[i] = BatchItemResult(index=i, status="error", error=_error(exc))
        return BatchItemsOut(results=[results[i] for i in range(len(req.folders))])

    async def _folder_target(
        self, caller: Caller, f: BatchFolderIn, opened: dict[str, tuple[Scope, FileNode]]
    ) -> tuple[Scope, str]:
        scope, path = await _place(caller, f.path, f.parent_id, f.name, opened)
        if path == "/":
            raise BadRequest("the root folder always exists", code="invalid_path")
        return scope, path

    async def delete(self, caller: Caller, req: BatchIdsRequest) -> BatchItemsOut:
        self._check_count(len(req.ids))
        out = []
        for i, file_id in enumerate(req.ids):
            try:
                await self.tree.trash(caller, file_id)
                out.append(BatchItemResult(index=i, status="ok"))
            except CofferError as exc:
                out.append(BatchItemResult(index=i, status="error", error=_error(exc)))
        return BatchItemsOut(results=out)

    async def move(self, caller: Caller, req: BatchMoveRequest) -> BatchItemsOut:
        self._check_count(len(req.moves))
        out = []
        for i, m in enumerate(req.moves):
            try:
                moved = await self.tree.move(
                    caller, m.id, MoveRequest(path=m.path, name=m.name, parent_id=m.parent_id)
                )
                out.append(BatchItemResult(index=i, status="ok", file=moved))
            except CofferError as exc:
                out.append(BatchItemResult(index=i, status="error", error=_error(exc)))
        return BatchItemsOut(results=out)

    def download(self, caller: Caller, ids: list[str]) -> AsyncIterator[bytes]:
        """The files' bytes in order, each after a JSON header line (see batch_routes):
        the nodes, versions and chunk maps of the whole batch are read in three queries,
        then the chunks are streamed, verified, a few reads ahead. A batch over the limit
        is refused here, before any byte is sent."""
        self._check_count(len(ids))
        return self._download(caller, ids)

    async def _download(self, caller: Caller, ids: list[str]) -> AsyncIterator[bytes]:
        wanted: dict[str, PydanticObjectId] = {}
        for file_id in ids:
            with contextlib.suppress(CofferError):
                wanted[file_id] = parse_id(file_id)
        nodes = {
            str(n.id): n
            for n in await FileNode.find({"_id": {"$in": list(wanted.values())}}).to_list()
        }
        versions = {
            str(v.id): v
            for v in await FileVersion.find(
                {
                    "_id": {
                        "$in": [
                            PydanticObjectId(n.head_version_id)
                            for n in nodes.values()
                            if n.head_version_id
                        ]
                    }
                }
            ).to_list()
        }
        page_ids = [
            pid
            for v in versions.values()
            if v.chunk_count <= PAGE_SIZE
            for pid in chunk_map_page_ids(str(v.id), v.chunk_count)
        ]
        pages: dict[str, list[ChunkMapPage]] = {}
        for start in range(0, len(page_ids), 1000):
            for page in await ChunkMapPage.find(
                {"_id": {"$in": page_ids[start : start + 1000]}}
            ).to_list():
                pages.setdefault(page.version_id, []).append(page)
        for index, file_id in enumerate(ids):
            try:
                node = nodes.get(file_id)
                if node is None or node.deleted_at is not None or not node.committed:
                    raise NotFound("no such file")
                access = (
                    OWNER
                    if node.owner_id == caller.user_id
                    else await resolve_access(caller.user_id, node)
                )
                if access is None:
                    raise NotFound("no such file")
                version = versions.get(node.head_version_id or "")
                if node.kind != "file" or version is None:
                    raise BadRequest(f"{node.name} is not a file", code="is_a_folder")
                if version.damaged:
                    raise CorruptData("this file's data is damaged", code="damaged_file")
                if version.chunk_count > PAGE_SIZE:
                    raise PayloadTooLarge(
                        "too many chunks for a batch: download it alone", code="too_large"
                    )
                chunks = [
                    sha_size
                    for page in sorted(pages.get(str(version.id), []), key=lambda p: p.page)
                    for sha_size in page.chunks
                ]
            except CofferError as exc:
                error = {"code": exc.code, "message": exc.message, "status": exc.status_code}
                yield msgspec.json.encode({"index": index, "id": file_id, "error": error}) + b"\n"
                continue
            head = {
                "index": index,
                "id": file_id,
                "path": access.view_path(node.path),
                "version": node.version,
                "size": version.size,
                "content_hash": version.content_hash,
                "chunks": chunks,
            }
            yield msgspec.json.encode(head) + b"\n"
            async for data in read_ahead(self.store, node.owner_id, chunks):
                yield data

    def _check_count(self, n: int) -> None:
        if n > self.settings.batch_max_files:
            raise BadRequest(
                f"at most {self.settings.batch_max_files} items per batch", code="too_many_files"
            )


async def _place(
    caller: Caller,
    path: str | None,
    parent_id: str | None,
    name: str | None,
    opened: dict[str, tuple[Scope, FileNode]],
) -> tuple[Scope, str]:
    """`target_path` for the items of a batch: each parent folder opened (and its access
    checked) once per batch."""
    if parent_id is not None:
        if parent_id not in opened:
            opened[parent_id] = await open_folder(caller, parent_id, "write")
        scope, parent = opened[parent_id]
        if not isinstance(name, str) or not name.strip("/"):
            raise BadRequest("name is required with parent_id", code="invalid_path")
        return scope, paths.join(parent.path, paths.normalize_path("/" + name))
    if path is None:
        raise BadRequest("give path, or parent_id and name", code="invalid_path")
    return own_scope(caller), paths.normalize_path(path)
