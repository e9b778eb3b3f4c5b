"""The `coffer` command as a user runs it: real processes, two "devices" (two config dirs
and two folders) of one account against the running stack."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from client.hashing import CDC_SIZES, file_hashes
from tests.conftest import User
from tests.stack import Stack
from tests.test_faults import kill9_and_restart

ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024


class Device:
    def __init__(self, tmp: Path, name: str, base_url: str, user: User) -> None:
        self.name = name
        self.config = tmp / f"config-{name}"
        self.folder = tmp / f"folder-{name}"
        self.folder.mkdir()
        self.env = {**os.environ, "COFFER_CONFIG_DIR": str(self.config)}
        done = self.run(
            "login",
            base_url,
            "--username",
            user.username,
            "--password-stdin",
            "--device-name",
            name,
            stdin=user.password + "\n",
        )
        assert done.returncode == 0, done.stderr

    def run(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "client.cli", *args],
            input=stdin,
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )

    def sync_once(self) -> dict:
        done = self.run("sync", "--once", str(self.folder))
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def start_once(self) -> subprocess.Popen[str]:
        """`coffer sync --once DIR` in the background (to be killed mid-way)."""
        return subprocess.Popen(
            [sys.executable, "-m", "client.cli", "--quiet", "sync", "--once", str(self.folder)],
            env=self.env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def start_live(self, trace: Path | None = None) -> subprocess.Popen[str]:
        """`coffer sync DIR` until stopped; with `trace`, its timestamped log goes there."""
        env = {**self.env, "COFFER_SYNC_TRACE": "1"} if trace else self.env
        return subprocess.Popen(
            [sys.executable, "-m", "client.cli", "--quiet", "sync", str(self.folder)],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=trace.open("w") if trace else subprocess.PIPE,
            text=True,
            start_new_session=True,
        )


def tree(folder: Path) -> dict[str, bytes]:
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if rel.startswith(".coffer") or not path.is_file():
            continue
        out[rel] = path.read_bytes()
    return out


def wait_for(check: Callable[[], bool], timeout: float = 15, logs: tuple[Path, ...] = ()) -> None:
    """Poll until `check()`; on a time-out the failure shows the tail of each of `logs`."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in logs)
            raise AssertionError(f"timed out after {timeout} s\n{tails}")
        time.sleep(0.02)


def stop_live(*procs: subprocess.Popen[str]) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGINT)
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@dataclass
class LivePair:
    """Two devices of one user, each running `coffer sync` live with a trace log."""

    user: User
    a: Device
    b: Device
    log_a: Path
    log_b: Path
    live_a: subprocess.Popen[str] | None = None
    live_b: subprocess.Popen[str] | None = None

    @property
    def logs(self) -> tuple[Path, Path]:
        return self.log_a, self.log_b


@contextmanager
def live_pair(tmp_path: Path, url: str) -> Iterator[LivePair]:
    """Both devices started and past their first pass; stopped on the way out (the test
    may replace `live_a`/`live_b`, e.g. after killing one)."""
    user = User(url)
    pair = LivePair(
        user,
        Device(tmp_path, "laptop", url, user),
        Device(tmp_path, "desk", url, user),
        tmp_path / "laptop.log",
        tmp_path / "desk.log",
    )
    pair.live_a = pair.a.start_live(trace=pair.log_a)
    pair.live_b = pair.b.start_live(trace=pair.log_b)
    try:
        for trace in pair.logs:
            wait_for(lambda trace=trace: "pass done" in trace.read_text(), logs=pair.logs)
        yield pair
    finally:
        stop_live(*(p for p in (pair.live_a, pair.live_b) if p is not None))


@pytest.fixture
def devices(tmp_path: Path, base_url: str) -> Iterator[tuple[Device, Device, User]]:
    user = User(base_url)
    yield Device(tmp_path, "laptop", base_url, user), Device(tmp_path, "desk", base_url, user), user


