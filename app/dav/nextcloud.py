"""Nextcloud's dialect, so that the Nextcloud desktop client (and `nextcloudcmd`) syncs
against Coffer: `/status.php`, the OCS capabilities and user endpoints it asks for, the
same tree as /dav/ at `/remote.php/dav/files/USER/` and `/remote.php/webdav/`, and
chunked upload v2 (`/remote.php/dav/uploads/USER/ID`: MKCOL, numbered PUTs, MOVE of
`.file` onto the destination), which is how it sends big files.

Chunked uploads: every part is stored as chunks while it arrives (app/files/uploads.py
`ChunkSink`), and the parts' chunk lists are kept in MongoDB (app/db/dav.py
`DavUpload`), so nothing of a 50 GB upload sits in memory or in a temporary file, and any
web instance can take the next part. The MOVE assembles them into one version, like
every upload.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from litestar import Request, asgi, get
from litestar.types import Receive, Scope, Send
from pymongo.errors import DuplicateKeyError
from wsgidav.dav_error import DAVError

from app.core.clock import now_ms
from app.core.errors import (
    BadRequest,
    CofferError,
    Conflict,
    Forbidden,
    Locked,
    NotFound,
    TooManyRequests,
    Unauthorized,
    send_error,
)
from app.core.query import match
from app.dav.mount import CHALLENGE, SIGN_IN, ClientGone, DavMount, raise_on_disconnect
from app.dav.provider import DavRequest, place_of, ref_url
from app.db.dav import DavUpload
from app.files.integrity import touch_chunks
from app.files.schemas import ChunkIn, UploadRequest
from app.files.scope import Caller
from app.files.uploads import ChunkSink
from app.files.verify import hash_from_store
from app.protocol import MIN_CHUNK_SIZE, blocks_aligned

# What the desktop client is told it talks to: a version it supports with chunking v2.
VERSION = (27, 1, 0)
FILES = "/remote.php/dav/files"
MAX_OPEN_UPLOADS = 16  # chunked uploads one user may have open (each within the quota)


def ocs(data: dict[str, Any], v2: bool) -> dict[str, Any]:
    meta = {"status": "ok", "statuscode": 200 if v2 else 100, "message": "OK"}
    return {"ocs": {"meta": meta, "data": data}}


@get("/status.php", sync_to_thread=False)
def status() -> dict[str, Any]:
    major, minor, micro = VERSION
    return {
        "installed": True,
        "maintenance": False,
        "needsDbUpgrade": False,
        "version": f"{major}.{minor}.{micro}.0",
        "versionstring": f"{major}.{minor}.{micro}",
        "edition": "",
        "productname": "Coffer",
        "extendedSupport": False,
    }


def capabilities() -> dict[str, Any]:
    major, minor, micro = VERSION
    return {
        "version": {
            "major": major,
            "minor": minor,
            "micro": micro,
            "string": f"{major}.{minor}.{micro}",
            "edition": "",
            "extendedSupport": False,
        },
        "capabilities": {
            "core": {"pollinterval": 60, "webdav-root": "remote.php/webdav"},
            "dav": {"chunking": "1.0"},
            "files": {"bigfilechunking": True, "undelete": True, "versioning": True},
        },
    }


async def _caller(request: Request, dav: DavMount) -> Caller:
    caller = await dav.authenticate(request.scope)
    if caller is None:
        raise Unauthorized(SIGN_IN, headers=CHALLENGE)
    return caller


def nextcloud_routes(dav: DavMount) -> list[Any]:
    """The routes above, bound to the WebDAV mount (its sign-in and services)."""

    @get(["/ocs/v1.php/cloud/capabilities", "/ocs/v2.php/cloud/capabilities"])
    async def ocs_capabilities(request: Request) -> dict[str, Any]:
        return ocs(capabilities(), "/v2.php/" in request.url.path)

    @get(["/ocs/v1.php/cloud/user", "/ocs/v2.php/cloud/user"])
    async def ocs_user(request: Request) -> dict[str, Any]:
        user = (await _caller(request, dav)).user
        total = user.quota_bytes or -3  # Nextcloud's "unlimited"
        quota = {
            "used": user.usage_bytes,
            "free": max(0, user.quota_bytes - user.usage_bytes) if user.quota_bytes else -3,
            "total": total,
            "quota": total,
            "relative": round(100 * user.usage_bytes / user.quota_bytes, 2)
            if user.quota_bytes
            else 0,
        }
        data = {
            "id": user.username,
            "display-name": user.username,
            "displayname": user.username,
            "email": None,
            "quota": quota,
        }
        return ocs(data, "/v2.php/" in request.url.path)

    @asgi("/remote.php/webdav", is_mount=True, is_static=True, copy_scope=False)
    async def webdav(scope: Scope, receive: Receive, send: Send) -> None:
        caller = await dav.signed_in(scope, send)
        if caller is not None:
            await dav.serve(caller, scope, receive, send, "/remote.php/webdav")

    @asgi("/remote.php/dav", is_mount=True, is_static=True, copy_scope=False)
    async def remote_dav(scope: Scope, receive: Receive, send: Send) -> None:
        caller = await dav.signed_in(scope, send)
        if caller is None:
            return
        kind, _, rest = scope["path"].lstrip("/").partition("/")
        user, _, below = rest.partition("/")
        if kind not in ("files", "uploads") or user.casefold() != caller.user.username_key:
            await send_error(send, 404, "not_found", "nothing is there", {})
            return
        scope["path"] = "/" + below
        if kind == "files":
            await dav.serve(caller, scope, receive, send, f"{FILES}/{user}")
            return
        assert dav.services is not None and dav.store is not None
        request = DavRequest(caller, dav.services, dav.store, dav.settings)
        try:
            response = await chunked_upload(
                request, scope, receive, user, dav.provider.lock_manager
            )
        except ClientGone:
            return  # nobody to answer; the part was not recorded
        except CofferError as exc:
            await send_error(send, exc.status_code, exc.code, exc.message, {})
            return
        await response.send(send)

    return [status, ocs_capabilities, ocs_user, webdav, remote_dav]


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    async def send(self, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": self.status,
                "headers": [
                    (b"content-length", str(len(self.body)).encode()),
                    *((k.lower().encode(), v.encode()) for k, v in self.headers.items()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": self.body})


async def _body(receive: Receive) -> Any:
    """The request body's pieces; ClientGone if the client leaves before the end."""
    receive = raise_on_disconnect(receive)
    while True:
        message = await receive()
        if message.get("body"):
            yield message["body"]
        if not message.get("more_body", False):
            return


