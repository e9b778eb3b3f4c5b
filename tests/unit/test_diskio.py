"""Writing received bytes (client/diskio.py): every shape of data lands at its offset, a
kernel copy of a range spans several slices, and a cancelled caller does not close a file
while a thread still writes through it."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pytest

from client.diskio import COPY_SLICE, copy_behind, to_the_end, write_behind

DATA = os.urandom(200_000)


@pytest.mark.parametrize(
    "shape",
    [
        DATA,
        bytearray(DATA),
        memoryview(DATA),
        [DATA[:1], DATA[1:70_000], b"", DATA[70_000:]],  # pieces as they came in
    ],
)
def test_the_bytes_land_at_their_offset(tmp_path: Path, shape: object) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"\0" * 1000 + b"x" * 250_000)
    fd = os.open(path, os.O_RDWR)
    try:
        write_behind(fd, shape, 1000)  # type: ignore[arg-type]
    finally:
        os.close(fd)
    written = path.read_bytes()
    assert written[1000 : 1000 + len(DATA)] == DATA
    assert written[:1000] == b"\0" * 1000 and written[1000 + len(DATA) :] == b"x" * 50_000


async def test_a_cancelled_caller_waits_for_the_thread_it_started() -> None:
    started, release, finished = threading.Event(), threading.Event(), threading.Event()

    def slow_write() -> None:
        started.set()
        release.wait(5)
        finished.set()

    task = asyncio.create_task(to_the_end(slow_write))
    await asyncio.to_thread(started.wait, 5)
    task.cancel()
    await asyncio.sleep(0.05)
    assert not task.done()  # still waiting for the thread: the caller cannot close yet
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert finished.is_set()


@pytest.mark.parametrize("size", [0, 1, COPY_SLICE, COPY_SLICE + 12_345])
def test_a_kernel_copy_lands_the_range_at_its_offset(tmp_path: Path, size: int) -> None:
    source = os.urandom(size + 3_000)
    (tmp_path / "src").write_bytes(source)
    (tmp_path / "dst").write_bytes(b"d" * 100)
    src = os.open(tmp_path / "src", os.O_RDONLY)
    dst = os.open(tmp_path / "dst", os.O_RDWR)
    try:
        assert copy_behind(src, dst, size, 1_000, 50)
    finally:
        os.close(src)
        os.close(dst)
    assert (tmp_path / "dst").read_bytes() == b"d" * 50 + source[1_000 : 1_000 + size] + (
        b"d" * max(0, 50 - size)
    )


def test_a_kernel_copy_from_a_short_source_says_so(tmp_path: Path) -> None:
    (tmp_path / "src").write_bytes(b"s" * 1_000)
    src = os.open(tmp_path / "src", os.O_RDONLY)
    dst = os.open(tmp_path / "dst", os.O_RDWR | os.O_CREAT)
    try:
        assert not copy_behind(src, dst, 2_000, 0, 0)
    finally:
        os.close(src)
        os.close(dst)
