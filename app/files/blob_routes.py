"""The blob surface: the local store's signed chunk URLs (PUT streams a chunk in, or
rebuilds it from a delta against a stored chunk; GET serves one).

These routes need no session or token: the HMAC signature in the URL is the authorization,
bound to the owner, chunk hash, size, expiry and (for reads) the owner's URL epoch. Only
this router lifts the request body limit, to the largest chunk the settings allow.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

from beanie import PydanticObjectId
from litestar import Request, Response, Router, get, put

from app.core.encoding import ZSTD, accepts_zstd, decompressed
from app.core.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from app.core.failpoints import failpoint
from app.db.accounts import User
from app.files.integrity import read_joined, read_verified_chunk, record_stored_chunk
from app.protocol import compress_if_worth_it, delta
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
    delta_base: str | None = None,
) -> None:
    if (
        not (OWNER_RE.fullmatch(owner) and SHA_RE.fullmatch(sha))
        or (delta_base is not None and not _delta_bases(delta_base))
        or not verify_blob_signature(
            settings.resolved_secret_key(), op, owner, sha, size, exp, sig, epoch, delta_base
        )
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
    base: str | None = None,
) -> dict[str, object]:
    """Store one chunk: its bytes, or (a URL signed with `base`) a delta body against that
    stored chunk, either of them zstd-compressed or not."""
    _check(settings, "put", owner, sha, size, exp, sig, delta_base=base)
    await failpoint("chunk.put")
    if not isinstance(store, LocalBlobStore):
        raise NotFound("this server stores chunks in S3; use the presigned URL")
    # The body's own size limit: the chunk, or the largest delta that can make it.
    limit = size if base is None else delta.max_body_size(size)
    coding = request.headers.get("content-encoding", "identity").strip().lower()
    if coding == ZSTD:
        body = decompressed(request.stream(), limit)  # capped: a bomb stops at the limit
    elif coding not in ("", "identity"):
        raise UnsupportedMediaType(
            f"{coding} bodies: send zstd or none", code="unsupported_encoding"
        )
    else:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(
                f"the body has {declared} bytes, at most {limit} can make this chunk",
                code="size_mismatch",
            )
        if declared is not None and declared.isdigit() and base is None and int(declared) < size:
            raise BadRequest(
                f"chunk has {declared} bytes, {size} were registered", code="size_mismatch"
            )
        body = request.stream()
    if base is not None:
        body = _rebuilt(body, await _delta_base(store, owner, base), size)
    await store.write(owner, sha, size, body)
    await record_stored_chunk(owner, sha, size, verified=True)
    return {"sha256": sha, "size": size}


def _delta_bases(base: str) -> list[str]:
    """The chunks a delta URL's `base` names ("sha,sha,..."), or [] if malformed."""
    shas = base.split(",")
    return shas if delta.valid_bases(shas) else []


async def _delta_base(store: LocalBlobStore, owner: str, base: str) -> bytearray:
    """The stored chunks a delta builds on, joined (not verified here: what the delta
    makes is, like every chunk). Their total was bounded when the register offered them
    (`delta.max_bases_size`) and the URL is signed with them."""
    try:
        return await read_joined(store, owner, _delta_bases(base))
    except FileNotFoundError:
        raise Conflict(
            "the chunk this delta builds on is gone; register the upload again",
            code="base_missing",
        ) from None


async def _rebuilt(body: AsyncIterator[bytes], base: bytearray, size: int) -> AsyncIterator[bytes]:
    rebuilder = delta.Rebuilder(base, size)
    try:
        async for piece in body:
            for out in rebuilder.feed(piece):
                yield bytes(out)
        rebuilder.finish()
    except delta.DeltaError as exc:
        raise BadRequest(f"bad delta body: {exc}", code="bad_delta") from None


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
                # A delta of the largest chunk may be a little larger than the chunk.
                request_max_body_size=delta.max_body_size(settings.max_chunk_size),
                tags=["storage"],
            )(put_chunk),
            get(path, tags=["storage"])(get_chunk),
        ],
    )
