"""Streaming sync: fetch a large file while another device is still uploading it.

When a device begins a large upload, the server tells the others (`upload.started`, with
the upload's id). Each of them then follows the upload (`GET /api/upload/{id}`: its chunk
list, with a read URL for every chunk the server already holds) and writes the chunks it
can get into a temporary file in `.coffer/tmp/`. Nothing appears under the real
name: when the commit's `file.created` / `file.updated` arrives, the download takes the
temporary file if it holds that version (same content hash) and renames it into place;
whatever is still missing then is fetched first. Chunks this device already holds (any
synced file, by hash: most of a file another device is editing) are copied from the local
file instead of fetched, at once, before the uploader has sent anything. The file's
content hash is computed while
the chunks arrive (each 4 MiB block as soon as the chunks covering it are written, read
back from the page cache), and a finished prefetch is fsynced in the background: by the
time the commit is announced, usually only the rename is left. That content hash is the
check: the file is taken only if it is the committed one, so a fetched chunk is not hashed
on its own as well (a wrong chunk, which the server's own checks make unlikely, costs the
prefetch, and the download fetches the file again, verifying each chunk). An upload that is
abandoned (the server answers "gone", or it stops progressing) is dropped with its
temporary file; so is a prefetch that another event supersedes.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from app.protocol import BLOCK_SIZE, content_hash
from client.api import CofferClient
from client.diskio import to_the_end, write_behind
from client.errors import ApiError
from client.hashing import Chunks, block_count, block_digest, unmoved_blocks

Log = Callable[[str], None]


class ChunkReuse(Protocol):
    """Chunks of synced local files by hash (client.transfer.LocalChunks)."""

    def source(self, sha: str) -> Any | None: ...

    def copy(self, source: Any, sha: str, size: int, fd: int, dst_offset: int) -> bool: ...

    def copy_run(self, source: Any, size: int, fd: int, dst_offset: int) -> bool: ...

    def blocks(self, path: str) -> tuple[list[str], tuple[int, int]] | None: ...


POLL_SECONDS = 0.15  # how often an upload still going is looked at again
# Once the chunk list is known, a look covers this many chunks from the first one not yet
# being fetched (the uploader sends them about in order, a few dozen a second at most):
# the server looks up and signs those, not the whole rest of a big file, every time.
POLL_WINDOW = 64
STALL_SECONDS = 300.0  # an upload that makes no progress this long is given up
TAKE_WAIT_SECONDS = 30.0  # how long a download waits for a prefetch to finish


@dataclass
class Prefetch:
    """One upload being followed into `tmp`."""

    file_id: str
    upload_id: str
    content_hash: str | None
    tmp: Path
    chunks: Chunks = field(default_factory=list)  # the upload's whole chunk list, once known
    have: set[int] = field(default_factory=set)  # chunk indexes written to tmp
    task: asyncio.Task[None] | None = None
    covered: dict[int, int] = field(default_factory=dict)  # block -> bytes of it written
    blocks: dict[int, str] = field(default_factory=dict)  # block -> SHA-256 of its bytes
    # The content hash of `tmp` once it holds every chunk and is durable (fsynced).
    durable_hash: str | None = None
    size: int = 0  # the file's, once the chunk list is known
    copied: int = 0  # chunks copied from local files rather than fetched
    rel: str = ""  # where the file goes in the synced folder
    reused_blocks: int = 0  # block digests taken from the local copy's, not hashed

    @property
    def complete(self) -> bool:
        return bool(self.chunks) and len(self.have) == len(self.chunks)

    def written(self, offset: int, size: int) -> list[int]:
        """Note `size` bytes written at `offset`; the blocks now whole, to hash."""
        whole = []
        end = offset + size
        total = self.size
        for block in range(offset // BLOCK_SIZE, (end - 1) // BLOCK_SIZE + 1 if size else 0):
            start, stop = block * BLOCK_SIZE, min((block + 1) * BLOCK_SIZE, total)
            self.covered[block] = self.covered.get(block, 0) + min(end, stop) - max(offset, start)
            if self.covered[block] == stop - start:
                whole.append(block)
        return whole


class Prefetcher:
    """The prefetches of one synced folder, by file id."""

    def __init__(
        self, api: CofferClient, tmp_dir: Path, log: Log, reuse: ChunkReuse | None = None
    ) -> None:
        self.api = api
        self.tmp_dir = tmp_dir
        self.log = log
        self.reuse = reuse
        self.running: dict[str, Prefetch] = {}

    def start(self, file_id: str, upload_id: str, content_hash: str | None, rel: str) -> None:
        """Follow this upload (replacing any older prefetch of the same file)."""
        old = self.running.get(file_id)
        if old is not None and old.upload_id == upload_id:
            return
        self.drop(file_id)
        job = Prefetch(
            file_id, upload_id, content_hash, self.tmp_dir / f"stream-{upload_id}.part", rel=rel
        )
        job.task = asyncio.create_task(self._follow(job, rel))
        self.running[file_id] = job

    def drop(self, file_id: str) -> None:
        job = self.running.pop(file_id, None)
        if job is None:
            return
        if job.task is not None:
            job.task.cancel()
        job.tmp.unlink(missing_ok=True)

    async def take(self, file_id: str, content_hash: str) -> Prefetch | None:
        """The finished prefetch of this file's version (its chunks all in `tmp`), now the
        caller's to check (its content hash), move into place or delete; None when there
        is none for these bytes (any other prefetch of the file is dropped)."""
        job = self.running.get(file_id)
        if job is None:
            return None
        if job.content_hash != content_hash:
            self.drop(file_id)
            return None
        if job.task is not None:
            # Finished (complete, or given up) soon after the commit it waits for.
            await asyncio.wait({job.task}, timeout=TAKE_WAIT_SECONDS)
        self.running.pop(file_id, None)
        if job.task is not None:
            job.task.cancel()
        if not job.complete:
            job.tmp.unlink(missing_ok=True)
            return None
        return job

    async def close(self) -> None:
        for file_id in list(self.running):
            self.drop(file_id)

    async def _follow(self, job: Prefetch, rel: str) -> None:
        try:
            await self._fetch_while_uploading(job)
            if job.complete:
                await self._make_durable(job)
                self.log(
                    f"prefetched {rel} while it was being uploaded"
                    f" ({job.copied} of {len(job.chunks)} chunks copied from local files,"
                    f" {job.reused_blocks} block digests known)"
                )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a hint that did not work out: the download does it
            self.log(f"streaming {rel} stopped ({exc}); it is fetched once committed")
        if not job.complete and self.running.get(job.file_id) is job:
            self.drop(job.file_id)

    async def _fetch_while_uploading(self, job: Prefetch) -> None:
        """Fetch each chunk as soon as the server holds it: `parallel` fetchers take
        chunks from a queue while the upload is looked at every POLL_SECONDS, so a
        fetcher never waits for the others or for the next look (the device keeps pace
        with the uploader, and little is left when the commit arrives)."""
        loop = asyncio.get_running_loop()
        offsets: list[int] = []
        queue: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
        queued: set[int] = set()
        fetchers: list[asyncio.Task[None]] = []
        fd = await asyncio.to_thread(os.open, job.tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)

        def enqueue(ready: list[tuple[int, str]]) -> None:
            if not offsets:
                # The chunk list is not known yet (a commit cut the first look short):
                # nowhere to write; the manifest names what is missing once it is.
                return
            for index, url in ready:
                if index not in job.have and index not in queued:
                    queued.add(index)
                    queue.put_nowait((index, url))
            if not fetchers:
                fetchers.extend(
                    asyncio.create_task(self._fetcher(job, fd, queue, offsets))
                    for _ in range(max(1, self.api.parallel))
                )

        try:
            progress_at, had = loop.time(), -1
            while not job.complete:
                ready, state = await self._poll(job, queued)
                if not offsets:
                    await _lay_out(job, fd, offsets)
                    await self._copy_local(job, fd, offsets)
                    if offsets and job.copied:
                        # That took a while: look at the upload again at once, fetching
                        # meanwhile what the first look found there (less what was copied:
                        # later looks see only a window, not the whole list).
                        enqueue(ready)
                        continue
                enqueue(ready)
                if state == "committed" and not job.complete:
                    # Committed before we had it all: the rest from the file's manifest.
                    enqueue(await self._rest(job, fd, offsets))
                    await _drained(queue, fetchers)
                if job.complete or state != "uploading":
                    break
                if len(job.have) != had:
                    had, progress_at = len(job.have), loop.time()
                elif loop.time() - progress_at > STALL_SECONDS:
                    raise TimeoutError("the upload made no progress")
                _raise_failure(fetchers)
                await asyncio.sleep(POLL_SECONDS)
            await _drained(queue, fetchers)
        finally:
            for task in fetchers:
                task.cancel()
            await asyncio.gather(*fetchers, return_exceptions=True)
            os.close(fd)

    async def _make_durable(self, job: Prefetch) -> None:
        """fsync the finished file and note its content hash (from the blocks hashed as
        they were completed), so that taking it is only a rename."""
        blocks = block_count(job.size)
        if len(job.blocks) != blocks:
            return  # (cannot happen: every byte was written once) leave it to take()
        fd = await asyncio.to_thread(os.open, job.tmp, os.O_RDONLY)
        try:
            await asyncio.to_thread(os.fsync, fd)
        finally:
            os.close(fd)
        job.durable_hash = content_hash(job.blocks[b] for b in range(blocks))

    async def _poll(
        self, job: Prefetch, queued: set[int] | frozenset[int] = frozenset()
    ) -> tuple[list[tuple[int, str]], str]:
        """(index, URL) of the chunks the server holds now (of all, the first time, which
        also learns the whole chunk list; then of the POLL_WINDOW chunks from the first
        one neither written nor `queued`), and the upload's state."""
        ready: list[tuple[int, str]] = []
        chunks: Chunks = []
        # Each look costs the server a lookup and a signed URL per chunk listed.
        missing = (i for i in range(len(job.chunks)) if i not in job.have and i not in queued)
        offset: int | None = next(missing, len(job.chunks)) if job.chunks else 0
        limit = POLL_WINDOW if job.chunks else 1000
        state, total = "uploading", 0
        while offset is not None:
            try:
                page: dict[str, Any] = await self.api.request(
                    "GET",
                    f"/api/upload/{job.upload_id}",
                    params={"chunk_offset": offset, "chunk_limit": limit},
                )
            except ApiError as exc:
                if exc.status == 404:
                    raise RuntimeError("the upload is gone") from exc
                raise
            state, total = page["state"], page["chunk_count"]
            if state == "gone":
                raise RuntimeError("the upload was abandoned")
            for c in page["chunks"]:
                chunks.append((c["sha256"], c["size"]))
                if c.get("url"):
                    ready.append((c["index"], c["url"]))
            offset = page.get("next_chunk_offset")
            if state != "uploading" or job.chunks:
                break  # (the window: one page)
        if chunks and not job.chunks and len(chunks) == total:
            # The whole list (not the pages read before a commit ended the paging).
            job.chunks = chunks
        return ready, state

    async def _rest(self, job: Prefetch, fd: int, offsets: list[int]) -> list[tuple[int, str]]:
        """Committed before we had it all: (index, URL) of the chunks still missing, from
        the file's manifest, if the file is still that upload's bytes (else none)."""
        head, listed = await self.api.manifest(job.file_id)
        if head.get("content_hash") != job.content_hash:
            return []  # replaced meanwhile: nothing of ours to finish
        if not job.chunks:
            job.chunks = [(c["sha256"], c["size"]) for c in listed]
            await _lay_out(job, fd, offsets)
            await self._copy_local(job, fd, offsets)
        return [(c["index"], c["url"]) for c in listed if c["index"] not in job.have]

    async def _copy_local(self, job: Prefetch, fd: int, offsets: list[int]) -> None:
        """Copy in every chunk of the upload a synced local file holds (the unchanged
        bulk of a file being edited elsewhere), without waiting for the uploader: the
        copies in one worker thread (kernel copies, a run of chunks at a time), then the
        blocks they completed hashed two at a time while the copies go to disk (the
        critical path of an edit on the receiving side). Blocks that hold exactly the
        bytes they held in this device's copy of the file take its recorded digests."""
        if self.reuse is None or not offsets:
            return
        reuse = self.reuse
        # Looked up here: the state database's connection stays on the loop's thread.
        sources = [
            (index, source, sha, size)
            for index, (sha, size) in enumerate(job.chunks)
            if index not in job.have and (source := reuse.source(sha)) is not None
        ]
        old = reuse.blocks(job.rel) if job.rel else None

        def copy_all() -> list[int]:
            done: list[int] = []
            for run in _runs(sources):
                index, source = run[0][0], run[0][1]
                if len(run) > 1 and reuse.copy_run(
                    source, sum(size for *_, size in run), fd, offsets[index]
                ):
                    done += [index for index, *_ in run]
                    continue
                done += [
                    i for i, src, sha, size in run if reuse.copy(src, sha, size, fd, offsets[i])
                ]
            return done

        copied = await to_the_end(copy_all)
        blocks: list[int] = []
        for index in copied:
            job.copied += 1
            blocks += self._wrote(job, index, offsets)
        if old is not None:
            # Blocks made only of bytes copied from the same place of this file, as it was
            # when its block digests were recorded, have those digests: not hashed again.
            done = set(copied)
            unmoved = [
                (offsets[i], offsets[i] + size)
                for i, (path, at, synced), _, size in sources
                if i in done and path == job.rel and at == offsets[i] and tuple(synced) == old[1]
            ]
            known = unmoved_blocks(unmoved, old[0], old[1][0], job.size)
            job.blocks.update({b: known[b] for b in blocks if b in known})
            job.reused_blocks += sum(1 for b in blocks if b in known)
            blocks = [b for b in blocks if b not in known]
        if copied:
            # The copies go to disk while the blocks left are hashed (two cores): when the
            # changed chunks arrive, making the file durable is only their fsync.
            await asyncio.gather(asyncio.to_thread(os.fsync, fd), _hash_blocks(job, fd, blocks))

    async def _fetcher(
        self,
        job: Prefetch,
        fd: int,
        queue: asyncio.Queue[tuple[int, str]],
        offsets: list[int],
    ) -> None:
        """Fetch and write chunks from the queue until cancelled (not hashed one by one:
        the blocks they complete are, and the whole file must have the committed hash)."""
        while True:
            index, url = await queue.get()
            try:
                if index in job.have:
                    continue
                size = job.chunks[index][1]
                pieces = await self.api.get_chunk_pieces(url, size)
                if (got := sum(len(piece) for piece in pieces)) != size:
                    raise ValueError(f"chunk {index} has {got} bytes, not {size}")
                # Its write-back starts now: the fsync before the rename waits for little.
                await to_the_end(write_behind, fd, pieces, offsets[index])
                await _hash_blocks(job, fd, self._wrote(job, index, offsets))
            finally:
                queue.task_done()

    @staticmethod
    def _wrote(job: Prefetch, index: int, offsets: list[int]) -> list[int]:
        """Chunk `index` is in `tmp`: note it; the blocks it completed, to hash."""
        job.have.add(index)
        return job.written(offsets[index], job.chunks[index][1])