def test_login_stores_a_private_token_and_errors_are_clear(tmp_path: Path, base_url: str) -> None:
    user = User(base_url)
    device = Device(tmp_path, "one", base_url, user)
    mode = stat.S_IMODE((device.config / "config.json").stat().st_mode)
    assert mode == 0o600
    wrong = device.run(
        "login",
        base_url,
        "--username",
        user.username,
        "--password-stdin",
        stdin="not the password\n",
    )
    assert wrong.returncode == 3 and "wrong username or password" in wrong.stderr
    down = device.run(
        "login", "http://127.0.0.1:9", "--username", "x", "--password-stdin", stdin="whatever1\n"
    )
    assert down.returncode == 4 and "unreachable" in down.stderr
    src = tmp_path / "report.txt"
    src.write_bytes(os.urandom(3 * MIB))
    assert device.run("upload", str(src), "/docs/report.txt").returncode == 0
    listing = device.run("ls", "/docs")
    assert listing.returncode == 0 and "report.txt" in listing.stdout
    back = tmp_path / "back.txt"
    assert device.run("download", "/docs/report.txt", str(back)).returncode == 0
    assert back.read_bytes() == src.read_bytes()
    friend = User(base_url)
    shared = device.run("share", "/docs/report.txt", friend.username, "--role", "viewer")
    assert shared.returncode == 0, shared.stderr
    assert [i["name"] for i in friend.http.get("/api/shared").json()["items"]] == ["report.txt"]
    link = device.run("link", "/docs/report.txt", "--expires", "7d")
    assert link.returncode == 0 and "/s/" in link.stdout
    assert httpx.get(link.stdout.strip() + "/download").content == src.read_bytes()
    assert device.run("rm", "/docs/report.txt").returncode == 0
    assert device.run("download", "/docs/report.txt", str(back)).returncode == 1
    assert device.run("logout").returncode == 0
    assert device.run("ls", "/").returncode == 3


def test_two_devices_converge_on_creates_edits_renames_moves_and_deletes(
    devices: tuple[Device, Device, User],
) -> None:
    a, b, _ = devices
    (a.folder / "docs" / "deep").mkdir(parents=True)
    (a.folder / "docs" / "note.txt").write_text("first")
    (a.folder / "docs" / "deep" / "big.bin").write_bytes(os.urandom(6 * MIB))
    (a.folder / "~$lock.docx").write_text("editor temp")
    (a.folder / ".cofferignore").write_text("*.log\n")
    (a.folder / "build.log").write_text("ignored by pattern")
    (a.folder / "empty").mkdir()
    a.sync_once()
    b.sync_once()
    assert tree(b.folder) == {
        k: v
        for k, v in tree(a.folder).items()
        if k not in ("~$lock.docx", ".cofferignore", "build.log")
    }
    assert (b.folder / "empty").is_dir()

    # Edit, rename a file, move a folder on B; A follows. Moves are not re-uploads.
    (b.folder / "docs" / "note.txt").write_text("second")
    (b.folder / "docs" / "deep" / "big.bin").rename(b.folder / "docs" / "deep" / "huge.bin")
    (b.folder / "docs" / "deep").rename(b.folder / "moved")
    report = b.sync_once()
    assert report["bytes_sent"] < MIB  # the 6 MiB file was moved, not sent again
    a.sync_once()
    assert tree(a.folder) == tree(b.folder) | {
        k: v
        for k, v in tree(a.folder).items()
        if k in ("~$lock.docx", ".cofferignore", "build.log")
    }
    assert (a.folder / "moved" / "huge.bin").exists() and not (a.folder / "docs" / "deep").exists()

    # Deletes propagate (to the server's trash).
    (a.folder / "docs" / "note.txt").unlink()
    a.sync_once()
    b.sync_once()
    assert not (b.folder / "docs" / "note.txt").exists()


