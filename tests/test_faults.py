"""Fault tests with real processes and real kill -9: web mid-upload, mid-commit and
mid-folder-move; worker mid-GC and mid-scrub; a full disk; backup while serving and
restore. Each checks what a user would: every file is whole (old or new, never mixed),
nothing referenced is lost, and work resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from arq import create_pool
from arq.connections import RedisSettings
from bson import ObjectId
from pymongo import MongoClient

from tests.conftest import User, content_hash
from tests.stack import Stack, wait_http
from tests.test_integrity import CHUNK, age_chunks, chunk_file, flip_byte, purge

ROOT = Path(__file__).resolve().parent.parent


def kill9_and_restart(stack: Stack, name: str) -> None:
    proc = stack.procs[name]
    proc.kill9()
    proc.start()
    if name.startswith("web"):
        wait_http(f"{stack.url(name)}/healthz")


async def run_in_worker(stack: Stack, function: str, wait_s: float = 120, **kwargs) -> Any:
    """Enqueue a job for the real worker and wait for its result (retrying if skipped)."""
    pool = await create_pool(RedisSettings.from_dsn(stack.env["REDIS_URL"]))
    try:
        deadline = time.monotonic() + wait_s
        while True:
            job = await pool.enqueue_job(function, **kwargs)
            assert job is not None
            result = await job.result(timeout=wait_s)
            skipped = isinstance(result, dict) and result.get("skipped")
            if not skipped or time.monotonic() > deadline:
                return result
            await asyncio.sleep(0.5)  # a killed collector's lease has not run out yet
    finally:
        await pool.aclose()


def mongo(stack: Stack) -> MongoClient:
    return MongoClient(stack.env["MONGODB_URL"])


def upload_chunks(user: User, path: str, data: bytes, indexes: Iterator[int] | None = None) -> dict:
    """Register and PUT the chunks (those in `indexes`), 8 at a time; no commit."""
    reg = user.register(path, data).json()
    wanted = set(indexes) if indexes is not None else None

    def put(m: dict) -> None:
        start = m["index"] * CHUNK
        assert httpx.put(m["url"], content=data[start : start + m["size"]]).status_code == 201

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, [m for m in reg["missing"] if wanted is None or m["index"] in wanted]))
    return reg


def worker_paused_at(stack: Stack, failpoint: str) -> None:
    """Restart the worker so that it pauses (for a minute) at `failpoint`: a test can then
    kill it at exactly that step, however busy the machine is."""
    stack.procs["worker"].stop()
    stack.start_worker(COFFER_FAILPOINTS=f"{failpoint}=60")


def quick_upload(user: User, path: str, data: bytes) -> dict:
    reg = upload_chunks(user, path, data)
    r = user.http.post(f"/api/file/{reg['file_id']}/commit", json={"upload_id": reg["upload_id"]})
    assert r.status_code == 200, r.text
    return r.json()


# ------------------------------------------------------------------------------- web


def test_kill9_web_mid_upload_then_the_upload_resumes(stack: Stack, base_url: str) -> None:
    user = User(base_url)
    data = os.urandom(40 * CHUNK)
    reg = upload_chunks(user, "/resume.bin", data, iter(range(20)))

    def slow_body() -> Iterator[bytes]:
        yield data[20 * CHUNK : 20 * CHUNK + 1000]
        time.sleep(5)  # the server dies while this chunk is half sent
        yield data[20 * CHUNK + 1000 : 21 * CHUNK]

    url = next(m["url"] for m in reg["missing"] if m["index"] == 20)
    sender = threading.Thread(
        target=_quiet, args=(lambda: httpx.put(url, content=slow_body(), timeout=10),)
    )
    sender.start()
    time.sleep(0.3)
    kill9_and_restart(stack, "web")
    sender.join()

    again = user.register("/resume.bin", data).json()
    assert again["upload_id"] == reg["upload_id"]  # the same upload, resumed
    assert [m["index"] for m in again["missing"]] == list(range(20, 40))
    for m in again["missing"]:
        start = m["index"] * CHUNK
        assert httpx.put(m["url"], content=data[start : start + m["size"]]).status_code == 201
    done = user.http.post(
        f"/api/file/{again['file_id']}/commit", json={"upload_id": again["upload_id"]}
    )
    assert done.status_code == 200
    assert user.http.get(f"/api/file/{again['file_id']}/content").content == data


def _quiet(call) -> None:  # type: ignore[no-untyped-def]
    with contextlib.suppress(httpx.HTTPError):
        call()


def test_kill9_web_mid_commit_leaves_the_old_or_the_new_version(
    stack: Stack, base_url: str
) -> None:
    user = User(base_url)
    for delay_ms in (0, 2, 5, 20):
        old, new = os.urandom(8 * CHUNK), os.urandom(8 * CHUNK)
        path = f"/commit-{delay_ms}.bin"
        f = user.upload(path, old)
        reg = upload_chunks(user, path, new)
        commit = threading.Thread(
            target=_quiet,
            args=(
                lambda reg=reg: user.http.post(
                    f"/api/file/{reg['file_id']}/commit", json={"upload_id": reg["upload_id"]}
                ),
            ),
        )
        commit.start()
        time.sleep(delay_ms / 1000)
        kill9_and_restart(stack, "web")
        commit.join()
        now = user.http.get(f"/api/file/{f['id']}").json()
        body = user.http.get(f"/api/file/{f['id']}/content").content
        # Compared by hash: a failure prints three short strings, not 64 MiB of bytes.
        assert (now["version"], now["content_hash"], content_hash(body)) in (
            (1, content_hash(old), content_hash(old)),
            (2, content_hash(new), content_hash(new)),
        ), delay_ms
        retried = user.http.post(
            f"/api/file/{reg['file_id']}/commit", json={"upload_id": reg["upload_id"]}
        )
        assert retried.status_code == 200 and retried.json()["version"] == 2
        assert user.http.get(f"/api/file/{f['id']}/content").content == new


def test_kill9_web_between_a_commit_and_its_follow_up(stack: Stack, base_url: str) -> None:
    """The crash window the timed kills above hit only by luck: the head already points at
    the new version, which is not yet marked committed. The retried commit, the worker's
    sweep, upload expiry and a later commit must all keep that version (never drop it as
    an abandoned upload, never renumber it)."""
    user = User(base_url)
    paused = stack.start_web("web-failpoint", COFFER_FAILPOINTS="commit.after_head=30")
    newer = os.urandom(CHUNK)
    try:
        for then in ("retry", "worker", "superseded"):
            old, new = os.urandom(2 * CHUNK), os.urandom(3 * CHUNK)
            f = user.upload(f"/tail-{then}.bin", old)
            reg = upload_chunks(user, f"/tail-{then}.bin", new)
            commit = threading.Thread(
                target=_quiet,
                args=(
                    lambda reg=reg: httpx.post(
                        f"{stack.url('web-failpoint')}/api/file/{reg['file_id']}/commit",
                        json={"upload_id": reg["upload_id"]},
                        headers=user.http.headers,
                        timeout=60,
                    ),
                ),
            )
            commit.start()
            deadline = time.monotonic() + 20
            while user.http.get(f"/api/file/{f['id']}").json()["version"] != 2:
                assert time.monotonic() < deadline, "the commit never reached its failpoint"
                time.sleep(0.02)
            paused.kill9()
            commit.join()
            retry = {"upload_id": reg["upload_id"]}
            expected = [(2, len(new)), (1, len(old))]
            if then == "retry":  # the client retries its commit, as sync client and browser do
                again = user.http.post(f"/api/file/{f['id']}/commit", json=retry)
                assert again.status_code == 200 and again.json()["version"] == 2, again.text
            elif then == "worker":  # the client is gone: the worker finishes, the upload expires
                asyncio.run(run_in_worker(stack, "finish_interrupted_ops"))
                with mongo(stack) as client:
                    client.coffer.upload_sessions.update_many(
                        {"file_id": f["id"]}, {"$set": {"expires_at": datetime(2000, 1, 1)}}
                    )
                asyncio.run(run_in_worker(stack, "expire_uploads"))
            else:  # another device commits first; the old client's late retry changes nothing
                user.upload(f"/tail-{then}.bin", newer)
                late = user.http.post(f"/api/file/{f['id']}/commit", json=retry)
                assert late.status_code == 200 and late.json()["version"] == 3, late.text
                expected.insert(0, (3, len(newer)))
                new = newer
            versions = user.http.get(f"/api/file/{f['id']}/versions").json()
            assert [(v["version"], v["size"]) for v in versions] == expected, versions
            got = user.http.get(f"/api/file/{f['id']}/content")
            assert got.status_code == 200 and content_hash(got.content) == content_hash(new)
            paused.start()
            wait_http(f"{stack.url('web-failpoint')}/healthz")
    finally:
        paused.stop()
        del stack.procs["web-failpoint"]
    usage = user.http.get("/api/me").json()
    assert usage["usage_bytes"] == 2 * 3 * CHUNK + CHUNK, usage


def test_kill9_web_mid_move_of_a_folder_of_1000_files(stack: Stack, base_url: str) -> None:
    user = User(base_url)
    folder = user.http.post("/api/folder", json={"path": "/big"}).json()
    body = b"same small body"

    def create(i: int) -> None:
        reg = user.register(f"/big/f{i:04}.txt", body).json()
        for m in reg["missing"]:
            assert httpx.put(m["url"], content=body).status_code == 201
        commit = user.http.post(
            f"/api/file/{reg['file_id']}/commit", json={"upload_id": reg["upload_id"]}
        )
        assert commit.status_code == 200

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(create, range(1000)))
    # A second web instance that pauses right after the folder's own move (its pending op
    # written, none of the 1000 files moved yet): killed there, exactly.
    paused = stack.start_web("web-move", COFFER_FAILPOINTS="move.after_folder=60")
    mover = threading.Thread(
        target=_quiet,
        args=(
            lambda: httpx.patch(
                f"{stack.url('web-move')}/api/file/{folder['id']}",
                json={"path": "/moved"},
                headers=user.http.headers,
                timeout=90,
            ),
        ),
    )
    with mongo(stack) as db:
        mover.start()
        deadline = time.monotonic() + 30
        while not (db.coffer.files.find_one({"_id": ObjectId(folder["id"])}) or {}).get(
            "pending_op"
        ):
            assert time.monotonic() < deadline, "the move did not start"
            time.sleep(0.02)
        paused.kill9()
        moved = db.coffer.files.count_documents({"owner_id": user.id, "path": {"$gt": "/moved"}})
    mover.join()
    assert moved == 0  # the crash left the whole subtree to recovery

    def names(path: str) -> list[str]:
        r = user.http.get("/api/file", params={"path": path, "limit": 1000})
        return [i["name"] for i in r.json()["items"]] if r.status_code == 200 else []

    kill9_and_restart(stack, "worker")  # its start-up pass completes interrupted moves
    expected = [f"f{i:04}.txt" for i in range(1000)]
    deadline = time.monotonic() + 60
    while names("/moved") != expected and time.monotonic() < deadline:
        time.sleep(0.5)
    assert names("/moved") == expected
    assert names("/big") == []
    with mongo(stack) as db:
        live = db.coffer.files.count_documents({"owner_id": user.id})
    assert live == 1001  # the folder and its 1000 files, none duplicated or lost
    sample = user.http.get("/api/file", params={"path": "/moved", "limit": 1}).json()["items"][0]
    assert user.http.get(f"/api/file/{sample['id']}/content").content == body


# ---------------------------------------------------------------------------- worker


async def test_kill9_worker_mid_gc_loses_nothing_referenced(stack: Stack, base_url: str) -> None:
    user = User(base_url)
    keep = os.urandom(2 * CHUNK)
    kept = user.upload("/keep.bin", keep)
    garbage = keep[:CHUNK] + os.urandom(1000 * CHUNK)  # shares one chunk with keep.bin
    purge(user, quick_upload(user, "/garbage.bin", garbage)["id"])
    age_chunks(stack, user.id, 7200)
    with mongo(stack) as db:
        before = db.coffer.chunks.count_documents({"owner_id": user.id})
        # The collector pauses after its first batch: killed there, exactly.
        worker_paused_at(stack, "gc.batch_done")
        pool = await create_pool(RedisSettings.from_dsn(stack.env["REDIS_URL"]))
        await pool.enqueue_job("collect_garbage", grace_seconds=3600)
        await pool.aclose()
        deadline = time.monotonic() + 60
        while db.coffer.chunks.count_documents({"owner_id": user.id}) == before:
            assert time.monotonic() < deadline, "GC did not start"
            await asyncio.sleep(0.05)
        stack.procs["worker"].kill9()
        left_at_kill = db.coffer.chunks.count_documents({"owner_id": user.id})
        assert 2 < left_at_kill < before  # killed mid-way: some garbage went, some is left
        stack.start_worker()
        await run_in_worker(stack, "collect_garbage", grace_seconds=3600)
        after = db.coffer.chunks.count_documents({"owner_id": user.id})
    print(f"GC killed with {left_at_kill - 2} of {before - 2} garbage chunks left")
    assert after == 2  # exactly keep.bin's two chunks
    assert user.http.get(f"/api/file/{kept['id']}/content").content == keep
    owner_dir = stack.root / "blobs" / "chunks" / user.id
    assert sum(len(files) for _, _, files in os.walk(owner_dir)) == 2


async def test_kill9_worker_mid_scrub_resumes_and_finds_damage(stack: Stack, base_url: str) -> None:
    user = User(base_url)
    data = os.urandom(600 * CHUNK)
    f = quick_upload(user, "/scrubbed.bin", data)
    await run_in_worker(stack, "scrub_chunks", budget_seconds=120)  # finish any pass
    await run_in_worker(stack, "scrub_chunks", budget_seconds=120)  # one whole pass
    flip_byte(chunk_file(stack, user.id, data[300 * CHUNK : 301 * CHUNK]))
    with mongo(stack) as db:
        total = db.coffer.chunks.count_documents({})
        # The scrub pauses right after saving its cursor for the first batch: killed there.
        worker_paused_at(stack, "scrub.batch_saved")
        pool = await create_pool(RedisSettings.from_dsn(stack.env["REDIS_URL"]))
        await pool.enqueue_job("scrub_chunks", budget_seconds=120)
        await pool.aclose()
        deadline = time.monotonic() + 60
        while not db.coffer.maintenance.find_one({"_id": "scrub", "cursor": {"$gt": ""}}):
            assert time.monotonic() < deadline, "scrub did not start"
            await asyncio.sleep(0.05)
        stack.procs["worker"].kill9()
        stack.start_worker()
    resumed = await run_in_worker(stack, "scrub_chunks", budget_seconds=120)
    assert resumed["passes"] == 1 and resumed["checked"] < total  # went on, not over
    # The flipped chunk was found by the killed run, the resumed one, or (if it lies
    # before where the killed run started) the next pass.
    if not user.http.get(f"/api/file/{f['id']}").json()["damaged"]:
        assert (await run_in_worker(stack, "scrub_chunks", budget_seconds=120))["corrupt"] == 1
    assert user.http.get(f"/api/file/{f['id']}").json()["damaged"] is True
    assert user.upload("/scrubbed.bin", data)["damaged"] is False
    assert hashlib.sha256(user.http.get(f"/api/file/{f['id']}/content").content).digest() == (
        hashlib.sha256(data).digest()
    )


# ------------------------------------------------------------------------- disk full


@pytest.fixture
def small_disk_stack(tmp_path: Path) -> Iterator[Stack]:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    stack = Stack(tmp_path / "small")
    blobs = stack.root / "blobs"
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(blobs)], check=True)
    try:
        stack.start_mongo()
        stack.start_redis()
        stack.start_web()
        yield stack
    finally:
        stack.stop_all()
        subprocess.run(["umount", str(blobs)], check=False)


def test_a_full_disk_answers_507_keeps_stored_files_and_recovers(
    small_disk_stack: Stack,
) -> None:
    user = User(small_disk_stack.url())
    kept = os.urandom(16 * CHUNK)
    f = user.upload("/kept.bin", kept)
    filler = small_disk_stack.root / "blobs" / "filler"
    with contextlib.suppress(OSError), open(filler, "wb") as out:
        while True:
            out.write(b"\0" * CHUNK)
    data = os.urandom(4 * CHUNK)
    reg = user.register("/big.bin", data).json()
    r = httpx.put(reg["missing"][0]["url"], content=data[:CHUNK])
    assert r.status_code == 507
    assert r.json()["error"]["code"] == "insufficient_storage"
    assert user.http.get(f"/api/file/{f['id']}/content").content == kept
    filler.unlink()
    assert user.upload("/big.bin", data)["size"] == len(data)
    assert user.http.get(f"/api/file/{f['id']}/content").content == kept


# --------------------------------------------------------------------- backup/restore


def coffer_server(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_backup_while_serving_then_restore_into_a_new_data_dir(
    stack: Stack, base_url: str, tmp_path: Path
) -> None:
    if not stack.embedded_mongo:
        pytest.skip("coffer-server backup copies the embedded nx-27017; MongoDB has mongodump")
    user = User(base_url)
    files = {f"/docs/f{i}.bin": os.urandom((i + 1) * CHUNK) for i in range(5)}
    for path, data in files.items():
        user.upload(path, data)
    old = user.upload("/docs/edited.txt", b"first")
    user.upload("/docs/edited.txt", b"second")
    gone = user.upload("/docs/binned.txt", b"in the trash")
    assert user.http.delete(f"/api/file/{gone['id']}").status_code == 204

    stop = threading.Event()
    written: list[str] = []

    def keep_writing() -> None:
        while not stop.is_set():
            path = f"/live/w{len(written)}.bin"
            user.upload(path, os.urandom(CHUNK))
            written.append(path)

    writer = threading.Thread(target=keep_writing)
    writer.start()
    env = {k: v for k, v in stack.env.items() if k != "MONGODB_URL"}
    dest = tmp_path / "backup"
    try:
        done = coffer_server(env, "backup", str(dest))
    finally:
        stop.set()
        writer.join()
    assert done.returncode == 0, done.stderr
    assert (dest / "coffer-backup.json").exists()

    target = tmp_path / "restored"
    refused = coffer_server({**env, "COFFER_DATA_DIR": str(stack.root)}, "restore", str(dest))
    assert refused.returncode != 0 and "running" in refused.stderr
    done = coffer_server({**env, "COFFER_DATA_DIR": str(target)}, "restore", str(dest))
    assert done.returncode == 0, done.stderr

    restored = Stack(target)
    try:
        restored.start_mongo()
        restored.start_redis()
        restored.start_web()
        http = httpx.Client(
            base_url=restored.url(), headers={"Authorization": f"Bearer {user.token}"}
        )
        for path, data in files.items():
            item = http.get("/api/file", params={"path": "/docs"}).json()["items"]
            fid = next(i["id"] for i in item if i["path"] == path)
            assert http.get(f"/api/file/{fid}/content").content == data
        assert http.get(f"/api/file/{old['id']}/content", params={"version": 1}).content == (
            b"first"
        )
        trash = http.get("/api/trash").json()["items"]
        assert [t["id"] for t in trash] == [gone["id"]]
        # Whatever the live writer had committed by the snapshot is whole.
        live = http.get("/api/file", params={"path": "/live"}).json().get("items", [])
        for item in live:
            got = http.get(f"/api/file/{item['id']}/content")
            assert got.status_code == 200 and content_hash(got.content) == item["content_hash"]
        print(f"backup taken while {len(written)} uploads ran; {len(live)} were in it")
    finally:
        restored.stop_all()