async def chunked_upload(
    request: DavRequest, scope: Scope, receive: Receive, user: str, locks: Any = None
) -> Reply:
    """/remote.php/dav/uploads/USER/NAME[/PART]: Nextcloud chunked upload v2."""
    method = scope["method"].upper()
    name, _, part = scope["path"].strip("/").partition("/")
    if not name or "/" in part:
        raise NotFound("no such upload")
    key = f"{request.caller.user_id}:{name}"
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    if method == "MKCOL" and not part:
        # Parts are stored before any quota is charged (at the MOVE): bound what one
        # user can park that way.
        # (a limited find, not a count: the embedded server counts by reading everything)
        mine = DavUpload.find(match(user_id=request.caller.user_id, done=None))
        if len(await mine.limit(MAX_OPEN_UPLOADS).to_list()) >= MAX_OPEN_UPLOADS:
            raise TooManyRequests(
                f"at most {MAX_OPEN_UPLOADS} chunked uploads at a time; finish or delete one",
                code="too_many_uploads",
            )
        now = now_ms()
        doc = DavUpload(
            id=key,
            user_id=request.caller.user_id,
            destination=headers.get("destination"),
            created_ms=now,
            touched_ms=now,
        )
        try:
            await doc.insert()
        except DuplicateKeyError:
            return Reply(405)
        return Reply(201)
    upload = await DavUpload.get(key)
    if upload is None:
        raise NotFound("no such upload (it expired or was deleted)")
    if upload.done is not None:
        # Assembled already: a retried MOVE gets the same answer; nothing else is left.
        if method == "MOVE" and part == ".file":
            return _finished(upload.done)
        if method == "DELETE" and not part:
            await upload.delete()
            return Reply(204)
        raise NotFound("this upload was assembled already")
    if method == "DELETE" and not part:
        await upload.delete()
        return Reply(204)
    if method == "PUT" and part:
        # Numbers: 1..10000 (chunking v2) or the part's byte offset, zero-padded (the
        # desktop client's "NG" chunking); either way they sort into file order.
        if not (part.isascii() and part.isdecimal()) or len(part) > 20:
            raise BadRequest("parts are named by number", code="invalid_part")
        return await _put_part(request, upload, part, receive)
    if method == "MOVE" and part == ".file":
        return await _assemble(request, upload, headers, user, locks)
    if method == "PROPFIND":
        return _list_parts(upload, scope)
    return Reply(405)


