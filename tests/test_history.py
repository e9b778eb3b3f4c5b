"""Version history and the trash, as a user sees them."""

from __future__ import annotations

import asyncio
import hashlib
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from bson import ObjectId
from pymongo import MongoClient
from pymongo.asynchronous.collection import AsyncCollection

from app.db.files import FileNode
from app.files.maintenance.retention import empty_trash, thin_versions
from app.files.recovery import finish_pending_op
from tests.conftest import User, content_hash
from tests.stack import Stack


def test_versions_are_kept_readable_and_restorable(alice: User, bob: User) -> None:
    bodies = [b"first draft", b"second draft, longer", b"third"]
    for body in bodies:
        f = alice.upload("/essay.txt", body)
    history = alice.http.get(f"/api/file/{f['id']}/versions")
    assert history.status_code == 200
    assert [(v["version"], v["size"], v["content_hash"]) for v in history.json()] == [
        (3, len(bodies[2]), content_hash(bodies[2])),
        (2, len(bodies[1]), content_hash(bodies[1])),
        (1, len(bodies[0]), content_hash(bodies[0])),
    ]
    assert all(v["author_device"] == "pytest" and v["modified_at"] for v in history.json())
    for n, body in enumerate(bodies, start=1):
        got = alice.http.get(f"/api/file/{f['id']}/content", params={"version": n})
        assert got.status_code == 200 and got.content == body
    assert alice.http.get(f"/api/file/{f['id']}/content", params={"version": 9}).status_code == 404

    cursor = alice.http.get("/api/file/events", params={"cursor": "latest"}).json()["cursor"]
    restored = alice.http.post(f"/api/file/{f['id']}/versions/1/restore")
    assert restored.status_code == 200
    assert restored.json()["version"] == 4
    assert restored.json()["content_hash"] == content_hash(bodies[0])
    assert alice.http.get(f"/api/file/{f['id']}/content").content == bodies[0]
    # History is never rewritten: 4 versions now, 2 and 3 still readable.
    assert [v["version"] for v in alice.http.get(f"/api/file/{f['id']}/versions").json()] == [
        4,
        3,
        2,
        1,
    ]
    assert (
        alice.http.get(f"/api/file/{f['id']}/content", params={"version": 3}).content == bodies[2]
    )
    evs = alice.http.get("/api/file/events", params={"cursor": cursor}).json()["events"]
    assert [(e["type"], e["version"]) for e in evs] == [("file.updated", 4)]
    # Restoring what is already the head changes nothing.
    again = alice.http.post(f"/api/file/{f['id']}/versions/4/restore").json()
    assert again["version"] == 4
    # Nobody else sees or restores anything; a viewer reads but cannot restore.
    assert bob.http.get(f"/api/file/{f['id']}/versions").status_code == 404
    assert bob.http.post(f"/api/file/{f['id']}/versions/1/restore").status_code == 404
    alice.http.post(f"/api/file/{f['id']}/share", json={"username": bob.username, "role": "viewer"})
    assert len(bob.http.get(f"/api/file/{f['id']}/versions").json()) == 4
    assert bob.http.post(f"/api/file/{f['id']}/versions/2/restore").status_code == 403


def test_concurrent_restores_of_one_version_make_one_version(alice: User, stack: Stack) -> None:
    for body in (b"keep this", b"then this", b"and this"):
        f = alice.upload("/twice.txt", body)

    def restore() -> int:
        return alice.http.post(f"/api/file/{f['id']}/versions/1/restore").status_code

    with ThreadPoolExecutor(6) as pool:
        assert set(pool.map(lambda _: restore(), range(6))) == {200}
    versions = alice.http.get(f"/api/file/{f['id']}/versions").json()
    assert [v["version"] for v in versions] == [4, 3, 2, 1]
    with MongoClient(stack.env["MONGODB_URL"]) as mongo:  # no copy left behind, unreferenced
        assert mongo.coffer.file_versions.count_documents({"file_id": f["id"]}) == 4