def test_a_change_uploads_only_changed_chunks_and_downloads_only_missing_ones(
    devices: tuple[Device, Device, User],
) -> None:
    """Chunks are content-defined: an overwrite changes only the chunks around it, and
    bytes inserted near the start shift the cut points with them, so the rest of the file
    is still the same chunks (with fixed 4 MiB chunks every later chunk would change). The
    changed chunks go up as deltas against the ones they replace; the other device
    downloads the changed chunks whole."""
    a, b, _ = devices
    data = bytearray(os.urandom(40 * MIB))
    high = CDC_SIZES[2]  # the largest chunk (16 MiB)
    (a.folder / "video.raw").write_bytes(data)
    assert a.sync_once()["bytes_sent"] == 40 * MIB
    assert b.sync_once()["bytes_received"] == 40 * MIB

    def new_bytes(before: bytes, after: bytes) -> int:
        """What the chunks of `after` that `before` lacks add up to."""
        (a.folder.parent / "probe").write_bytes(before)
        _, old = file_hashes(a.folder.parent / "probe")
        (a.folder.parent / "probe").write_bytes(after)
        _, new = file_hashes(a.folder.parent / "probe")
        (a.folder.parent / "probe").unlink()
        known = {sha for sha, _ in old}
        return sum(size for sha, size in new if sha not in known)

    edited = bytearray(data)
    edited[20 * MIB : 21 * MIB] = os.urandom(MIB)  # 1 MiB overwritten in the middle
    changed = new_bytes(bytes(data), bytes(edited))
    assert MIB <= changed <= MIB + 2 * high  # at worst a whole chunk more at each end
    (a.folder / "video.raw").write_bytes(edited)
    sent = a.sync_once()
    # Each changed chunk went up as a delta against the chunks it replaced: about the
    # changed MiB (random: nothing to compress), not the whole chunks around it.
    assert sent["uploaded"] == ["video.raw"]
    assert MIB <= sent["bytes_sent"] <= 1.25 * MIB < changed
    got = b.sync_once()
    assert got["downloaded"] == ["video.raw"] and got["bytes_received"] == changed
    assert (b.folder / "video.raw").read_bytes() == bytes(edited)

    shifted = bytes(edited[:1000]) + os.urandom(100) + bytes(edited[1000:])  # inserted
    changed = new_bytes(bytes(edited), shifted)
    assert changed <= 2 * high + 100  # the chunk it falls in, at worst the next: not the file
    (a.folder / "video.raw").write_bytes(shifted)
    assert 100 <= a.sync_once()["bytes_sent"] <= 256 * 1024  # the pieces around the insert
    assert b.sync_once()["bytes_received"] == changed
    assert (b.folder / "video.raw").read_bytes() == shifted


def test_edits_on_both_sides_keep_both_as_a_conflicted_copy(
    devices: tuple[Device, Device, User],
) -> None:
    a, b, _ = devices
    (a.folder / "plan.txt").write_text("original")
    a.sync_once()
    b.sync_once()
    (a.folder / "plan.txt").write_text("laptop's edit")  # both offline, both edit
    (b.folder / "plan.txt").write_text("desk's edit")
    a.sync_once()
    report = b.sync_once()
    assert len(report["conflicts"]) == 1
    copy = report["conflicts"][0]
    assert copy.startswith("plan (conflicted copy desk ") and copy.endswith(").txt")
    assert (b.folder / "plan.txt").read_text() == "laptop's edit"
    assert (b.folder / copy).read_text() == "desk's edit"
    a.sync_once()
    assert tree(a.folder) == tree(b.folder)


def test_kill9_mid_upload_and_mid_download_then_restart_converges(
    devices: tuple[Device, Device, User],
) -> None:
    a, b, user = devices
    data = os.urandom(48 * MIB)
    (a.folder / "large.bin").write_bytes(data)
    proc = a.start_once()
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    a.sync_once()
    # B is killed while downloading: the real name never holds a partial file.
    proc = b.start_once()
    wait_for(lambda: any((b.folder / ".coffer" / "tmp").glob("*.part")))
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    target = b.folder / "large.bin"
    assert not target.exists() or target.read_bytes() == data
    status = b.run("status", str(b.folder))
    assert status.returncode == 0 and "synced entries" in status.stdout
    b.sync_once()
    assert (b.folder / "large.bin").read_bytes() == data
    items = user.http.get("/api/file", params={"path": "/"}).json()["items"]
    assert [i["name"] for i in items] == ["large.bin"]
    assert list((a.folder / ".coffer" / "tmp").iterdir()) == []
    assert list((b.folder / ".coffer" / "tmp").iterdir()) == []


