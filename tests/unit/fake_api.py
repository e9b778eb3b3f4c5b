"""An in-memory stand-in for the part of the Coffer API the sync client uses, so that the
sync's passes can be run in-process and in milliseconds. It mimics the answers the client
depends on (paths, ids, versions, content hashes, chunk lists, 404 / 409 errors), nothing
more: the real server is exercised by tests/test_client.py."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from app.protocol import ContentHasher
from client.api import BatchReader, CofferClient, TransferStats
from client.errors import ApiError


def _content_hash(data: bytes) -> str:
    hasher = ContentHasher()
    hasher.update(data)
    return hasher.hexdigest()


def _parent(path: str) -> str:
    return path.rpartition("/")[0] or "/"


class FakeServer:
    """One account's tree: items by path, chunk bytes by SHA-256."""

    def __init__(self) -> None:
        self.items: dict[str, dict[str, Any]] = {}
        self.blobs: dict[str, bytes] = {}
        self.uploads: dict[str, dict[str, Any]] = {}
        self.ids = itertools.count(1)
        self.moves = 0

    # Helpers for tests: change the server as another device would.

    def put_folder(self, path: str) -> dict[str, Any]:
        if path in self.items:
            return self.items[path]
        if _parent(path) != "/":
            self.put_folder(_parent(path))
        item = {"id": f"id{next(self.ids)}", "path": path, "kind": "folder", "version": 1}
        item |= {"name": path.rpartition("/")[2], "size": 0, "content_hash": None}
        self.items[path] = item
        return item

    def put_file(self, path: str, data: bytes) -> dict[str, Any]:
        if _parent(path) != "/":
            self.put_folder(_parent(path))
        sha = hashlib.sha256(data).hexdigest()
        self.blobs[sha] = data
        old = self.items.get(path)
        item = {
            "id": old["id"] if old else f"id{next(self.ids)}",
            "path": path,
            "name": path.rpartition("/")[2],
            "kind": "file",
            "version": old["version"] + 1 if old else 1,
            "size": len(data),
            "content_hash": _content_hash(data),
            "chunks": [(sha, len(data))] if data else [],
        }
        self.items[path] = item
        return item

    def remove(self, path: str) -> None:
        for p in [p for p in self.items if p == path or p.startswith(path + "/")]:
            del self.items[p]

    def data(self, path: str) -> bytes:
        return b"".join(self.blobs[sha] for sha, _ in self.items[path]["chunks"])

    def by_id(self, file_id: str) -> dict[str, Any]:
        for item in self.items.values():
            if item["id"] == file_id:
                return item
        raise ApiError(404, "not_found", "no such file", {})