async def _put_part(request: DavRequest, upload: DavUpload, part: str, receive: Receive) -> Reply:
    uploads = request.services.uploads
    place = await place_of(request, "/")
    assert place is not None
    scope = place.scope
    if upload.destination:
        target = await _target(request, upload.destination)
        scope = target.scope
    if upload.owner_id not in (None, scope.owner_id):
        raise Conflict("this upload's parts belong to another tree", code="invalid_destination")
    already = sum(size for chunks in upload.parts.values() for _, size in chunks)
    sink = ChunkSink(uploads, scope, hold_back=MIN_CHUNK_SIZE, already=already)
    try:
        async for piece in _body(receive):
            await sink.write(piece)
        chunks = await sink.close()
    except BaseException:
        sink.abandon()
        raise
    stored = [[c.sha256, c.size] for c in chunks]
    # The earlier parts' chunks are referenced by nothing but this upload: keep them
    # fresh for garbage collection however long the upload takes.
    await touch_chunks(scope.owner_id, {sha for part in upload.parts.values() for sha, _ in part})
    await DavUpload.get_pymongo_collection().update_one(
        {"_id": upload.id},
        {
            "$set": {
                f"parts.{int(part)}": stored,
                "owner_id": scope.owner_id,
                "touched_ms": now_ms(),
            }
        },
    )
    return Reply(201)


async def _target(request: DavRequest, destination: str) -> Any:
    """Where a Destination (a URL or path under /remote.php/dav/files/USER) lands."""
    path = unquote(urlsplit(destination).path)
    prefix = f"{FILES}/{request.caller.user.username}"
    if not path.casefold().startswith(prefix.casefold() + "/"):
        raise BadRequest("Destination must be in your files", code="invalid_destination")
    place = await place_of(request, path[len(prefix) :])
    if place is None or place.shared_root:
        raise Forbidden("nothing can be created there", code="read_only")
    if not place.scope.access.can_write:
        raise Forbidden("this is shared with you to view only", code="read_only")
    if place.node is not None and place.node.kind == "folder":
        raise Conflict("the destination is a folder", code="is_a_folder")
    return place


async def _check_locks(locks: Any, place: Any, headers: dict[str, str], username: str) -> None:
    """A file locked by someone else's WebDAV lock is not overwritten by an assembled
    upload either (423), unless the request carries the lock's token in `If`."""
    if locks is None or place.node is None:
        return
    ref = ref_url(place.scope.owner_id, place.tree_path)
    tokens = re.findall(r"<(opaquelocktoken:[^>]+)>", headers.get("if", ""))

    def check() -> None:
        locks.check_write_permission(url=ref, depth="0", token_list=tokens, principal=username)

    try:
        await asyncio.to_thread(check)  # wsgidav's lock manager is synchronous
    except DAVError as exc:
        raise Locked("the file is locked", code="locked") from exc


