"""The batch API: many files per request, each committing on its own, events per file."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import threading
import time

import httpx
import pytest
from pymongo import MongoClient

from tests.conftest import User, content_hash, manifest
from tests.stack import Stack
from tests.test_faults import run_in_worker
from tests.test_sharing import wait_for


def inline(path: str, data: bytes, **extra: object) -> dict:
    return {"path": path, **manifest(data), "data": base64.b64encode(data).decode(), **extra}


def upload_batch(user: User, files: list[dict]) -> list[dict]:
    r = user.http.post("/api/batch/upload", json={"files": files})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["index"] for x in results] == list(range(len(files)))
    return results


def read_files_stream(content: bytes) -> list[tuple[dict, bytes]]:
    """Parse `application/x-coffer-files`: a JSON line, then `size` bytes, per file."""
    out, pos = [], 0
    while pos < len(content):
        end = content.index(b"\n", pos)
        head = json.loads(content[pos:end])
        pos = end + 1
        body = b""
        if "error" not in head:
            body = content[pos : pos + head["size"]]
            pos += head["size"]
        out.append((head, body))
    return out


def test_a_batch_of_small_files_commits_in_one_request(alice: User) -> None:
    cursor = alice.http.get("/api/file/events", params={"cursor": "latest"}).json()["cursor"]
    files = {f"/batch/d{i % 10}/f{i:04}.txt": os.urandom(i % 500 + 1) for i in range(300)}
    files["/batch/empty.txt"] = b""
    results = upload_batch(alice, [inline(p, d) for p, d in files.items()])
    assert {r["status"] for r in results} == {"committed"}, results[:3]
    for (path, data), r in zip(files.items(), results, strict=True):
        assert r["file"]["path"] == path and r["file"]["size"] == len(data)
        assert r["file"]["content_hash"] == content_hash(data)
        assert r["file"]["version"] == 1

    # Every file is whole, listed, and announced once: 11 folders, then 301 files.
    listed = alice.http.get("/api/file", params={"path": "/batch/d3"}).json()["items"]
    assert len(listed) == 30
    some = results[7]["file"]
    assert alice.http.get(f"/api/file/{some['id']}/content").content == files[some["path"]]
    events = alice.events(cursor)
    created = [e["path"] for e in events if e["type"] == "file.created" and e["kind"] == "file"]
    assert sorted(created) == sorted(files)
    seqs = [e["seq"] for e in events]
    # In order. Not always gap-free: a sweep that overlapped a slow write may have
    # delivered some of them first, and the writer's seqs for those are then filled with
    # placeholders readers never see.
    assert seqs == sorted(set(seqs))
    assert alice.http.get("/api/me").json()["usage_bytes"] == sum(map(len, files.values()))

    # The same bytes again change nothing (no new version); new bytes are a new version.
    again = upload_batch(alice, [inline("/batch/d0/f0000.txt", files["/batch/d0/f0000.txt"])])
    assert again[0]["status"] == "committed" and again[0]["file"]["version"] == 1
    edited = upload_batch(alice, [inline("/batch/d0/f0000.txt", b"edited")])
    assert edited[0]["file"]["version"] == 2
    assert alice.http.get(f"/api/file/{edited[0]['file']['id']}/content").content == b"edited"


def test_large_files_in_a_batch_get_chunk_urls_and_commit_in_a_batch(alice: User) -> None:
    big = os.urandom(3 * 64 * 1024 + 5)
    results = upload_batch(
        alice, [{"path": "/mixed/big.bin", **manifest(big)}, inline("/mixed/small.txt", b"hi")]
    )
    assert results[1]["status"] == "committed"
    assert results[0]["status"] == "upload" and len(results[0]["missing"]) == 4
    for m in results[0]["missing"]:
        start = m["index"] * 64 * 1024
        assert httpx.put(m["url"], content=big[start : start + m["size"]]).status_code == 201
    r = alice.http.post(
        "/api/batch/commit",
        json={
            "uploads": [{"file_id": results[0]["file_id"], "upload_id": results[0]["upload_id"]}]
        },
    )
    [done] = r.json()["results"]
    assert done["status"] == "ok" and done["file"]["content_hash"] == content_hash(big)
    got = alice.http.post("/api/batch/download", json={"ids": [done["file"]["id"], "nope"]})
    assert got.headers["content-type"].startswith("application/x-coffer-files")
    [(head, body), (missing, _)] = read_files_stream(got.content)
    assert head["path"] == "/mixed/big.bin" and body == big
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(big).hexdigest()
    assert missing["error"]["status"] == 404


def test_each_file_fails_alone(alice: User, bob: User) -> None:
    bad_hash = inline("/alone/bad.txt", b"real bytes")
    bad_hash["chunks"][0]["sha256"] = "0" * 64
    results = upload_batch(
        alice,
        [
            inline("/alone/ok1.txt", b"one"),
            bad_hash,
            inline("/alone/ok2.txt", b"two"),
            inline("/alone/OK1.txt", b"same path, other case"),
            inline("/alone/../x.txt", b"bad path"),
        ],
    )
    assert [r["status"] for r in results] == ["committed", "error", "committed", "error", "error"]
    assert results[1]["error"]["code"] == "hash_mismatch" and results[1]["error"]["status"] == 400
    assert results[3]["error"]["code"] == "duplicate_path"
    assert results[4]["error"]["code"] == "invalid_path"
    names = [
        i["name"] for i in alice.http.get("/api/file", params={"path": "/alone"}).json()["items"]
    ]
    assert names == ["ok1.txt", "ok2.txt"]

    # A viewer of a shared folder gets 403 per file; a folder not shared with bob, 404.
    shared = alice.http.post("/api/folder", json={"path": "/alone/shared"}).json()
    private = alice.http.post("/api/folder", json={"path": "/alone/private"}).json()
    r = alice.http.post(
        f"/api/file/{shared['id']}/share", json={"username": bob.username, "role": "viewer"}
    )
    assert r.status_code == 201
    data = b"not allowed"
    entry = {**manifest(data), "data": base64.b64encode(data).decode()}
    results = upload_batch(
        bob,
        [
            {"parent_id": shared["id"], "name": "x.txt", **entry},
            {"parent_id": private["id"], "name": "y.txt", **entry},
        ],
    )
    assert [r["error"]["status"] for r in results] == [403, 404]


def test_bad_batches_are_refused_whole(alice: User) -> None:
    too_many = [inline(f"/many/{i}.txt", b"x") for i in range(1001)]
    r = alice.http.post("/api/batch/upload", json={"files": too_many})
    assert r.status_code == 400 and r.json()["error"]["code"] == "too_many_files"
    big = os.urandom(1024 * 1024 + 1)
    r = alice.http.post(
        "/api/batch/upload",
        json={
            "files": [
                {
                    **manifest(big, 2 * 1024 * 1024),
                    "path": "/big.bin",
                    "data": base64.b64encode(big).decode(),
                }
            ]
        },
    )
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "inline_too_large"
    assert r.json()["error"]["max_inline_bytes"] == 1024 * 1024
    r = alice.http.post("/api/batch/upload", json={"files": []})
    assert r.status_code == 400
    assert alice.http.get("/api/file", params={"path": "/"}).json()["items"] == []


def test_a_batch_over_the_quota_is_refused(alice: User, stack: Stack) -> None:
    with MongoClient(stack.env["MONGODB_URL"]) as mongo:
        mongo.coffer.users.update_one({"username": alice.username}, {"$set": {"quota_bytes": 1000}})
    r = alice.http.post(
        "/api/batch/upload", json={"files": [inline(f"/q/{i}", os.urandom(300)) for i in range(4)]}
    )
    assert r.status_code == 507
    assert alice.http.get("/api/me").json()["usage_bytes"] == 0


def test_a_batch_into_a_shared_folder_reaches_the_recipient_with_their_paths(
    alice: User, bob: User
) -> None:
    team = alice.http.post("/api/folder", json={"path": "/Work/Team"}).json()
    r = alice.http.post(
        f"/api/file/{team['id']}/share", json={"username": bob.username, "role": "editor"}
    )
    assert r.status_code == 201
    cursor = bob.http.get("/api/file/events", params={"cursor": "latest"}).json()["cursor"]
    files = [
        {
            "parent_id": team["id"],
            "name": f"n{i:03}.txt",
            **manifest(b"%d" % i),
            "data": base64.b64encode(b"%d" % i).decode(),
        }
        for i in range(50)
    ]
    results = upload_batch(bob, files)
    assert {r["status"] for r in results} == {"committed"}
    assert results[0]["file"]["path"] == "/Team/n000.txt"

    # Bob is the uploader here, alice the owner: bob's events come from the background
    # fan-out that follows the answer.
    def created() -> list[dict]:
        return [e for e in bob.events(cursor) if e["type"] == "file.created"]

    wait_for(lambda: len(created()) == 50)
    events = created()
    assert sorted(e["path"] for e in events) == [f"/Team/n{i:03}.txt" for i in range(50)]
    owner_view = alice.http.get("/api/file", params={"path": "/Work/Team"}).json()["items"]
    assert len(owner_view) == 50 and alice.http.get("/api/me").json()["usage_bytes"] > 0


def test_batch_folders_make_trees_at_once_and_fail_alone(alice: User, bob: User) -> None:
    """Many folders with their parents in one request: existing ones are fine, a file in
    the way fails alone, an editor makes folders inside a share (a viewer may not), and
    each new folder is announced once, parents before children."""
    alice.upload("/Src/README", b"a file, not a folder")
    alice.http.post("/api/folder", json={"path": "/Src/old"})
    team = alice.http.post("/api/folder", json={"path": "/Team"}).json()
    alice.http.post(
        f"/api/file/{team['id']}/share", json={"username": bob.username, "role": "editor"}
    )
    cursor = alice.http.get("/api/file/events", params={"cursor": "latest"}).json()["cursor"]
    wanted = [
        {"path": "/Src/old"},  # exists: ok
        *({"path": f"/Src/pkg{i}/sub/deep"} for i in range(20)),
        {"path": "/Src/README/inside"},  # a file in the way
    ]
    r = alice.http.post("/api/batch/folders", json={"folders": wanted})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["status"] for x in results] == ["ok"] * 21 + ["error"]
    assert results[-1]["error"]["code"] == "not_a_folder"
    assert (
        results[3]["file"]["path"] == "/Src/pkg2/sub/deep"
        and results[3]["file"]["kind"] == "folder"
    )
    made = [e["path"] for e in alice.events(cursor) if e["type"] == "file.created"]
    assert sorted(made) == sorted(
        p for i in range(20) for p in (f"/Src/pkg{i}", f"/Src/pkg{i}/sub", f"/Src/pkg{i}/sub/deep")
    )
    assert all(made.index(p.rsplit("/", 1)[0]) < made.index(p) for p in made if p.count("/") > 2)
    again = alice.http.post("/api/batch/folders", json={"folders": wanted[:5]}).json()["results"]
    assert [x["file"]["id"] for x in again] == [x["file"]["id"] for x in results[:5]]

    r = bob.http.post(
        "/api/batch/folders", json={"folders": [{"parent_id": team["id"], "name": "x/y"}]}
    )
    assert r.json()["results"][0]["file"]["path"] == "/Team/x/y"
    assert alice.http.get("/api/file", params={"path": "/Team/x"}).json()["items"][0]["name"] == "y"
    alice.http.post(
        f"/api/file/{team['id']}/share", json={"username": bob.username, "role": "viewer"}
    )
    r = bob.http.post(
        "/api/batch/folders", json={"folders": [{"parent_id": team["id"], "name": "z"}]}
    )
    assert r.json()["results"][0]["error"]["status"] == 403


def test_batch_delete_move_and_the_recursive_listing(alice: User) -> None:
    results = upload_batch(alice, [inline(f"/t/a/{i:03}.txt", b"%d" % i) for i in range(120)])
    ids = [r["file"]["id"] for r in results]
    seen, cursor = [], None
    while True:
        params = {"limit": 50, **({"cursor": cursor} if cursor else {})}
        page = alice.http.get("/api/tree", params=params).json()
        seen += [i["path"] for i in page["items"]]
        cursor = page["cursor"]
        if not cursor:
            break
    assert seen == ["/t", "/t/a", *(f"/t/a/{i:03}.txt" for i in range(120))]

    moved = alice.http.post(
        "/api/batch/move",
        json={"moves": [{"id": i, "path": f"/t/b/{n}.txt"} for n, i in enumerate(ids[:10])]},
    ).json()["results"]
    assert {m["status"] for m in moved} == {"ok"} and moved[3]["file"]["path"] == "/t/b/3.txt"
    gone = alice.http.post("/api/batch/delete", json={"ids": [*ids[10:], "nope"]}).json()
    assert [r["status"] for r in gone["results"]].count("ok") == 110
    assert gone["results"][-1]["error"]["status"] == 404
    assert alice.http.get("/api/file", params={"path": "/t/a"}).json()["items"] == []


@pytest.mark.parametrize("count", [1000])
def test_a_full_batch_of_a_thousand(alice: User, count: int) -> None:
    files = [inline(f"/full/f{i:04}.txt", os.urandom(64)) for i in range(count)]
    results = upload_batch(alice, files)
    assert [r["status"] for r in results].count("committed") == count


def test_the_markers_of_a_batch_are_cleared_once_its_events_are_out(
    alice: User, stack: Stack
) -> None:
    results = upload_batch(alice, [inline(f"/marks/{i}.txt", b"%d" % i) for i in range(50)])
    ids = [r["file"]["id"] for r in results]
    with MongoClient(stack.env["MONGODB_URL"]) as mongo:
        for _ in range(100):
            pending = mongo.coffer.files.count_documents(
                {"owner_id": alice.id, "outbox_pending": True}
            )
            if not pending:
                break
            time.sleep(0.05)
        assert pending == 0
        docs = list(mongo.coffer.files.find({"owner_id": alice.id, "kind": "file"}))
    assert sorted(str(d["_id"]) for d in docs) == sorted(ids)
    assert all(d["commit_tail"] is None and d["outbox"]["id"] for d in docs)


@pytest.mark.parametrize("step", ["batch.before_nodes", "batch.after_nodes"])
def test_kill9_web_mid_batch_leaves_each_file_whole_or_absent(stack: Stack, step: str) -> None:
    """Killed before the nodes are written: no file exists (their versions are invisible
    garbage, collected later); after: every file is whole, its events reach the other
    devices through the sweeper, and usage counts each byte once."""
    web = stack.start_web(f"web-{step}", COFFER_FAILPOINTS=f"{step}=60")
    base = stack.url(f"web-{step}")
    user = User(base)
    cursor = user.http.get("/api/file/events", params={"cursor": "latest"}).json()["cursor"]
    files = {f"/crash/f{i:03}.txt": os.urandom(100 + i) for i in range(100)}
    sender = threading.Thread(
        target=_post_quietly, args=(user, [inline(p, d) for p, d in files.items()])
    )
    sender.start()
    with MongoClient(stack.env["MONGODB_URL"]) as mongo:
        deadline = time.monotonic() + 30
        while mongo.coffer.file_versions.count_documents({"owner_id": user.id}) < 100:
            assert time.monotonic() < deadline, "the batch did not get to its failpoint"
            time.sleep(0.05)
        if step == "batch.after_nodes":
            while mongo.coffer.files.count_documents({"owner_id": user.id, "kind": "file"}) < 100:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        web.kill9()
    sender.join()
    main = user  # the same account, on the instance that stayed up
    main.http = httpx.Client(base_url=stack.url(), headers=dict(user.http.headers), timeout=60)
    listed = main.http.get("/api/file", params={"path": "/crash"})
    if step == "batch.before_nodes":
        assert listed.status_code in (200, 404)
        assert listed.status_code == 404 or listed.json()["items"] == []
        # The bytes charged for files that never committed are given back.
        time.sleep(2.5)
        asyncio.run(run_in_worker(stack, "finish_interrupted_ops"))
        assert main.http.get("/api/me").json()["usage_bytes"] == 0
        # Sent again, the batch commits whole (the first attempt left nothing in the way).
        again = upload_batch(main, [inline(p, d) for p, d in files.items()])
        assert {r["status"] for r in again} == {"committed"}
    items = main.http.get("/api/file", params={"path": "/crash", "limit": 1000}).json()["items"]
    assert sorted(i["path"] for i in items) == sorted(files)
    for item in items[::17]:
        assert main.http.get(f"/api/file/{item['id']}/content").content == files[item["path"]]
    assert main.http.get("/api/me").json()["usage_bytes"] == sum(map(len, files.values()))
    # Every file announced exactly once, whichever process delivered it.
    deadline = time.monotonic() + 20
    while True:
        created = [e["path"] for e in main.events(cursor) if e["type"] == "file.created"]
        if len([p for p in created if p.startswith("/crash/f")]) >= 100:
            break
        assert time.monotonic() < deadline, f"{len(created)} events"
        time.sleep(0.2)
    assert sorted(p for p in created if p.startswith("/crash/f")) == sorted(files)


def _post_quietly(user: User, files: list[dict]) -> None:
    with contextlib.suppress(httpx.HTTPError):
        user.http.post("/api/batch/upload", json={"files": files}, timeout=90)
