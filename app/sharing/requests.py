"""File requests: anyone with an upload-only link adds files to its folder and sees nothing.

- The link is the grant. A visitor has no account, so each upload runs in a `VisitorScope`
  made only here, after the link was opened (not revoked or expired, its password cookie
  checked): the folder owner's tree, quota, chunk store and dedup (the bytes land in the
  owner's storage, as they would from the owner's own upload), with the name the visitor
  typed as the events' actor ("<name> (file request)") and as the version's author
  ("file request: <name>"), so the owner's feed and history say who sent what.
- The bytes stream through `ChunkSink` (4 MiB blocks hashed and stored as they arrive,
  memory flat) and commit through `UploadService.commit_stored`, like a WebDAV PUT: content
  hash, quota charge, history, events and dedup are an ordinary upload's.
- Never an overwrite: once the bytes are in, the name is reserved by inserting the pending
  node under the unique (owner, live_key) index, taking "name (2).ext", "name (3).ext", ...
  when it is taken, so two visitors sending "scan.pdf" at once get two files.
- Limits, all checked before the body is read and again on the bytes: the link's
  `max_bytes` per file (413), the server's largest file (413), the owner's quota (507),
  and a total per link (`file_request_total_bytes`, 10 GiB by default; 413
  `request_full`), so that a link on an account without a quota cannot fill the disk.
  Concurrent uploads may pass the total by what they carry between them (counted after
  each commit). The throttle (files per link and address per window, counted before the
  body is read) bounds the pace.
- The visitor is told only that the file was received: no stored name, no listing.
- The typed name is untrusted text: control and format characters go, whitespace is
  collapsed, at most 100 characters; pages show it through autoescaping only.
"""

from __future__ import annotations

import unicodedata
from collections.abc import AsyncIterator
from dataclasses import dataclass

from beanie import PydanticObjectId
from pymongo.errors import DuplicateKeyError

from app.acl.access import OWNER
from app.core import paths
from app.core.errors import (
    BadRequest,
    CofferError,
    Conflict,
    Forbidden,
    InsufficientStorage,
    NotFound,
    PayloadTooLarge,
    TooManyRequests,
    Unauthorized,
)
from app.core.query import match
from app.core.ratelimit import take_attempt
from app.db.accounts import User
from app.db.files import FileNode, FileVersion, UploadSession, delete_chunk_maps
from app.db.sharing import ShareLink
from app.files.accounting import check_quota
from app.files.schemas import ChunkIn, UploadRequest
from app.files.scope import Caller, Scope
from app.files.tree import new_node
from app.files.uploads import ChunkSink, UploadService
from app.sharing.links import LinkProblem, LinkService, OpenLink

UPLOADER_MAX_CHARS = 100
THROTTLE_SCOPE = "filereq"
RESERVE_TRIES = 20  # new names tried when other uploads keep taking the one found free


class LinkGone(CofferError):
    status_code = 410
    code = "link_gone"


class LengthRequired(CofferError):
    status_code = 411
    code = "length_required"


@dataclass(frozen=True)
class VisitorScope(Scope):
    """The owner's tree, written by someone who typed `visitor` as their name."""

    visitor: str = ""

    @property
    def actor(self) -> str:
        return f"{self.visitor} (file request)"


def uploader_name(raw: object) -> str:
    """The name a visitor typed, made safe to store and show: control characters become
    spaces, other invisible ones (format, private use, unassigned) go, runs of whitespace
    become one space; 400 if nothing is left or it is longer than 100 characters."""
    if not isinstance(raw, str):
        raise BadRequest("type your name", code="name_required")
    kept = []
    for ch in unicodedata.normalize("NFC", raw):
        category = unicodedata.category(ch)
        if category == "Cc":
            kept.append(" ")
        elif not category.startswith("C"):
            kept.append(ch)
    name = " ".join("".join(kept).split())
    if not name:
        raise BadRequest("type your name", code="name_required")
    if len(name) > UPLOADER_MAX_CHARS:
        raise BadRequest(
            f"your name may have at most {UPLOADER_MAX_CHARS} characters", code="name_too_long"
        )
    return name