def _runs(sources: list[tuple[int, Any, str, int]]) -> list[list[tuple[int, Any, str, int]]]:
    """Chunks to copy, grouped into runs that lie one after the other both in the new
    file and in the same local file (as synced): one copy each (an edited file is one or
    two long runs, not hundreds of chunks)."""
    runs: list[list[tuple[int, Any, str, int]]] = []
    for entry in sources:
        index, (path, at, synced), _, _ = entry
        if runs:
            last_index, (last_path, last_at, last_synced), _, last_size = runs[-1][-1]
            if (
                index == last_index + 1
                and path == last_path
                and tuple(synced) == tuple(last_synced)
                and at == last_at + last_size
            ):
                runs[-1].append(entry)
                continue
        runs.append([entry])
    return runs


def _raise_failure(fetchers: list[asyncio.Task[None]]) -> None:
    """A fetcher that stopped stopped on an error: raise it."""
    for task in fetchers:
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


async def _drained(
    queue: asyncio.Queue[tuple[int, str]], fetchers: list[asyncio.Task[None]]
) -> None:
    """Wait until every queued chunk is fetched (or a fetcher failed: raised)."""
    if not fetchers:
        return
    joined = asyncio.ensure_future(queue.join())
    try:
        await asyncio.wait([joined, *fetchers], return_when=asyncio.FIRST_COMPLETED)
    finally:
        joined.cancel()
    _raise_failure(fetchers)


async def _lay_out(job: Prefetch, fd: int, offsets: list[int]) -> None:
    """Once the chunk list is known: each chunk's offset, and the file at its full size."""
    if offsets or not job.chunks:
        return
    pos = 0
    for _, size in job.chunks:
        offsets.append(pos)
        pos += size
    job.size = pos
    await to_the_end(os.ftruncate, fd, pos)


async def _hash_blocks(job: Prefetch, fd: int, blocks: list[int], parallel: int = 2) -> None:
    """Hash these whole blocks of `tmp`, `parallel` at a time (SHA-256 releases the GIL;
    memory: that many 4 MiB blocks)."""
    for start in range(0, len(blocks), parallel):
        group = blocks[start : start + parallel]
        digests = await asyncio.gather(
            *(asyncio.to_thread(block_digest, fd, block, job.size) for block in group)
        )
        job.blocks.update(zip(group, digests, strict=True))
