"""Chunk transfers: PUT and GET of signed chunk URLs (Coffer's own or S3's), over aiohttp.

Why not httpx, which the rest of the client uses: chunks are the bulk of every byte a
sync moves, and httpx parses responses in Python (h11), in pieces of 64 KiB. Measured on
the two-core test machine, fetching a 256 MiB file as 216 chunks, four at a time: httpx
0.87 CPU-seconds in the client, aiohttp (llhttp, C) 0.37, of which 0.15 is the SHA-256
both pay; on a machine where both devices and the server share two cores, that CPU is
what the other side of a streaming sync needs. API calls stay on httpx: they are small.

Errors keep the client's one vocabulary: an error answer is an `ApiError` like any API
call's, a broken or refused connection an `httpx.TransportError`, which the sync loop
already treats as "the server is unreachable, try again".

Chunk URLs carry their authorization (a signature) and may point at another host: no
token is ever sent with them. Compressed answers (zstd) are decoded here, never past
the size the caller expects (a small body that expands to gigabytes stops there).
"""

from __future__ import annotations

import io
from collections.abc import Mapping

import aiohttp
import httpx
import zstandard
from yarl import URL

from app.protocol import ZSTD
from client.errors import ApiError

# An error answer's body is read this far, no further (a JSON error is a few hundred bytes).
ERROR_BODY_MAX = 64 * 1024


class BlobTransport:
    """A pool of keep-alive connections for chunk URLs (made on first use: aiohttp needs
    the running event loop)."""

    def __init__(self, connections: int, timeout: float) -> None:
        self.connections = connections
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.connections, force_close=False),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                # Decoded here, bounded by the chunk's size (see get).
                auto_decompress=False,
                # Signed URLs must reach the server exactly as signed.
                requote_redirect_url=False,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def put(self, url: str, body: bytes, headers: Mapping[str, str]) -> None:
        """PUT `body` to a chunk URL; ApiError when the server refuses it."""
        try:
            async with self._open().put(yarl_url(url), data=body, headers=dict(headers)) as resp:
                if resp.status >= 400:
                    raw = await _at_most(resp, ERROR_BODY_MAX)
                    raise ApiError.from_answer(resp.status, raw or b"")
                await _at_most(resp, ERROR_BODY_MAX)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _transport_error(exc) from exc

    async def get_pieces(self, url: str, size: int) -> tuple[list[bytes], int]:
        """A chunk's bytes (decoded) as the pieces they arrived in, and the bytes that
        crossed the wire; unverified: the caller checks their size and hash. Never more
        than `size` bytes are kept, whatever the server sends (more: a 502 `bad_chunk`; a
        compressed body is at most `size` too: the server compresses only what shrinks).
        The pieces are not joined: a buffer of the chunk's size would be one more copy of
        every byte, in memory freshly mapped for it (a page fault per 4 KiB)."""
        too_many = ApiError(502, "bad_chunk", "the server sent more bytes than the chunk has", {})
        try:
            async with self._open().get(yarl_url(url), headers={"Accept-Encoding": ZSTD}) as resp:
                if resp.status >= 400:
                    raw = await _at_most(resp, ERROR_BODY_MAX)
                    raise ApiError.from_answer(resp.status, raw or b"")
                coding = resp.headers.get("Content-Encoding", "identity").strip().lower()
                if coding not in ("", "identity", ZSTD):
                    raise ApiError(502, "bad_encoding", f"the server sent a {coding} body", {})
                pieces, wire = [], 0
                async for piece in resp.content.iter_any():
                    pieces.append(piece)
                    wire += len(piece)
                    if wire > size:
                        raise too_many
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _transport_error(exc) from exc
        if coding == ZSTD:
            pieces = [_unzstd(b"".join(pieces), size)]
            if len(pieces[0]) > size:
                raise too_many
        return pieces, wire


async def _at_most(resp: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The body, if it is at most `limit` bytes (None past that: it is not read on)."""
    body = bytearray()
    async for piece in resp.content.iter_any():
        body += piece
        if len(body) > limit:
            return None
    return bytes(body)


def yarl_url(url: str) -> URL:
    """The URL as aiohttp must send it: already encoded (a signature's characters are not
    re-quoted)."""
    return URL(url, encoded=True)


def _unzstd(raw: bytes, max_size: int) -> bytes:
    try:
        out = bytearray()
        with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw)) as reader:
            while len(out) <= max_size and (piece := reader.read(max_size + 1 - len(out))):
                out += piece
        return bytes(out)
    except zstandard.ZstdError as exc:
        raise ApiError(502, "bad_encoding", f"the chunk does not decompress: {exc}", {}) from None


def _transport_error(exc: BaseException) -> httpx.TransportError:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError(str(exc))
    if isinstance(exc, TimeoutError):
        return httpx.TimeoutException(str(exc) or "the chunk transfer timed out")
    return httpx.NetworkError(str(exc))
