"""Hashing local bytes the way the protocol names them: the chunks a file is sent in, each
with its SHA-256, and the file's content hash (`app.protocol`: over its 4 MiB blocks,
whatever the chunks).

Chunks are content-defined (FastCDC): a cut point depends on the bytes around it, not on
its offset, so an edit changes only the chunks it touches and bytes inserted near the
start of a file shift the later cut points along with the bytes: the rest of the file is
the same chunks, already on the server. Sizes (measured; README "Chunking"): at least
256 KiB, about 1 MiB on average, at most 4 MiB. Smaller chunks would send less around an
edit but cost a request, a stored file and a record each on the server; a new 256 MiB file
is about 220 chunks. Files over 8 GiB get proportionally larger chunks (`cdc_sizes`), so
that even a 50 GiB file stays well under the server's 16,384 chunks. Files up to 4 MiB are
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

from pyfastcdc import FastCDC

from app.protocol import (
    BLOCK_SIZE,
    KIB,
    MAX_CHUNK_SIZE,
    MAX_CHUNKS,
    MIB,
    ContentHasher,
    blocks_aligned,
    content_hash,
)

# A file's chunk list: (sha256 hex, size) of each chunk, in order.
Chunks = list[tuple[str, int]]

CDC_MIN_SIZE = 256 * KIB
CDC_AVG_SIZE = 1 * MIB
# Chunks per file the average size aims at most (half the server's limit: room for bad luck).
CDC_TARGET_CHUNKS = MAX_CHUNKS // 2


def cdc_sizes(size: int) -> tuple[int, int, int]:
    """(minimum, average, maximum) chunk size for a file of `size` bytes: 256 KiB / 1 MiB /
    4 MiB up to 8 GiB; above, the average doubles until the file is at most
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
    hasher = ContentHasher()
    for offset in range(0, size, BLOCK_SIZE):
        hasher.update(os.pread(fd, min(BLOCK_SIZE, size - offset), offset))
    return hasher.hexdigest()


def file_hashes(path: Path) -> tuple[str, Chunks]:
    """The file's content hash and its chunk list, in one pass over the bytes (the content
    hash's blocks are hashed in a second thread while the chunks are cut and hashed; both
    release the GIL). A file being written meanwhile is read again (three tries), so the
    two always describe the same bytes (EBUSY if it keeps changing). Blocking: run it in
    a thread."""
    for _ in range(3):
        fd = os.open(path, os.O_RDONLY)
        try:
            before = os.fstat(fd)
            found = _hashes(path, fd, before.st_size)
            after = os.fstat(fd)
        finally:
            os.close(fd)
        same = (before.st_size, before.st_mtime_ns) == (after.st_size, after.st_mtime_ns)
        if same and sum(size for _, size in found[1]) == before.st_size:
            return found
    # Reported and skipped like any local trouble with one file; the next pass retries.
    raise OSError(errno.EBUSY, "it kept changing while it was read", str(path))


def _hashes(path: Path, fd: int, size: int) -> tuple[str, Chunks]:
    if size <= BLOCK_SIZE:  # one chunk, one block: most files, one read
        data = os.pread(fd, size, 0)
        chunks = [(sha256_hex(data), len(data))] if data else []
        return content_hash(sha for sha, _ in chunks), chunks
    with ThreadPoolExecutor(1) as pool:
        blocks = pool.submit(content_hash_of_fd, fd, size)
        low, avg, high = cdc_sizes(size)
        cdc = FastCDC(avg, min_size=low, max_size=high)
        chunks = [(sha256_hex(c.data), c.length) for c in cdc.cut_file(str(path))]
        return blocks.result(), chunks
