"""The sync client's chunk GETs (client/blobs.py) against a real HTTP server that sends
what a broken or hostile one could: the bytes come back as the pieces they arrived in, never
more than the chunk's size (a zstd bomb included), and error answers keep their code."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator

import pytest
import zstandard
from aiohttp import web
from aiohttp.test_utils import TestServer

from client.blobs import BlobTransport
from client.errors import ApiError

BODY = os.urandom(300_000)
TEXT = b"def f():\n    return 1\n" * 20_000  # compresses well


async def plain(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    await response.prepare(request)
    for at in range(0, len(BODY), 50_000):  # sent in pieces
        await response.write(BODY[at : at + 50_000])
    return response


async def packed(request: web.Request) -> web.Response:
    data = zstandard.ZstdCompressor().compress(TEXT)
    return web.Response(body=data, headers={"Content-Encoding": "zstd"})


async def bomb(request: web.Request) -> web.Response:
    data = zstandard.ZstdCompressor().compress(b"\0" * (64 * 1024 * 1024))
    return web.Response(body=data, headers={"Content-Encoding": "zstd"})


async def gzipped(request: web.Request) -> web.Response:
    return web.Response(body=b"x", headers={"Content-Encoding": "gzip"})


async def loud(request: web.Request) -> web.Response:
    return web.Response(status=403, body=b"x" * (8 * 1024 * 1024))  # not read to the end


async def gone(request: web.Request) -> web.Response:
    error = {"error": {"code": "bad_signature", "message": "expired"}}
    return web.Response(status=403, body=json.dumps(error), content_type="application/json")


@pytest.fixture
async def base_url() -> AsyncIterator[str]:
    app = web.Application()
    for name, handler in (
        ("plain", plain),
        ("packed", packed),
        ("bomb", bomb),
        ("gzipped", gzipped),
        ("gone", gone),
        ("loud", loud),
    ):
        app.router.add_get(f"/{name}", handler)
    server = TestServer(app)
    await server.start_server()
    try:
        yield str(server.make_url(""))
    finally:
        await server.close()


@pytest.mark.parametrize(
    ("path", "size", "expected", "error"),
    [
        ("plain", len(BODY), BODY, None),  # exactly the chunk
        ("plain", len(BODY) + 5, BODY, None),  # short: the caller's size check fails it
        ("plain", len(BODY) - 1, None, "bad_chunk"),  # more than the chunk: never kept
        ("packed", len(TEXT), TEXT, None),  # decoded
        ("bomb", 4 * 1024 * 1024, None, "bad_chunk"),  # stops at the chunk's size
        ("packed", 1000, None, "bad_chunk"),  # compressed, yet larger than the chunk
        ("loud", 10, None, "error"),  # an error answer is read so far, no further
        ("gzipped", 10, None, "bad_encoding"),
        ("gone", 10, None, "bad_signature"),
    ],
)
async def test_a_chunk_comes_as_its_pieces_and_never_more(
    base_url: str, path: str, size: int, expected: bytes | None, error: str | None
) -> None:
    blobs = BlobTransport(connections=2, timeout=10)
    try:
        if error is not None:
            with pytest.raises(ApiError) as raised:
                await blobs.get_pieces(f"{base_url}/{path}", size)
            assert raised.value.code == error
            return
        pieces, wire = await blobs.get_pieces(f"{base_url}/{path}", size)
        assert b"".join(pieces) == expected
        if path == "plain":
            assert len(pieces) > 1 and wire == len(BODY)  # not joined into one buffer
        else:
            assert wire < len(TEXT) / 4  # what crossed the wire: compressed
    finally:
        await blobs.close()
