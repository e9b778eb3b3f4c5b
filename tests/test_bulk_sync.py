"""Bulk sync as users meet it, with real `coffer` processes: thousands of files appearing at
once with both devices live, a client killed in the middle of a batch in either direction,
and selective sync (folders a device leaves out)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from tests.conftest import User
from tests.test_client import Device, live_pair, tree, wait_for


def make_tree(root: Path, count: int, folders: int, size: int = 2000) -> dict[str, bytes]:
    """`count` small files (1 to `size` bytes) spread over `folders` folders."""
    made: dict[str, bytes] = {}
    for i in range(count):
        rel = f"f{i % folders:02}/n{i:05}.txt"
        data = os.urandom(1 + (i * 7919) % size)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        made[rel] = data
    return made


def server_files(user: User, path: str) -> dict[str, int]:
    """Every file under `path` on the server: relative path -> size (the recursive listing)."""
    found: dict[str, int] = {}
    cursor = None
    while True:
        params = {"path": path, **({"cursor": cursor} if cursor else {})}
        page = user.http.get("/api/tree", params=params).json()
        for item in page["items"]:
            if item["kind"] == "file":
                found[item["path"].removeprefix(path.rstrip("/") + "/")] = item["size"]
        cursor = page["cursor"]
        if cursor is None:
            return found


def count_files(folder: Path) -> int:
    return sum(len(files) for d, _, files in os.walk(folder) if ".coffer" not in d)


def test_the_push_channels_stay_up_while_10000_files_sync(tmp_path: Path, base_url: str) -> None:
    """10,000 small files in 20 folders moved into a live device's folder at once: the other
    live device gets all of them byte for byte, neither client's WebSocket drops during the
    bulk work (no fall-back to long-polling in either log), and the channel still pushes
    the next change at once."""
    staging = tmp_path / "staging" / "project"
    made = make_tree(staging, 10_000, 20)
    with live_pair(tmp_path, base_url) as pair:
        a, b, logs = pair.a, pair.b, pair.logs
        started = time.monotonic()
        staging.rename(a.folder / "project")
        wait_for(lambda: count_files(b.folder / "project") >= 10_000, timeout=240, logs=logs)
        print(f"10,000 files on the other device after {time.monotonic() - started:.1f} s")
        (a.folder / "after.txt").write_text("pushed after the bulk")
        wait_for(lambda: (b.folder / "after.txt").exists(), timeout=10, logs=logs)
    for trace in logs:
        text = trace.read_text()
        assert "push channel unavailable" not in text, text[-3000:]
        assert "keepalive" not in text, text[-3000:]
    got = tree(b.folder / "project")
    assert got == made
    assert server_files(pair.user, "/project") == {rel: len(data) for rel, data in made.items()}


def test_a_client_killed_mid_batch_converges_in_both_directions(
    tmp_path: Path, base_url: str
) -> None:
    """`kill -9` of the uploading client while its batches are in flight, then of the
    downloading one while files land: after a rerun both folders and the server hold every
    file whole and once, nothing half-written is left, and usage counts each byte once."""
    user = User(base_url)
    a, b = Device(tmp_path, "laptop", base_url, user), Device(tmp_path, "desk", base_url, user)
    made = make_tree(a.folder, 3000, 10, size=8000)
    proc = a.start_once()
    wait_for(
        lambda: bool(user.http.get("/api/tree", params={"path": "/", "limit": 20}).json()["items"]),
        timeout=60,
    )
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    uploaded = server_files(user, "/")
    assert len(uploaded) < 3000, "the client finished before it was killed"
    # What is on the server is whole: each file's size is the local one.
    assert all(size == len(made[rel]) for rel, size in uploaded.items())
    a.sync_once()
    assert server_files(user, "/") == {rel: len(data) for rel, data in made.items()}

    proc = b.start_once()
    wait_for(lambda: count_files(b.folder) > 0, timeout=60)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    landed = tree(b.folder)
    assert len(landed) < 3000, "the client finished before it was killed"
    assert all(made[rel] == data for rel, data in landed.items())  # whole or absent
    b.sync_once()
    assert tree(b.folder) == made == tree(a.folder)
    assert list((b.folder / ".coffer" / "tmp").iterdir()) == []
    assert server_files(user, "/") == {rel: len(data) for rel, data in made.items()}
    assert user.http.get("/api/me").json()["usage_bytes"] == sum(map(len, made.values()))
    assert a.sync_once()["uploaded"] == [] and b.sync_once()["downloaded"] == []


def test_selective_sync_leaves_folders_out_of_one_device_and_takes_them_back(
    tmp_path: Path, base_url: str
) -> None:
    """A device leaves /Photos out: its copies go from that disk, the server keeps them,
    new photos are not downloaded, nothing is deleted on the server for being missing
    here, a photo edited here before is kept; taking /Photos back in brings it all."""
    user = User(base_url)
    a, b = Device(tmp_path, "laptop", base_url, user), Device(tmp_path, "desk", base_url, user)
    (a.folder / "Photos" / "2025").mkdir(parents=True)
    for name in ("a.jpg", "b.jpg"):
        (a.folder / "Photos" / "2025" / name).write_bytes(os.urandom(3000))
    (a.folder / "Photos" / "cover.jpg").write_bytes(os.urandom(2000))
    (a.folder / "Docs").mkdir()
    (a.folder / "Docs" / "cv.txt").write_text("curriculum")
    a.sync_once()
    b.sync_once()
    assert tree(b.folder) == tree(a.folder)
    (b.folder / "Photos" / "cover.jpg").write_bytes(b"edited on the desk, not yet synced")

    done = b.run("sync", "--once", "--exclude", "/Photos", str(b.folder))
    assert done.returncode == 0, done.stderr
    assert not (b.folder / "Photos" / "2025").exists()
    # The copy edited here stays; nothing under /Photos left the server.
    assert (b.folder / "Photos" / "cover.jpg").read_bytes() == b"edited on the desk, not yet synced"
    assert set(server_files(user, "/")) == {
        "Photos/2025/a.jpg",
        "Photos/2025/b.jpg",
        "Photos/cover.jpg",
        "Docs/cv.txt",
    }
    status = b.run("status", str(b.folder))
    assert "left out of this device: /Photos" in status.stdout

    # The choice is remembered: later passes neither fetch new photos nor send edits.
    (a.folder / "Photos" / "2025" / "c.jpg").write_bytes(os.urandom(1000))
    (a.folder / "Docs" / "letter.txt").write_text("dear")
    a.sync_once()
    report = b.sync_once()
    assert report["downloaded"] == ["Docs/letter.txt"] and report["uploaded"] == []
    assert not (b.folder / "Photos" / "2025").exists()
    cover = user.http.get("/api/file", params={"path": "/Photos"}).json()["items"]
    assert [i["version"] for i in cover if i["name"] == "cover.jpg"] == [1]

    done = b.run("sync", "--once", "--include", "/Photos", str(b.folder))
    assert done.returncode == 0, done.stderr
    local = tree(b.folder)
    for rel in ("Photos/2025/a.jpg", "Photos/2025/b.jpg", "Photos/2025/c.jpg", "Docs/letter.txt"):
        assert local[rel] == (a.folder / rel).read_bytes()
    # Both versions of the cover survive: the server's and the one edited here.
    covers = [rel for rel in local if rel.startswith("Photos/cover")]
    assert len(covers) == 2, covers
    assert b"edited on the desk, not yet synced" in [local[c] for c in covers]
    assert "left out" not in b.run("status", str(b.folder)).stdout
