"""Verified downloads (`client.transfer.fetch`, used by sync and by `coffer download`)
against an in-process stand-in for the API: good bytes land under the real name; damaged,
short or inconsistent ones raise and leave nothing behind, neither the file nor its
temporary."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from app.protocol import ContentHasher
from client.api import CofferClient, TransferStats
from client.errors import DownloadCorrupt, DownloadIncomplete
from client.state import Entry, SyncState
from client.transfer import LocalChunks, Transfers, fetch, replace_into_place

CHUNK = 64 * 1024


class FakeApi:
    """Serves one file's manifest, stream and chunks; `sent` is what goes on the wire."""

    parallel = 4

    def __init__(self, data: bytes, sent: bytes | None = None, manifest_hash: str = "") -> None:
        self.pieces = [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]
        self.sent = data if sent is None else sent
        shas = [hashlib.sha256(p).hexdigest() for p in self.pieces]
        self.chunks = [
            {"sha256": sha, "size": len(p), "url": f"chunk/{i}"}
            for i, (sha, p) in enumerate(zip(shas, self.pieces, strict=True))
        ]
        hasher = ContentHasher()
        hasher.update(data)
        self.hash = manifest_hash or hasher.hexdigest()
        self.stats = TransferStats()
        self.fetched: list[str] = []

    # The real paging over `describe` below.
    manifest = CofferClient.manifest

    async def describe(
        self, file_id: str, *, chunk_offset: int | None = None, chunk_limit: int | None = None
    ) -> dict[str, Any]:
        start = chunk_offset or 0
        end = start + (chunk_limit or len(self.chunks))
        more = end < len(self.chunks)
        return {
            "id": file_id,
            "version": 3,
            "content_hash": self.hash,
            "chunks": self.chunks[start:end],
            "next_chunk_offset": end if more else None,
        }

    @asynccontextmanager
    async def content(self, file_id: str, version: int | None = None) -> AsyncIterator[Any]:
        async def pieces() -> AsyncIterator[bytes]:
            for i in range(0, len(self.sent), 10_000):  # not aligned with chunks
                yield self.sent[i : i + 10_000]

        yield pieces()

    async def get_chunk_pieces(self, url: str, size: int = 0) -> list[bytes]:
        self.fetched.append(url)
        index = int(url.rpartition("/")[2])
        start = index * CHUNK
        chunk = self.sent[start : start + len(self.pieces[index])]
        return [chunk[:777], chunk[777:]]  # the pieces they came in


