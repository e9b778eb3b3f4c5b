"""Chunks on local disk under `<data_dir>/blobs`, written through signed app URLs.

A write streams the request body into a temporary file while hashing it, checks size and
SHA-256, fsyncs, and only then renames into place: a chunk file that exists is complete
and correct when written. Readers re-verify (bit rot, tampering) in the file service,
except a chunk this process wrote in the last FRESH_SECONDS whose file is untouched since
(`read_checked`): what a device following an upload fetches moments after it was stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import hashlib
import os
import sys
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TypeVar

from app.core.errors import BadRequest, InsufficientStorage, PayloadTooLarge
from app.storage.base import UploadTarget, chunk_key
from app.storage.signing import signed_blob_url

T = TypeVar("T")
READ_PIECE = 1024 * 1024
# A chunk's bytes are hashed and written in slices of this size, off the event loop.
WRITE_SLICE = 1024 * 1024
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
# A chunk this process wrote, hashing it as it went, is served without hashing it again
# for this long, as long as its file is the one written and unchanged (same inode, size,
# mtime and ctime; on kernels before 6.13 timestamps are coarse, so a rewrite in place
# within a few milliseconds of the write could go unseen, and only something outside
# Coffer rewrites a chunk in place). Hashing it again would almost always hash the same
# page-cache pages that were just hashed: rot on the disk is read back only if those
# pages were evicted within these seconds. This is the chunk a device following an upload
# fetches moments after it is stored: one SHA-256 pass of the server's two for every
# streamed byte. At most FRESH_ENTRIES are remembered.
FRESH_SECONDS = 10.0
FRESH_ENTRIES = 8192
FileIdentity = tuple[int, int, int, int, int]


def _identity(st: os.stat_result) -> FileIdentity:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


async def _finished(fn: Callable[..., T], *args: object) -> T:
    """fn(*args) in a worker thread, waited for even when the caller is cancelled (a
    dropped request): the thread writes to a descriptor the caller closes afterwards."""
    work = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await work
        raise


def _write_all(fd: int, pieces: list[bytes]) -> None:
    """Write these buffers in order: `writev`, IOV_MAX of them at a time, a short write
    resumed where it stopped."""
    at = 0
    while at < len(pieces):
        group = pieces[at : at + _IOV_MAX]
        written = os.writev(fd, group)
        for piece in group:
            if written >= len(piece):
                written -= len(piece)
                at += 1
                continue
            view = memoryview(piece)[written:]
            while view:
                view = view[os.write(fd, view) :]
            at += 1
            break


_IOV_MAX = max(16, os.sysconf("SC_IOV_MAX"))  # (-1: no stated limit)


def sync_filesystem(path: Path) -> None:
    """Flush every dirty page of the file system holding `path` (Linux `syncfs`), or, where
    there is no syncfs, everything (`sync`)."""
    if _libc is None:
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(fd)


class LocalBlobStore:
    verifies_on_write = True
    accepts_deltas = True

    def __init__(
        self,
        root: Path,
        secret_key: str,
        upload_ttl: int,
        download_ttl: int,
        fsync: bool = True,
    ) -> None:
        self.root = root
        self.tmp_dir = root / "tmp"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.secret_key = secret_key
        self.upload_ttl = upload_ttl
        self.download_ttl = download_ttl
        self.fsync = fsync
        # (owner, sha) -> (the chunk file's identity when written, monotonic time written)
        self._written: OrderedDict[tuple[str, str], tuple[FileIdentity, float]] = OrderedDict()

    def path(self, owner: str, sha256: str) -> Path:
        return self.root / chunk_key(owner, sha256)

    async def upload_url(
        self,
        base_url: str,
        owner: str,
        sha256: str,
        size: int,
        upload_id: str,
        delta_base: str | None = None,
    ) -> UploadTarget:
        # The PUT route hashes while it writes, so a PUT can never store wrong bytes under
        # a hash: no staging is needed here.
        url = signed_blob_url(
            base_url,
            self.secret_key,
            "put",
            owner,
            sha256,
            size,
            self.upload_ttl,
            delta_base=delta_base,
        )
        return UploadTarget(url)

    async def download_url(
        self, base_url: str, owner: str, sha256: str, size: int, epoch: int
    ) -> str:
        return signed_blob_url(
            base_url, self.secret_key, "get", owner, sha256, size, self.download_ttl, epoch
        )

    async def accept_upload(self, owner: str, sha256: str, size: int, upload_id: str) -> str:
        return "stored" if await self.stat(owner, sha256) == size else "missing"

    async def discard_upload(self, owner: str, upload_id: str) -> None:
        return None

    async def stat(self, owner: str, sha256: str) -> int | None:
        try:
            return self.path(owner, sha256).stat().st_size
        except FileNotFoundError:
            return None

    async def write(self, owner: str, sha256: str, size: int, body: AsyncIterator[bytes]) -> None:
        """Store the body as chunk `sha256` if, and only if, it has that size and hash.

        The body's pieces (64 KiB or so) are gathered into slices of WRITE_SLICE bytes,
        each hashed and written (one `writev` of its pieces: not copied into one buffer
        first) in a worker thread (both release the GIL): the event loop goes on receiving
        this and other requests meanwhile, and the kernel's page-cache work runs on another
        core. Measured: the write inline was a fifth of the web process's time while a
        256 MiB file streamed between two devices."""
        tmp = self.tmp_dir / f"{uuid.uuid4().hex}.part"
        hasher = hashlib.sha256()
        received = 0
        fd = -1

        def put(pieces: list[bytes], last: bool) -> str | None:
            for piece in pieces:
                hasher.update(piece)
            _write_all(fd, pieces)
            if not last:
                return None
            if self.fsync:
                os.fsync(fd)
            return hasher.hexdigest()

        try:
            fd = await asyncio.to_thread(os.open, tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            pending: list[bytes] = []
            pending_bytes = 0
            async for piece in body:
                received += len(piece)
                if received > size:
                    raise PayloadTooLarge(
                        f"chunk is larger than the {size} bytes registered",
                        code="size_mismatch",
                    )
                pending.append(piece)
                pending_bytes += len(piece)
                if pending_bytes >= WRITE_SLICE and received < size:
                    await _finished(put, pending, False)
                    pending, pending_bytes = [], 0
            if received != size:
                raise BadRequest(
                    f"chunk has {received} bytes, {size} were registered", code="size_mismatch"
                )
            if await _finished(put, pending, True) != sha256:
                raise BadRequest("chunk bytes do not match their SHA-256", code="hash_mismatch")
            os.close(fd)
            fd = -1
            final = self.path(owner, sha256)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
            self._note_written(owner, sha256, os.stat(final))
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise InsufficientStorage("the server's disk is full") from exc
            raise
        finally:
            if fd >= 0:
                os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    async def put_many(self, owner: str, chunks: dict[str, bytes]) -> None:
        """Write them all, make them durable together (one `syncfs` of the store's file
        system instead of an fsync each: one journal commit for the lot), then rename each
        into place and make the renames durable: a chunk file that exists is complete."""

        def write_all() -> None:
            written: list[tuple[Path, Path]] = []
            try:
                for sha, data in chunks.items():
                    tmp = self.tmp_dir / f"{uuid.uuid4().hex}.part"
                    written.append((tmp, self.path(owner, sha)))
                    with open(tmp, "wb") as out:
                        out.write(data)
                if self.fsync:
                    sync_filesystem(self.tmp_dir)
                made: set[Path] = set()
                for tmp, final in written:
                    if final.parent not in made:
                        final.parent.mkdir(parents=True, exist_ok=True)
                        made.add(final.parent)
                    os.replace(tmp, final)
                if self.fsync:
                    sync_filesystem(self.tmp_dir)
            finally:
                for tmp, _ in written:
                    with contextlib.suppress(FileNotFoundError):
                        tmp.unlink()

        try:
            await asyncio.to_thread(write_all)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise InsufficientStorage("the server's disk is full") from exc
            raise

    async def read(self, owner: str, sha256: str) -> AsyncIterator[bytes]:
        path = self.path(owner, sha256)
        fh = await asyncio.to_thread(open, path, "rb")
        try:
            while piece := await asyncio.to_thread(fh.read, 4 * READ_PIECE):
                yield piece
        finally:
            fh.close()

    async def read_all(self, owner: str, sha256: str) -> bytes:
        return await asyncio.to_thread(self.path(owner, sha256).read_bytes)

    async def read_checked(self, owner: str, sha256: str) -> tuple[bytes, bool]:
        """The whole chunk, and whether it is one this process wrote (and hashed) less
        than FRESH_SECONDS ago, its file unchanged since: then it need not be hashed."""

        def read() -> tuple[bytes, os.stat_result]:
            with open(self.path(owner, sha256), "rb") as fh:
                data = fh.read()
                # After the read: a change made before it ended shows in the times.
                return data, os.fstat(fh.fileno())

        data, st = await asyncio.to_thread(read)
        noted = self._written.get((owner, sha256))
        fresh = (
            noted is not None
            and noted[0] == _identity(st)
            and time.monotonic() - noted[1] < FRESH_SECONDS
        )
        return data, fresh

    def _note_written(self, owner: str, sha256: str, st: os.stat_result) -> None:
        written, at = self._written, time.monotonic()
        written[(owner, sha256)] = (_identity(st), at)
        written.move_to_end((owner, sha256))
        while written and (
            len(written) > FRESH_ENTRIES or at - next(iter(written.values()))[1] > FRESH_SECONDS
        ):
            written.popitem(last=False)

    async def delete(self, owner: str, sha256: str) -> None:
        self._written.pop((owner, sha256), None)
        with contextlib.suppress(FileNotFoundError):
            self.path(owner, sha256).unlink()

    async def list_chunks(self, owner: str) -> AsyncIterator[tuple[str, int]]:
        base = self.root / "chunks" / owner
        if not base.is_dir():
            return
        for prefix in sorted(os.listdir(base)):
            entries = await asyncio.to_thread(lambda p=prefix: list(os.scandir(base / p)))
            for entry in entries:
                with contextlib.suppress(FileNotFoundError):
                    yield entry.name, int(entry.stat().st_mtime * 1000)

    async def check(self) -> None:
        probe = self.tmp_dir / f"ready-{uuid.uuid4().hex}"
        probe.write_bytes(b"ok")
        probe.unlink()

    async def close(self) -> None:
        return None