def file_name(raw: object) -> str:
    """The name a file arrives under: one path segment, valid like any name (400 if not)."""
    if not isinstance(raw, str) or not raw.strip():
        raise BadRequest("the file needs a name", code="invalid_name")
    name = unicodedata.normalize("NFC", raw)
    if "/" in name:
        raise BadRequest("a file name cannot contain '/'", code="invalid_name")
    try:
        return paths.validate_name(name)
    except BadRequest as exc:
        raise BadRequest(exc.message, code="invalid_name") from None


def numbered(name: str, n: int) -> str:
    """The name numbered n: "report (2).pdf" for ("report.pdf", 2), the stem shortened if
    the result would be longer than a name may be."""
    stem, dot, ext = name.rpartition(".")
    if not stem:  # no extension ("README") or only one (".env")
        stem, dot, ext = name, "", ""
    while True:
        candidate = f"{stem} ({n}){dot}{ext}"
        if len(candidate.encode()) <= paths.MAX_NAME_BYTES or not stem:
            return candidate
        stem = stem[:-1]


def visitor_scope(owner: User, visitor: str, base_url: str) -> VisitorScope:
    caller = Caller(user=owner, device=f"file request: {visitor}", base_url=base_url)
    return VisitorScope(caller, owner, OWNER, visitor=visitor)


def as_error(problem: LinkProblem) -> CofferError:
    """A link problem as the JSON error an upload is answered with."""
    if problem.status == 410:
        return LinkGone(problem.message)
    if problem.status == 429:
        return TooManyRequests(problem.message, headers=problem.headers)
    if problem.status == 404:
        return NotFound(problem.message, code="unknown_link")
    return BadRequest(problem.message, code="bad_link")


