"""Integrity: damaged chunks are refused, reported by the scrub and healed by re-upload;
garbage collection deletes only what nothing references, and the dedup race is safe.

The scrub and the collector run in this process against the stack's real database and
blob directory (the worker runs the same code on its cron; test_faults kills it).
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import httpx
import pytest
from pymongo import MongoClient

from app.core.clock import now_ms
from app.db.files import MaintenanceState
from app.files.maintenance.gc import GarbageCollector
from app.files.maintenance.scrub import scrub
from app.storage.local import LocalBlobStore
from tests.conftest import User, manifest
from tests.stack import Stack

CHUNK = 64 * 1024


@pytest.fixture(scope="module")
def store(stack: Stack) -> LocalBlobStore:
    return LocalBlobStore(stack.root / "blobs", stack.env["COFFER_SECRET_KEY"], 3600, 300, False)


def chunk_file(stack: Stack, owner: str, data: bytes) -> Path:
    sha = hashlib.sha256(data).hexdigest()
    return stack.root / "blobs" / "chunks" / owner / sha[:2] / sha


def flip_byte(path: Path, offset: int = 100) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))


async def full_scrub(store: LocalBlobStore) -> dict[str, int]:
    """Finish the pass in progress, then one whole pass: every chunk checked once more."""
    total: dict[str, int] = {}
    for _ in range(2):
        stats = await scrub(store, bytes_per_second=1 << 30, budget_seconds=120)
        assert stats["passes"] == 1
        for key, value in stats.items():
            total[key] = total.get(key, 0) + value
    return total


def wait_damaged(user: User, file_id: str, expected: bool, timeout: float = 15) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        f = user.http.get(f"/api/file/{file_id}").json()
        if f["damaged"] is expected or time.monotonic() > deadline:
            return f
        time.sleep(0.05)


def age_chunks(stack: Stack, owner: str, seconds: float) -> None:
    """Pretend the owner's chunks were last used `seconds` ago (the grace clock)."""
    with MongoClient(stack.env["MONGODB_URL"]) as mongo:
        mongo.coffer.chunks.update_many(
            {"owner_id": owner}, {"$set": {"used_ms": now_ms() - int(seconds * 1000)}}
        )


def purge(user: User, file_id: str) -> None:
    assert user.http.delete(f"/api/file/{file_id}").status_code == 204
    assert user.http.delete(f"/api/trash/{file_id}").status_code == 204


async def test_a_flipped_byte_is_refused_reported_by_the_scrub_and_healed(
    alice: User, stack: Stack, db: None, store: LocalBlobStore
) -> None:
    first = os.urandom(3 * CHUNK)
    middle = os.urandom(3 * CHUNK)
    unread = os.urandom(2 * CHUNK)
    f_first = alice.upload("/first.bin", first)
    f_middle = alice.upload("/middle.bin", middle)
    f_unread = alice.upload("/unread.bin", unread)
    flip_byte(chunk_file(stack, alice.id, first[:CHUNK]))
    flip_byte(chunk_file(stack, alice.id, middle[CHUNK : 2 * CHUNK]))
    flip_byte(chunk_file(stack, alice.id, unread[CHUNK:]))

    # Damage in the first chunk: a clear error before any byte is sent.
    r = alice.http.get(f"/api/file/{f_first['id']}/content")
    assert r.status_code == 502 and r.json()["error"]["code"] == "corrupt_data"
    # Damage further in: the response is cut short, never completed with wrong bytes ...
    with pytest.raises(httpx.HTTPError):
        r = alice.http.get(f"/api/file/{f_middle['id']}/content")
        r.raise_for_status()
        assert r.content != middle
    # ... and from then on the file says it is damaged and is refused up front.
    assert wait_damaged(alice, f_middle["id"], True)["damaged"] is True
    r = alice.http.get(f"/api/file/{f_middle['id']}/content")
    assert r.status_code == 502 and r.json()["error"]["code"] == "damaged_file"

    # Nobody read the third file: the scrub finds its damage.
    assert alice.http.get(f"/api/file/{f_unread['id']}").json()["damaged"] is False
    stats = await full_scrub(store)
    assert stats["corrupt"] >= 1
    assert wait_damaged(alice, f_unread["id"], True)["damaged"] is True
    versions = alice.http.get(f"/api/file/{f_unread['id']}/versions").json()
    assert versions[0]["damaged"] is True
    listing = alice.http.get("/api/file", params={"path": "/"}).json()["items"]
    assert {i["name"] for i in listing if i["damaged"]} == {"first.bin", "middle.bin", "unread.bin"}

    # A device that still has the bytes uploads them again: only the bad chunk is asked
    # for, and the file heals in place (same version: the content never changed).
    for path, data, f in (
        ("/first.bin", first, f_first),
        ("/middle.bin", middle, f_middle),
        ("/unread.bin", unread, f_unread),
    ):
        reg = alice.register(path, data).json()
        assert len(reg["missing"]) == 1
        healed = alice.upload(path, data)
        assert healed["damaged"] is False and healed["version"] == f["version"]
        assert alice.http.get(f"/api/file/{f['id']}/content").content == data


