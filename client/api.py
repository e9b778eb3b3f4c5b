"""Async HTTP client of the Coffer API: one method per endpoint the client uses.

This module only speaks HTTP: it knows URLs, parameters and error bodies, and counts the
bytes it moves (`TransferStats`). Reading and hashing local files, verifying downloads and
deciding what to sync live elsewhere (client/transfer.py, client/sync.py). Chunk URLs may
point at another host (S3), so they are fetched with a second client that never sends our
token.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import msgspec
import zstandard

from app.protocol import ZSTD, compress_if_worth_it
from client.blobs import BlobTransport
from client.errors import ApiError, DownloadIncomplete

if TYPE_CHECKING:
    pass

# Body pieces are read in slices of this size while streaming.
STREAM_PIECE = 1024 * 1024


# COFFER_SYNC_TRACE=1: each API call's method, path, status and duration on stderr.
TRACE = bool(os.environ.get("COFFER_SYNC_TRACE"))


def raise_for_error(resp: httpx.Response) -> None:
    """Raise the server's error answer as an ApiError (status, code, message, body)."""
    if resp.status_code >= 400:
        raise ApiError.from_answer(resp.status_code, resp.content)


@dataclass
class TransferStats:
    """Bytes moved by one client, for the `--once` report and the benchmarks."""

    chunks_sent: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0


class _Counted:
    """The pieces of a streamed body, decoded (zstd where the server compressed it), with
    the bytes that crossed the wire counted into `stats` as they arrive."""

    def __init__(self, resp: httpx.Response, stats: TransferStats) -> None:
        self.resp = resp
        self.pieces = resp.aiter_bytes(STREAM_PIECE)
        self.stats = stats
        self.counted = 0

    def __aiter__(self) -> _Counted:
        return self

    async def __anext__(self) -> bytes:
        piece = await self.pieces.__anext__()
        wire = self.resp.num_bytes_downloaded
        self.stats.bytes_received += wire - self.counted
        self.counted = wire
        return piece


class BatchReader:
    """Reads `application/x-coffer-files`: per file a JSON line, then `size` bytes."""

    def __init__(self, pieces: AsyncIterator[bytes]) -> None:
        self._pieces = pieces
        self._buffer = bytearray()

    async def _fill(self, need: int) -> bool:
        while len(self._buffer) < need:
            try:
                self._buffer += await anext(self._pieces)
            except StopAsyncIteration:
                return False
        return True

    async def next_head(self) -> dict[str, Any] | None:
        """The next file's header, or None at the end."""
        while b"\n" not in self._buffer:
            if not await self._fill(len(self._buffer) + 1):
                if self._buffer:
                    raise DownloadIncomplete("the batch ended in the middle of a header")
                return None
        line, _, rest = bytes(self._buffer).partition(b"\n")
        self._buffer = bytearray(rest)
        return json.loads(line)

    async def body(self, size: int) -> AsyncIterator[bytes]:
        """The current file's `size` bytes, in pieces."""
        left = size
        while left:
            if not self._buffer and not await self._fill(1):
                raise DownloadIncomplete("the batch ended in the middle of a file")
            piece = bytes(self._buffer[:left])
            del self._buffer[: len(piece)]
            left -= len(piece)
            yield piece


