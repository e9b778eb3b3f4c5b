"""Uploads: register a file's chunk list, say which chunks to send, and commit a version.

- Register (`POST /api/file`): validate, check the quota early, reuse or open an upload
  session, and answer the chunks the owner does not store yet with signed PUT URLs.
  Dedup never crosses owners, and an editor of a shared folder may skip only chunks PUT
  since their upload began, so dedup never tells them what the owner stores.
- Commit: every chunk stored and verified (stores that cannot verify on write stage each
  PUT; it is checked and moved into place here), the quota charged atomically, then one
  compare-and-set makes the version the head; the same write records the follow-up
  (`commit_tail`, finished in app/files/recovery.py if a crash cuts it short).
Nothing of an upload is visible before its commit.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from datetime import timedelta

import msgspec
from beanie import PydanticObjectId
from bson.errors import InvalidId
from pymongo.errors import DuplicateKeyError

from app.core import paths
from app.core.clock import as_utc, epoch_ms, now
from app.core.encoding import ZSTD
from app.core.errors import BadRequest, Conflict, NotFound, PayloadTooLarge, ServiceUnavailable
from app.core.failpoints import failpoint
from app.core.query import match
from app.db.files import (
    PAGE_SIZE,
    ChunkMapPage,
    CommitTail,
    FileNode,
    FileVersion,
    StoredChunk,
    UploadSession,
    delete_chunk_maps,
)
from app.files.accounting import charge, check_quota, release
from app.files.context import FilesContext
from app.files.integrity import (
    read_joined,
    record_stored_chunk,
    record_stored_chunks,
    touch_chunks,
)
from app.files.recovery import finish_commit, finish_commit_tail
from app.files.schemas import (
    ChunkIn,
    DeltaBase,
    FileOut,
    MissingChunk,
    UploadOut,
    UploadRequest,
)
from app.files.scope import Caller, Scope, node_by_path, open_node, reload, target_path
from app.files.tree import FILES, TreeService, audience_of, change_of, new_node
from app.files.verify import check_claim, settle_hash_at_commit, version_chunks
from app.protocol import (
    BLOCK_SIZE,
    FILE_CREATED,
    FILE_UPDATED,
    UPLOAD_STARTED,
    blocks_aligned,
    content_hash,
    delta,
)

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# A chunk the upload still has to send: (index of its first occurrence, sha256, size).
Wanted = tuple[int, str, int]


log = logging.getLogger("coffer.uploads")


class UploadService:
    def __init__(self, ctx: FilesContext, tree: TreeService) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.store = ctx.store
        self.feed = ctx.feed
        self.tree = tree

    # ---------------------------------------------------------------- register

    def check_chunks(self, size: int, chunks: list[ChunkIn]) -> list[str]:
        """The chunk hashes, lower-cased, if the chunk list is well-formed for `size`."""
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
            if c.bases is not None and not delta.valid_bases([b.lower() for b in c.bases]):
                raise BadRequest(
                    f"chunk {i}: bases must be at most {delta.MAX_BASES} different SHA-256"
                    " hex digests",
                    code="invalid_chunk",
                )
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

    async def register(self, caller: Caller, req: UploadRequest) -> UploadOut:
        """Start (or resume) an upload: to `path`, into `parent_id` as `name`, or as a
        new version of `file_id`; the chunks to send are answered with their URLs."""
        if req.file_id is not None:
            scope, existing = await open_node(caller, req.file_id, "write", include_pending=True)
            if existing.kind != "file":
                raise Conflict(f"{scope.shown(existing.path)} is a folder", code="is_a_folder")
            return await self.register_in(scope, existing.path, req)
        scope, path = await target_path(caller, req.path, req.parent_id, req.name)
        return await self.register_in(scope, path, req)

    async def register_in(
        self, scope: Scope, path: str, req: UploadRequest, *, stored: bool = False
    ) -> UploadOut:
        """Register an upload to `path` in a tree the caller was already found to be
        allowed to write to (`scope`). `stored`: the server itself already stored its
        chunks from the caller's bytes (see `commit_stored`); the commit follows at once,
        so nobody is told that it started."""
        if path == "/":
            raise BadRequest("cannot upload to the root folder itself", code="invalid_path")
        hashes = self.check_chunks(req.size, req.chunks)
        # The upload's identity (its chunk list), and the file's content hash: derived
        # when the chunks are the blocks, else claimed (or, small, found at commit).
        file_hash = content_hash(hashes)
        aligned = blocks_aligned(c.size for c in req.chunks)
        claim = check_claim(req.content_hash)
        if aligned and claim is not None and claim != file_hash:
            raise BadRequest("content_hash does not match the chunks", code="hash_mismatch")
        if not aligned and claim is None and req.size > self.settings.verify_hash_at_commit_max:
            raise BadRequest(
                "give the file's content_hash: its chunks are not the 4 MiB blocks",
                code="content_hash_required",
            )

        node = await node_by_path(scope.owner_id, path)
        if node is not None and node.kind == "folder":
            raise Conflict(f"{scope.shown(node.path)} is a folder", code="is_a_folder")
        check_quota(scope, node.size if node is not None and node.committed else 0, req.size)
        if req.base_version is not None and node is not None and node.version != req.base_version:
            raise Conflict(
                "the file changed since base_version", code="conflict", version=node.version
            )
        if node is None:
            node = await self._create_pending_file(scope, path)

        # The fields of the (owner_id, file_id, content_hash) index only; who and whether
        # committed are checked here, among the few sessions of this content (a server that
        # plans only filters an index covers would otherwise read every session). So is
        # expiry: a datetime in a filter makes the embedded server read every session.
        sessions = await UploadSession.find(
            match(owner_id=scope.owner_id, file_id=str(node.id), content_hash=file_hash)
        ).to_list()
        t = now()
        session = next(
            (
                s
                for s in sessions
                if s.uploader_id == scope.caller.user_id
                and not s.committed
                and as_utc(s.expires_at) > t
            ),
            None,
        )
        resumed = session is not None
        if session is None:
            session = await self._new_session(
                scope,
                node,
                path,
                req,
                hashes,
                file_hash,
                aligned=aligned,
                claim=claim,
                stored=stored,
            )
            if req.size >= self.settings.stream_min_bytes and not stored:
                await self._announce(scope, node, path, session, file_hash if aligned else claim)
        else:
            if session.base_version != req.base_version:
                session.base_version = req.base_version
                await session.save()
            if not aligned and claim is not None:
                # Registered again with another claim (the last was refused at commit).
                await FileVersion.get_pymongo_collection().update_one(
                    {"_id": PydanticObjectId(session.version_id), "hash_verified": False},
                    {"$set": {"claimed_hash": claim, "content_hash": claim}},
                )
        missing = await self._missing_chunks(
            scope, hashes, req.chunks, session, probe_store=resumed
        )
        return UploadOut(
            file_id=str(node.id),
            upload_id=str(session.id),
            missing=await self.upload_targets(
                scope, missing, str(session.id), await self._delta_bases(scope, node, req, missing)
            ),
        )

    async def _delta_bases(
        self, scope: Scope, node: FileNode, req: UploadRequest, missing: list[Wanted]
    ) -> dict[int, DeltaBase]:
        """For missing chunks whose uploader named bases: the bases' pieces, by the chunk's
        index, so the chunk can go up as a delta (app/protocol/delta.py). Only chunks of
        the file's current version are ever bases: bytes the caller, who may write this
        file, may read anyway; a chunk of any other file would let an editor probe what
        else the owner stores. Bounded per register (`delta_base_budget` bytes read)."""
        wanted = {
            i: [b.lower() for b in bases] for i, _, _ in missing if (bases := req.chunks[i].bases)
        }
        if not (wanted and self.store.accepts_deltas and node.committed and node.head_version_id):
            return {}
        head = await FileVersion.get(PydanticObjectId(node.head_version_id))
        if head is None or head.state != "committed":
            return {}
        current = dict(await version_chunks(head))  # sha256 -> size
        offered: dict[int, DeltaBase] = {}
        budget = self.settings.delta_base_budget
        for i, shas in wanted.items():
            if not all(sha in current for sha in shas):
                continue
            total = sum(current[sha] for sha in shas)
            if total > budget or total > delta.max_bases_size(req.chunks[i].size):
                continue
            budget -= total
            # Read, cut and dropped chunk by chunk: memory is one chunk's bases at a time.
            try:
                joined = await read_joined(self.store, scope.owner_id, shas)
            except FileNotFoundError:
                continue
            cut = await asyncio.to_thread(delta.pieces, joined)
            offered[i] = DeltaBase(sha256s=shas, size=len(joined), pieces=cut)
        return offered

    async def _announce(
        self,
        scope: Scope,
        node: FileNode,
        path: str,
        session: UploadSession,
        file_hash: str | None,
    ) -> None:
        """Tell those who may read the file that a large upload began, so their devices
        can fetch its chunks as they arrive (streaming sync). A hint: if it is lost, they
        fetch the file after the commit as usual."""
        try:
            change = change_of(
                scope,
                UPLOAD_STARTED,
                node.model_copy(update={"path": path}),
                await audience_of(scope, str(node.id), path),
                upload_id=str(session.id),
                size=session.size,
                content_hash=file_hash,
            )
            await self.feed.announce(change)
        except Exception as exc:  # never fail an upload for a hint
            log.warning("could not announce upload %s: %s", session.id, exc)

    async def store_chunks(self, scope: Scope, chunks: dict[str, bytes]) -> set[str]:
        """Write chunks the server has in hand (a batch's inline files, a streamed write)
        that the owner does not hold yet, and record all of them as put now (the bytes
        are here, so whoever sent them has them: a share editor's upload then counts
        them as its own, and an upload of bytes the owner already holds commits like any
        other, revealing nothing); returns those GC is deleting right now."""
        owner = scope.owner_id
        await touch_chunks(owner, chunks)
        have = {
            doc["sha256"]
            async for doc in StoredChunk.get_pymongo_collection().find(
                {"_id": {"$in": [f"{owner}:{sha}" for sha in chunks]}, **match(state="stored")},
                {"sha256": 1},
            )
        }
        missing = {sha: data for sha, data in chunks.items() if sha not in have}
        if missing:
            await self.store.put_many(owner, missing)
        return await record_stored_chunks(owner, {sha: len(d) for sha, d in chunks.items()})

    async def commit_stored(self, scope: Scope, path: str, req: UploadRequest) -> FileOut:
        """Register and commit an upload whose chunks the server itself stored from the
        caller's bytes (a streamed write, an assembled Nextcloud upload) or took from a
        file the caller may read (a copy). Every chunk of such a list is one the caller
        demonstrably has, so the share-editor dedup window (`dedup_since`) protects
        nothing here: it starts at 0, which also keeps it independent of the clocks of
        the web instances that stored the parts."""
        registered = await self.register_in(scope, path, req, stored=True)
        if registered.missing:  # collected meanwhile (GC raced a chunk we skipped)
            raise ServiceUnavailable("storage is busy; try again", code="retry")
        return await self.commit_in(scope, registered.file_id, registered.upload_id)

    @staticmethod
    def dedup_since(scope: Scope, session: UploadSession) -> int:
        """Which stored chunks an upload may skip: any of the owner's, for the owner; for
        a share editor only those PUT since their upload began, so that dedup never tells
        them whether the owner has some content."""
        return 0 if scope.access.is_owner else session.created_ms

    async def _create_pending_file(self, scope: Scope, path: str) -> FileNode:
        parent = await self.tree.ensure_folder(scope, paths.split(path)[0])
        node = new_node(scope, path, parent, kind="file", committed=False)
        try:
            await node.insert()
        except DuplicateKeyError:
            existing = await node_by_path(scope.owner_id, path)
            if existing is None or existing.kind != "file":
                raise Conflict(f"{path} changed while registering", code="conflict") from None
            return existing
        return node

    async def _new_session(
        self,
        scope: Scope,
        node: FileNode,
        path: str,
        req: UploadRequest,
        hashes: list[str],
        file_hash: str,
        *,
        aligned: bool,
        claim: str | None,
        stored: bool = False,
    ) -> UploadSession:
        version = FileVersion(
            file_id=str(node.id),
            owner_id=scope.owner_id,
            size=req.size,
            # Derived from the chunks when they are the blocks; else the claim (or, for a
            # small file sent without one, a placeholder replaced at commit).
            content_hash=file_hash if aligned else (claim or file_hash),
            hash_verified=aligned,
            claimed_hash=None if aligned else claim,
            chunk_count=len(hashes),
            author_device=scope.caller.device,
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
        t = now()
        session = UploadSession(
            owner_id=scope.owner_id,
            file_id=str(node.id),
            version_id=str(version.id),
            path=path,
            size=req.size,
            content_hash=file_hash,
            chunk_count=len(hashes),
            base_version=req.base_version,
            device=scope.caller.device,
            uploader_id=scope.caller.user_id,
            created_at=t,
            # 0 for chunks the server stored from the caller's bytes: no dedup window.
            created_ms=0 if stored else epoch_ms(t),
            expires_at=t + timedelta(seconds=self.settings.upload_session_ttl_seconds),
        )
        await session.insert()
        return session

    async def _stored_set(self, scope: Scope, hashes: set[str], since_ms: int = 0) -> set[str]:
        """Which of these chunk hashes the owner has stored (and not known corrupt)."""
        have: set[str] = set()
        # Touch before reading: garbage collection either sees the touch and keeps the
        # chunk, or marked it "deleting" first and the read below reports it missing.
        await touch_chunks(scope.owner_id, hashes)
        ids = [f"{scope.owner_id}:{h}" for h in hashes]
        query: dict[str, object] = {"state": "stored"}
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
        scope: Scope,
        hashes: list[str],
        chunks: list[ChunkIn],
        session: UploadSession,
        *,
        probe_store: bool,
    ) -> list[Wanted]:
        """The first occurrence of every chunk not yet stored."""
        have = await self._stored_set(scope, set(hashes), self.dedup_since(scope, session))
        if probe_store and not self.store.verifies_on_write:
            # A resumed upload to S3: chunks this upload staged earlier are checked and
            # moved into place now, so they are not sent again.
            have |= await self._accept_staged(
                scope,
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

    async def upload_targets(
        self,
        scope: Scope,
        missing: list[Wanted],
        upload_id: str,
        bases: dict[int, DeltaBase] | None = None,
    ) -> list[MissingChunk]:
        bases = bases or {}
        targets = await asyncio.gather(
            *(
                self.store.upload_url(
                    scope.caller.base_url,
                    scope.owner_id,
                    sha,
                    size,
                    upload_id,
                    delta_base=",".join(bases[i].sha256s) if i in bases else None,
                )
                for i, sha, size in missing
            )
        )
        return [
            MissingChunk(
                index=i,
                sha256=sha,
                size=size,
                url=t.url,
                headers=t.headers,
                encodings=[ZSTD] if self.store.verifies_on_write else [],
                base=bases.get(i),
            )
            for (i, sha, size), t in zip(missing, targets, strict=True)
        ]

    async def _accept_staged(
        self, scope: Scope, hashes: set[str], sizes: dict[str, int], upload_id: str
    ) -> set[str]:
        """Check the chunks this upload staged (stores that cannot verify on write) and
        move the good ones into place; record them as stored."""
        owner = scope.owner_id
        sem = asyncio.Semaphore(8)

        async def verify(sha: str) -> str | None:
            async with sem:
                found = await self.store.accept_upload(owner, sha, sizes[sha], upload_id)
                if found != "stored":
                    return None
                try:
                    await record_stored_chunk(owner, sha, sizes[sha], verified=True)
                except ServiceUnavailable:
                    return None  # being garbage-collected: it must be sent again
                return sha

        results = await asyncio.gather(*(verify(sha) for sha in hashes))
        return {sha for sha in results if sha}

    # ---------------------------------------------------------------- commit

    async def commit(self, caller: Caller, file_id: str, upload_id: str) -> FileOut:
        scope, node = await open_node(caller, file_id, "write", include_pending=True)
        return scope.out(await self._commit(scope, node, upload_id))

    async def commit_in(self, scope: Scope, file_id: str, upload_id: str) -> FileOut:
        """Commit in a tree whose write access was already checked (`scope`)."""
        return scope.out(await self._commit(scope, await reload(scope, file_id), upload_id))

    async def _commit(self, scope: Scope, node: FileNode, upload_id: str) -> FileNode:
        file_id = str(node.id)
        try:
            session = await UploadSession.get(PydanticObjectId(upload_id))
        except (InvalidId, TypeError, ValueError):
            session = None
        if (
            session is None
            or session.owner_id != scope.owner_id
            or session.file_id != file_id
            or session.uploader_id not in (None, scope.caller.user_id)
        ):
            raise NotFound("no such upload for this file", code="upload_not_found")
        version = await FileVersion.get(PydanticObjectId(session.version_id))
        if session.committed or version is None:
            return await reload(scope, file_id)  # a retried commit: it already happened
        if version.state == "committed":
            # Its commit landed before a crash and was finished since (maybe superseded by
            # a later commit): never make it the head again under a new number.
            await close_session(session)
            return await reload(scope, file_id)

        chunk_sizes: dict[str, int] = {}
        first_index: dict[str, int] = {}
        ordered = await version_chunks(version)
        for index, (sha, size) in enumerate(ordered):
            chunk_sizes.setdefault(sha, size)
            first_index.setdefault(sha, index)
        have = await self._stored_set(scope, set(chunk_sizes), self.dedup_since(scope, session))
        absent = set(chunk_sizes) - have
        if absent and not self.store.verifies_on_write:
            have |= await self._accept_staged(scope, absent, chunk_sizes, str(session.id))
            absent = set(chunk_sizes) - have
        if absent:
            missing = sorted((first_index[sha], sha, chunk_sizes[sha]) for sha in absent)
            raise Conflict(
                f"{len(missing)} chunk(s) have not been uploaded yet",
                code="missing_chunks",
                missing=[
                    msgspec.structs.asdict(m)
                    for m in await self.upload_targets(scope, missing, str(session.id))
                ],
            )

        await failpoint("commit.before")
        await settle_hash_at_commit(
            self.store, version, ordered, self.settings.verify_hash_at_commit_max
        )
        head = await self.advance_head(scope, node, version, session.base_version)
        if head is None:
            # Same bytes as the head: nothing changed, so no new version and no event.
            await self._drop_pending(session, version)
            return await reload(scope, file_id)
        await close_session(session)
        return head

    async def advance_head(
        self, scope: Scope, node: FileNode, version: FileVersion, base_version: int | None
    ) -> FileNode | None:
        """Make `version` (pending, chunks all stored) the file's head: one compare-and-set
        on the node, retried on a concurrent change; None if it has the head's bytes."""
        file_id = str(node.id)
        while True:
            if node.head_version_id == str(version.id):
                # A retried commit whose compare-and-set landed before the web process died.
                await finish_commit(node)
                return await reload(scope, file_id)
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
            claim = await charge(scope, [(file_id, str(version.id), charged)])
            tail = CommitTail(
                version_id=str(version.id),
                version=new_version,
                at=t,
                usage_delta=delta - charged,
            )
            try:
                change = change_of(
                    scope,
                    FILE_UPDATED if node.committed else FILE_CREATED,
                    node,
                    await audience_of(scope, file_id, node.path),
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
                            "hash_verified": version.hash_verified,
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
            except BaseException:
                await release(scope.owner_id, claim, refund=charged)
                raise
            if result.modified_count == 1:
                await release(scope.owner_id, claim)
                break
            await release(scope.owner_id, claim, refund=charged)  # lost the race: go again
            node = await reload(scope, file_id)

        await failpoint("commit.after_head")
        await finish_commit_tail(node.id, scope.owner_id, tail)
        await self.feed.changed(FILES, file_id, change)
        return await reload(scope, file_id)

    async def _drop_pending(self, session: UploadSession, version: FileVersion) -> None:
        await delete_chunk_maps([version])
        await version.delete()
        await close_session(session)


async def close_session(session: UploadSession) -> None:
    """A committed session is kept an hour, so a retried commit is answered, not 404."""
    await UploadSession.get_pymongo_collection().update_one(
        {"_id": session.id},
        {"$set": {"committed": True, "expires_at": now() + timedelta(hours=1)}},
    )


class ChunkSink:
    """Bytes streamed in, stored as chunks as they arrive: cut every 4 MiB, each piece
    hashed and stored a few at a time while the next ones come (memory: IN_FLIGHT + 1
    chunks, whatever the size). `hold_back`: keep that much back from each cut, so a
    stream that is one part of a file (a Nextcloud chunk) never ends in a piece below
    the server's minimum chunk size. Abandoned, it leaves only unreferenced chunks,
    which garbage collection removes. `already`: bytes of the file before this stream
    (for the size and quota checks)."""

    IN_FLIGHT = 3

    def __init__(
        self, uploads: UploadService, scope: Scope, *, hold_back: int = 0, already: int = 0
    ) -> None:
        self.uploads = uploads
        self.scope = scope
        self.hold_back = hold_back
        self.already = already
        self.buffer = bytearray()
        self.stored: list[asyncio.Task[ChunkIn]] = []
        self.size = 0

    async def write(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= BLOCK_SIZE + self.hold_back:
            await self._store(bytes(self.buffer[:BLOCK_SIZE]))
            del self.buffer[:BLOCK_SIZE]

    async def _store(self, chunk: bytes) -> None:
        total = self.already + self.size + len(chunk)
        if total > self.uploads.settings.max_file_size:
            raise PayloadTooLarge("the file is larger than the server takes", code="too_large")
        # Refused as early as it is known, not after 50 GB were stored.
        check_quota(self.scope, 0, total)
        self.size += len(chunk)
        running = [t for t in self.stored if not t.done()]
        if len(running) >= self.IN_FLIGHT:
            await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
        for task in self.stored:
            if task.done() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        self.stored.append(asyncio.create_task(self._hash_and_store(chunk)))

    async def _hash_and_store(self, chunk: bytes) -> ChunkIn:
        sha = await asyncio.to_thread(lambda: hashlib.sha256(chunk).hexdigest())
        if await self.uploads.store_chunks(self.scope, {sha: chunk}):
            raise ServiceUnavailable("storage is busy; try again", code="retry")
        return ChunkIn(sha256=sha, size=len(chunk))

    def abandon(self) -> None:
        for task in self.stored:
            task.cancel()

    async def close(self) -> list[ChunkIn]:
        """Store the rest; the chunks, in order."""
        if self.buffer:
            await self._store(bytes(self.buffer))
            self.buffer.clear()
        try:
            return list(await asyncio.gather(*self.stored))
        except BaseException:
            self.abandon()
            raise


class StreamedWrite(ChunkSink):
    """A file written as one stream of bytes (a WebDAV PUT), committed as the file's
    next version when the stream ends, through the same register and commit as every
    upload (dedup, quota, history, events). Its chunks are the content hash's 4 MiB
    blocks, so the hash is derived, never claimed."""

    def __init__(
        self, uploads: UploadService, scope: Scope, path: str, base_version: int | None = None
    ) -> None:
        super().__init__(uploads, scope)
        self.path = path
        self.base_version = base_version

    async def finish(self) -> FileOut:
        """Store the rest and commit; the committed file (the head it already was, when
        the bytes are the same)."""
        chunks = await self.close()
        req = UploadRequest(size=self.size, chunks=chunks, base_version=self.base_version)
        return await self.uploads.commit_stored(self.scope, self.path, req)
