"""Many small files per request: batch uploads, downloads and deletes for the sync passes.

A pass that finds hundreds of small files to send or fetch would otherwise pay several
round trips per file on each side (register, PUT, commit; manifest, GET). Here:
- small files (one chunk, at most BATCH_INLINE_MAX bytes, or what the server says its
  limit is) go up with their bytes in `POST /api/batch/upload`, up to 1,000 files or
  16 MiB a request, and commit there;
- larger ones up to BATCH_UPLOAD_MAX are registered 1,000 a request the same way, their
  missing chunks PUT (api.parallel at a time, across files), and committed with
  `POST /api/batch/commit`: two requests for the lot instead of two per file;
- files up to BATCH_DOWNLOAD_MAX come down in `POST /api/batch/download`, up to 1,000
  files or 64 MiB a request, are verified chunk by chunk and against their content hash,
  written to `.coffer/tmp/`, made durable with one `syncfs` for the lot, and renamed into
  place;
- deletions go in `POST /api/batch/delete`.
Each file succeeds or fails alone: whatever a batch could not do (a conflict, a refusal,
a file changed meanwhile) is handed back for the one-file path, which knows how to
settle it. Reading, hashing and writing happen in threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import ctypes
import hashlib
import os
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.protocol import MIB, ContentHasher
from client.api import CofferClient
from client.errors import ApiError, DownloadCorrupt
from client.hashing import Chunks, derived_content_hash
from client.scanner import LocalFile
from client.state import Entry

# The largest file that travels inline in a batch upload (the server's limit), and the
# files per request (the server takes up to 1,000 and 16 MiB inline).
BATCH_INLINE_MAX = 1 * MIB
BATCH_FILES = 1000
# Uploads go in smaller requests than the server allows: the other devices hear of a
# file when its request commits, so the first 250 files reach them while the rest are
# still on their way (measured: the standard library's 1,790 files arrive ~2 s sooner).
UPLOAD_GROUP_FILES = 250
UPLOAD_GROUP_BYTES = 4 * MIB
# Files up to this size go up in batches (bigger ones alone, each with its progress bar).
BATCH_UPLOAD_MAX = 8 * MIB
# Files up to this size come down in batches, up to BATCH_DOWNLOAD_TOTAL bytes a request.
BATCH_DOWNLOAD_MAX = 4 * MIB
BATCH_DOWNLOAD_TOTAL = 64 * MIB

Log = Callable[[str], None]
Advance = Callable[[int], None]
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def sync_filesystem(path: Path) -> None:
    """Make every file written under `path` durable at once (Linux `syncfs`; else sync)."""
    if _libc is None:
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        _libc.syncfs(fd)
    finally:
        os.close(fd)


@dataclass
class Upload:
    rel: str
    target: dict[str, str]  # {"path"} or {"parent_id", "name"}
    base_version: int | None
    chunks: Chunks
    local: LocalFile  # the file as hashed: it must still be so when sent and recorded
    content_hash: str  # of those bytes (app.protocol), sent as the uploader's claim


@dataclass
class Download:
    rel: str
    item: dict[str, Any]  # the server's file object (id, size, content_hash, version)


@dataclass
class Plan:
    """What a pass found to send, fetch and delete in bulk (filled as it goes)."""

    uploads: list[Upload] = field(default_factory=list)
    downloads: list[Download] = field(default_factory=list)
    deletes: list[tuple[str, str]] = field(default_factory=list)  # (rel, file id)
    folder_deletes: list[tuple[str, str]] = field(default_factory=list)  # whole folders
    records: list[Entry] = field(default_factory=list)  # agreements to note, in one write

    def __bool__(self) -> bool:
        return bool(
            self.uploads or self.downloads or self.deletes or self.folder_deletes or self.records
        )


def fits_upload(chunks: Chunks | None, size: int) -> bool:
    return chunks is not None and size <= BATCH_UPLOAD_MAX


def fits_download(item: dict[str, Any]) -> bool:
    return int(item.get("size") or 0) <= BATCH_DOWNLOAD_MAX


def _read_all(root: Path, uploads: list[Upload]) -> list[tuple[Upload, bytes] | None]:
    """The bytes of each file, if it is still exactly what was hashed (else None)."""
    out: list[tuple[Upload, bytes] | None] = []
    for u in uploads:
        try:
            path = root / u.rel
            before = os.stat(path, follow_symlinks=False)
            with open(path, "rb") as fh:
                data = fh.read(BATCH_INLINE_MAX + 1)
            after = os.stat(path, follow_symlinks=False)
        except OSError:
            out.append(None)  # gone or unreadable now: the one-file path reports it
            continue
        same = (before.st_size, before.st_mtime_ns) == (after.st_size, after.st_mtime_ns)
        expected = u.chunks[0][0] if u.chunks else hashlib.sha256(b"").hexdigest()
        if not same or len(data) != u.local.size or hashlib.sha256(data).hexdigest() != expected:
            out.append(None)
            continue
        out.append((u, data))
    return out


def _read_chunk(path: Path, offset: int, size: int) -> tuple[bytes, str]:
    """A chunk's bytes and their SHA-256."""
    with open(path, "rb") as fh:
        fh.seek(offset)
        data = fh.read(size)
    return data, hashlib.sha256(data).hexdigest()


