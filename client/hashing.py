"""Hashing local bytes the way the protocol names them: the chunks a file is sent in, each
with its SHA-256, and the file's content hash (`app.protocol`: over its 4 MiB blocks,
whatever the chunks).

Chunks are content-defined (FastCDC): a cut point depends on the bytes around it, not on
its offset, so an edit changes only the chunks it touches and bytes inserted near the
start of a file shift the later cut points along with the bytes: the rest of the file is
the same chunks, already on the server. Sizes (measured; README "Chunking"): at least
512 KiB, about 2 MiB on average, at most 8 MiB. An edit goes up as a delta whatever the
chunk size (`app.protocol.delta`), while every chunk costs a request, a stored file and a
record on the server: a new 256 MiB file is about 110 chunks. Files over 16 GiB get
proportionally larger chunks (`cdc_sizes`), so that even a 50 GiB file stays well under
the server's 16,384 chunks. Files up to 4 MiB are
one chunk: their one block.

Files are read in slices, never whole: memory stays at a few chunks whatever the size.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

from pyfastcdc import FastCDC

from app.protocol import (
    BLOCK_SIZE,
    KIB,
    MAX_CHUNK_SIZE,
    MAX_CHUNKS,
    MIB,
    blocks_aligned,
    content_hash,
)

# A file's chunk list: (sha256 hex, size) of each chunk, in order.
Chunks = list[tuple[str, int]]

CDC_MIN_SIZE = 256 * KIB
CDC_AVG_SIZE = 2 * MIB
# Chunks per file the average size aims at most (half the server's limit: room for bad luck).
CDC_TARGET_CHUNKS = MAX_CHUNKS // 2


def cdc_sizes(size: int) -> tuple[int, int, int]:
    """(minimum, average, maximum) chunk size for a file of `size` bytes: 512 KiB / 2 MiB /
    8 MiB up to 16 GiB; above, the average doubles until the file is at most
    CDC_TARGET_CHUNKS average chunks (min a quarter of it, max four times, within the
    server's MAX_CHUNK_SIZE)."""
    avg = CDC_AVG_SIZE
    while size > avg * CDC_TARGET_CHUNKS and avg < MAX_CHUNK_SIZE // 2:
        avg *= 2
    return max(CDC_MIN_SIZE, avg // 4), avg, min(MAX_CHUNK_SIZE, avg * 4)


def sha256_hex(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


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
            chunks, blocks = _hashes(path, fd, before.st_size, previous)
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


def _hashes(path: Path, fd: int, size: int, previous: Previous | None) -> tuple[Chunks, list[str]]:
    if size <= BLOCK_SIZE:  # one chunk, one block: most files, one read
        data = os.pread(fd, size, 0)
        return ([(sha256_hex(data), len(data))], [sha256_hex(data)]) if data else ([], [])
    low, avg, high = cdc_sizes(size)
    cdc = FastCDC(avg, min_size=low, max_size=high)
    blocks = range(block_count(size))
    with ThreadPoolExecutor(2) as pool:
        if not (previous and previous[1]):
            # The blocks hashed in one thread while the chunks are cut and hashed here.
            whole = pool.submit(lambda: [block_digest(fd, b, size) for b in blocks])
            chunks = [(sha256_hex(c.data), c.length) for c in cdc.cut_file(str(path))]
            return chunks, whole.result()
        # Cut here, the chunks hashed by two threads; then only the blocks not known.
        cuts = [(pool.submit(sha256_hex, c.data), c.length) for c in cdc.cut_file(str(path))]
        chunks = [(future.result(), length) for future, length in cuts]
        known = _known_blocks(chunks, previous, size)
        todo = {b: pool.submit(block_digest, fd, b, size) for b in blocks if b not in known}
        return chunks, [known[b] if b in known else todo[b].result() for b in blocks]


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
