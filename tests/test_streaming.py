"""Streaming sync with real processes: a device fetches a large file while another is still
uploading it, and nothing partial ever shows under the file's name: not when the receiver
is killed mid-stream, not when the sender abandons the upload."""

from __future__ import annotations

import os
import re
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import User
from tests.stack import Stack, wait_http
from tests.test_client import Device, live_pair, stop_live, wait_for

MIB = 1024 * 1024


def stack_pausing(failpoints: str) -> Iterator[Stack]:
    """A stack whose web server pauses at these failpoints, and drops uploads untouched
    for 20 s."""
    with tempfile.TemporaryDirectory(prefix="coffer-stream-") as tmp:
        stack = Stack(Path(tmp), env={"COFFER_UPLOAD_SESSION_TTL_SECONDS": "20"})
        stack.start_mongo()
        stack.start_redis()
        stack.start_worker()
        stack.start_web(COFFER_FAILPOINTS=failpoints)
        try:
            yield stack
        finally:
            stack.stop_all()


@pytest.fixture
def slow_commits() -> Iterator[Stack]:
    """Each commit waits 4 s: a receiver can be seen to have every chunk before it."""
    yield from stack_pausing("commit.before=4")


@pytest.fixture
def slow_chunks() -> Iterator[Stack]:
    """Each chunk PUT waits 1 s: an upload can be cut off half-way, for sure, even when the
    receiver is slow to start its stream on a busy machine."""
    yield from stack_pausing("chunk.put=1")


def streams(device: Device) -> list[Path]:
    return list((device.folder / ".coffer" / "tmp").glob("stream-*.part"))


def test_a_large_file_is_fetched_while_it_is_uploaded(slow_commits: Stack, tmp_path: Path) -> None:
    with live_pair(tmp_path, slow_commits.url()) as pair:
        a, b, log_a, log_b, logs = pair.a, pair.b, pair.log_a, pair.log_b, pair.logs
        data = os.urandom(40 * MIB)
        staged = tmp_path / "video.raw"
        staged.write_bytes(data)
        os.replace(staged, a.folder / "video.raw")
        # B has every chunk while A's commit is still held up by the server...
        wait_for(lambda: "prefetched video.raw" in log_b.read_text(), timeout=30, logs=logs)
        assert "uploaded video.raw" not in log_a.read_text()
        assert not (b.folder / "video.raw").exists()  # nothing under the name before commit
        # ...and moves it into place once the commit is announced.
        wait_for(lambda: (b.folder / "video.raw").exists(), timeout=30, logs=logs)
        assert (b.folder / "video.raw").read_bytes() == data
        assert "fetched while it was uploaded" in log_b.read_text()
        assert streams(b) == []

        # 1 MiB overwritten in place on A: B copies the unchanged chunks from its own copy
        # at once and fetches only the changed ones, all before A's commit is announced.
        edited = bytearray(data)
        edited[20 * MIB : 21 * MIB] = os.urandom(MIB)
        with open(a.folder / "video.raw", "r+b") as f:
            f.seek(20 * MIB)
            f.write(edited[20 * MIB : 21 * MIB])
        prefetched = "prefetched video.raw"
        wait_for(lambda: log_b.read_text().count(prefetched) == 2, timeout=30, logs=logs)
        assert log_a.read_text().count("uploaded video.raw") == 1  # the commit is held up
        line = [x for x in log_b.read_text().splitlines() if "prefetched video.raw" in x][-1]
        copied, total = (int(n) for n in re.findall(r"\((\d+) of (\d+) chunks", line)[0])
        # Content-defined chunks of 40 MiB of random bytes: about 8, at least 3 (16 MiB
        # at most each); a 1 MiB edit touches a few of them.
        assert total >= 3 and copied >= total - 4, line
        assert (b.folder / "video.raw").read_bytes() == data  # nothing moved before commit
        wait_for(
            lambda: (b.folder / "video.raw").read_bytes() == bytes(edited), timeout=30, logs=logs
        )
        assert streams(b) == []

        # The receiver is killed mid-stream: after a restart it has the file, and no
        # leftover temporary file.
        data2 = os.urandom(48 * MIB)
        staged.write_bytes(data2)
        os.replace(staged, a.folder / "second.raw")
        wait_for(lambda: bool(streams(b)), timeout=30, logs=logs)
        assert pair.live_b is not None
        os.killpg(pair.live_b.pid, signal.SIGKILL)
        pair.live_b.wait()
        assert not (b.folder / "second.raw").exists()
        pair.live_b = b.start_live(trace=tmp_path / "desk2.log")
        wait_for(lambda: (b.folder / "second.raw").exists(), timeout=60, logs=logs)
        assert (b.folder / "second.raw").read_bytes() == data2
        wait_for(lambda: streams(b) == [], timeout=10, logs=logs)


def test_an_abandoned_upload_leaves_nothing_on_the_receiver(
    slow_chunks: Stack, tmp_path: Path
) -> None:
    user = User(slow_chunks.url())
    a = Device(tmp_path, "laptop", slow_chunks.url(), user)
    b = Device(tmp_path, "desk", slow_chunks.url(), user)
    log_b = tmp_path / "desk.log"
    live_b = b.start_live(trace=log_b)
    try:
        wait_for(lambda: "pass done" in log_b.read_text(), logs=(log_b,))
        (a.folder / "big.raw").write_bytes(os.urandom(40 * MIB))
        sender = a.start_once()
        wait_for(lambda: bool(streams(b)), timeout=30, logs=(log_b,))
        os.killpg(sender.pid, signal.SIGKILL)  # with most chunks still to send
        sender.wait()
        # The session runs out (20 s here) and expiry drops it: the receiver lets go.
        wait_for(lambda: streams(b) == [], timeout=120, logs=(log_b,))
        assert not (b.folder / "big.raw").exists()
        assert "streaming big.raw stopped" in log_b.read_text()
    finally:
        stop_live(live_b)


def test_a_web_server_killed_mid_stream_leaves_every_device_with_the_committed_bytes(
    slow_chunks: Stack, tmp_path: Path
) -> None:
    with live_pair(tmp_path, slow_chunks.url()) as pair:
        a, b, logs = pair.a, pair.b, pair.logs
        data = os.urandom(24 * MIB)
        staged = tmp_path / "movie.raw"
        staged.write_bytes(data)
        os.replace(staged, a.folder / "movie.raw")
        wait_for(lambda: bool(streams(b)), timeout=30, logs=logs)
        web = slow_chunks.procs["web"]
        web.kill9()  # both devices lose the server mid-stream
        assert not (b.folder / "movie.raw").exists()
        web.start()
        wait_http(f"{slow_chunks.url()}/healthz")
        wait_for(lambda: (b.folder / "movie.raw").exists(), timeout=120, logs=logs)
        assert (b.folder / "movie.raw").read_bytes() == data
        listed = pair.user.http.get("/api/file", params={"path": "/"}).json()["items"]
        assert [(i["name"], i["size"]) for i in listed] == [("movie.raw", len(data))]
        wait_for(lambda: streams(b) == [], timeout=10, logs=logs)