def _content_hash(chunks: Chunks, data: bytes) -> str:
    derived = derived_content_hash(chunks)
    if derived is not None:
        return derived
    hasher = ContentHasher()
    hasher.update(data)
    return hasher.hexdigest()


def _write_all(
    root: Path, tmp_dir: Path, files: list[tuple[Download, dict[str, Any], bytes]]
) -> list[tuple[Download, dict[str, Any], Chunks, os.stat_result] | None]:
    """Verify each file against its chunk list and content hash, write it to a temp file,
    make them all durable at once, rename each into place. None for a file that failed
    its checks (nothing written under its name)."""
    staged: list[tuple[Download, dict[str, Any], Chunks, Path] | None] = []
    for d, head, data in files:
        chunks: Chunks = [(sha, size) for sha, size in head.get("chunks") or []]
        offset, good = 0, sum(size for _, size in chunks) == len(data)
        for sha, size in chunks:
            if not good or hashlib.sha256(data[offset : offset + size]).hexdigest() != sha:
                good = False
                break
            offset += size
        if not good or _content_hash(chunks, data) != head["content_hash"]:
            staged.append(None)
            continue
        tmp = tmp_dir / f"{uuid.uuid4().hex}.part"
        with open(tmp, "wb") as out:
            out.write(data)
        staged.append((d, head, chunks, tmp))
    sync_filesystem(tmp_dir)
    done: list[tuple[Download, dict[str, Any], Chunks, os.stat_result] | None] = []
    for entry in staged:
        if entry is None:
            done.append(None)
            continue
        d, head, chunks, tmp = entry
        target = root / d.rel
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, target)
            done.append((d, head, chunks, os.stat(target)))
        except OSError:
            tmp.unlink(missing_ok=True)
            done.append(None)
    return done


