"""Hashing local bytes the way the protocol names them: the chunks a file is sent in, each
with its SHA-256, and the file's content hash (`app.protocol`: over its 4 MiB blocks,
whatever the chunks).

Chunks are content-defined (FastCDC): a cut point depends on the bytes around it, not on
its offset, so an edit changes only the chunks it touches and bytes inserted near the
start of a file shift the later cut points along with the bytes: the rest of the file is
the same chunks, already on the server. Sizes (measured; README "Content-defined chunks"):
at least 1 MiB, about 4 MiB on average (cut points fall about 4.9 MiB apart on random
bytes), at most 16 MiB. An edit goes up as a delta whatever the chunk size
(`app.protocol.delta`), while every chunk costs a request each way, a stored file and a
record on the server: a new 256 MiB file is about 55 chunks, and the server's largest file
(64 GiB) about 13,400, under its 16,384. Files up to 4 MiB are one chunk: their one block.

Files are read (not mapped: a file cut short meanwhile must not kill the process) in
windows of a few chunks, never whole: memory stays at two windows whatever the size.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import mmap
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

from pyfastcdc import FastCDC

from app.protocol import (
    BLOCK_SIZE,
    MAX_CHUNK_SIZE,
    MIB,
    ContentHasher,
    blocks_aligned,
    content_hash,
)

# A file's chunk list: (sha256 hex, size) of each chunk, in order.
Chunks = list[tuple[str, int]]

# (minimum, average, maximum) chunk size, for every file. The average is pyfastcdc's
# largest (and the minimum, a quarter of it, its largest minimum); the maximum is the
# server's MAX_CHUNK_SIZE.
CDC_SIZES: tuple[int, int, int] = (1 * MIB, 4 * MIB, MAX_CHUNK_SIZE)


def sha256_hex(*pieces: bytes | memoryview) -> str:
    """SHA-256 (hex) of these bytes, one piece after the other."""
    hasher = hashlib.sha256()
    for piece in pieces:
        hasher.update(piece)
    return hasher.hexdigest()


def derived_content_hash(chunks: Sequence[tuple[str, int]]) -> str | None:
    """The content hash, when the chunks are the file's blocks (None otherwise: hash the
    bytes)."""
    if not blocks_aligned(size for _, size in chunks):
        return None
    return content_hash(sha for sha, _ in chunks)


def content_hash_of_fd(fd: int, size: int) -> str:
    """The content hash of an open file's first `size` bytes, block by block."""
    return content_hash(block_digest(fd, block, size) for block in range(block_count(size)))


