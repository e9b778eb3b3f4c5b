"""Async client of the Coffer HTTP API, with chunked parallel uploads and downloads.

Files are read in chunk-sized slices (never whole), hashed with SHA-256, registered, and
only the chunks the server lacks are sent, several at once. Memory stays at about
`parallel` chunks whatever the file size.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

CHUNK_SIZE = 4 * 1024 * 1024


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, body: dict[str, Any]) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.body = body


def raise_for_error(resp: httpx.Response) -> None:
    if resp.status_code < 400:
        return
    try:
        body = resp.json()
        err = body.get("error", {})
    except ValueError:
        body, err = {}, {}
    raise ApiError(resp.status_code, err.get("code", "error"), err.get("message", resp.text), body)


def _hash_piece(fd: int, offset: int, size: int) -> tuple[str, int]:
    data = os.pread(fd, size, offset)
    return hashlib.sha256(data).hexdigest(), len(data)


def chunk_hashes(path: Path, chunk_size: int = CHUNK_SIZE) -> list[tuple[str, int]]:
    """(sha256, size) of each chunk of the file. hashlib releases the GIL, so chunks are
    hashed on every core; memory stays at one chunk per core whatever the file size."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        offsets = range(0, size, chunk_size)
        workers = min(os.cpu_count() or 1, 8)
        with ThreadPoolExecutor(workers) as pool:
            return list(
                pool.map(lambda off: _hash_piece(fd, off, min(chunk_size, size - off)), offsets)
            )
    finally:
        os.close(fd)


def _read_hashed(fd: int, size: int, offset: int) -> tuple[bytes, str]:
    data = os.pread(fd, size, offset)
    return data, hashlib.sha256(data).hexdigest()


def content_hash(chunks: list[tuple[str, int]]) -> str:
    h = hashlib.sha256()
    for sha, _ in chunks:
        h.update(bytes.fromhex(sha))
    return h.hexdigest()


@dataclass
class TransferStats:
    chunks_sent: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    chunk_bytes: dict[str, int] = field(default_factory=dict)


class CofferClient:
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
        # Chunk URLs may point at another host (S3): a plain client without our token.
        self.blob_http = httpx.AsyncClient(
            timeout=timeout,
            limits=httpx.Limits(
                max_connections=parallel + 4, max_keepalive_connections=parallel + 4
            ),
        )
        self.parallel = parallel
        self.stats = TransferStats()

    async def __aenter__(self) -> CofferClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.http.aclose()
        await self.blob_http.aclose()

    async def request(self, method: str, url: str, **kw: Any) -> Any:
        resp = await self.http.request(method, url, **kw)
        raise_for_error(resp)
        if resp.status_code == 204 or not resp.content:
            return None
        return resp.json()

    # ------------------------------------------------------------- accounts

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

    # ------------------------------------------------------------- files

    async def list(self, path: str = "/") -> list[dict[str, Any]]:
        """Every item in the folder at `path` (all pages)."""
        return await self._list_all({"path": path})

    async def list_by_id(self, folder_id: str) -> list[dict[str, Any]]:
        """Every item in the folder with this id (e.g. one shared with us)."""
        return await self._list_all({"id": folder_id})

    async def _list_all(self, where: dict[str, str]) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        cursor = None
        while True:
            params: dict[str, Any] = {**where, "limit": 1000}
            if cursor:
                params["cursor"] = cursor
            body = await self.request("GET", "/api/file", params=params)
            items += body["items"]
            cursor = body["cursor"]
            if not cursor:
                return items

    async def upload(
        self,
        local: Path,
        remote: str | dict[str, str],
        *,
        chunk_size: int = CHUNK_SIZE,
        base_version: int | None = None,
        chunks: list[tuple[str, int]] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> dict[str, Any]:
        """Upload `local` to `remote` (a path in our tree, or {"parent_id","name"});
        returns the committed file object."""
        if chunks is None:
            chunks = await asyncio.to_thread(chunk_hashes, local, chunk_size)
        size = sum(s for _, s in chunks)
        body: dict[str, Any] = {
            **({"path": remote} if isinstance(remote, str) else remote),
            "size": size,
            "chunks": [{"sha256": sha, "size": s} for sha, s in chunks],
        }
        if base_version is not None:
            body["base_version"] = base_version
        reg = await self.request("POST", "/api/file", json=body)
        offsets = []
        pos = 0
        for _, s in chunks:
            offsets.append(pos)
            pos += s
        for _attempt in range(3):
            await self._put_chunks(local, reg["missing"], offsets, progress)
            try:
                return await self.request(
                    "POST",
                    f"/api/file/{reg['file_id']}/commit",
                    json={"upload_id": reg["upload_id"]},
                )
            except ApiError as exc:
                if exc.code != "missing_chunks":
                    raise
                reg["missing"] = exc.body["error"]["missing"]
        raise ApiError(409, "missing_chunks", "chunks kept going missing", {})

    async def _put_chunks(
        self,
        local: Path,
        missing: list[dict[str, Any]],
        offsets: list[int],
        progress: Callable[[int], None] | None,
    ) -> None:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        for m in missing:
            queue.put_nowait(m)

        async def worker() -> None:
            fd = await asyncio.to_thread(os.open, local, os.O_RDONLY)
            try:
                while not queue.empty():
                    m = queue.get_nowait()
                    data, sha = await asyncio.to_thread(
                        _read_hashed, fd, m["size"], offsets[m["index"]]
                    )
                    if sha != m["sha256"]:
                        raise RuntimeError(f"{local} changed while uploading")
                    resp = await self.blob_http.put(
                        m["url"], content=data, headers=m.get("headers") or {}
                    )
                    raise_for_error(resp)
                    self.stats.chunks_sent += 1
                    self.stats.bytes_sent += len(data)
                    if progress:
                        progress(len(data))
            finally:
                os.close(fd)

        await asyncio.gather(*(worker() for _ in range(min(self.parallel, len(missing)) or 0)))

    async def download(
        self,
        file_id: str,
        dest: Path,
        *,
        range_header: str | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Stream /content into `dest`; returns bytes written."""
        headers = {"Range": range_header} if range_header else {}
        n = 0
        async with self.http.stream("GET", f"/api/file/{file_id}/content", headers=headers) as resp:
            if resp.status_code >= 400:
                await resp.aread()
                raise_for_error(resp)
            with open(dest, "wb") as out:  # noqa: ASYNC230 - page-cache writes
                async for piece in resp.aiter_bytes(1024 * 1024):
                    out.write(piece)
                    n += len(piece)
                    if progress:
                        progress(len(piece))
        self.stats.bytes_received += n
        return n