@dataclass(frozen=True)
class FileRequests:
    links: LinkService
    uploads: UploadService

    async def open(self, token: str, unlock_cookie: str) -> OpenLink:
        """The upload-only link `token` names, if this visitor may send files through it."""
        try:
            opened = await self.links.open(token)
        except LinkProblem as exc:
            raise as_error(exc) from None
        if not opened.link.upload_only or opened.root.kind != "folder":
            raise Forbidden("this link does not take uploads", code="not_a_file_request")
        if not self.links.unlocked(opened, unlock_cookie):
            raise Unauthorized(
                "open the link and enter its password first", code="password_required"
            )
        return opened

    async def receive(
        self,
        opened: OpenLink,
        *,
        address: str,
        base_url: str,
        name: object,
        uploader: object,
        length: str | None,
        body: AsyncIterator[bytes],
    ) -> int:
        """Store the body as a new file in the link's folder; its size. Nothing is stored
        unless every check passes and the whole declared length arrived."""
        settings = self.links.settings
        attempt = await take_attempt(
            THROTTLE_SCOPE,
            f"{opened.link.id}:{address}",
            settings.file_request_uploads,
            settings.file_request_window_seconds,
        )
        if wait := attempt.wait:
            raise TooManyRequests(
                f"too many files at once; wait {wait} s",
                code="throttled",
                retry_after=wait,
                headers={"Retry-After": str(wait)},
            )
        visitor = uploader_name(uploader)
        name = file_name(name)
        if length is None or not length.strip():
            raise LengthRequired("send the file with a Content-Length")
        if not length.strip().isdecimal():
            raise BadRequest("Content-Length must be a number", code="invalid_length")
        size = int(length)
        limit = opened.link.max_bytes
        if limit is not None and size > limit:
            raise PayloadTooLarge(
                f"files sent here may be at most {limit} bytes", code="too_large", max_bytes=limit
            )
        if size > settings.max_file_size:
            raise PayloadTooLarge(
                f"files may be at most {settings.max_file_size} bytes", code="too_large"
            )
        total = settings.file_request_total_bytes
        if total and opened.link.received_bytes + size > total:
            raise PayloadTooLarge(
                "this file request has received all it may take; ask its owner for a new link",
                code="request_full",
            )
        owner = await User.get(PydanticObjectId(opened.link.owner_id))
        if owner is None:
            raise LinkGone("the shared folder is no longer available")
        scope = visitor_scope(owner, visitor, base_url)
        try:
            check_quota(scope, 0, size)
            chunks = await self._stream(scope, size, body)
            await self._commit(opened, scope, name, UploadRequest(size=size, chunks=chunks))
        except InsufficientStorage:
            raise InsufficientStorage(
                "the folder's owner has no room for this file", code="quota_exceeded"
            ) from None
        return size

    async def _stream(self, scope: Scope, size: int, body: AsyncIterator[bytes]) -> list[ChunkIn]:
        sink = ChunkSink(self.uploads, scope)
        received = 0
        try:
            async for piece in body:
                received += len(piece)
                if received > size:
                    raise BadRequest(
                        "the body is longer than its Content-Length", code="size_mismatch"
                    )
                await sink.write(piece)
            if received != size:
                raise BadRequest("the body ended before its Content-Length", code="size_mismatch")
            return await sink.close()
        except BaseException:
            # What was stored is unreferenced: garbage collection takes it.
            sink.abandon()
            raise

    async def _commit(
        self, opened: OpenLink, scope: VisitorScope, name: str, req: UploadRequest
    ) -> None:
        # Looked at again now the bytes are in: the link may have been revoked, the folder
        # moved or trashed while they arrived.
        try:
            current = await self.links.open(opened.token)
        except LinkProblem as exc:
            raise as_error(exc) from None
        node = await self._reserve(scope, current.root, name)
        try:
            await self.uploads.commit_stored(scope, node.path, req)
        except BaseException:
            await self._unreserve(scope, node)
            raise
        await ShareLink.get_pymongo_collection().update_one(
            {"_id": current.link.id}, {"$inc": {"received_bytes": req.size}}
        )

    async def _reserve(self, scope: Scope, folder: FileNode, name: str) -> FileNode:
        """A pending (invisible) node at the first free one of `name`, "name (2)", ...:
        the unique index on (owner, live_key) settles races between uploads."""
        candidate = name
        for _ in range(RESERVE_TRIES):
            node = new_node(
                scope, paths.join(folder.path, candidate), folder, kind="file", committed=False
            )
            try:
                await node.insert()
                return node
            except DuplicateKeyError:
                candidate = numbered(name, await self._next_number(scope, folder, name))
        raise Conflict("many files of this name are arriving; try again", code="retry")

    @staticmethod
    async def _next_number(scope: Scope, folder: FileNode, name: str) -> int:
        """The lowest n >= 2 whose numbered name no live item in the folder has (one range
        read over what every numbered name starts with: "name (" usually, a shorter stem
        when the name is near the length limit and numbering shortens it)."""
        where = folder.path.rstrip("/")
        first, last = numbered(name, 2), numbered(name, 999_999_999)
        pairs = enumerate(zip(first, last, strict=False))
        same = next((i for i, (a, b) in pairs if a != b), min(len(first), len(last)))
        shared = first[:same]
        prefix = paths.path_key(f"{where}/{shared}")
        cursor = FileNode.get_pymongo_collection().find(
            match(owner_id=scope.owner_id, live_key={"$gte": prefix, "$lt": prefix + "\uffff"}),
            {"live_key": 1},
        )
        taken = {doc["live_key"] async for doc in cursor}
        n = 2
        while paths.path_key(f"{where}/{numbered(name, n)}") in taken:
            n += 1
        return n

    @staticmethod
    async def _unreserve(scope: Scope, node: FileNode) -> None:
        """The commit failed: drop this upload's pending version and the reserved name
        (unless something else is uploading to it, or it committed after all)."""
        sessions = await UploadSession.find(match(file_id=str(node.id))).to_list()
        for session in sessions:
            if session.device != scope.caller.device or session.committed:
                continue
            version = await FileVersion.get(PydanticObjectId(session.version_id))
            if version is not None and version.state == "pending":
                await delete_chunk_maps([version])
                await version.delete()
            await session.delete()
        if any(s.device != scope.caller.device or s.committed for s in sessions):
            return
        await FileNode.get_pymongo_collection().delete_one({"_id": node.id, "committed": False})