def test_live_sync_follows_changes_on_the_other_device_and_survives_a_server_restart(
    devices: tuple[Device, Device, User], stack: Stack
) -> None:
    a, b, _ = devices
    live_a, live_b = a.start_live(), b.start_live()
    try:
        time.sleep(1.5)  # both have done their first pass and follow the feed
        (a.folder / "hello.txt").write_text("hi from the laptop")
        wait_for(
            lambda: (
                (b.folder / "hello.txt").exists()
                and (b.folder / "hello.txt").read_text() == "hi from the laptop"
            )
        )
        (b.folder / "sub").mkdir()
        (b.folder / "sub" / "reply.txt").write_text("hi back")
        wait_for(lambda: (a.folder / "sub" / "reply.txt").exists())
        (a.folder / "hello.txt").unlink()
        wait_for(lambda: not (b.folder / "hello.txt").exists())
        # The server dies and comes back: both clients reconnect and carry on.
        kill9_and_restart(stack, "web")
        (a.folder / "after-restart.txt").write_text("still syncing")
        wait_for(lambda: (b.folder / "after-restart.txt").exists(), timeout=40)
        (b.folder / "sub").rename(b.folder / "renamed")
        wait_for(
            lambda: (
                (a.folder / "renamed" / "reply.txt").exists() and not (a.folder / "sub").exists()
            )
        )
    finally:
        stop_live(live_a, live_b)
    assert live_a.returncode == 0 and live_b.returncode == 0
    assert tree(a.folder) == tree(b.folder)


def test_live_file_changes_are_sent_without_rescanning_the_tree(
    devices: tuple[Device, Device, User], tmp_path: Path
) -> None:
    """Editing, adding, deleting, renaming and safe-saving files in a synced tree of 200
    files: each change reaches the other device, and the sending client never walks the
    tree or lists the server again (its log shows no full pass after the first); a new
    or deleted folder is a pass over that folder alone."""
    a, b, user = devices
    for i in range(200):
        (a.folder / f"d{i % 20}").mkdir(exist_ok=True)
        (a.folder / f"d{i % 20}" / f"f{i}.txt").write_text(f"file {i}")
    a.sync_once()
    b.sync_once()
    log, log_b = tmp_path / "laptop.log", tmp_path / "desk.log"
    live_a, live_b = a.start_live(trace=log), b.start_live(trace=log_b)
    logs = (log, log_b)
    try:
        for trace in logs:  # the first (full) pass
            wait_for(lambda trace=trace: "pass done" in trace.read_text(), logs=logs)
        full_passes = log.read_text().count("pass begins")
        (a.folder / "d3" / "f3.txt").write_text("edited on the laptop")
        edited = b.folder / "d3" / "f3.txt"
        wait_for(lambda: edited.read_text() == "edited on the laptop", logs=logs)
        (a.folder / "d4" / "new.txt").write_text("new on the laptop")
        wait_for(lambda: (b.folder / "d4" / "new.txt").exists(), logs=logs)
        (a.folder / "d5" / "f5.txt").unlink()
        wait_for(lambda: not (b.folder / "d5" / "f5.txt").exists(), logs=logs)
        # A rename into another folder is a move on the server: same file, no upload.
        before = user.http.get("/api/file/", params={"path": "/d7"}).json()["items"]
        moved_id = next(i["id"] for i in before if i["name"] == "f7.txt")
        (a.folder / "d7" / "f7.txt").rename(a.folder / "d8" / "renamed.txt")
        wait_for(lambda: (b.folder / "d8" / "renamed.txt").exists(), logs=logs)
        wait_for(lambda: not (b.folder / "d7" / "f7.txt").exists(), logs=logs)
        after = user.http.get(f"/api/file/{moved_id}").json()
        assert after["path"] == "/d8/renamed.txt" and after["version"] == 1, after
        # The other device renamed its copy in place too (no download).
        wait_for(lambda: "moved d7/f7.txt -> d8/renamed.txt" in log_b.read_text(), logs=logs)
        # An editor's safe save (write a temp file, rename it over the original) is an edit.
        (a.folder / "d6" / "f6.txt.tmp").write_text("saved atomically")
        os.replace(a.folder / "d6" / "f6.txt.tmp", a.folder / "d6" / "f6.txt")
        saved = b.folder / "d6" / "f6.txt"
        wait_for(lambda: saved.read_text() == "saved atomically", logs=logs)
        assert log.read_text().count("pass begins") == full_passes, log.read_text()[-2000:]
        (a.folder / "fresh" / "deeper").mkdir(parents=True)
        (a.folder / "fresh" / "deeper" / "x.txt").write_text("in a new folder")
        wait_for(lambda: (b.folder / "fresh" / "deeper" / "x.txt").exists(), logs=logs)
        # A new folder is a pass over that folder alone, not over the whole tree.
        assert log.read_text().count("pass begins") == full_passes, log.read_text()[-2000:]
        # So is a deleted one: it goes to the server's trash whole, and from the other device.
        shutil.rmtree(a.folder / "d9")
        wait_for(lambda: not (b.folder / "d9").exists(), logs=logs)
        assert log.read_text().count("pass begins") == full_passes, log.read_text()[-2000:]
        trash = user.http.get("/api/trash").json()["items"]
        assert [i["path"] for i in trash if i["name"] == "d9"] == ["/d9"]
    finally:
        stop_live(live_a, live_b)
    assert tree(a.folder) == tree(b.folder)
    assert (b.folder / "d4" / "new.txt").read_text() == "new on the laptop"