async def _assemble(
    request: DavRequest,
    upload: DavUpload,
    headers: dict[str, str],
    user: str,
    dav_locks: Any = None,
) -> Reply:
    destination = headers.get("destination") or upload.destination
    if not destination:
        raise BadRequest("MOVE needs a Destination", code="invalid_destination")
    place = await _target(request, destination)
    if upload.parts and upload.owner_id != place.scope.owner_id:
        # The parts are chunks of another owner's (or the caller's own) tree: start the
        # upload again with this Destination given at MKCOL, as Nextcloud clients do.
        raise Conflict(
            "the parts were sent for another folder's owner; upload again with this "
            "Destination on MKCOL",
            code="invalid_destination",
        )
    chunks = [
        ChunkIn(sha256=sha, size=size)
        for number in sorted(upload.parts, key=int)
        for sha, size in upload.parts[number]
    ]
    size = sum(c.size for c in chunks)
    declared = headers.get("oc-total-length")
    if declared is not None and (
        not (declared.isascii() and declared.isdecimal()) or int(declared) != size
    ):
        raise BadRequest(
            f"the parts hold {size} bytes, OC-Total-Length says {declared}", code="size_mismatch"
        )
    await _check_locks(dav_locks, place, headers, request.caller.user.username)
    existed = place.node is not None
    req = UploadRequest(
        size=size, chunks=chunks, content_hash=await _content_hash(request, place, chunks)
    )
    out = await request.services.uploads.commit_stored(place.scope, place.tree_path, req)
    done = {"status": 204 if existed else 201, "file_id": out.id, "etag": f'"{out.content_hash}"'}
    await DavUpload.get_pymongo_collection().update_one(
        {"_id": upload.id}, {"$set": {"done": done, "parts": {}, "touched_ms": now_ms()}}
    )
    return _finished(done)


def _finished(done: dict[str, Any]) -> Reply:
    etag = done["etag"]
    return Reply(done["status"], {"ETag": etag, "OC-ETag": etag, "OC-FileId": done["file_id"]})


async def _content_hash(request: DavRequest, place: Any, chunks: list[ChunkIn]) -> str | None:
    """The content hash to give with the assembled upload: none when the server finds it
    itself (the chunks are the 4 MiB blocks, or the file is small enough to be hashed at
    commit), else hashed here from the stored chunks (the parts' sizes are the client's
    choice, so the chunks rarely are the blocks)."""
    size = sum(c.size for c in chunks)
    if blocks_aligned(c.size for c in chunks) or (
        size <= request.settings.verify_hash_at_commit_max
    ):
        return None
    return await hash_from_store(
        request.store, place.scope.owner_id, [(c.sha256, c.size) for c in chunks]
    )


def _list_parts(upload: DavUpload, scope: Scope) -> Reply:
    base = scope.get("root_path", "") + "/" + scope["path"].strip("/").partition("/")[0]
    entries = [
        f"<d:response><d:href>{base}/</d:href><d:propstat><d:prop><d:resourcetype>"
        "<d:collection/></d:resourcetype></d:prop><d:status>HTTP/1.1 200 OK</d:status>"
        "</d:propstat></d:response>"
    ]
    for number, chunks in sorted(upload.parts.items(), key=lambda kv: int(kv[0])):
        size = sum(s for _, s in chunks)
        entries.append(
            f"<d:response><d:href>{base}/{int(number):05d}</d:href><d:propstat><d:prop>"
            f"<d:getcontentlength>{size}</d:getcontentlength><d:resourcetype/></d:prop>"
            "<d:status>HTTP/1.1 200 OK</d:status></d:propstat></d:response>"
        )
    body = '<?xml version="1.0"?><d:multistatus xmlns:d="DAV:">' + "".join(entries)
    return Reply(
        207,
        {"Content-Type": "application/xml; charset=utf-8"},
        (body + "</d:multistatus>").encode(),
    )
