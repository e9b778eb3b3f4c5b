"""How the sync client cuts files (client/hashing.py) and how bodies are compressed on
the wire (app/core/encoding.py): pure functions, checked by table."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import zstandard
from pyfastcdc import FastCDC

from app.core.encoding import accepts_zstd, zstd_stream
from app.protocol import MAX_CHUNKS, MIB, MIN_CHUNK_SIZE, content_hash, worth_compressing
from app.settings import Settings
from client.hashing import CDC_SIZES, file_hashes, hash_file

GIB = 1024 * MIB
KIB = 1024


def test_the_chunk_sizes_are_ones_the_chunker_and_the_server_take() -> None:
    low, avg, high = CDC_SIZES
    assert MIN_CHUNK_SIZE <= low <= avg <= high <= Settings.model_fields["max_chunk_size"].default
    FastCDC(avg, min_size=low, max_size=high)  # it refuses sizes it cannot cut with


def test_the_largest_file_fits_the_chunk_limit() -> None:
    """The server's largest file (64 GiB) cut with its sizes: the mean chunk measured on
    random bytes (seeded: the same bytes every run) puts it under MAX_CHUNKS."""
    largest = Settings.model_fields["max_file_size"].default
    low, avg, high = CDC_SIZES
    rng = random.Random(16)
    sample = b"".join(rng.randbytes(MIB) for _ in range(512))
    lengths = [c.length for c in FastCDC(avg, min_size=low, max_size=high).cut_buf(sample)]
    mean = sum(lengths[:-1]) / (len(lengths) - 1)
    assert largest / mean < 0.9 * MAX_CHUNKS


def test_an_insert_changes_only_the_chunks_around_it(tmp_path: Path) -> None:
    data = os.urandom(24 * MIB)
    before, after = tmp_path / "before", tmp_path / "after"
    before.write_bytes(data)
    after.write_bytes(data[:MIB] + b"x" * 100 + data[MIB:])
    hash_before, old = file_hashes(before)
    hash_after, new = file_hashes(after)
    assert hash_before == content_hash_of(data) and hash_after != hash_before
    fresh = [size for sha, size in new if sha not in {s for s, _ in old}]
    # One or two chunks (at most 16 MiB each), not the 23 MiB after the insert.
    assert len(fresh) <= 2 and sum(fresh) <= 2 * CDC_SIZES[2] + 100
    assert sum(size for _, size in new) == len(data) + 100


@pytest.mark.parametrize(
    "size",
    # Windows of 32 MiB: a file in one, just over one, over two and over three.
    [4 * MIB + 1, 32 * MIB - 1, 32 * MIB, 32 * MIB + 1, 61 * MIB + 12_345, 97 * MIB + 7],
)
def test_chunks_and_blocks_are_the_whole_files(tmp_path: Path, size: int) -> None:
    """Read in windows, cut as if the file were one buffer: the chunks tile the file,
    each chunk's hash is of its bytes, and the blocks give the content hash."""
    data = os.urandom(size)
    path = tmp_path / "f"
    path.write_bytes(data)
    found = hash_file(path)
    at = 0
    for sha, length in found.chunks:
        assert hashlib.sha256(data[at : at + length]).hexdigest() == sha
        at += length
    assert at == size and found.content_hash == content_hash_of(data)
    low, _, high = CDC_SIZES
    assert all(low <= n <= high for _, n in found.chunks[:-1])
    assert found.blocks == [
        hashlib.sha256(data[i : i + 4 * MIB]).hexdigest() for i in range(0, size, 4 * MIB)
    ]


def test_a_file_truncated_while_hashed_is_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cut short under the reader (a program rewriting it in place, `copytruncate`): the
    hash describes the bytes it has after, and the process lives (a mapped file would
    have been killed by SIGBUS)."""
    path = tmp_path / "log"
    path.write_bytes(os.urandom(64 * MIB))
    reads = 0
    real_preadv = os.preadv

    def preadv_then_truncate(fd: int, buffers: list[memoryview], offset: int) -> int:
        nonlocal reads
        reads += 1
        if reads == 2:
            os.truncate(path, 10 * MIB)
        return real_preadv(fd, buffers, offset)

    monkeypatch.setattr(os, "preadv", preadv_then_truncate)
    found = hash_file(path)
    assert reads > 2  # read again after the cut
    assert found.size == 10 * MIB
    assert found.content_hash == content_hash_of(path.read_bytes())


def content_hash_of(data: bytes) -> str:
    blocks = [data[i : i + 4 * MIB] for i in range(0, len(data), 4 * MIB)]
    return content_hash(hashlib.sha256(b).hexdigest() for b in blocks)


@pytest.mark.parametrize(
    ("header", "takes"),
    [
        (None, False),
        ("", False),
        ("gzip, deflate", False),
        ("gzip, deflate, zstd", True),
        ("ZSTD", True),
        ("zstd;q=0.5, gzip", True),
        ("zstd;q=0", False),
        ("zstd; q=0.0", False),
        ("zstd;q=oops", False),
        ("zstdx", False),
    ],
)
def test_who_takes_zstd(header: str | None, takes: bool) -> None:
    assert accepts_zstd(header) is takes


async def pieces_of(parts: list[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


@pytest.mark.parametrize(
    ("parts", "packed"),
    [
        ([b"def f():\n    return 1\n" * 4000] * 5, True),  # source text
        ([os.urandom(40_000) for _ in range(5)], False),  # random, already compressed
        ([], False),
    ],
)
def test_streams_are_compressed_when_they_shrink(parts: list[bytes], packed: bool) -> None:
    async def run() -> tuple[list[bytes], bool]:
        stream, was = await zstd_stream(pieces_of(parts), worth_compressing, 64 * KIB)
        return [piece async for piece in stream], was

    out, was = asyncio.run(run())
    assert was is packed
    body = b"".join(out)
    if packed:
        assert len(body) < len(b"".join(parts)) / 4
        body = zstandard.ZstdDecompressor().decompressobj().decompress(body)
    assert body == b"".join(parts)


@pytest.mark.parametrize(
    "sizes",
    [
        [MIB] * 10,  # 10 MiB: blocks 0, 1 and a 2 MiB last one
        [3 * MIB, 3 * MIB, 3 * MIB, MIB + 5],  # chunks straddling block boundaries
        [9 * MIB],  # one chunk over three blocks
        [256 * KIB] * 17,  # exactly a block and a bit
    ],
)
def test_a_streamed_file_hashes_each_block_once_it_is_whole(sizes: list[int]) -> None:
    """Whatever order chunks arrive in, each 4 MiB block is reported whole exactly once,
    after its last byte is written (client/streaming.py hashes it then)."""
    from client.streaming import Prefetch

    job = Prefetch("f", "u", None, Path("/nowhere"), chunks=[("x", n) for n in sizes])
    job.size = sum(sizes)
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]
    order = list(range(len(sizes)))
    order = order[1::2] + order[::2]  # out of order, as parallel fetches land
    reported: list[int] = []
    for i in order:
        whole = job.written(offsets[i], sizes[i])
        for block in whole:  # whole only once every chunk covering it is in
            start, stop = block * 4 * MIB, min((block + 1) * 4 * MIB, job.size)
            covering = [
                k for k in range(len(sizes)) if offsets[k] < stop and offsets[k] + sizes[k] > start
            ]
            assert all(k in order[: order.index(i) + 1] for k in covering)
        reported += whole
    assert sorted(reported) == list(range((job.size + 4 * MIB - 1) // (4 * MIB)))