def data(n: int = 5 * CHUNK + 123) -> bytes:
    return bytes((i * 7 + i // 251) % 256 for i in range(n))


async def test_a_good_download_lands_whole_and_leaves_no_temporary(tmp_path: Path) -> None:
    api = FakeApi(data())
    target, tmp = tmp_path / "file.bin", tmp_path / ".file.bin.part"
    chunks, head = await fetch(api, "f1", target, tmp)
    assert target.read_bytes() == data()
    assert not tmp.exists()
    assert head["version"] == 3 and [size for _, size in chunks][-1] == 123


@pytest.mark.parametrize(
    ("sent", "error"),
    [
        (data()[:CHUNK] + b"X" + data()[CHUNK + 1 :], DownloadCorrupt),  # a flipped byte
        (data()[: 3 * CHUNK], DownloadIncomplete),  # cut short
        (data() + b"more", DownloadCorrupt),  # longer than the manifest says
    ],
    ids=["damaged", "short", "long"],
)
async def test_bad_bytes_raise_and_leave_nothing(
    tmp_path: Path, sent: bytes, error: type[Exception]
) -> None:
    api = FakeApi(data(), sent)
    target, tmp = tmp_path / "file.bin", tmp_path / ".file.bin.part"
    with pytest.raises(error):
        await fetch(api, "f1", target, tmp)
    assert not target.exists() and not tmp.exists()


async def test_a_manifest_that_does_not_match_its_content_hash_is_refused(tmp_path: Path) -> None:
    api = FakeApi(data(), manifest_hash="0" * 64)
    target, tmp = tmp_path / "file.bin", tmp_path / ".file.bin.part"
    with pytest.raises(DownloadCorrupt):
        await fetch(api, "f1", target, tmp)
    assert not target.exists() and not tmp.exists()


async def test_an_existing_file_is_not_replaced_by_a_bad_download(tmp_path: Path) -> None:
    target, tmp = tmp_path / "file.bin", tmp_path / ".file.bin.part"
    target.write_bytes(b"the old version")
    with pytest.raises(DownloadCorrupt):
        await fetch(FakeApi(data(), data()[:-1] + b"?"), "f1", target, tmp)
    assert target.read_bytes() == b"the old version" and not tmp.exists()


def synced_copy(root: Path, state: SyncState, name: str, content: bytes) -> None:
    """A synced local file holding `content`, as the state's chunk index knows it."""
    path = root / name
    path.write_bytes(content)
    st = path.stat()
    pieces = [content[i : i + CHUNK] for i in range(0, len(content), CHUNK)]
    chunks = [(hashlib.sha256(p).hexdigest(), len(p)) for p in pieces]
    state.put(Entry(name, "file", "id-" + name, 1, st.st_size, st.st_mtime_ns, "h", chunks))


async def test_chunks_on_disk_are_reused_and_fetched_ones_verified(tmp_path: Path) -> None:
    state = SyncState(tmp_path)
    old = bytearray(data())
    old[2 * CHUNK : 2 * CHUNK + 5] = b"edit!"  # chunk 2 differs from the new version
    synced_copy(tmp_path, state, "old.bin", bytes(old))
    api = FakeApi(data())
    target, tmp = tmp_path / "new.bin", state.dir / "tmp" / "x.part"
    await fetch(api, "f1", target, tmp, reuse=LocalChunks(tmp_path, state))
    assert target.read_bytes() == data()
    assert api.fetched == ["chunk/2"]  # only the chunk no local file has

    damaged = bytearray(data())
    damaged[2 * CHUNK] ^= 1
    api = FakeApi(data(), bytes(damaged))
    with pytest.raises(DownloadCorrupt):
        await fetch(api, "f1", tmp_path / "again.bin", tmp, reuse=LocalChunks(tmp_path, state))
    assert not (tmp_path / "again.bin").exists() and not tmp.exists()
    state.close()


def test_bulk_work_shows_files_done_bytes_and_rate(tmp_path: Path) -> None:
    """The bar a sync shows for bulk work counts files as batches finish and bytes as
    they move; it goes away when the work is done."""
    from io import StringIO

    from rich.console import Console
    from rich.progress import Progress

    from client.transfer import Transfers

    progress = Progress(console=Console(file=StringIO(), force_terminal=True))
    transfers = Transfers(FakeApi(b"x"), tmp_path, SyncState(tmp_path), progress=progress)  # type: ignore[arg-type]
    with transfers.bulk_bar(5, 1000) as (advance, files_done):
        advance(400)
        files_done(3)
        (task,) = progress.tasks
        assert task.description == "3/5 files"
        assert task.completed == 400 and task.total == 1000
    assert progress.tasks == []
    with transfers.bulk_bar(1, 10) as (advance, files_done):  # one file: no bar
        advance(10)
        files_done(1)
        assert progress.tasks == []


@pytest.mark.parametrize("kind", ["file", "fifo", "symlink", "missing"])
def test_a_finished_download_replaces_whatever_is_at_its_name_at_once(
    tmp_path: Path, kind: str
) -> None:
    """The old file is held open across the rename (its blocks are freed afterwards, not
    inside it); a FIFO or a symlink there is replaced without being opened (opening a FIFO
    would wait for a writer forever)."""
    target, tmp = tmp_path / "name", tmp_path / "new.part"
    tmp.write_bytes(b"new bytes")
    if kind == "file":
        target.write_bytes(b"old" * 1000)
    elif kind == "fifo":
        os.mkfifo(target)
    elif kind == "symlink":
        target.symlink_to(tmp_path / "elsewhere")
    started = time.monotonic()
    replace_into_place(tmp, target)
    assert time.monotonic() - started < 5
    assert target.is_file() and not target.is_symlink()
    assert target.read_bytes() == b"new bytes" and not tmp.exists()


@pytest.mark.parametrize(
    ("durable", "expect_taken"),
    [("right", True), ("wrong", False), (None, True), ("none-and-bytes-wrong", False)],
)
async def test_a_prefetched_file_is_taken_only_if_its_own_bytes_have_the_hash(
    tmp_path: Path, durable: str | None, expect_taken: bool
) -> None:
    """Chunks of a prefetch may be copied from local files without being read (their size
    and mtime vouch for them); the blocks hashed as they were written are the proof, and
    when they disagree with the commit the file is never taken, whatever its chunk list
    says. Without such a proof the file is hashed from its bytes."""
    root = tmp_path / "root"
    root.mkdir()
    state = SyncState(root)
    transfers = Transfers(None, root, state)  # type: ignore[arg-type]  # no API needed
    data = b"version two" * 1000
    good = content_hash_of(data)
    tmp = state.dir / "tmp" / "stream-x.part"
    tmp.write_bytes(data if durable != "none-and-bytes-wrong" else b"X" + data[1:])
    (root / "f.bin").write_bytes(b"version one")
    chunks = [(hashlib.sha256(data).hexdigest(), len(data))]  # aligned: one block
    durable_hash = {"right": good, "wrong": "0" * 64}.get(durable or "")
    taken = await transfers.finish_prefetched("f.bin", tmp, chunks, good, durable_hash)
    assert taken is expect_taken
    assert (root / "f.bin").read_bytes() == (data if expect_taken else b"version one")
    assert not tmp.exists()
    state.close()


def content_hash_of(data: bytes) -> str:
    hasher = ContentHasher()
    hasher.update(data)
    return hasher.hexdigest()