def test_a_folder_shared_with_another_user_syncs_both_ways(tmp_path: Path, base_url: str) -> None:
    owner, guest = User(base_url), User(base_url)
    mine = Device(tmp_path, "owner", base_url, owner)
    theirs = Device(tmp_path, "guest", base_url, guest)
    (mine.folder / "Team" / "plans").mkdir(parents=True)
    (mine.folder / "Team" / "plans" / "q1.txt").write_text("owner's plan")
    mine.sync_once()
    team = next(
        i
        for i in owner.http.get("/api/file", params={"path": "/"}).json()["items"]
        if i["name"] == "Team"
    )
    shared = owner.http.post(
        f"/api/file/{team['id']}/share", json={"username": guest.username, "role": "editor"}
    )
    assert shared.status_code == 201, shared.text
    # `--remote /Team` names the guest's own folder or one in their "Shared with me", which
    # the worker derives moments after the share (before that it would make their own).
    wait_for(
        lambda: any(i["path"] == "/Team" for i in guest.http.get("/api/shared").json()["items"]),
        timeout=30,
    )

    done = theirs.run("sync", "--once", str(theirs.folder), "--remote", "/Team")
    assert done.returncode == 0, done.stderr
    assert (theirs.folder / "plans" / "q1.txt").read_text() == "owner's plan"

    (theirs.folder / "plans" / "q1.txt").write_text("guest's edit")
    (theirs.folder / "notes").mkdir()
    (theirs.folder / "notes" / "from-guest.txt").write_text("hello owner")
    done = theirs.run("sync", "--once", str(theirs.folder), "--remote", "/Team")
    assert done.returncode == 0, done.stderr
    mine.sync_once()
    assert (mine.folder / "Team" / "plans" / "q1.txt").read_text() == "guest's edit"
    assert (mine.folder / "Team" / "notes" / "from-guest.txt").read_text() == "hello owner"
    # Nothing landed in the guest's own tree.
    assert guest.http.get("/api/file", params={"path": "/"}).json()["items"] == []


def root_names(user: User) -> set[str]:
    return {i["name"] for i in user.http.get("/api/file/").json()["items"]}