class FakeApi:
    """The CofferClient methods the sync calls, answered by a FakeServer."""

    parallel = 4

    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.stats = TransferStats()

    @staticmethod
    def _out(item: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in item.items() if k != "chunks"}

    async def events(self, cursor: str, **_: Any) -> dict[str, Any]:
        return {"events": [], "cursor": 0, "has_more": False}

    async def shared_with_me(self) -> list[dict[str, Any]]:
        return []

    async def list_page(self, where: dict[str, str], **_: Any) -> dict[str, Any]:
        return {"items": await self.list(where["path"]), "cursor": None}

    async def tree_page(self, where: dict[str, str], **_: Any) -> dict[str, Any]:
        top = where.get("path", "/")
        if top != "/" and self.server.items.get(top, {}).get("kind") != "folder":
            raise ApiError(404, "not_found", f"{top}: no such folder", {})
        below = [
            self._out(i)
            for p, i in sorted(self.server.items.items())
            if top == "/" or p.startswith(top + "/")
        ]
        return {"items": below, "cursor": None}

    async def list(self, path: str = "/") -> list[dict[str, Any]]:
        if path != "/" and self.server.items.get(path, {}).get("kind") != "folder":
            raise ApiError(404, "not_found", f"{path}: no such folder", {})
        return [self._out(i) for p, i in sorted(self.server.items.items()) if _parent(p) == path]

    async def create_folder(self, target: dict[str, str]) -> dict[str, Any]:
        if target["path"] in self.server.items:
            raise ApiError(409, "exists", "already there", {})
        return self._out(self.server.put_folder(target["path"]))

    async def delete(self, file_id: str) -> None:
        self.server.remove(self.server.by_id(file_id)["path"])

    async def move(self, file_id: str, target: dict[str, str]) -> dict[str, Any]:
        item = self.server.by_id(file_id)
        if target["path"] in self.server.items:
            raise ApiError(409, "exists", "already there", {})
        del self.server.items[item["path"]]
        item |= {"path": target["path"], "name": target["path"].rpartition("/")[2]}
        self.server.items[target["path"]] = item
        self.server.moves += 1
        return self._out(item)

    # The real paging over `describe` below.
    manifest = CofferClient.manifest

    async def describe(
        self, file_id: str, *, chunk_offset: int | None = None, chunk_limit: int | None = None
    ) -> dict[str, Any]:
        item = self.server.by_id(file_id)
        chunks = [
            {"sha256": sha, "size": size, "url": f"blob/{sha}"}
            for sha, size in item.get("chunks", [])
        ]
        start = chunk_offset or 0
        return self._out(item) | {
            "chunks": chunks[start : start + (chunk_limit or len(chunks))],
            "next_chunk_offset": None,
        }

    async def register_upload(self, body: dict[str, Any]) -> dict[str, Any]:
        node = self.server.items.get(body["path"])
        if node is not None and node["kind"] == "folder":
            raise ApiError(409, "is_a_folder", "a folder is there", {})
        base = body.get("base_version")
        if base is not None and node is not None and node["version"] != base:
            raise ApiError(409, "conflict", "the file changed since base_version", {})
        upload_id = f"up{next(self.server.ids)}"
        self.server.uploads[upload_id] = body
        missing = [
            {"index": i, "sha256": c["sha256"], "size": c["size"], "url": f"blob/{c['sha256']}"}
            for i, c in enumerate(body["chunks"])
            if c["sha256"] not in self.server.blobs
        ]
        return {"file_id": upload_id, "upload_id": upload_id, "missing": missing}

    async def put_chunk(
        self, url: str, data: bytes, headers: dict[str, str], encodings: Any = ()
    ) -> None:
        self.server.blobs[url.rpartition("/")[2]] = data
        self.stats.chunks_sent += 1
        self.stats.bytes_sent += len(data)

    async def commit_upload(self, file_id: str, upload_id: str) -> dict[str, Any]:
        body = self.server.uploads.pop(upload_id)
        data = b"".join(self.server.blobs[c["sha256"]] for c in body["chunks"])
        return self._out(self.server.put_file(body["path"], data))

    async def get_chunk_pieces(self, url: str, size: int = 0) -> list[bytes]:
        data = self.server.blobs[url.rpartition("/")[2]]
        self.stats.bytes_received += len(data)
        return [data[:1000], data[1000:]]  # the pieces they came in

    @asynccontextmanager
    async def content(self, file_id: str, version: int | None = None) -> AsyncIterator[Any]:
        data = self.server.data(self.server.by_id(file_id)["path"])
        self.stats.bytes_received += len(data)

        async def pieces() -> AsyncIterator[bytes]:
            yield data

        yield pieces()

    # The batch API, as the server answers it (each file on its own).

    # The server's inline limit (settings batch_inline_max_bytes).
    inline_max = 1024 * 1024

    async def batch_upload(self, files: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if any(len(base64.b64decode(f.get("data") or "")) > self.inline_max for f in files):
            error = {
                "code": "inline_too_large",
                "message": "too big inline",
                "max_inline_bytes": self.inline_max,
            }
            raise ApiError(413, "inline_too_large", "too big inline", {"error": error})
        results = []
        for i, f in enumerate(files):
            node = self.server.items.get(f["path"])
            base = f.get("base_version")
            if node is not None and node["kind"] == "folder":
                error = {"code": "is_a_folder", "message": "a folder", "status": 409}
                results.append({"index": i, "status": "error", "error": error})
                continue
            if base is not None and node is not None and node["version"] != base:
                error = {"code": "conflict", "message": "changed", "status": 409}
                results.append({"index": i, "status": "error", "error": error})
                continue
            if f.get("data") is None:  # registered: the chunks follow, then a commit
                reg = await self.register_upload(f)
                results.append({"index": i, "status": "upload", **reg})
                continue
            data = base64.b64decode(f["data"])
            self.stats.bytes_sent += len(data)
            file = self._out(self.server.put_file(f["path"], data))
            results.append({"index": i, "status": "committed", "file": file})
        return results

    async def batch_commit(self, uploads: list[dict[str, str]]) -> list[dict[str, Any]]:
        results = []
        for i, u in enumerate(uploads):
            file = await self.commit_upload(u["file_id"], u["upload_id"])
            results.append({"index": i, "status": "ok", "file": file})
        return results

    async def batch_delete(self, ids: list[str]) -> list[dict[str, Any]]:
        results = []
        for i, file_id in enumerate(ids):
            try:
                self.server.remove(self.server.by_id(file_id)["path"])
                results.append({"index": i, "status": "ok"})
            except ApiError:
                error = {"code": "not_found", "message": "gone", "status": 404}
                results.append({"index": i, "status": "error", "error": error})
        return results

    @asynccontextmanager
    async def batch_download(self, ids: list[str]) -> AsyncIterator[BatchReader]:
        stream = bytearray()
        for i, file_id in enumerate(ids):
            try:
                item = self.server.by_id(file_id)
            except ApiError:
                error = {"code": "not_found", "message": "gone", "status": 404}
                stream += json.dumps({"index": i, "id": file_id, "error": error}).encode() + b"\n"
                continue
            data = self.server.data(item["path"])
            head = {
                "index": i,
                "id": file_id,
                "path": item["path"],
                "version": item["version"],
                "size": len(data),
                "content_hash": item["content_hash"],
                "chunks": item["chunks"],
            }
            stream += json.dumps(head).encode() + b"\n" + data
            self.stats.bytes_received += len(data)

        async def pieces() -> AsyncIterator[bytes]:
            yield bytes(stream)

        yield BatchReader(pieces())

    async def batch_folders(self, folders: list[dict[str, str]]) -> list[dict[str, Any]]:
        results = []
        for i, target in enumerate(folders):
            existing = self.server.items.get(target["path"])
            if existing is not None and existing["kind"] != "folder":
                error = {"code": "not_a_folder", "message": "a file is there", "status": 409}
                results.append({"index": i, "status": "error", "error": error})
                continue
            folder = self._out(self.server.put_folder(target["path"]))
            results.append({"index": i, "status": "ok", "file": folder})
        return results
