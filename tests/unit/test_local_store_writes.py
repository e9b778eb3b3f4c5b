"""The local store writes a slice of a chunk's body as its received pieces, in order
(`writev`, IOV_MAX at a time): whatever the pieces' sizes and number, the file holds
exactly their bytes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.storage.local import _IOV_MAX, _write_all


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