@pytest.mark.skipif(os.geteuid() != 0, reason="acting as another user needs root")
def test_unreadable_and_unwritable_paths_are_skipped_reported_and_retried(
    base_url: str,
) -> None:
    """Run as an ordinary user (tests run as root, who may read anything): a file it cannot
    read and a folder it cannot write into are skipped and reported, the rest syncs, and
    both go through once the permissions allow."""
    user = User(base_url)
    nobody = 65534
    home = Path(tempfile.mkdtemp(prefix="coffer-perm-"))
    try:
        home.chmod(0o755)
        folder = home / "folder"
        (folder / "locked").mkdir(parents=True)
        (folder / "notes.txt").write_text("readable")
        secret = folder / "secret.txt"
        secret.write_text("root only")
        secret.chmod(0o600)
        for path in (home, folder, folder / "notes.txt"):
            os.chown(path, nobody, nobody)  # secret.txt and locked/ stay root's
        (folder / "locked").chmod(0o555)
        assert user.http.post("/api/folder", json={"path": "/locked"}).status_code in (200, 201)
        user.upload("/locked/from-elsewhere.txt", b"written by another device")

        def coffer(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
            env = {
                **os.environ,
                "HOME": str(home),
                "COFFER_CONFIG_DIR": str(home / "config"),
                "PYTHONDONTWRITEBYTECODE": "1",
            }
            command = ["setpriv", f"--reuid={nobody}", f"--regid={nobody}", "--clear-groups"]
            return subprocess.run(
                [*command, sys.executable, "-m", "client.cli", *args],
                input=stdin,
                env=env,
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=120,
            )

        login = coffer(
            "login", base_url, "--username", user.username, "--password-stdin",
            stdin=user.password + "\n",
        )  # fmt: skip
        assert login.returncode == 0, login.stderr
        first = coffer("sync", "--once", str(folder))
        assert first.returncode == 1, first.stderr  # something was skipped
        report = json.loads(first.stdout)
        skipped = sorted(item.split(":")[0] for item in report["skipped"])
        assert skipped == ["locked/from-elsewhere.txt", "secret.txt"], report
        assert "secret.txt" in first.stderr + first.stdout
        assert {"notes.txt", "secret.txt"} & root_names(user) == {"notes.txt"}

        secret.chmod(0o644)
        (folder / "locked").chmod(0o777)
        second = coffer("sync", "--once", str(folder))
        assert second.returncode == 0, second.stderr
        downloaded = folder / "locked" / "from-elsewhere.txt"
        assert downloaded.read_bytes() == b"written by another device"
        assert {"notes.txt", "secret.txt"} <= root_names(user)
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_full_local_disk_skips_what_does_not_fit_and_syncs_it_once_there_is_room(
    tmp_path: Path, base_url: str
) -> None:
    user = User(base_url)
    big = os.urandom(12 * MIB)
    user.upload("/big.bin", big)
    user.upload("/small.txt", b"fits")
    device = Device(tmp_path, "tiny", base_url, user)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(device.folder)], check=True
    )
    try:
        first = device.run("sync", "--once", str(device.folder))
        assert first.returncode == 1, first.stderr
        report = json.loads(first.stdout)
        assert [s.split(":")[0] for s in report["skipped"]] == ["big.bin"], report
        assert "disk full" in first.stderr + first.stdout
        assert (device.folder / "small.txt").read_bytes() == b"fits"
        assert not (device.folder / "big.bin").exists()  # never a partial file
        assert list((device.folder / ".coffer" / "tmp").iterdir()) == []

        remount = ["mount", "-o", "remount,size=64m", str(device.folder)]
        subprocess.run(remount, check=True)
        second = device.run("sync", "--once", str(device.folder))
        assert second.returncode == 0, second.stderr
        assert hashlib.sha256((device.folder / "big.bin").read_bytes()).digest() == (
            hashlib.sha256(big).digest()
        )
    finally:
        subprocess.run(["umount", "-l", str(device.folder)], check=False)
