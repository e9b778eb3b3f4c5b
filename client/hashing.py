"""Hashing local bytes the way the protocol names them: SHA-256 per chunk, and the content
hash over the chunk list (`app.protocol.content_hash`).

Files are read in chunk-sized slices, never whole, so memory stays at about one chunk per
core whatever the file size.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from app.protocol import CHUNK_SIZE, content_hash

# A file's chunk list: (sha256 hex, size) of each chunk, in order.
Chunks = list[tuple[str, int]]


def sha256_hex(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def content_hash_of(chunks: Sequence[tuple[str, int]]) -> str:
    """The content hash of a chunk list (see `app.protocol.content_hash`)."""
    return content_hash(sha for sha, _ in chunks)


def read_hashed(fd: int, size: int, offset: int) -> tuple[bytes, str]:
    """`size` bytes at `offset` of an open file, with their SHA-256."""
    data = os.pread(fd, size, offset)
    return data, sha256_hex(data)


def _hash_piece(fd: int, offset: int, size: int) -> tuple[str, int]:
    data = os.pread(fd, size, offset)
    return sha256_hex(data), len(data)


def chunk_hashes(path: Path, chunk_size: int = CHUNK_SIZE) -> Chunks:
    """(sha256, size) of each chunk of the file. hashlib releases the GIL, so chunks are
    hashed on every core; memory stays at one chunk per core whatever the file size."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if size <= chunk_size:  # most files: one read, no thread pool to start
            return [_hash_piece(fd, 0, size)] if size else []
        offsets = range(0, size, chunk_size)
        workers = min(os.cpu_count() or 1, 8)
        with ThreadPoolExecutor(workers) as pool:
            return list(
                pool.map(lambda off: _hash_piece(fd, off, min(chunk_size, size - off)), offsets)
            )
    finally:
        os.close(fd)