def block_count(size: int) -> int:
    return -(-size // BLOCK_SIZE)


def block_digest(fd: int, block: int, size: int) -> str:
    """SHA-256 of one content-hash block of an open file of `size` bytes (blocking)."""
    start = block * BLOCK_SIZE
    return sha256_hex(os.pread(fd, min(BLOCK_SIZE, size - start), start))


class FileHashes(NamedTuple):
    """What one read of a file found: its content hash, its chunks, the SHA-256 of each of
    its 4 MiB blocks, and the (size, mtime_ns) it had while read."""

    content_hash: str
    chunks: Chunks
    blocks: list[str]
    size: int
    mtime_ns: int


# A file as last synced: its chunks and its block digests (state), to skip re-hashing the
# blocks an edit did not touch.
Previous = tuple[Chunks, list[str]]


def file_hashes(path: Path) -> tuple[str, Chunks]:
    """The file's content hash and its chunk list (`hash_file`)."""
    found = hash_file(path)
    return found.content_hash, found.chunks


def hash_file(path: Path, previous: Previous | None = None) -> FileHashes:
    """The file's hashes, in one pass over the bytes (cut points, chunk and block hashes
    on two cores; hashing releases the GIL). With `previous` (the file as last synced),
    the blocks that only unchanged chunks at their old places cover keep their recorded
    digests: an edit re-hashes its chunks and the few blocks it touched, not every block
    twice. A file being written meanwhile is read again (three tries), so all of it
    describes the same bytes (EBUSY if it keeps changing). Blocking: run it in a thread."""
    for _ in range(3):
        fd = os.open(path, os.O_RDONLY)
        try:
            before = os.fstat(fd)
            chunks, blocks = _hashes(fd, before.st_size, previous)
            after = os.fstat(fd)
        finally:
            os.close(fd)
        same = (before.st_size, before.st_mtime_ns) == (after.st_size, after.st_mtime_ns)
        if same and sum(size for _, size in chunks) == before.st_size:
            return FileHashes(
                content_hash(blocks), chunks, blocks, before.st_size, before.st_mtime_ns
            )
    # Reported and skipped like any local trouble with one file; the next pass retries.
    raise OSError(errno.EBUSY, "it kept changing while it was read", str(path))


def _hashes(fd: int, size: int, previous: Previous | None) -> tuple[Chunks, list[str]]:
    if size <= BLOCK_SIZE:  # one chunk, one block: most files, one read
        data = os.pread(fd, size, 0)
        digest = sha256_hex(data)
        return ([(digest, len(data))], [digest]) if data else ([], [])
    with _LARGE_HASHES:
        return _windowed_hashes(fd, size, previous)


# Two large files hashed at once already keep two cores busy; more would only add windows
# in memory (the scanner and the sync hash in several threads).
_LARGE_HASHES = threading.BoundedSemaphore(2)


def _windowed_hashes(fd: int, size: int, previous: Previous | None) -> tuple[Chunks, list[str]]:
    low, avg, high = CDC_SIZES
    cdc = FastCDC(avg, min_size=low, max_size=high)
    # Cut here; hashed on two threads (hashing releases the GIL): a new file's chunks on
    # one and its blocks (in order) on the other; an edit's chunks on both, then only the
    # blocks not known from `previous` (the edit's critical path: both threads busy).
    # Leaving this, the pools wait for their last tasks before the buffers are let go.
    with (
        _window_buffers(2 * high) as buffers,
        ThreadPoolExecutor(1) as chunk_pool,
        ThreadPoolExecutor(1) as block_pool,
    ):
        whole = None if previous and previous[1] else ContentHasher()
        chunk_pools = (chunk_pool,) if whole is not None else (chunk_pool, block_pool)
        cuts: list[tuple[Future[str], int]] = []
        pending: dict[int, list[Future[Any]]] = {}

        def done_with(window: int) -> None:
            for future in pending.pop(window, []):
                future.result()  # a task that failed fails the hash

        for n, (window, data) in enumerate(_chunks(fd, size, cdc, buffers, done_with)):
            hashing = pending.setdefault(window, [])
            hashing.append(chunk_pools[n % len(chunk_pools)].submit(sha256_hex, data))
            cuts.append((hashing[-1], len(data)))
            if whole is not None:
                hashing.append(block_pool.submit(whole.update, data))
        for window in list(pending):
            done_with(window)
        found = [(future.result(), length) for future, length in cuts]
        if whole is not None:
            return found, whole.block_digests()
        assert previous is not None
        known = _known_blocks(found, previous, size)
        blocks = range(block_count(size))
        pools = (chunk_pool, block_pool)  # the blocks left, on both threads
        todo = {
            b: pools[n % 2].submit(block_digest, fd, b, size)
            for n, b in enumerate(b for b in blocks if b not in known)
        }
        return found, [known[b] if b in known else todo[b].result() for b in blocks]


def _chunks(
    fd: int,
    size: int,
    cdc: FastCDC,
    buffers: tuple[mmap.mmap, mmap.mmap],
    done_with: Callable[[int], None],
) -> Iterator[tuple[int, memoryview]]:
    """(window number, bytes) of each chunk of the file, in order, as they are cut. The
    file is read in windows of a few maximum chunks. Read, not mapped: a file truncated
    meanwhile reads short (and `hash_file` tries again) where a mapping would kill the
    process (SIGBUS). A cut depends only on the bytes from the chunk's start, so the last
    chunk of a window (it may end only because the window does) is cut again at the head
    of the next one: the chunks are those of the whole file.

    The two buffers (each at least two maximum chunks: a window holds the chunk carried
    over, at most one maximum chunk, and at least one more that ends in it, so every
    window yields a chunk)
    take turns: `done_with(n)` is called before window n's buffer is read into again, and
    must return only when nothing uses window n's chunks any more."""
    span = min(len(buffers[0]), size)
    pos = carry = 0
    for window in itertools.count():
        buf, previous = memoryview(buffers[window % 2]), buffers[(window + 1) % 2]
        done_with(window - 2)
        # The carried chunk's bytes end the previous window (a full one: not the last).
        buf[:carry] = memoryview(previous)[span - carry : span]
        got = carry + _read_into(fd, buf[carry:span], pos)
        pos += got - carry
        view = buf[:got]
        eof = got < span or pos >= size
        held = None  # the window's last chunk so far: carried over unless at the end
        for cut in cdc.cut_buf(view) if got else ():
            if held is not None:
                yield window, view[held.offset : held.offset + held.length]
            held = cut
        if eof or held is None:
            if held is not None:
                yield window, view[held.offset : held.offset + held.length]
            return
        carry = held.length


# Window buffers kept between hashes (one pair, two windows of two maximum chunks: 64 MiB;
# a second hash at once gets a pair of its own): anonymous
# mappings whose pages are handed back lazily (MADV_FREE: the kernel takes them only when
# it needs memory). Fresh ones cost a page fault per 4 KiB on first touch, which on a
# virtual machine was a third of an edit's hashing time.
_spare_buffers: list[tuple[mmap.mmap, mmap.mmap]] = []
_spare_lock = threading.Lock()


def _private_buffer(size: int) -> mmap.mmap:
    """Zeroed private memory (a shared mapping cannot be handed back lazily)."""
    if not hasattr(mmap, "MAP_PRIVATE"):  # Windows
        return mmap.mmap(-1, size)
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


@contextlib.contextmanager
def _window_buffers(capacity: int) -> Iterator[tuple[mmap.mmap, mmap.mmap]]:
    with _spare_lock:
        fits = [pair for pair in _spare_buffers if len(pair[0]) == capacity]
        pair = fits[0] if fits else (_private_buffer(capacity), _private_buffer(capacity))
        if fits:
            _spare_buffers.remove(pair)
    try:
        yield pair
    finally:
        for buffer in pair:
            if hasattr(mmap, "MADV_FREE"):
                buffer.madvise(mmap.MADV_FREE)
        with _spare_lock:
            _spare_buffers.append(pair)
            del _spare_buffers[:-1]  # one pair kept: one large file at a time is usual


def _read_into(fd: int, buf: memoryview, pos: int) -> int:
    """Fill `buf` from offset `pos` of the file; fewer bytes only at its end."""
    got = 0
    while got < len(buf):
        n = os.preadv(fd, [buf[got:]], pos + got)
        if n == 0:
            break
        got += n
    return got


def _known_blocks(chunks: Chunks, previous: Previous, size: int) -> dict[int, str]:
    """Block -> digest, for the blocks made only of chunks found at the same offsets in
    the file as last synced (the same SHA-256 there: the same bytes)."""
    old_chunks, old_blocks = previous
    old_at: set[tuple[int, str]] = set()
    pos = 0
    for sha, length in old_chunks:
        old_at.add((pos, sha))
        pos += length
    unmoved = []
    pos = 0
    for sha, length in chunks:
        if (pos, sha) in old_at:
            unmoved.append((pos, pos + length))
        pos += length
    return unmoved_blocks(unmoved, old_blocks, sum(n for _, n in old_chunks), size)


def unmoved_blocks(
    unmoved: list[tuple[int, int]], digests: list[str], old_size: int, new_size: int
) -> dict[int, str]:
    """Block -> digest for the blocks of a new file whose bytes all lie in `unmoved`
    (byte ranges that hold what the same offsets of the old file held) and that have the
    same length in both files: the same bytes, so the old file's digest."""
    known: dict[int, str] = {}
    merged: list[list[int]] = []
    for start, end in sorted(unmoved):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    for start, end in merged:
        for block in range(-(-start // BLOCK_SIZE), len(digests)):
            lo, hi = block * BLOCK_SIZE, min((block + 1) * BLOCK_SIZE, new_size)
            if hi > end or lo >= new_size:
                break
            if hi - lo == min(BLOCK_SIZE, old_size - lo):
                known[block] = digests[block]
    return known
