"""Writing received bytes (client/diskio.py): every shape of data lands at its offset, and
a cancelled caller does not close a file while a thread still writes through it."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pytest

from client.diskio import to_the_end, write_behind

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