class CofferClient:
    """One account's (or an anonymous) connection to a Coffer server."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        parallel: int = 4,
        timeout: float = 120.0,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.AsyncClient(
            base_url=base_url,
            headers=headers,
            timeout=timeout,
            limits=httpx.Limits(
                max_connections=parallel + 4, max_keepalive_connections=parallel + 4
            ),
        )
        # Chunk URLs may point at another host (S3): their own pool, never our token.
        self.blobs = BlobTransport(parallel + 4, timeout)
        # Chunks sent or fetched at once for one file.
        self.parallel = parallel
        # Send JSON bodies zstd-compressed (until a server refuses them with 415).
        self.compress_bodies = True
        self.stats = TransferStats()

    async def __aenter__(self) -> CofferClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.http.aclose()
        await self.blobs.close()

    async def request(self, method: str, url: str, **kw: Any) -> Any:
        """One API call; the decoded JSON answer (None when empty), or ApiError."""
        started = time.monotonic()
        resp = await self.http.request(method, url, **kw)
        if TRACE:
            took = time.monotonic() - started
            print(
                f"{time.time():.3f} http {method} {url} {resp.status_code} {took:.3f}s",
                file=sys.stderr,
                flush=True,
            )
        raise_for_error(resp)
        if resp.status_code == 204 or not resp.content:
            return None
        return resp.json()

    def socket_url(self, path: str) -> str:
        """The ws:// (or wss://) URL of an API path."""
        return str(self.http.base_url).replace("http", "ws", 1).rstrip("/") + path

    @property
    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": self.http.headers["Authorization"]}

    # ------------------------------------------------------------- accounts and devices

    async def register(self, username: str, password: str) -> dict[str, Any]:
        return await self.request(
            "POST", "/api/auth/register", json={"username": username, "password": password}
        )

    async def login_token(self, username: str, password: str, device_name: str) -> str:
        body = await self.request(
            "POST",
            "/api/auth/token",
            json={"username": username, "password": password, "device_name": device_name},
        )
        token = body["token"]
        self.http.headers["Authorization"] = f"Bearer {token}"
        return token

    async def revoke_token(self) -> None:
        """Log this device out (its token stops working)."""
        await self.request("DELETE", "/api/auth/token")

    async def devices(self) -> list[dict[str, Any]]:
        return (await self.request("GET", "/api/devices"))["items"]

    async def revoke_device(self, device_id: str) -> None:
        await self.request("DELETE", f"/api/devices/{device_id}")

    async def revoke_other_devices(self) -> int:
        """Sign out every other device and session; how many were."""
        return (await self.request("POST", "/api/devices/revoke-others"))["revoked"]

    # ------------------------------------------------------------- listing

    async def list(self, path: str = "/") -> list[dict[str, Any]]:
        """Every item in the folder at `path` (all pages)."""
        return await self._list_all({"path": path})

    async def list_by_id(self, folder_id: str) -> list[dict[str, Any]]:
        """Every item in the folder with this id (e.g. one shared with us)."""
        return await self._list_all({"id": folder_id})

    async def search(self, query: str, *, limit: int = 200) -> AsyncIterator[dict[str, Any]]:
        """Every item whose name contains `query` (accents and case ignored), page by page:
        the caller's own tree first, then what is shared with them."""
        cursor = None
        while True:
            params: dict[str, Any] = {"q": query, "limit": limit}
            if cursor:
                params["cursor"] = cursor
            body = await self.request("GET", "/api/search", params=params)
            for item in body["items"]:
                yield item
            cursor = body["cursor"]
            if not cursor:
                return

    async def list_page(
        self, where: dict[str, str], *, limit: int = 1000, cursor: str | None = None
    ) -> dict[str, Any]:
        """One page of a folder's items (`where`: {"path": ...} or {"id": ...})."""
        params: dict[str, Any] = {**where, "limit": limit}
        if cursor:
            params["cursor"] = cursor
        return await self.request("GET", "/api/file", params=params)

    async def _list_all(self, where: dict[str, str]) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        cursor = None
        while True:
            body = await self.list_page(where, cursor=cursor)
            items += body["items"]
            cursor = body["cursor"]
            if not cursor:
                return items

    async def tree_page(
        self, where: dict[str, str], *, cursor: str | None = None, limit: int = 1000
    ) -> dict[str, Any]:
        """One page of everything below a folder (`where`: {} for our root, {"path": ...}
        or {"id": ...}), in path order: {"items", "cursor"}."""
        params: dict[str, Any] = {**where, "limit": limit}
        if cursor:
            params["cursor"] = cursor
        return await self.request("GET", "/api/tree", params=params)

    async def shared_with_me(self) -> list[dict[str, Any]]:
        """What other users shared with us (top-level items, as we see them)."""
        return (await self.request("GET", "/api/shared"))["items"]

    async def describe(
        self, file_id: str, *, chunk_offset: int | None = None, chunk_limit: int | None = None
    ) -> dict[str, Any]:
        """A file's head (or a folder); with `chunk_offset`, a page of its chunk list, each
        chunk with a short-lived read URL."""
        params: dict[str, int] = {}
        if chunk_offset is not None:
            params["chunk_offset"] = chunk_offset
        if chunk_limit is not None:
            params["chunk_limit"] = chunk_limit
        return await self.request("GET", f"/api/file/{file_id}", params=params or None)

    async def manifest(self, file_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """A file's head and its whole chunk list (read in pages of 1,000), each chunk
        with its index and a short-lived read URL."""
        chunks: list[dict[str, Any]] = []
        offset: int | None = 0
        while True:
            head = await self.describe(file_id, chunk_offset=offset, chunk_limit=1000)
            chunks += head.get("chunks", [])
            offset = head.get("next_chunk_offset")
            if not offset:
                return head, chunks

    async def events(
        self, cursor: str, *, wait: float | None = None, http_timeout: float | None = None
    ) -> dict[str, Any]:
        """A page of the change feed after `cursor` ("latest": none, only the cursor);
        with `wait`, a long-poll."""
        params: dict[str, Any] = {"cursor": cursor}
        if wait is not None:
            params["wait"] = wait
        kw: dict[str, Any] = {} if http_timeout is None else {"timeout": http_timeout}
        return await self.request("GET", "/api/file/events", params=params, **kw)

    # ------------------------------------------------------------- changing the tree

    async def create_folder(self, target: dict[str, str]) -> dict[str, Any]:
        """`target`: {"path": ...} in our tree, or {"parent_id", "name"}."""
        return await self.request("POST", "/api/folder", json=target)

    async def move(self, file_id: str, target: dict[str, str]) -> dict[str, Any]:
        """Rename or move a file or folder; the moved item."""
        return await self.request("PATCH", f"/api/file/{file_id}", json=target)

    async def delete(self, file_id: str) -> None:
        """Move a file or folder to the trash."""
        await self.request("DELETE", f"/api/file/{file_id}")

    async def share(self, file_id: str, username: str, role: str) -> None:
        await self.request(
            "POST", f"/api/file/{file_id}/share", json={"username": username, "role": role}
        )

    async def create_link(self, file_id: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self.request("POST", f"/api/file/{file_id}/links", json=body)

    # ------------------------------------------------------------- uploads

    async def register_upload(self, body: dict[str, Any]) -> dict[str, Any]:
        """Start (or resume) an upload: the file's target and chunk list in; the upload's
        ids and the chunks the server lacks (each with a URL to PUT it to) out."""
        return await self.request("POST", "/api/file", json=body)

    async def put_chunk(
        self, url: str, data: bytes, headers: dict[str, str], encodings: Sequence[str] = ()
    ) -> None:
        """PUT a chunk's bytes, zstd-compressed when the URL takes that and they shrink."""
        body, coding = data, None
        if ZSTD in encodings:
            packed = await asyncio.to_thread(compress_if_worth_it, data)
            if packed is not None:
                body, coding = packed, {"Content-Encoding": ZSTD}
        await self.blobs.put(url, body, {**headers, **(coding or {})})
        self.stats.chunks_sent += 1
        self.stats.bytes_sent += len(body)

    async def commit_upload(self, file_id: str, upload_id: str) -> dict[str, Any]:
        """Make the uploaded chunks the file's new version; the committed file object."""
        return await self.request(
            "POST", f"/api/file/{file_id}/commit", json={"upload_id": upload_id}
        )

    async def upload(
        self,
        local: Path,
        remote: str | dict[str, str],
        *,
        base_version: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> dict[str, Any]:
        """Upload a local file (see `client.transfer.upload_file`, which does the work;
        kept here for scripts such as bench/transfer.py)."""
        from client.transfer import upload_file  # transfer builds on this module

        return await upload_file(
            self,
            local,
            remote,
            base_version=base_version,
            progress=progress,
        )

    async def batch_upload(self, files: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Up to 1,000 files in one request (small ones with their bytes, base64, which
        commits them); one result per file, in order."""
        # msgspec encodes the 20-odd MB of a full batch ten times faster than json; zstd
        # (level 3: base64 of source text shrinks to about a third) off the event loop.
        raw = msgspec.json.encode({"files": files})
        content, headers = raw, {"Content-Type": "application/json"}
        if self.compress_bodies:
            content = await asyncio.to_thread(zstandard.ZstdCompressor(level=3).compress, raw)
            headers["Content-Encoding"] = ZSTD
        try:
            body = await self.request(
                "POST", "/api/batch/upload", content=content, headers=headers, timeout=300
            )
        except ApiError as exc:
            if exc.status != 415 or not self.compress_bodies:
                raise
            self.compress_bodies = False  # a server that takes no zstd: send plain
            return await self.batch_upload(files)
        self.stats.bytes_sent += len(content)
        return body["results"]

    async def batch_commit(self, uploads: list[dict[str, str]]) -> list[dict[str, Any]]:
        """Commit registered uploads ({"file_id", "upload_id"} each); one result per upload."""
        body = await self.request(
            "POST", "/api/batch/commit", json={"uploads": uploads}, timeout=300
        )
        return body["results"]

    async def batch_folders(self, folders: list[dict[str, str]]) -> list[dict[str, Any]]:
        """Have these folders (each {"path"} or {"parent_id", "name"}), made where missing."""
        body = await self.request("POST", "/api/batch/folders", json={"folders": folders})
        return body["results"]

    async def batch_delete(self, ids: list[str]) -> list[dict[str, Any]]:
        return (await self.request("POST", "/api/batch/delete", json={"ids": ids}))["results"]

    # ------------------------------------------------------------- downloads

    @asynccontextmanager
    async def batch_download(self, ids: list[str]) -> AsyncIterator[BatchReader]:
        """Many files in one streamed answer: read them in order from the reader."""
        async with self.http.stream(
            "POST", "/api/batch/download", json={"ids": ids}, timeout=300.0
        ) as resp:
            if resp.status_code >= 400:
                await resp.aread()
                raise_for_error(resp)
            yield BatchReader(_Counted(resp, self.stats))

    async def get_chunk_pieces(self, url: str, size: int) -> list[bytes]:
        """One chunk's bytes from its read URL, as the pieces they came in (unverified: the
        caller checks their size, and their hash; never more than `size` bytes)."""
        pieces, wire = await self.blobs.get_pieces(url, size)
        self.stats.bytes_received += wire  # compressed, if it was
        return pieces

    @asynccontextmanager
    async def content(
        self, file_id: str, version: int | None = None
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """A file's bytes (the head, or `version`) in one streamed request, as raw pieces
        of about STREAM_PIECE bytes (unverified: the caller checks them)."""
        params = {"version": version} if version is not None else None
        async with self.http.stream("GET", f"/api/file/{file_id}/content", params=params) as resp:
            if resp.status_code >= 400:
                await resp.aread()
                raise_for_error(resp)
            yield _Counted(resp, self.stats)

    async def download(
        self, file_id: str, dest: Path, *, progress: Callable[[int], None] | None = None
    ) -> int:
        """Stream the head's bytes into `dest`, unverified; returns bytes written. For a
        verified download (what `coffer download` and sync do) use
        `client.transfer.fetch`; this plain one measures the API (bench/transfer.py)."""
        n = 0
        async with self.http.stream("GET", f"/api/file/{file_id}/content") as resp:
            if resp.status_code >= 400:
                await resp.aread()
                raise_for_error(resp)
            with open(dest, "wb") as out:  # noqa: ASYNC230 - page-cache writes
                async for piece in resp.aiter_bytes(STREAM_PIECE):
                    out.write(piece)
                    n += len(piece)
                    if progress:
                        progress(len(piece))
        self.stats.bytes_received += n
        return n