def test_trash_restore_and_purge(alice: User, bob: User) -> None:
    a = alice.upload("/Projects/site/index.html", b"<html>" * 100)
    b = alice.upload("/Projects/site/css/main.css", b"body{}" * 100)
    gone_before = alice.upload("/Projects/site/old.txt", b"old")
    usage_full = alice.http.get("/api/me").json()["usage_bytes"]
    site = alice.http.get("/api/file", params={"path": "/Projects"}).json()["items"][0]
    assert alice.http.delete(f"/api/file/{gone_before['id']}").status_code == 204
    assert alice.http.delete(f"/api/file/{site['id']}").status_code == 204
    assert alice.http.get("/api/me").json()["usage_bytes"] == usage_full - 600 - 600 - 3

    trash = alice.http.get("/api/trash").json()
    # What the user deleted, newest first, once each (not the folder's contents).
    assert [(i["id"], i["path"], i["kind"]) for i in trash["items"][:2]] == [
        (site["id"], "/Projects/site", "folder"),
        (gone_before["id"], "/Projects/site/old.txt", "file"),
    ]
    assert all(i["deleted_at"] for i in trash["items"])
    assert bob.http.get("/api/trash").json()["items"] == []
    assert bob.http.post(f"/api/trash/{site['id']}/restore").status_code == 404

    cursor = alice.http.get("/api/file/events", params={"cursor": "latest"}).json()["cursor"]
    back = alice.http.post(f"/api/trash/{site['id']}/restore")
    assert back.status_code == 200 and back.json()["path"] == "/Projects/site"
    # Everything deleted with the folder is back, same ids; what was deleted before is not.
    assert alice.http.get(f"/api/file/{a['id']}").json()["path"] == "/Projects/site/index.html"
    assert alice.http.get(f"/api/file/{b['id']}/content").content == b"body{}" * 100
    assert alice.http.get(f"/api/file/{gone_before['id']}").status_code == 404
    assert alice.http.get("/api/me").json()["usage_bytes"] == usage_full - 3
    evs = alice.http.get("/api/file/events", params={"cursor": cursor}).json()["events"]
    assert [(e["type"], e["path"]) for e in evs] == [("file.restored", "/Projects/site")]
    assert site["id"] not in [i["id"] for i in alice.http.get("/api/trash").json()["items"]]

    # A name clash gets a suffix; a path can be given.
    alice.upload("/Projects/site/old.txt", b"new one")
    clash = alice.http.post(f"/api/trash/{gone_before['id']}/restore")
    assert clash.status_code == 200 and clash.json()["path"] == "/Projects/site/old (restored).txt"
    alice.http.delete(f"/api/file/{gone_before['id']}")
    elsewhere = alice.http.post(
        f"/api/trash/{gone_before['id']}/restore", json={"path": "/Archive/old.txt"}
    )
    assert elsewhere.status_code == 200 and elsewhere.json()["path"] == "/Archive/old.txt"
    assert alice.http.get(f"/api/file/{gone_before['id']}/content").content == b"old"

    # Purge: gone for good.
    alice.http.delete(f"/api/file/{site['id']}")
    assert alice.http.delete(f"/api/trash/{site['id']}").status_code == 204
    assert alice.http.post(f"/api/trash/{site['id']}/restore").status_code == 404
    assert alice.http.get(f"/api/file/{a['id']}").status_code == 404
    assert site["id"] not in [i["id"] for i in alice.http.get("/api/trash").json()["items"]]
    assert alice.http.delete(f"/api/trash/{site['id']}").status_code == 404


def test_restored_content_is_byte_identical(alice: User) -> None:
    data = hashlib.sha256(b"seed").digest() * 50_000
    f = alice.upload("/bin/blob.bin", data)
    alice.http.delete(f"/api/file/{f['id']}")
    alice.http.post(f"/api/trash/{f['id']}/restore")
    got = alice.http.get(f"/api/file/{f['id']}/content").content
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()


def test_trash_pages_newest_first(alice: User) -> None:
    ids = []
    for i in range(5):
        f = alice.upload(f"/paged/{i}.txt", str(i).encode())
        alice.http.delete(f"/api/file/{f['id']}")
        ids.append(f["id"])
    seen, cursor = [], None
    while True:
        page = alice.http.get(
            "/api/trash", params={"limit": 2, **({"cursor": cursor} if cursor else {})}
        ).json()
        seen += [i["id"] for i in page["items"]]
        cursor = page["cursor"]
        if not cursor:
            break
    assert seen == ids[::-1]
    assert alice.http.get("/api/trash", params={"cursor": "nonsense"}).status_code == 400


