"""The blob surface: the local store's signed chunk URLs (PUT streams a chunk in, GET
serves one).

These routes need no session or token: the HMAC signature in the URL is the authorization,
bound to the owner, chunk hash, size, expiry and (for reads) the owner's URL epoch. Only
this router lifts the request body limit, to the largest chunk the settings allow.
"""

from __future__ import annotations

import asyncio
import re

from beanie import PydanticObjectId
from litestar import Request, Response, Router, get, put

from app.core.encoding import ZSTD, accepts_zstd, decompressed
from app.core.errors import BadRequest, Forbidden, NotFound, PayloadTooLarge, UnsupportedMediaType
from app.core.failpoints import failpoint
from app.db.accounts import User
from app.files.integrity import read_verified_chunk, record_stored_chunk
from app.protocol import compress_if_worth_it
from app.settings import Settings
from app.storage.base import BlobStore
from app.storage.local import LocalBlobStore
from app.storage.signing import verify_blob_signature

OWNER_RE = re.compile(r"^[0-9a-f]{24}$")
SHA_RE = re.compile(r"^[0-9a-f]{64}$")


def _check(
    settings: Settings,
    op: str,
    owner: str,
    sha: str,
    size: int,
    exp: int,
    sig: str,
    epoch: int = 0,
) -> None:
    if not (OWNER_RE.fullmatch(owner) and SHA_RE.fullmatch(sha)) or not verify_blob_signature(
        settings.resolved_secret_key(), op, owner, sha, size, exp, sig, epoch
    ):
        raise Forbidden(
            "invalid or expired chunk URL; register the upload again", code="bad_signature"
        )


async def put_chunk(
    request: Request,
    owner: str,
    sha: str,
    size: int,
    exp: int,
    sig: str,
    settings: Settings,
    store: BlobStore,
) -> dict[str, object]:
    _check(settings, "put", owner, sha, size, exp, sig)
    await failpoint("chunk.put")
    if not isinstance(store, LocalBlobStore):
        raise NotFound("this server stores chunks in S3; use the presigned URL")
    coding = request.headers.get("content-encoding", "identity").strip().lower()
    if coding == ZSTD:
        body = decompressed(request.stream(), size)  # capped at the registered size
    elif coding not in ("", "identity"):
        raise UnsupportedMediaType(
            f"{coding} bodies: send zstd or none", code="unsupported_encoding"
        )
    else:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) != size:
            error = PayloadTooLarge if int(declared) > size else BadRequest
            raise error(f"chunk has {declared} bytes, {size} were registered", code="size_mismatch")
        body = request.stream()
    await store.write(owner, sha, size, body)
    await record_stored_chunk(owner, sha, size, verified=True)
    return {"sha256": sha, "size": size}


async def get_chunk(
    request: Request,
    owner: str,
    sha: str,
    size: int,
    exp: int,
    sig: str,
    settings: Settings,
    store: BlobStore,
    e: int = 0,
) -> Response[bytes]:
    _check(settings, "get", owner, sha, size, exp, sig, e)
    # The owner took access away (revoked a share, purged a file) since this URL was
    # made: it no longer reads anything. One lookup by _id.
    user = await User.get_pymongo_collection().find_one(
        {"_id": PydanticObjectId(owner)}, {"url_epoch": 1}
    )
    if user is None or user.get("url_epoch", 0) != e:
        raise Forbidden(
            "this chunk URL was withdrawn; ask for the file again", code="bad_signature"
        )
    data = await read_verified_chunk(store, owner, sha, size)
    headers = {"Cache-Control": "private, max-age=31536000, immutable", "Vary": "Accept-Encoding"}
    if accepts_zstd(request.headers.get("accept-encoding")):
        packed = await asyncio.to_thread(compress_if_worth_it, data)
        if packed is not None:
            data, headers["Content-Encoding"] = packed, ZSTD
    return Response(data, media_type="application/octet-stream", headers=headers)


def blob_router(settings: Settings) -> Router:
    path = "/api/blob/{owner:str}/{sha:str}"
    return Router(
        path="/",
        route_handlers=[
            put(
                path,
                status_code=201,
                request_max_body_size=settings.max_chunk_size,
                tags=["storage"],
            )(put_chunk),
            get(path, tags=["storage"])(get_chunk),
        ],
    )
