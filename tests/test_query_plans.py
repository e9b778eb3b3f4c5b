"""Every query of the hot paths is answered from an index, by `explain` on a replica set.

A stack of its own runs on the replica-set server (tests/stack.py `start_replica_set`:
SecantusDB here, or a real `mongod`, or the environment's `MONGODB_URL`) with
`COFFER_TRACE_QUERIES` set, so its web and worker processes record every distinct query
shape they send (app/db/trace.py). The test drives the hot paths through the API as users
do (register, upload and commit, list, manifest, download, folders, moves, trash, versions,
shares and what the recipient sees, public links, batches, search, the feed and its
long-poll, a browser session), runs each worker job (fan-out sweep, interrupted writes,
hash verification, expiry, retention, scrub, garbage collection, thumbnails), then
explains every recorded query and fails listing each one whose plan reads the whole
collection (COLLSCAN), with the code that sent it. A query that may scan on purpose is in
`DELIBERATE` with its reason.

On the embedded nx-27017 (SQLite underneath: no `explain` that says this) the same holds by
measurement: bench/batch.py and bench/engines.py time the hot paths with nothing stored
and with 100,000 files.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from arq import create_pool
from arq.connections import RedisSettings
from bson import json_util
from pymongo import MongoClient

from tests.conftest import User, manifest
from tests.stack import Stack

# (collection, "module.py function" that sent it) -> why reading the whole collection is
# right there.
DELIBERATE: dict[tuple[str, str], str] = {
    ("files", "search.py backfill_search_keys"): (
        "once per database, at start-up: gives nodes written before search their search key"
    ),
    ("files", "search.py search"): (
        "a substring search reads the caller's subtree in path order (on MongoDB an index "
        "range of (owner_id, path_key) filtered by the regex; no index answers a substring)"
    ),
    ("file_versions", "retention.py thin_versions"): (
        "the hourly retention pass visits every committed version, in (file_id, version) order"
    ),
    ("users", "gc.py run"): "garbage collection visits every account, then works per owner",
    ("thumbnails", "thumbnails.py collect_thumbnails"): (
        "the daily removal walks every cached thumbnail, paged by _id (the _id index on MongoDB)"
    ),
}


def pins_id(filter_: dict[str, Any]) -> bool:
    """Whether the filter names its documents by `_id` (equality or `$in`): MongoDB answers
    that from the `_id` index whatever else the filter says. SecantusDB 0.7 does only for
    `_id` alone (0.6 ms among 50,000 documents): with a second field, such as the `rev` of
    a compare-and-set or the change id of an outbox clear, it reads the whole collection
    (`explain` says COLLSCAN and `executionStats` counts every document; a `hint` helps
    finds, not updates). That is SecantusDB's planner, not a missing index, and MongoDB is
    what production runs: such filters pass here, and bench/engines.py shows the cost on
    SecantusDB (README "The embedded database")."""
    if "_id" not in filter_:
        return False
    value = filter_["_id"]
    return not isinstance(value, dict) or set(value) <= {"$eq", "$in"}


@pytest.fixture(scope="module")
def traced() -> Iterator[tuple[Stack, Path]]:
    keep = os.environ.get("COFFER_TEST_DIR")
    with tempfile.TemporaryDirectory(prefix="coffer-plans-") as tmp:
        root = Path(tempfile.mkdtemp(dir=keep) if keep else tmp)
        trace = root / "queries.jsonl"
        stack = Stack(
            root / "stack",
            env={"COFFER_TRACE_QUERIES": str(trace), "COFFER_SWEEP_AFTER_SECONDS": "0"},
            mongo="replset",
        )
        try:
            stack.start_all()
            yield stack, trace
        finally:
            stack.stop_all()


async def run_job(stack: Stack, function: str, **kwargs: Any) -> Any:
    pool = await create_pool(RedisSettings.from_dsn(stack.env["REDIS_URL"]))
    try:
        job = await pool.enqueue_job(function, **kwargs)
        assert job is not None
        return await job.result(timeout=120)
    finally:
        await pool.aclose()


def inline(path: str, data: bytes) -> dict:
    return {"path": path, **manifest(data), "data": base64.b64encode(data).decode()}


def ok(r: httpx.Response, *codes: int) -> dict:
    assert r.status_code in (codes or (200, 201, 204)), r.text
    return r.json() if r.content and r.headers.get("content-type", "").endswith("json") else {}


def drive_hot_paths(base: str) -> None:
    """What users do most, each at least once, through the API."""
    alice, bob = User(base), User(base)
    a = alice.http
    cursor = ok(a.get("/api/file/events", params={"cursor": "latest"}))["cursor"]
    folder = ok(a.post("/api/folder", json={"path": "/Projects/2024"}))
    f = alice.upload("/Projects/2024/plan.txt", b"first draft\n" * 1000)
    f = alice.upload("/Projects/2024/plan.txt", b"second draft\n" * 1000)
    alice.upload("/Projects/2024/copy.txt", b"second draft\n" * 1000)  # dedup: no chunk sent
    big = alice.upload("/Projects/big.bin", os.urandom(300_000), chunk_size=64 * 1024)
    ok(a.get("/api/file"))
    ok(a.get("/api/file", params={"path": "/Projects/2024"}))
    ok(a.get("/api/file", params={"id": folder["id"], "limit": 1}))
    ok(a.get(f"/api/file/{f['id']}"))
    ranged = a.get(f"/api/file/{big['id']}/content", headers={"Range": "bytes=5-99"})
    assert ranged.status_code == 206
    ok(a.get(f"/api/file/{f['id']}/versions"))
    ok(a.post(f"/api/file/{f['id']}/versions/1/restore"))
    ok(a.patch(f"/api/file/{big['id']}", json={"path": "/Projects/2024/big.bin"}))
    ok(a.patch(f"/api/file/{folder['id']}", json={"path": "/Projects/2025"}))
    ok(a.get("/api/search", params={"q": "plan"}))
    ok(a.get("/api/activity", params={"path": "/Projects"}))
    ok(a.get("/api/tree"))
    ok(a.get("/api/me"))

    # Sharing: the recipient lists, reads, writes into the share, sees the feed.
    shared = ok(a.post("/api/folder", json={"path": "/Team"}))
    ok(a.post(f"/api/file/{shared['id']}/share", json={"username": bob.username, "role": "editor"}))
    ok(a.get(f"/api/file/{shared['id']}/share"))
    team_file = alice.upload("/Team/notes.md", b"# notes\n")
    deadline = time.monotonic() + 30
    while not bob.http.get("/api/shared").json()["items"]:
        assert time.monotonic() < deadline, "the share never reached bob"
        time.sleep(0.1)
    ok(bob.http.get("/api/file", params={"id": shared["id"]}))
    ok(bob.http.get(f"/api/file/{team_file['id']}"))
    ok(bob.http.get(f"/api/file/{team_file['id']}/content"))
    put = bob.http.post(
        "/api/file", json={"parent_id": shared["id"], "name": "bob.txt", **manifest(b"hi")}
    )
    reg = ok(put, 201)
    for m in reg["missing"]:
        assert httpx.put(m["url"], content=b"hi", headers=m["headers"]).status_code in (200, 201)
    ok(bob.http.post(f"/api/file/{reg['file_id']}/commit", json={"upload_id": reg["upload_id"]}))
    ok(bob.http.get("/api/file/events", params={"cursor": 0, "limit": 100}))
    assert bob.http.get("/api/file/" + f["id"]).status_code == 404  # not shared with bob

    # The feed: by cursor, long-poll, by time.
    ok(a.get("/api/file/events", params={"cursor": cursor, "limit": 5}))
    ok(a.get("/api/file/events", params={"cursor": "latest", "wait": 1}))
    ok(a.get("/api/file/events", params={"since": "2020-01-01T00:00:00Z"}))

    # Public links.
    link = ok(a.post(f"/api/file/{team_file['id']}/links", json={"allow_download": True}), 201)
    ok(a.get(f"/api/file/{team_file['id']}/links"))
    visitor = httpx.Client(base_url=base, timeout=30)
    assert visitor.get(f"/s/{link['token']}").status_code == 200
    assert visitor.get(f"/s/{link['token']}/download").status_code == 200
    ok(a.delete(f"/api/links/{link['token']}"))

    # Batches: a tree of folders, small files inline, moves, deletes, downloads.
    ok(a.post("/api/batch/folders", json={"folders": [{"path": f"/bulk/d{i}"} for i in range(5)]}))
    done = ok(
        a.post(
            "/api/batch/upload",
            json={"files": [inline(f"/bulk/d{i % 5}/f{i}.txt", b"x" * i) for i in range(20)]},
        )
    )["results"]
    ids = [r["file"]["id"] for r in done]
    ok(a.post("/api/batch/move", json={"moves": [{"id": ids[0], "path": "/bulk/moved.txt"}]}))
    ok(a.post("/api/batch/download", json={"ids": ids[:3]}))
    ok(a.post("/api/batch/delete", json={"ids": ids[-3:]}))

    # Trash: delete a folder and a file, list, restore one, delete the other forever.
    ok(a.delete(f"/api/file/{big['id']}"))
    bulk = next(i for i in a.get("/api/file").json()["items"] if i["name"] == "bulk")
    ok(a.delete(f"/api/file/{bulk['id']}"))
    trash = ok(a.get("/api/trash"))["items"]
    ok(a.post(f"/api/trash/{trash[0]['id']}/restore"))
    ok(a.delete(f"/api/trash/{trash[1]['id']}"))

    # Unsharing, and a browser session's pages.
    ok(a.delete(f"/api/file/{shared['id']}/share/{bob.username}"))
    browser = httpx.Client(base_url=base, timeout=30)
    login = {"username": alice.username, "password": alice.password}
    ok(browser.post("/api/auth/login", json=login))
    assert browser.get("/files").status_code == 200
    assert browser.get("/shared").status_code == 200
    assert browser.get("/trash").status_code == 200
    ok(a.get("/api/devices"))


def explain(db: Any, entry: dict[str, Any]) -> dict[str, Any]:
    """The winning plan of the find that selects what this command touched."""
    filter_, sort = entry["filter"], entry.get("sort")
    if "$pipeline" in filter_:
        stages = filter_["$pipeline"]
        filter_ = stages[0].get("$match", {}) if stages else {}
        sort = stages[1].get("$sort") if len(stages) > 1 else None
    cmd: dict[str, Any] = {"find": entry["coll"], "filter": filter_}
    if sort:
        cmd["sort"] = sort
    if entry.get("limit"):
        cmd["limit"] = entry["limit"]
    return db.command("explain", cmd, verbosity="queryPlanner")["queryPlanner"]["winningPlan"]


def stages(plan: dict[str, Any]) -> list[str]:
    out = [plan.get("stage", "?")]
    for key in ("inputStage", "queryPlan"):
        if key in plan:
            out += stages(plan[key])
    for child in plan.get("inputStages", []):
        out += stages(child)
    return out


def test_every_hot_path_query_uses_an_index(traced: tuple[Stack, Path]) -> None:
    stack, trace = traced
    drive_hot_paths(stack.url())
    for job, kwargs in [
        ("sweep_outboxes", {}),
        ("finish_interrupted_ops", {}),
        ("verify_hashes", {}),
        ("expire_uploads", {}),
        ("apply_retention", {}),
        ("scrub_chunks", {"budget_seconds": 5}),
        ("collect_garbage", {"grace_seconds": 0}),
        ("remove_thumbnails", {}),
    ]:
        asyncio.run(run_job(stack, job, **kwargs))

    entries: dict[str, dict[str, Any]] = {}
    for line in trace.read_text().splitlines():
        entry = json_util.loads(line)
        entries.setdefault(entry["shape"], entry)
    assert len(entries) > 50, "the trace recorded too little to prove anything"
    scans = []
    with MongoClient(stack.env["MONGODB_URL"]) as mongo:
        for entry in entries.values():
            plan = explain(mongo.coffer, entry)
            if "COLLSCAN" not in stages(plan) or pins_id(entry["filter"]):
                continue
            where, _, function = entry["caller"].split(" < ")[0].partition(" ")
            if (entry["coll"], f"{Path(where.split(':')[0]).name} {function}") in DELIBERATE:
                continue
            filt = json.dumps(json.loads(json_util.dumps(entry["filter"])), default=str)
            scans.append(
                f"{entry['coll']} {entry['cmd']} {filt} sort={entry.get('sort')}\n"
                f"    from {entry['caller']}"
            )
    assert not scans, f"{len(scans)} of {len(entries)} queries read a whole collection:\n" + (
        "\n".join(sorted(scans))
    )
