"""Moving file bytes between the local disk and the server, verified.

Uploads: the file's chunk list is registered and only the chunks the server lacks are
sent, several at once (the server hashes each; a file that changes meanwhile is refused,
never stored half old, half new). A changed chunk of an edited file goes up as a delta
against the chunk it replaced when the server offers that (app/protocol/delta.py): only
the pieces that changed travel. Memory stays at about `parallel` chunks whatever the
file size.

Downloads are assembled in a temporary file from chunks already on disk (any synced file,
by hash) plus the missing ones fetched in parallel; with nothing to reuse the file is
streamed in one request. Every chunk is checked against the manifest's SHA-256 and the
manifest against the content hash; the file is fsynced and only then renamed into place:
a half-downloaded or damaged file never appears under its real name.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import stat
import uuid
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

from rich.progress import Progress

from app.protocol import delta
from client.api import CofferClient
from client.diskio import copy_behind, to_the_end, write_behind
from client.errors import (
    ApiError,
    DownloadCorrupt,
    DownloadIncomplete,
    LocalFileChanged,
    RemoteChanged,
    UploadIncomplete,
)
from client.hashing import (
    Chunks,
    content_hash_of_fd,
    derived_content_hash,
    file_hashes,
    sha256_hex,
)
from client.state import SyncState

# Transfers of files at least this big show a progress bar during sync.
PROGRESS_MIN = 8 * 1024 * 1024
# Where a synced local file holds a chunk: (relative path, offset, (size, mtime_ns) the
# file had when synced).
ChunkSource = tuple[str, int, tuple[int, int]]

Log = Callable[[str], None]
Advance = Callable[[int], None]


def _quiet(_msg: str) -> None:
    pass


def _no_progress(_n: int) -> None:
    pass


async def run_all(jobs: list[Coroutine[Any, Any, None]]) -> None:
    """Run the jobs concurrently; the first error cancels the rest and is raised as is."""
    tasks = [asyncio.create_task(job) for job in jobs]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# ------------------------------------------------------------------- uploads


async def upload_file(
    api: CofferClient,
    local: Path,
    remote: str | dict[str, str],
    *,
    base_version: int | None = None,
    hashed: tuple[str, Chunks] | None = None,
    progress: Advance | None = None,
    previous: Chunks | None = None,
) -> dict[str, Any]:
    """Upload `local` to `remote` (a path in our tree, or {"parent_id","name"}); returns
    the committed file object. `hashed`: its content hash and chunks, if already known.
    With `base_version`, the server refuses (409 conflict) if its head is no longer that
    version. `previous`: the chunks of the version this one replaces, as last synced: each
    changed chunk names the one at its place as its base, and goes up as a delta against
    it when the server offers that. LocalFileChanged: the file's bytes changed while it was
    being read."""
    local_hash, chunks = hashed or await asyncio.to_thread(file_hashes, local)
    size = sum(s for _, s in chunks)
    bases = delta_bases(chunks, previous or [])
    body: dict[str, Any] = {
        **({"path": remote} if isinstance(remote, str) else remote),
        "size": size,
        "chunks": [
            {"sha256": sha, "size": s, **({"bases": bases[i]} if i in bases else {})}
            for i, (sha, s) in enumerate(chunks)
        ],
        "content_hash": local_hash,
    }
    if base_version is not None:
        body["base_version"] = base_version
    reg = await api.register_upload(body)
    offsets = []
    pos = 0
    for _, s in chunks:
        offsets.append(pos)
        pos += s
    for _attempt in range(3):
        await _put_chunks(api, local, reg["missing"], offsets, progress)
        try:
            return await api.commit_upload(reg["file_id"], reg["upload_id"])
        except ApiError as exc:
            if exc.code != "missing_chunks":
                raise
            # Collected meanwhile (the server asks again for what it no longer has).
            reg["missing"] = exc.body["error"]["missing"]
    raise UploadIncomplete("chunks kept going missing")


def delta_bases(chunks: Chunks, previous: Chunks) -> dict[int, list[str]]:
    """For each chunk the previous version does not have: the previous version's chunks
    its byte range overlaps (its likely bases, in order; the MAX_BASES that overlap most),
    by index. An overwrite keeps the cut points around it and an insert shifts the rest a
    little, so the chunks at the same place hold most of the new chunk's bytes; an edit
    also moves the next cut points, so a new chunk can span two old ones."""
    old = {sha for sha, _ in previous}
    bases: dict[int, list[str]] = {}
    j, old_start = 0, 0
    start = 0
    for i, (sha, size) in enumerate(chunks):
        end = start + size
        # Skip previous chunks that end before this one starts.
        while j < len(previous) and old_start + previous[j][1] <= start:
            old_start += previous[j][1]
            j += 1
        if sha not in old:
            overlapping: list[tuple[int, int, str]] = []  # (overlap, position, sha)
            k, k_start = j, old_start
            while k < len(previous) and k_start < end:
                k_end = k_start + previous[k][1]
                overlapping.append((min(end, k_end) - max(start, k_start), k, previous[k][0]))
                k_start = k_end
                k += 1
            most = sorted(overlapping, reverse=True)[: delta.MAX_BASES]
            if most:
                bases[i] = [base for _, _, base in sorted(most, key=lambda o: o[1])]
        start = end
    return bases


async def _put_chunks(
    api: CofferClient,
    local: Path,
    missing: list[dict[str, Any]],
    offsets: list[int],
    progress: Advance | None,
) -> None:
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for m in missing:
        queue.put_nowait(m)

    async def worker() -> None:
        fd = await asyncio.to_thread(os.open, local, os.O_RDONLY)
        try:
            while not queue.empty():
                m = queue.get_nowait()
                data = await asyncio.to_thread(os.pread, fd, m["size"], offsets[m["index"]])
                base = m.get("base")
                # Against a base the URL takes a delta body only (all bytes, if need be).
                body = await asyncio.to_thread(delta.encode, data, base["pieces"]) if base else None
                headers, encodings = m.get("headers") or {}, m.get("encodings") or ()
                try:
                    await api.put_chunk(m["url"], body[0] if body else data, headers, encodings)
                except ApiError as exc:
                    # The store checks every chunk's hash (Coffer's, or S3 with the checksum
                    # signed into the URL), so the bytes are hashed here only when it refused
                    # them: one SHA-256 pass less on every upload.
                    if exc.status != 400:
                        raise
                    if await asyncio.to_thread(sha256_hex, data) != m["sha256"]:
                        raise LocalFileChanged(local) from exc
                    if not (body and body[1]):
                        raise
                    # A piece matched the base by its short hash but not its bytes (or the
                    # base changed): send every byte, still as a delta body.
                    everything, _ = await asyncio.to_thread(delta.encode, data, [])
                    await api.put_chunk(m["url"], everything, headers, encodings)
                if progress:
                    progress(len(data))
        finally:
            os.close(fd)

    await run_all([worker() for _ in range(min(api.parallel, len(missing)))])


# ------------------------------------------------------------------- downloads


class LocalChunks:
    """Chunks of synced local files, found by hash (the state's chunk index), to copy
    into a download instead of fetching them."""

    def __init__(self, root: Path, state: SyncState, log: Log = _quiet) -> None:
        self.root = root
        self.state = state
        self.log = log

    def source(self, sha: str) -> ChunkSource | None:
        """A synced file known to hold the chunk (asked on the event loop's thread: the
        state's connection is not shared with worker threads)."""
        return self.state.chunk_source(sha)

    def blocks(self, path: str) -> tuple[list[str], tuple[int, int]] | None:
        """The block digests of the synced file at `path` and the (size, mtime_ns) they
        hold for (on the event loop's thread, like `source`)."""
        return self.state.block_hashes(path)

    def copy(self, source: ChunkSource, sha: str, size: int, fd: int, dst_offset: int) -> bool:
        """Copy the chunk from the synced local file that holds it into `fd` (blocking).
        The file is trusted without re-reading when its size and mtime are as last synced
        (copied in the kernel); otherwise its bytes are hashed first. False: get it from
        the server."""
        if self.copy_run(source, size, fd, dst_offset):
            return True
        path, offset, _ = source
        self.log(f"re-reading {path}: not as last synced")
        try:
            with open(self.root / path, "rb") as src:
                data = os.pread(src.fileno(), size, offset)
            if len(data) != size or sha256_hex(data) != sha:
                return False
            write_behind(fd, data, dst_offset)
            return True
        except OSError as exc:
            self.log(f"cannot copy a chunk of {path} ({exc}); downloading it")
            return False

    def copy_run(self, source: ChunkSource, size: int, fd: int, dst_offset: int) -> bool:
        """Copy `size` bytes (one chunk, or several one after the other) from a synced
        file, in the kernel, when the file is as last synced (blocking). False: it is not
        (or is gone): `copy` checks chunk by chunk against the hash."""
        path, offset, synced = source
        try:
            src = os.open(self.root / path, os.O_RDONLY)
        except OSError:
            return False
        try:
            st = os.fstat(src)
            return (st.st_size, st.st_mtime_ns) == tuple(synced) and copy_behind(
                src, fd, size, offset, dst_offset
            )
        except OSError:
            return False
        finally:
            os.close(src)


def replace_into_place(tmp: Path, target: Path) -> None:
    """Rename `tmp` over `target`. The old file's blocks are freed when its last reference
    goes, inside the rename unless something still holds it (65-80 ms for 256 MiB on
    ext4, the bulk of what is left of an edit once the new copy is ready): so the old file
    is held open across the rename and let go in a worker thread."""
    old = None
    with contextlib.suppress(OSError):
        # Only a regular file (opening a FIFO would wait for a writer).
        if stat.S_ISREG(os.lstat(target).st_mode):
            old = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        os.replace(tmp, target)
    finally:
        if old is not None:
            _release_later(old)


def _release_later(fd: int) -> None:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        os.close(fd)
        return
    loop.run_in_executor(None, os.close, fd)


async def fetch(
    api: CofferClient,
    file_id: str,
    target: Path,
    tmp: Path,
    *,
    reuse: LocalChunks | None = None,
    advance: Advance = _no_progress,
    log: Log = _quiet,
) -> tuple[Chunks, dict[str, Any]]:
    """Assemble the server's file at `target`, through `tmp` (removed on any failure),
    from local chunks and downloaded ones; returns its chunk list and the file object it
    describes. DownloadCorrupt / DownloadIncomplete: the bytes did not match the manifest;
    RemoteChanged: a newer version became the head meanwhile."""
    body, described = await api.manifest(file_id)
    expected = body["content_hash"]
    chunks = [(c["sha256"], c["size"]) for c in described]
    log(f"fetching {target.name}")
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        try:
            offsets = []
            pos = 0
            for c in described:
                offsets.append(pos)
                pos += c["size"]
            os.ftruncate(fd, pos)
            if reuse is None or not any(reuse.source(c["sha256"]) for c in described):
                # Nothing to reuse: one streamed request is faster than a GET per chunk.
                await _stream_content(api, file_id, body["version"], described, fd, advance)
            else:
                await _assemble(api, file_id, expected, described, offsets, fd, reuse, advance)
            log(f"fetched {target.name}, syncing it to disk")
            await asyncio.to_thread(os.fsync, fd)
            if not await _matches(fd, chunks, body):
                raise DownloadCorrupt("downloaded file does not match its hash")
        finally:
            os.close(fd)
        replace_into_place(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)  # noqa: ASYNC240 - one local unlink, on the way out
        raise
    return chunks, body


async def _matches(fd: int, chunks: Chunks, body: dict[str, Any]) -> bool:
    """Whether the assembled file (every chunk already verified) has the content hash the
    server named: derived from the chunks when they are the blocks, else hashed here (the
    file was just written: it is read back from the page cache)."""
    derived = derived_content_hash(chunks)
    if derived is not None:
        return derived == body["content_hash"]
    size = sum(n for _, n in chunks)
    return await asyncio.to_thread(content_hash_of_fd, fd, size) == body["content_hash"]


async def _assemble(
    api: CofferClient,
    file_id: str,
    expected: str,
    described: list[dict[str, Any]],
    offsets: list[int],
    fd: int,
    reuse: LocalChunks,
    advance: Advance,
) -> None:
    """Each chunk copied from a local file that has it, or fetched, verified, written."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(described)):
        queue.put_nowait(i)

    async def worker() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            c = described[i]
            source = reuse.source(c["sha256"])
            if source and await to_the_end(
                reuse.copy, source, c["sha256"], c["size"], fd, offsets[i]
            ):
                advance(c["size"])
                continue
            try:
                pieces = await api.get_chunk_pieces(c["url"], c["size"])
            except ApiError as exc:
                if exc.status != 403:
                    raise
                # Read URLs live minutes and die when access changes: ask again.
                pieces = await api.get_chunk_pieces(
                    await _fresh_chunk_url(api, file_id, i, c["sha256"], expected), c["size"]
                )
            if await asyncio.to_thread(sha256_hex, *pieces) != c["sha256"]:
                raise DownloadCorrupt("a chunk arrived damaged")
            await to_the_end(write_behind, fd, pieces, offsets[i])
            advance(c["size"])

    await run_all([worker() for _ in range(min(api.parallel, len(described)))])


async def _fresh_chunk_url(
    api: CofferClient, file_id: str, index: int, sha: str, expected: str
) -> str:
    body = await api.describe(file_id, chunk_offset=index, chunk_limit=1)
    chunks = body.get("chunks") or []
    if body.get("content_hash") != expected or not chunks or chunks[0]["sha256"] != sha:
        raise RemoteChanged("the file changed while it was downloading")
    return chunks[0]["url"]


async def _stream_content(
    api: CofferClient,
    file_id: str,
    version: int,
    described: list[dict[str, Any]],
    fd: int,
    advance: Advance,
) -> None:
    """Write the version's bytes to `fd`, checking each chunk's hash as it completes."""
    index = filled = 0
    hasher = hashlib.sha256()
    async with api.content(file_id, version) as pieces:
        async for raw in pieces:
            piece = memoryview(raw)
            while piece:
                if index == len(described):
                    raise DownloadCorrupt("the download is longer than the file")
                need = described[index]["size"] - filled
                part, piece = piece[:need], piece[need:]
                hasher.update(part)
                os.write(fd, part)
                filled += len(part)
                if filled == described[index]["size"]:
                    if hasher.hexdigest() != described[index]["sha256"]:
                        raise DownloadCorrupt("a chunk arrived damaged")
                    index, filled, hasher = index + 1, 0, hashlib.sha256()
            advance(len(raw))
    if index != len(described):
        raise DownloadIncomplete("the download ended early")


# ------------------------------------------------------------------- the sync's transfers


class Transfers:
    """The sync's uploads and downloads: big ones get a progress bar, downloads reuse
    chunks of synced local files and are assembled in `.coffer/tmp/`."""

    def __init__(
        self,
        api: CofferClient,
        root: Path,
        state: SyncState,
        *,
        log: Log = _quiet,
        progress: Progress | None = None,
    ) -> None:
        self.api = api
        self.root = root
        self.tmp_dir = state.dir / "tmp"
        self.local_chunks = LocalChunks(root, state, log)
        self.log = log
        # Shows transfers of files over PROGRESS_MIN bytes (a rich Progress, or None).
        self.progress = progress

    def discard_interrupted(self) -> None:
        """Remove temp files of downloads a crash cut short. Only the process about to
        sync may do this: `coffer status` beside a running sync must not."""
        for stale in self.tmp_dir.iterdir():
            stale.unlink(missing_ok=True)

    @contextlib.contextmanager
    def bar(self, name: str, total: int, *, always: bool = False) -> Iterator[Advance]:
        """A progress bar for a transfer of `total` bytes (big ones, or `always`)."""
        if self.progress is None or (total < PROGRESS_MIN and not always):
            yield _no_progress
            return
        progress = self.progress
        task = progress.add_task(name, total=total)
        try:
            yield lambda n: progress.advance(task, n)
        finally:
            progress.remove_task(task)

    @contextlib.contextmanager
    def bulk_bar(self, files: int, total: int) -> Iterator[tuple[Advance, Advance]]:
        """A progress bar for bulk work: (advance bytes, advance files); the description
        counts files done, the columns show bytes, rate and time left."""
        if self.progress is None or files < 2:
            yield _no_progress, _no_progress
            return
        progress = self.progress
        task = progress.add_task(f"0/{files} files", total=total)
        done = 0

        def files_done(n: int) -> None:
            nonlocal done
            done += n
            progress.update(task, description=f"{done}/{files} files")

        try:
            yield (lambda n: progress.advance(task, n)), files_done
        finally:
            progress.remove_task(task)

    async def finish_prefetched(
        self, rel: str, tmp: Path, chunks: Chunks, content_hash: str, durable_hash: str | None
    ) -> bool:
        """Move a file streamed into `tmp` to `rel`, once
        the whole file has the content hash the server committed and is durable; False
        (and `tmp` removed) if it does not. `durable_hash`: the prefetch already hashed
        and fsynced it."""
        target = self.root / rel
        try:
            if durable_hash is not None and durable_hash != content_hash:
                # Its blocks, as written, are not that version: some chunk copied from a
                # local file was not what the state said (changed under us). Never take it.
                return False
            if durable_hash is None:
                # Not hashed while it came: hash it now, from its bytes (chunks may have
                # been copied from local files unread, so the chunk list proves nothing).
                fd = await asyncio.to_thread(os.open, tmp, os.O_RDWR)
                try:
                    size = sum(s for _, s in chunks)
                    if await asyncio.to_thread(content_hash_of_fd, fd, size) != content_hash:
                        return False
                    await asyncio.to_thread(os.fsync, fd)
                finally:
                    os.close(fd)
            target.parent.mkdir(parents=True, exist_ok=True)
            replace_into_place(tmp, target)
            return True
        finally:
            tmp.unlink(missing_ok=True)  # noqa: ASYNC240 - gone already when moved

    async def upload(
        self,
        rel: str,
        target: dict[str, str],
        base_version: int | None,
        local_hash: str,
        chunks: Chunks,
        previous: Chunks | None = None,
    ) -> dict[str, Any]:
        with self.bar(f"↑ {rel}", sum(size for _, size in chunks)) as advance:
            return await upload_file(
                self.api,
                self.root / rel,
                target,
                base_version=base_version,
                hashed=(local_hash, chunks),
                progress=advance,
                previous=previous,
            )

    async def download(self, rel: str, file_id: str, size: int) -> tuple[Chunks, dict[str, Any]]:
        """Fetch the server's file to `rel` (its folder made if missing)."""
        target = self.root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.tmp_dir / f"{uuid.uuid4().hex}.part"
        with self.bar(f"↓ {rel}", size) as advance:
            return await fetch(
                self.api,
                file_id,
                target,
                tmp,
                reuse=self.local_chunks,
                advance=advance,
                log=self.log,
            )