class Bulk:
    """Batch transfers of one synced folder."""

    def __init__(self, api: CofferClient, root: Path, tmp_dir: Path, log: Log) -> None:
        self.api = api
        self.root = root
        self.tmp_dir = tmp_dir
        self.log = log
        # Lowered to the server's own limit if it refuses ours (413 inline_too_large).
        self.inline_max = BATCH_INLINE_MAX

    def inline(self, u: Upload) -> bool:
        """Whether the file travels with its bytes in the batch request."""
        return len(u.chunks) <= 1 and u.local.size <= self.inline_max

    async def upload(
        self, uploads: list[Upload], advance: Advance, files_done: Advance
    ) -> tuple[list[tuple[Upload, dict[str, Any]]], list[Upload]]:
        """Send the files; (committed with their file objects, left for the one-file
        path). Small files that changed since they were hashed are in neither: the next
        pass takes them. Small and larger files go at the same time."""
        small = [u for u in uploads if self.inline(u)]
        larger = [u for u in uploads if not self.inline(u)]
        (c1, r1), (c2, r2) = await asyncio.gather(
            self._upload_inline(small, advance, files_done),
            self._upload_chunked(larger, advance, files_done),
        )
        if self.inline_max < BATCH_INLINE_MAX and (late := [u for u in r1 if not self.inline(u)]):
            # The server's inline limit is lower than ours: those go in chunks after all.
            c3, r3 = await self._upload_chunked(late, advance, files_done)
            return c1 + c2 + c3, [u for u in r1 if self.inline(u)] + r2 + r3
        return c1 + c2, r1 + r2

    async def _upload_chunked(
        self, uploads: list[Upload], advance: Advance, files_done: Advance
    ) -> tuple[list[tuple[Upload, dict[str, Any]]], list[Upload]]:
        committed: list[tuple[Upload, dict[str, Any]]] = []
        refused: list[Upload] = []
        for group in _groups(uploads, BATCH_FILES, BATCH_FILES, lambda _u: 1):
            body = [
                {
                    **u.target,
                    "size": u.local.size,
                    "chunks": [{"sha256": sha, "size": size} for sha, size in u.chunks],
                    "content_hash": u.content_hash,
                    **({"base_version": u.base_version} if u.base_version is not None else {}),
                }
                for u in group
            ]
            try:
                results = await self.api.batch_upload(body)
            except ApiError as exc:
                if exc.status in (400, 413, 507) or exc.status >= 500:
                    refused += group  # the one-file path reports each
                    continue
                raise
            registered: list[tuple[Upload, dict[str, Any]]] = []
            for u, result in zip(group, results, strict=True):
                if result["status"] == "upload":
                    registered.append((u, result))
                else:
                    refused.append(u)  # a conflict, a refusal: the one-file path settles it
            failed = await self._put_missing(registered, advance)
            to_commit = [(u, r) for u, r in registered if id(u) not in failed]
            refused += [u for u, _ in registered if id(u) in failed]
            if not to_commit:
                continue
            done = await self.api.batch_commit(
                [{"file_id": r["file_id"], "upload_id": r["upload_id"]} for _, r in to_commit]
            )
            before = len(committed)
            for (u, _), result in zip(to_commit, done, strict=True):
                if result["status"] == "ok":
                    committed.append((u, result["file"]))
                else:
                    refused.append(u)
            files_done(len(committed) - before)
        return committed, refused

    async def _put_missing(
        self, registered: list[tuple[Upload, dict[str, Any]]], advance: Advance
    ) -> set[int]:
        """PUT every missing chunk of the registered files, `api.parallel` at a time across
        files; the ids of the uploads that could not be sent whole (changed since they were
        hashed, or refused: the one-file path retries or reports them)."""
        work: list[tuple[Upload, dict[str, Any], int]] = []
        for u, result in registered:
            offsets, pos = [], 0
            for _, size in u.chunks:
                offsets.append(pos)
                pos += size
            work += [(u, m, offsets[m["index"]]) for m in result["missing"]]
        failed: set[int] = set()
        queue = iter(work)
        # A chunk two files share (copies) goes once: the second waits for the first PUT.
        sending: dict[str, asyncio.Future[bool]] = {}

        async def worker() -> None:
            for u, m, offset in queue:
                if id(u) in failed:
                    continue
                wanted = m["sha256"]
                if wanted in sending:
                    if not await sending[wanted]:
                        failed.add(id(u))
                    continue
                sent = sending[wanted] = asyncio.get_running_loop().create_future()
                ok = False
                try:
                    data, sha = await asyncio.to_thread(
                        _read_chunk, self.root / u.rel, offset, m["size"]
                    )
                    if sha == wanted:  # else the file changed since it was hashed
                        await self.api.put_chunk(
                            m["url"], data, m.get("headers") or {}, m.get("encodings") or ()
                        )
                        advance(len(data))
                        ok = True
                except (OSError, ApiError):
                    pass
                finally:
                    sent.set_result(ok)
                if not ok:
                    failed.add(id(u))

        await asyncio.gather(*(worker() for _ in range(max(1, self.api.parallel))))
        return failed

    async def _upload_inline(
        self, uploads: list[Upload], advance: Advance, files_done: Advance
    ) -> tuple[list[tuple[Upload, dict[str, Any]]], list[Upload]]:
        committed: list[tuple[Upload, dict[str, Any]]] = []
        refused: list[Upload] = []
        if not uploads:
            return committed, refused
        read = await asyncio.to_thread(_read_all, self.root, uploads)
        ready = [r for r in read if r is not None]
        # Two requests in flight: while the server commits one, the next is on its way.
        sem = asyncio.Semaphore(2)

        async def send(group: list[tuple[Upload, bytes]]) -> None:
            body = [
                {
                    **u.target,
                    "size": len(data),
                    "chunks": [{"sha256": sha, "size": size} for sha, size in u.chunks],
                    "content_hash": u.content_hash,
                    **({"base_version": u.base_version} if u.base_version is not None else {}),
                    "data": base64.b64encode(data).decode(),
                }
                for u, data in group
            ]
            async with sem:
                try:
                    results = await self.api.batch_upload(body)
                except ApiError as exc:
                    limit = (exc.body.get("error") or {}).get("max_inline_bytes")
                    if exc.code == "inline_too_large" and isinstance(limit, int):
                        self.inline_max = min(self.inline_max, limit)
                    if exc.status in (400, 413, 507) or exc.status >= 500:
                        refused.extend(u for u, _ in group)  # the one-file path reports each
                        return
                    raise
            before = len(committed)
            for (u, data), result in zip(group, results, strict=True):
                if result["status"] == "committed":
                    committed.append((u, result["file"]))
                    advance(len(data))
                else:
                    refused.append(u)
            files_done(len(committed) - before)

        groups = _groups(ready, UPLOAD_GROUP_FILES, UPLOAD_GROUP_BYTES, lambda r: len(r[1]))
        await asyncio.gather(*(send(g) for g in groups))
        return committed, refused

    async def download(
        self, downloads: list[Download], advance: Advance, files_done: Advance
    ) -> tuple[list[tuple[Download, dict[str, Any], Chunks, os.stat_result]], list[Download]]:
        """Fetch the files; (written and verified: with the header the server sent, the
        chunk list and the new local stat; left for the one-file path)."""
        done: list[tuple[Download, dict[str, Any], Chunks, os.stat_result]] = []
        left: list[Download] = []
        for group in _groups(
            downloads, BATCH_FILES, BATCH_DOWNLOAD_TOTAL, lambda d: int(d.item.get("size") or 0)
        ):
            received: list[tuple[Download, dict[str, Any], bytes]] = []
            try:
                async with self.api.batch_download([d.item["id"] for d in group]) as reader:
                    for d in group:
                        head = await reader.next_head()
                        if head is None:
                            raise DownloadCorrupt("the batch ended early")
                        if "error" in head:
                            left.append(d)
                            continue
                        data = bytearray()
                        async for piece in reader.body(head["size"]):
                            data += piece
                            advance(len(piece))
                        received.append((d, head, bytes(data)))
            except (ApiError, DownloadCorrupt) as exc:
                self.log(f"batch download cut short ({exc}); fetching the rest one by one")
                got = {id(d) for d, _, _ in received}
                left += [d for d in group if id(d) not in got and d not in left]
            written = await asyncio.to_thread(_write_all, self.root, self.tmp_dir, received)
            for (d, _, _), result in zip(received, written, strict=True):
                if result is None:
                    left.append(d)
                else:
                    done.append(result)
            files_done(sum(r is not None for r in written))
        return done, left

    async def delete(
        self, deletes: list[tuple[str, str]]
    ) -> tuple[list[str], list[tuple[str, str]]]:
        """Trash the files; (gone: relative paths; left for the one-file path)."""
        gone: list[str] = []
        left: list[tuple[str, str]] = []
        for group in _groups(deletes, BATCH_FILES, BATCH_FILES, lambda _d: 1):
            results = await self.api.batch_delete([file_id for _, file_id in group])
            for (rel, file_id), result in zip(group, results, strict=True):
                status = (result.get("error") or {}).get("status")
                if result["status"] == "ok" or status == 404:
                    gone.append(rel)
                else:
                    left.append((rel, file_id))
        return gone, left


def _groups(
    items: list[Any], most: int, budget: int, weight: Callable[[Any], int]
) -> list[list[Any]]:
    """Consecutive groups of at most `most` items whose weights add up to at most `budget`
    (an item heavier than the budget goes alone)."""
    groups: list[list[Any]] = []
    current: list[Any] = []
    used = 0
    for item in items:
        w = weight(item)
        if current and (len(current) >= most or used + w > budget):
            groups.append(current)
            current, used = [], 0
        current.append(item)
        used += w
    if current:
        groups.append(current)
    return groups
