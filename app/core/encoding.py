"""zstd on the wire: compressed request bodies in, compressed responses out.

Clients may send a body with `Content-Encoding: zstd` (the sync client does for batch
uploads and for chunks that compress). JSON bodies are decompressed here, before routing,
with a hard cap on what they expand to: a tiny body that would expand past the cap (a
"zstd bomb") is refused with 413 after at most the cap was produced, never held whole.
Chunk PUTs (`/api/blob/`) stream: their handler decompresses with the chunk's registered
size as the cap (`decompressed`). Any other content coding is refused (415): the server
would otherwise store the compressed bytes as if they were the content.

Responses go compressed where the client accepts zstd and a sample of the bytes shrinks:
chunk GETs (`compressed_if_worth_it` of the whole chunk) and the batch download stream
(`zstd_stream`, flushed piece by piece so the reader never waits for the rest).

Chunk hashes and content hashes are always over the uncompressed bytes.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Callable

import zstandard
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from app.core.errors import BadRequest, PayloadTooLarge, send_error

ZSTD = "zstd"
# Bodies that stream to their handler, which decodes them itself.
STREAMED_PREFIXES = ("/api/blob/",)
# Compressed data is cut into pieces of at most this much output at a time.
PIECE = 1024 * 1024


def content_coding(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"content-encoding":
            return value.decode("latin-1").strip().lower()
    return "identity"


def decompress_capped(compressed: bytes, cap: int) -> bytes:
    """A zstd body's bytes, produced a piece at a time and refused (PayloadTooLarge) as
    soon as they pass `cap`: a bomb never expands past the cap plus one piece. BadRequest
    if it does not decode. (A truncated body decodes to fewer bytes, which the caller's
    own checks catch: a JSON that does not parse, a chunk of the wrong size or hash.)"""
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(compressed))
    out = bytearray()
    try:
        while piece := reader.read(PIECE):
            out += piece
            if len(out) > cap:
                raise PayloadTooLarge(f"the body expands past {cap} bytes", code="too_large")
    except zstandard.ZstdError as exc:
        raise BadRequest(f"the zstd body does not decode: {exc}", code="bad_encoding") from exc
    return bytes(out)


def decompressing_bodies(max_body: int) -> Callable[[ASGIApp], ASGIApp]:
    """ASGI middleware factory: JSON bodies sent with `Content-Encoding: zstd` reach the
    app decompressed (at most `max_body` bytes, compressed and decompressed)."""

    def middleware(app: ASGIApp) -> ASGIApp:
        async def handle(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            coding = content_coding(scope)
            if coding in ("", "identity") or scope["path"].startswith(STREAMED_PREFIXES):
                await app(scope, receive, send)
                return
            if coding != ZSTD:
                await send_error(send, 415, "unsupported_encoding", f"{coding} bodies: use zstd")
                return
            compressed = bytearray()
            more = True
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    return  # the client went away
                compressed += message.get("body", b"")
                more = message.get("more_body", False)
                if len(compressed) > max_body:
                    await send_error(send, 413, "too_large", f"bodies of at most {max_body} bytes")
                    return
            try:
                body = decompress_capped(bytes(compressed), max_body)
            except (BadRequest, PayloadTooLarge) as exc:
                await send_error(send, exc.status_code, exc.code, exc.message)
                return
            headers = [
                (k, v)
                for k, v in scope["headers"]
                if k not in (b"content-encoding", b"content-length")
            ]
            headers.append((b"content-length", str(len(body)).encode()))
            await app({**scope, "headers": headers}, replay_body(body, receive), send)

        return handle

    return middleware


async def decompressed(pieces: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    """A streamed zstd body (a chunk PUT): its compressed bytes are gathered (refused past
    `limit`: compressing never grows a chunk by much), then decompressed, capped at
    `limit`, and handed on in pieces."""
    compressed = bytearray()
    async for data in pieces:
        compressed += data
        if len(compressed) > limit + 1024:
            raise PayloadTooLarge(f"the body is over {limit} bytes", code="size_mismatch")
    body = decompress_capped(bytes(compressed), limit)
    for start in range(0, len(body), PIECE):
        yield body[start : start + PIECE]


def accepts_zstd(accept_encoding: str | None) -> bool:
    """Whether an Accept-Encoding header value takes zstd (q above zero)."""
    for item in (accept_encoding or "").split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() != ZSTD:
            continue
        q = params.strip().lower()
        if not q.startswith("q="):
            return True
        try:
            return float(q[2:]) > 0
        except ValueError:
            return False
    return False


async def zstd_stream(
    pieces: AsyncIterator[bytes], worth: Callable[[bytes], bool], sample_size: int
) -> tuple[AsyncIterator[bytes], bool]:
    """The stream zstd-compressed (level 1) if its first `sample_size` bytes are `worth`
    it, else as it was; and whether it was. Each piece is flushed as it comes, so the
    reader can act on it at once; only the sample is held to decide."""
    head: list[bytes] = []
    held = 0
    async for piece in pieces:
        head.append(piece)
        held += len(piece)
        if held >= sample_size:
            break
    sample = b"".join(head)

    async def replayed() -> AsyncIterator[bytes]:
        for piece in head:
            yield piece
        async for piece in pieces:
            yield piece

    if not sample or not worth(sample):
        return replayed(), False

    async def compressed() -> AsyncIterator[bytes]:
        packer = zstandard.ZstdCompressor(level=1).compressobj()
        async for piece in replayed():
            if len(piece) > 64 * 1024:
                out = await asyncio.to_thread(packer.compress, piece)
            else:
                out = packer.compress(piece)
            out += packer.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
            if out:
                yield out
        yield packer.flush()

    return compressed(), True


def replay_body(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands over `body` (already read) as the whole request body, then
    whatever `receive` says next (a disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
