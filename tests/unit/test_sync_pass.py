"""The sync's passes acting on the planner's decisions, in-process against an in-memory
API (tests/unit/fake_api.py): the cases the end-to-end tests do not reach, such as a file
on one side where the other has a folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from client.sync import Syncer
from tests.unit.fake_api import FakeApi, FakeServer


@pytest.fixture
def server() -> FakeServer:
    return FakeServer()


@pytest.fixture
def syncer(tmp_path: Path, server: FakeServer) -> Syncer:
    folder = tmp_path / "laptop"
    folder.mkdir()
    return Syncer(FakeApi(server), folder, "/", "laptop")  # type: ignore[arg-type]


def fresh(syncer: Syncer) -> Syncer:
    """The same folder synced by a new process (a fresh report)."""
    syncer.state.close()
    return Syncer(syncer.api, syncer.root, "/", "laptop")


async def test_new_files_and_folders_go_both_ways(syncer: Syncer, server: FakeServer) -> None:
    (syncer.root / "docs").mkdir()
    (syncer.root / "docs" / "a.txt").write_text("from the laptop")
    server.put_file("/inbox/b.txt", b"from the server")
    report = await syncer.reconcile()
    assert server.data("/docs/a.txt") == b"from the laptop"
    assert (syncer.root / "inbox" / "b.txt").read_bytes() == b"from the server"
    assert report.uploaded == ["docs/a.txt"] and report.downloaded == ["inbox/b.txt"]
    again = await fresh(syncer).reconcile()
    assert again.total() == 0  # converged: nothing left to do


async def test_a_clash_is_skipped_and_reported_while_the_rest_syncs(
    syncer: Syncer, server: FakeServer
) -> None:
    (syncer.root / "x").write_text("a file here")
    (syncer.root / "other.txt").write_text("fine")
    server.put_file("/x/inside.txt", b"a folder there")
    report = await syncer.reconcile()
    assert report.skipped == ["x: a file here, a folder on the server"]
    assert (syncer.root / "x").read_text() == "a file here"  # untouched, as is the server
    assert server.data("/x/inside.txt") == b"a folder there"
    assert server.data("/other.txt") == b"fine"


async def test_a_synced_file_replaced_by_a_folder_on_the_server_gives_way(
    syncer: Syncer, server: FakeServer
) -> None:
    (syncer.root / "x").write_text("synced")
    await syncer.reconcile()
    server.remove("/x")
    server.put_file("/x/inside.txt", b"now a folder")
    report = await fresh(syncer).reconcile()
    assert report.deleted_local == ["x"] and report.downloaded == ["x/inside.txt"]
    assert (syncer.root / "x" / "inside.txt").read_bytes() == b"now a folder"


async def test_an_edited_file_is_not_replaced_by_a_folder(
    syncer: Syncer, server: FakeServer
) -> None:
    (syncer.root / "x").write_text("synced")
    await syncer.reconcile()
    (syncer.root / "x").write_text("edited here meanwhile")
    server.remove("/x")
    server.put_file("/x/inside.txt", b"now a folder")
    report = await fresh(syncer).reconcile()
    assert report.skipped == ["x: a file here, a folder on the server"]
    assert (syncer.root / "x").read_text() == "edited here meanwhile"


async def test_edits_on_both_sides_keep_ours_as_a_conflicted_copy(
    syncer: Syncer, server: FakeServer
) -> None:
    (syncer.root / "plan.txt").write_text("original")
    await syncer.reconcile()
    (syncer.root / "plan.txt").write_text("ours")
    server.put_file("/plan.txt", b"theirs")
    report = await fresh(syncer).reconcile()
    [copy] = report.conflicts
    assert copy.startswith("plan (conflicted copy laptop ")
    assert (syncer.root / "plan.txt").read_text() == "theirs"
    assert (syncer.root / copy).read_text() == "ours" and server.data("/" + copy) == b"ours"


async def test_a_local_rename_is_a_move_not_an_upload(syncer: Syncer, server: FakeServer) -> None:
    (syncer.root / "a.txt").write_text("some bytes")
    await syncer.reconcile()
    (syncer.root / "a.txt").rename(syncer.root / "b.txt")
    syncer = fresh(syncer)
    sent = syncer.api.stats.bytes_sent
    report = await syncer.reconcile()
    assert report.moved == ["a.txt -> b.txt"] and server.moves == 1
    assert syncer.api.stats.bytes_sent == sent and "/a.txt" not in server.items


async def test_a_move_on_the_server_renames_the_local_file(
    syncer: Syncer, server: FakeServer
) -> None:
    (syncer.root / "a.txt").write_text("some bytes")
    await syncer.reconcile()
    await syncer.api.move(server.items["/a.txt"]["id"], {"path": "/b.txt"})
    report = await fresh(syncer).reconcile()
    assert report.moved == ["a.txt -> b.txt"] and report.downloaded == []
    assert (syncer.root / "b.txt").read_text() == "some bytes"


async def test_a_folder_deleted_on_both_sides_is_forgotten(
    syncer: Syncer, server: FakeServer
) -> None:
    (syncer.root / "f").mkdir()
    await syncer.reconcile()
    (syncer.root / "f").rmdir()
    server.remove("/f")
    syncer = fresh(syncer)
    await syncer.reconcile()
    assert syncer.state.get("f") is None
    # Made again elsewhere: it comes back here (a stale entry would have trashed it).
    server.put_folder("/f")
    await syncer.reconcile()
    assert (syncer.root / "f").is_dir() and "/f" in server.items


async def test_targeted_pass_uploads_an_edit_and_moves_a_rename(
    syncer: Syncer, server: FakeServer
) -> None:
    (syncer.root / "a.txt").write_text("one")
    (syncer.root / "b.txt").write_text("two")
    await syncer.reconcile()
    (syncer.root / "a.txt").write_text("one, edited")
    (syncer.root / "b.txt").rename(syncer.root / "c.txt")
    assert await syncer.sync_paths({"a.txt"}, [("b.txt", "c.txt")])
    assert server.data("/a.txt") == b"one, edited"
    assert server.data("/c.txt") == b"two" and server.moves == 1
    # A new folder is the full pass's to make.
    (syncer.root / "new").mkdir()
    (syncer.root / "new" / "d.txt").write_text("three")
    assert not await syncer.sync_paths({"new/d.txt"})


async def test_small_and_larger_files_go_up_in_batches_and_only_missing_chunks_are_sent(
    syncer: Syncer, server: FakeServer
) -> None:
    """Small files travel inline; larger ones are registered and committed in batches, and
    a chunk two files share is PUT once."""
    import os
    import random

    # A batch-registered file (at most 8 MiB) of several chunks (random bytes from a fixed
    # seed, so that it is always the same few chunks).
    big = random.Random(3).randbytes(8 * 1024 * 1024)  # three chunks
    (syncer.root / "big.bin").write_bytes(big)
    (syncer.root / "copy.bin").write_bytes(big)  # same chunks: sent once
    (syncer.root / "mid.bin").write_bytes(os.urandom(1536 * 1024))  # over the inline limit
    for i in range(5):
        (syncer.root / f"s{i}.txt").write_text(f"small {i}")
    report = await syncer.reconcile()
    assert sorted(report.uploaded) == sorted(
        ["big.bin", "copy.bin", "mid.bin", *(f"s{i}.txt" for i in range(5))]
    )
    assert server.data("/big.bin") == big == server.data("/copy.bin")
    assert server.data("/mid.bin") == (syncer.root / "mid.bin").read_bytes()
    from client.hashing import file_hashes

    _, big_chunks = file_hashes(syncer.root / "big.bin")
    assert len(big_chunks) > 1  # content-defined chunks
    # big's chunks once (not again for its copy), and mid's one.
    assert syncer.api.stats.chunks_sent == len({sha for sha, _ in big_chunks}) + 1
    assert (await fresh(syncer).reconcile()).total() == 0


async def test_a_server_with_a_lower_inline_limit_gets_the_larger_files_in_chunks(
    syncer: Syncer, server: FakeServer
) -> None:
    import os

    syncer.api.inline_max = 2000  # type: ignore[attr-defined]
    files = {f"f{i}.bin": os.urandom(500 if i % 2 else 5000) for i in range(6)}
    for name, data in files.items():
        (syncer.root / name).write_bytes(data)
    report = await syncer.reconcile()
    assert sorted(report.uploaded) == sorted(files)
    assert all(server.data("/" + name) == data for name, data in files.items())
    assert syncer.bulk.inline_max == 2000  # remembered for the next passes