async def test_a_deleted_chunk_is_reported_missing_and_healed(
    alice: User, stack: Stack, db: None, store: LocalBlobStore
) -> None:
    data = os.urandom(4 * CHUNK)
    f = alice.upload("/lost.bin", data)
    chunk_file(stack, alice.id, data[2 * CHUNK : 3 * CHUNK]).unlink()
    stats = await full_scrub(store)
    assert stats["missing"] >= 1
    assert wait_damaged(alice, f["id"], True)["damaged"] is True
    r = alice.http.get(f"/api/file/{f['id']}/content")
    assert r.status_code == 502 and r.json()["error"]["code"] == "damaged_file"
    assert [m["index"] for m in alice.register("/lost.bin", data).json()["missing"]] == [2]
    assert alice.upload("/lost.bin", data)["damaged"] is False
    assert alice.http.get(f"/api/file/{f['id']}/content").content == data
    # The scrub agrees: nothing bad is left.
    assert (await full_scrub(store))["missing"] == 0


async def test_the_scrub_is_rate_limited_and_resumes_where_it_stopped(
    alice: User, stack: Stack, db: None, store: LocalBlobStore
) -> None:
    alice.upload("/many.bin", os.urandom(40 * CHUNK))
    await full_scrub(store)  # start from a finished pass
    with MongoClient(stack.env["MONGODB_URL"]) as mongo:
        total = mongo.coffer.chunks.count_documents({"state": {"$ne": "deleting"}})
        total_bytes = sum(d["size"] for d in mongo.coffer.chunks.find({}, {"size": 1}))
    rate = max(total_bytes // 4, 256 * 1024)  # a whole pass would take about 4 s
    started = time.monotonic()
    part = await scrub(store, bytes_per_second=rate, budget_seconds=1.0)
    elapsed = time.monotonic() - started
    assert part["passes"] == 0 and 0 < part["checked"] < total
    assert part["bytes"] <= rate * elapsed + 16 * 1024 * 1024 / 256  # ~rate, + one chunk
    saved = await MaintenanceState.get("scrub")
    assert saved is not None and saved.cursor != ""
    rest = await scrub(store, bytes_per_second=1 << 30, budget_seconds=120)
    assert rest["passes"] == 1
    assert part["checked"] + rest["checked"] == total  # resumed: nothing checked twice


async def test_gc_deletes_only_chunks_nothing_references(
    alice: User, stack: Stack, db: None, store: LocalBlobStore
) -> None:
    v1, v2 = os.urandom(2 * CHUNK), os.urandom(2 * CHUNK)
    trashed, purged, fresh = (os.urandom(2 * CHUNK) for _ in range(3))
    alice.upload("/keep.bin", v1)
    keep = alice.upload("/keep.bin", v2)
    in_trash = alice.upload("/trashed.bin", trashed)
    assert alice.http.delete(f"/api/file/{in_trash['id']}").status_code == 204
    purge(alice, alice.upload("/purged.bin", purged)["id"])
    age_chunks(stack, alice.id, 7200)
    purge(alice, alice.upload("/fresh.bin", fresh)["id"])  # unreferenced but just used

    stats = await GarbageCollector(store, grace_seconds=3600).run()
    assert stats["deleted"] >= 2
    assert not chunk_file(stack, alice.id, purged[:CHUNK]).exists()
    assert not chunk_file(stack, alice.id, purged[CHUNK:]).exists()
    assert chunk_file(stack, alice.id, fresh[:CHUNK]).exists()  # within the grace period
    assert alice.register("/again.bin", purged).json()["missing"] != []
    assert alice.register("/again.bin", fresh).json()["missing"] == []
    content = f"/api/file/{keep['id']}/content"
    assert alice.http.get(content).content == v2
    assert alice.http.get(content, params={"version": 1}).content == v1
    restored = alice.http.post(f"/api/trash/{in_trash['id']}/restore").json()
    assert alice.http.get(f"/api/file/{restored['id']}/content").content == trashed


async def test_the_dedup_race_with_gc_never_loses_a_chunk(
    alice: User, stack: Stack, db: None, store: LocalBlobStore
) -> None:
    owner = alice.id

    def put(m: dict, data: bytes) -> httpx.Response:
        start = m["index"] * CHUNK
        return httpx.put(m["url"], content=data[start : start + m["size"]])

    def commit(reg: dict) -> httpx.Response:
        return alice.http.post(
            f"/api/file/{reg['file_id']}/commit", json={"upload_id": reg["upload_id"]}
        )

    # 1. An upload is told to skip chunks that nothing references any more; GC runs
    #    before it commits. The registration counted on them, so GC keeps them.
    x = os.urandom(3 * CHUNK)
    purge(alice, alice.upload("/x.bin", x)["id"])
    age_chunks(stack, owner, 7200)
    reg = alice.register("/x.bin", x).json()
    assert reg["missing"] == []
    await GarbageCollector(store, grace_seconds=3600).run()
    assert commit(reg).status_code == 200
    assert alice.http.get(f"/api/file/{reg['file_id']}/content").content == x

    # 2. GC marks the chunks first; an upload arrives before it deletes them.
    y = os.urandom(3 * CHUNK)
    purge(alice, alice.upload("/y.bin", y)["id"])
    age_chunks(stack, owner, 7200)
    gc = GarbageCollector(store, grace_seconds=3600)
    ids = [f"{owner}:{c['sha256']}" for c in manifest(y)["chunks"]]
    marked = await gc.mark("stored", ids, now_ms() - 3600_000)
    assert len(marked) == 3
    reg = alice.register("/y.bin", y).json()
    assert len(reg["missing"]) == 3  # not counted on while being deleted
    busy = put(reg["missing"][0], y)
    assert busy.status_code == 503 and busy.json()["error"]["code"] == "chunk_busy"
    assert commit(reg).json()["error"]["code"] == "missing_chunks"
    await gc.sweep(owner, marked)
    for m in reg["missing"]:
        assert put(m, y).status_code == 201
    assert commit(reg).status_code == 200
    assert alice.http.get(f"/api/file/{reg['file_id']}/content").content == y

    # 3. An upload told to skip stalls past the grace period: its pending version is a
    #    reference of its own, so GC keeps the chunks and the late commit still works.
    z = os.urandom(2 * CHUNK)
    purge(alice, alice.upload("/z.bin", z)["id"])
    reg = alice.register("/z.bin", z).json()
    assert reg["missing"] == []
    age_chunks(stack, owner, 7200)
    await GarbageCollector(store, grace_seconds=3600).run()
    assert chunk_file(stack, owner, z[:CHUNK]).exists()
    assert commit(reg).status_code == 200
    assert alice.http.get(f"/api/file/{reg['file_id']}/content").content == z
