"""The local store writes a slice of a chunk's body as its received pieces, in order
(`writev`, IOV_MAX at a time): whatever the pieces' sizes and number, the file holds
exactly their bytes. And it vouches for a chunk it has just written only while the chunk's
file is untouched."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.storage import local
from app.storage.local import _IOV_MAX, LocalBlobStore, _write_all


@pytest.mark.parametrize(
    "sizes",
    [
        [],
        [0],
        [65536] * 16,  # a 1 MiB slice as uvicorn hands it over
        [1] * (_IOV_MAX + 7),  # more pieces than one writev takes
        [0, 5, 0, 100_000, 1, 0],
        [3] * (2 * _IOV_MAX) + [65536],
    ],
)
def test_the_file_holds_the_pieces_in_order(tmp_path: Path, sizes: list[int]) -> None:
    pieces = [os.urandom(n) for n in sizes]
    path = tmp_path / "chunk.part"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        _write_all(fd, pieces)
    finally:
        os.close(fd)
    assert path.read_bytes() == b"".join(pieces)


async def _body(data: bytes) -> AsyncIterator[bytes]:
    for at in range(0, len(data), 65536):
        yield data[at : at + 65536]


def _store(root: Path) -> LocalBlobStore:
    return LocalBlobStore(root, "k" * 32, 60, 60, fsync=False)


async def test_a_chunk_just_written_is_vouched_for_until_touched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the web server wrote and hashed a moment ago is served without hashing it
    again; anything else (changed on disk, written by another process, too old) is not."""
    data = os.urandom(3 * 1024 * 1024 + 5)
    sha = hashlib.sha256(data).hexdigest()
    owner = "a" * 24
    writer = _store(tmp_path)
    await writer.write(owner, sha, len(data), _body(data))
    assert await writer.read_checked(owner, sha) == (data, True)
    # Another process (a second web instance, the worker) wrote none of it.
    assert await _store(tmp_path).read_checked(owner, sha) == (data, False)

    # Flipped in place on disk (same size, same inode): hashed again, and found out.
    path = writer.path(owner, sha)
    with open(path, "r+b") as fh:  # noqa: ASYNC230 - a test
        fh.seek(1000)
        fh.write(bytes([data[1000] ^ 1]))
    read, vouched = await writer.read_checked(owner, sha)
    assert read != data and not vouched

    # Written again: vouched for again, but not once it is older than FRESH_SECONDS.
    path.unlink()
    await writer.write(owner, sha, len(data), _body(data))
    assert (await writer.read_checked(owner, sha))[1]
    monkeypatch.setattr(local, "FRESH_SECONDS", 0.0)
    assert not (await writer.read_checked(owner, sha))[1]
    # Deleted: forgotten.
    monkeypatch.setattr(local, "FRESH_SECONDS", 10.0)
    await writer.delete(owner, sha)
    assert (owner, sha) not in writer._written