async def test_old_versions_are_thinned_but_the_last_ten_kept(
    alice: User, stack: Stack, db: None
) -> None:
    for i in range(16):  # interleaved with another file's versions, which stay untouched
        f = await asyncio.to_thread(alice.upload, "/thin.txt", f"version {i}".encode())
        other = await asyncio.to_thread(alice.upload, "/other.txt", f"other {i}".encode())
    now = datetime.now(UTC)
    noon_10_days_ago = (now - timedelta(days=10)).replace(hour=12, minute=0, second=0)
    when = {  # 1-3 past retention, 4-6 within one old day, 7-16 recent (untouched)
        1: now - timedelta(days=60),
        2: now - timedelta(days=45),
        3: now - timedelta(days=31),
        4: noon_10_days_ago,
        5: noon_10_days_ago + timedelta(minutes=5),
        6: noon_10_days_ago + timedelta(minutes=10),
    }
    with MongoClient(stack.env["MONGODB_URL"]) as mongo:
        for number, at in when.items():
            mongo.coffer.file_versions.update_one(
                {"file_id": f["id"], "version": number}, {"$set": {"committed_at": at}}
            )
    await thin_versions(now, timedelta(days=30), keep_min=10)
    left = await asyncio.to_thread(lambda: alice.http.get(f"/api/file/{f['id']}/versions").json())
    # Past retention: gone. The same old day: the newest of it stays. The last 10: all kept.
    assert [v["version"] for v in left] == [16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6]
    kept = await asyncio.to_thread(
        lambda: alice.http.get(f"/api/file/{other['id']}/versions").json()
    )
    assert [v["version"] for v in kept] == list(range(16, 0, -1))
    got = await asyncio.to_thread(
        lambda: alice.http.get(f"/api/file/{f['id']}/content", params={"version": 6}).content
    )
    assert got == b"version 5"


async def test_the_trash_empties_itself_after_retention(
    alice: User, stack: Stack, db: None
) -> None:
    old = await asyncio.to_thread(alice.upload, "/expired.txt", b"old")
    recent = await asyncio.to_thread(alice.upload, "/recent.txt", b"recent")
    for f in (old, recent):
        await asyncio.to_thread(alice.http.delete, f"/api/file/{f['id']}")
    with MongoClient(stack.env["MONGODB_URL"]) as mongo:
        ms = int((datetime.now(UTC) - timedelta(days=31)).timestamp() * 1000)
        mongo.coffer.files.update_one({"_id": ObjectId(old["id"])}, {"$set": {"deleted_ms": ms}})
    assert await empty_trash(datetime.now(UTC), timedelta(days=30)) >= 1
    trash = await asyncio.to_thread(lambda: alice.http.get("/api/trash").json()["items"])
    assert [i["id"] for i in trash if i["id"] in (old["id"], recent["id"])] == [recent["id"]]


async def test_a_folder_trash_finished_twice_at_once_counts_once(
    alice: User, stack: Stack, db: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The request and the worker's sweep may both carry a folder's trash to what is in it
    at the same moment: the owner's usage drops by the folder's bytes once, not twice."""
    for name in ("a.txt", "sub/b.txt"):
        await asyncio.to_thread(alice.upload, f"/Race/{name}", b"x" * 1000)
    await asyncio.to_thread(alice.upload, "/kept.txt", b"k" * 10)
    folder_id = next(
        i["id"]
        for i in await asyncio.to_thread(lambda: alice.http.get("/api/file").json()["items"])
        if i["name"] == "Race"
    )
    # The trash's commit point on the folder, as the request writes it, and nothing more
    # yet (a crash here leaves the same): its files are still live, counted in usage.
    with MongoClient(stack.env["MONGODB_URL"]) as mongo:
        mongo.coffer.files.update_one(
            {"_id": ObjectId(folder_id)},
            {
                "$set": {
                    "deleted_at": datetime.now(UTC),
                    "live_key": f"trash:{folder_id}",
                    "trash_root_id": folder_id,
                    "trash_root": True,
                    "pending_op": {"op": "trash"},
                },
                "$inc": {"rev": 1},
            },
        )
    folder = await FileNode.get(ObjectId(folder_id))
    assert folder is not None
    # Both runners have found the live files before either trashes them.
    both_found = asyncio.Barrier(2)
    bulk_write = AsyncCollection.bulk_write

    async def after_both_found(self: AsyncCollection[Any], *args: Any, **kwargs: Any) -> Any:
        await both_found.wait()
        return await bulk_write(self, *args, **kwargs)

    monkeypatch.setattr(AsyncCollection, "bulk_write", after_both_found)
    await asyncio.wait_for(
        asyncio.gather(finish_pending_op(folder), finish_pending_op(folder)), timeout=30
    )
    monkeypatch.undo()
    me = await asyncio.to_thread(lambda: alice.http.get("/api/me").json())
    assert me["usage_bytes"] == 10
    trash = await asyncio.to_thread(lambda: alice.http.get("/api/trash").json()["items"])
    assert [i["id"] for i in trash] == [folder_id]
