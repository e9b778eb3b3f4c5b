"""The file service end to end: upload, resume, dedup, list, download, Range, move, trash."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import httpx
import pytest
from pymongo import MongoClient

from tests.conftest import User, content_hash, manifest
from tests.stack import Stack

CHUNK = 64 * 1024


def test_upload_list_download_roundtrip(alice: User) -> None:
    data = os.urandom(5 * CHUNK + 123)
    f = alice.upload("/Docs/report.bin", data)
    assert f["path"] == "/Docs/report.bin" and f["name"] == "report.bin"
    assert f["kind"] == "file" and f["size"] == len(data) and f["version"] == 1
    assert f["content_hash"] == content_hash(data)

    root = alice.http.get("/api/file", params={"path": "/"}).json()
    assert [(i["name"], i["kind"]) for i in root["items"]] == [("Docs", "folder")]
    docs = alice.http.get("/api/file", params={"path": "/Docs"}).json()["items"]
    assert [i["id"] for i in docs] == [f["id"]]

    r = alice.http.get(f"/api/file/{f['id']}/content")
    assert r.status_code == 200 and r.content == data
    assert r.headers["etag"] == f'"{f["content_hash"]}"'
    assert r.headers["content-length"] == str(len(data))
    assert 'filename="report.bin"' in r.headers["content-disposition"]
    assert (
        alice.http.get(
            f"/api/file/{f['id']}/content", headers={"If-None-Match": r.headers["etag"]}
        ).status_code
        == 304
    )
    assert alice.http.get("/api/me").json()["usage_bytes"] == len(data)


def test_range_requests(alice: User) -> None:
    data = os.urandom(3 * CHUNK + 7)
    fid = alice.upload("/r.bin", data)["id"]
    url = f"/api/file/{fid}/content"
    cases = {
        "bytes=0-0": data[0:1],
        f"bytes={CHUNK - 5}-{CHUNK + 5}": data[CHUNK - 5 : CHUNK + 6],  # across a chunk edge
        f"bytes={2 * CHUNK}-": data[2 * CHUNK :],
        "bytes=-10": data[-10:],
        f"bytes=10-{10 * CHUNK}": data[10:],  # end clamped
    }
    for header, expected in cases.items():
        r = alice.http.get(url, headers={"Range": header})
        assert r.status_code == 206, header
        assert r.content == expected, header
        first = int(r.headers["content-range"].split()[1].split("-")[0])
        assert r.headers["content-range"].endswith(f"/{len(data)}")
        assert first == len(data) - len(expected) or data[first : first + len(expected)] == expected
    bad = alice.http.get(url, headers={"Range": f"bytes={len(data)}-"})
    assert bad.status_code == 416 and bad.headers["content-range"] == f"bytes */{len(data)}"
    # A malformed range is ignored: the whole file.
    assert alice.http.get(url, headers={"Range": "bytes=zz"}).content == data


def test_empty_file(alice: User) -> None:
    f = alice.upload("/empty.txt", b"")
    assert f["size"] == 0 and f["content_hash"] == hashlib.sha256(b"").hexdigest()
    r = alice.http.get(f"/api/file/{f['id']}/content")
    assert r.status_code == 200 and r.content == b""


def test_identical_content_sends_nothing_and_is_no_new_version(alice: User) -> None:
    data = os.urandom(3 * CHUNK)
    first = alice.upload("/same.bin", data)
    again = alice.register("/same.bin", data)
    assert again.status_code == 201 and again.json()["missing"] == []
    r = alice.http.post(
        f"/api/file/{first['id']}/commit", json={"upload_id": again.json()["upload_id"]}
    )
    assert r.status_code == 200 and r.json()["version"] == 1
    # The same content under another name also needs no bytes (dedup within the owner).
    copy = alice.register("/copy.bin", data)
    assert copy.json()["missing"] == []


def test_new_version_uploads_only_changed_chunks(alice: User) -> None:
    data = bytearray(os.urandom(8 * CHUNK))
    f1 = alice.upload("/doc.bin", bytes(data))
    data[3 * CHUNK + 10] ^= 0xFF
    reg = alice.register("/doc.bin", bytes(data), base_version=1).json()
    assert [m["index"] for m in reg["missing"]] == [3]
    for m in reg["missing"]:
        httpx.put(m["url"], content=bytes(data[3 * CHUNK : 4 * CHUNK])).raise_for_status()
    f2 = alice.http.post(
        f"/api/file/{reg['file_id']}/commit", json={"upload_id": reg["upload_id"]}
    ).json()
    assert f2["id"] == f1["id"] and f2["version"] == 2
    assert alice.http.get(f"/api/file/{f1['id']}/content").content == bytes(data)


def test_base_version_conflict(alice: User) -> None:
    f = alice.upload("/c.txt", b"v1" * 40000)
    alice.upload("/c.txt", b"v2" * 40000, base_version=1)
    stale = alice.register("/c.txt", b"v3" * 40000, base_version=1)
    assert stale.status_code == 409 and stale.json()["error"]["code"] == "conflict"
    # Registered while current, but someone else committed first: commit says conflict.
    reg = alice.register("/c.txt", b"v4" * 40000, base_version=2).json()
    alice.upload("/c.txt", b"v5" * 40000, base_version=2)
    for m in reg["missing"]:
        httpx.put(m["url"], content=(b"v4" * 40000)[m["index"] * CHUNK :][: m["size"]])
    r = alice.http.post(f"/api/file/{f['id']}/commit", json={"upload_id": reg["upload_id"]})
    assert r.status_code == 409 and r.json()["error"]["code"] == "conflict"
    assert alice.http.get(f"/api/file/{f['id']}").json()["version"] == 3


def test_resume_returns_only_missing_chunks(alice: User) -> None:
    data = os.urandom(6 * CHUNK)
    reg = alice.register("/big/resume.bin", data).json()
    assert len(reg["missing"]) == 6
    for m in reg["missing"][:4]:  # the client "dies" after 4 chunks
        httpx.put(m["url"], content=data[m["index"] * CHUNK :][: m["size"]]).raise_for_status()

    # Not visible before commit.
    assert alice.http.get("/api/file", params={"path": "/big"}).json()["items"] == []
    early = alice.http.post(
        f"/api/file/{reg['file_id']}/commit", json={"upload_id": reg["upload_id"]}
    )
    assert early.status_code == 409 and early.json()["error"]["code"] == "missing_chunks"
    assert [m["index"] for m in early.json()["error"]["missing"]] == [4, 5]

    again = alice.register("/big/resume.bin", data).json()
    assert again["upload_id"] == reg["upload_id"] and again["file_id"] == reg["file_id"]
    assert [m["index"] for m in again["missing"]] == [4, 5]
    for m in again["missing"]:
        httpx.put(m["url"], content=data[m["index"] * CHUNK :][: m["size"]]).raise_for_status()
    done = alice.http.post(
        f"/api/file/{reg['file_id']}/commit", json={"upload_id": reg["upload_id"]}
    )
    assert done.status_code == 200
    # A retried commit (lost answer) is answered the same way, not 404.
    retry = alice.http.post(
        f"/api/file/{reg['file_id']}/commit", json={"upload_id": reg["upload_id"]}
    )
    assert retry.status_code == 200 and retry.json()["version"] == 1
    assert alice.http.get(f"/api/file/{reg['file_id']}/content").content == data


def _tamper(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    q = {k: v[0] for k, v in parse_qs(parts.query).items()}
    q.update(changes)
    return urlunsplit(parts._replace(query=urlencode(q)))


def test_chunk_put_is_verified(alice: User, stack: Stack) -> None:
    data = os.urandom(2 * CHUNK)
    m = alice.register("/v.bin", data).json()["missing"][0]
    blob = stack.root / "blobs" / "chunks" / alice.id / m["sha256"][:2] / m["sha256"]

    wrong = httpx.put(m["url"], content=os.urandom(CHUNK))
    assert wrong.status_code == 400 and wrong.json()["error"]["code"] == "hash_mismatch"
    short = httpx.put(m["url"], content=data[: CHUNK - 1])
    assert short.status_code == 400 and short.json()["error"]["code"] == "size_mismatch"
    long = httpx.put(m["url"], content=data[:CHUNK] + b"x")
    assert long.status_code in (400, 413)
    assert not blob.exists()

    forged = httpx.put(_tamper(m["url"], sig="0" * 64), content=data[:CHUNK])
    assert forged.status_code == 403
    bigger = httpx.put(_tamper(m["url"], size=str(2 * CHUNK)), content=data[:CHUNK])
    assert bigger.status_code == 403
    expired = httpx.put(_tamper(m["url"], exp=str(int(time.time()) - 1)), content=data[:CHUNK])
    assert expired.status_code == 403
    assert not blob.exists()

    assert httpx.put(m["url"], content=data[:CHUNK]).status_code == 201
    assert blob.read_bytes() == data[:CHUNK]


def test_oversized_chunk_body_is_refused(alice: User) -> None:
    data = os.urandom(CHUNK)
    m = alice.register("/o.bin", data).json()["missing"][0]
    # A body far beyond any chunk limit is cut off, not buffered.
    r = httpx.put(m["url"], content=b"\0" * (17 * 1024 * 1024))
    assert r.status_code == 413


@pytest.mark.parametrize(
    "path",
    [
        "relative.txt",
        "/a/../etc/passwd",
        "/..",
        "/a/./b",
        "/nul\x00byte",
        "/" + "n" * 10_000,
        "/a/" + "x" * 300,
        "/back\\slash",
        "/ctl\x07",
        "",
        "/",
    ],
)
def test_bad_paths_are_rejected(alice: User, path: str) -> None:
    r = alice.register(path, b"x" * 10)
    assert r.status_code == 400, path
    assert r.json()["error"]["code"] == "invalid_path"
    assert alice.http.post("/api/folder", json={"path": path}).status_code == 400


def test_bad_manifests_are_rejected(alice: User) -> None:
    good = manifest(os.urandom(3 * CHUNK))
    cases = [
        {**good, "size": good["size"] + 1},  # sizes do not add up
        {**good, "size": -1},
        {"size": 10, "chunks": [{"sha256": "zz", "size": 10}]},
        {
            "size": 2 * 1024,
            "chunks": [{"sha256": "a" * 64, "size": 1024}, {"sha256": "b" * 64, "size": 1024}],
        },
        {"size": 17 * 1024 * 1024, "chunks": [{"sha256": "a" * 64, "size": 17 * 1024 * 1024}]},
        {"size": 16385 * CHUNK, "chunks": [{"sha256": "a" * 64, "size": CHUNK}] * 16385},
    ]
    for body in cases:
        r = alice.http.post("/api/file", json={"path": "/bad.bin", **body})
        assert r.status_code == 400, (r.text, body["size"])
    r = alice.http.post("/api/file", json={"path": "/bad.bin"})
    assert r.status_code == 400
    r = alice.http.post("/api/file", content=b"[", headers={"content-type": "application/json"})
    assert r.status_code == 400


def test_folders_move_and_trash(alice: User) -> None:
    assert alice.http.post("/api/folder", json={"path": "/Projects/2024"}).status_code == 201
    again = alice.http.post("/api/folder", json={"path": "/projects/2024"})
    assert again.status_code == 409  # names are case-insensitive, like Dropbox
    a = alice.upload("/Projects/2024/a.txt", b"a" * 1000)
    b = alice.upload("/Projects/2024/sub/b.txt", b"b" * 1000)
    project = next(
        i for i in alice.http.get("/api/file").json()["items"] if i["name"] == "Projects"
    )

    moved = alice.http.patch(f"/api/file/{project['id']}", json={"path": "/Archive/Old Projects"})
    assert moved.status_code == 200 and moved.json()["path"] == "/Archive/Old Projects"
    assert (
        alice.http.get(f"/api/file/{a['id']}").json()["path"] == "/Archive/Old Projects/2024/a.txt"
    )
    assert (
        alice.http.get(f"/api/file/{b['id']}").json()["path"]
        == "/Archive/Old Projects/2024/sub/b.txt"
    )
    assert alice.http.get(f"/api/file/{b['id']}/content").content == b"b" * 1000
    listing = alice.http.get("/api/file", params={"path": "/Archive/Old Projects/2024"}).json()[
        "items"
    ]
    assert sorted(i["name"] for i in listing) == ["a.txt", "sub"]
    assert alice.http.get("/api/file", params={"path": "/Projects"}).status_code == 404

    into_itself = alice.http.patch(
        f"/api/file/{project['id']}", json={"path": "/Archive/Old Projects/2024/x"}
    )
    assert into_itself.status_code == 400
    alice.upload("/taken.txt", b"t" * 10)
    clash = alice.http.patch(f"/api/file/{a['id']}", json={"path": "/TAKEN.txt"})
    assert clash.status_code == 409
    case_only = alice.http.patch(
        f"/api/file/{a['id']}", json={"path": "/Archive/Old Projects/2024/A.txt"}
    )
    assert case_only.status_code == 200 and case_only.json()["name"] == "A.txt"

    assert alice.http.delete(f"/api/file/{project['id']}").status_code == 204
    assert alice.http.get(f"/api/file/{b['id']}").status_code == 404
    assert alice.http.get("/api/file", params={"path": "/Archive"}).json()["items"] == []
    assert alice.http.get("/api/me").json()["usage_bytes"] == 10
    # The path is free again.
    assert alice.http.post("/api/folder", json={"path": "/Archive/Old Projects"}).status_code == 201
    assert alice.http.delete(f"/api/file/{project['id']}").status_code == 404


def test_upload_into_a_file_path_is_refused(alice: User) -> None:
    alice.upload("/plain.txt", b"p" * 100)
    r = alice.register("/plain.txt/inner.txt", b"x" * 10)
    assert r.status_code == 409 and r.json()["error"]["code"] == "not_a_folder"
    alice.http.post("/api/folder", json={"path": "/dir"})
    r = alice.register("/dir", b"x" * 10)
    assert r.status_code == 409 and r.json()["error"]["code"] == "is_a_folder"


def test_listing_pagination(alice: User) -> None:
    alice.http.post("/api/folder", json={"path": "/many"})
    names = [f"f{i:03d}" for i in range(25)]
    for n in names:
        alice.http.post("/api/folder", json={"path": f"/many/{n}"}).raise_for_status()
    seen, cursor = [], None
    while True:
        params = {"path": "/many", "limit": 10, **({"cursor": cursor} if cursor else {})}
        body = alice.http.get("/api/file", params=params).json()
        seen += [i["name"] for i in body["items"]]
        cursor = body["cursor"]
        if not cursor:
            break
    assert seen == names
    assert alice.http.get("/api/file", params={"path": "/many", "cursor": "!!"}).status_code == 400


def test_manifest_pages_chunks(alice: User) -> None:
    data = os.urandom(5 * CHUNK)
    fid = alice.upload("/m.bin", data)["id"]
    page = alice.http.get(f"/api/file/{fid}", params={"chunk_offset": 1, "chunk_limit": 2}).json()
    assert page["chunk_count"] == 5 and page["next_chunk_offset"] == 3
    assert [c["index"] for c in page["chunks"]] == [1, 2]
    chunk = httpx.get(page["chunks"][0]["url"])
    assert chunk.status_code == 200 and chunk.content == data[CHUNK : 2 * CHUNK]
    last = alice.http.get(f"/api/file/{fid}", params={"chunk_offset": 3}).json()
    assert [c["index"] for c in last["chunks"]] == [3, 4] and last["next_chunk_offset"] is None


def test_other_users_files_are_invisible(alice: User, bob: User) -> None:
    data = os.urandom(2 * CHUNK)
    f = alice.upload("/secret.bin", data)
    reg = alice.register("/pending.bin", os.urandom(CHUNK)).json()
    for method, url, body in [
        ("GET", f"/api/file/{f['id']}", None),
        ("GET", f"/api/file/{f['id']}/content", None),
        ("PATCH", f"/api/file/{f['id']}", {"path": "/stolen.bin"}),
        ("DELETE", f"/api/file/{f['id']}", None),
        ("POST", f"/api/file/{reg['file_id']}/commit", {"upload_id": reg["upload_id"]}),
        ("GET", "/api/file/not-an-id", None),
    ]:
        r = bob.http.request(method, url, json=body)
        assert r.status_code == 404, (method, url, r.text)
    # Bob's own upload id cannot commit Alice's file either.
    bob_reg = bob.register("/mine.bin", os.urandom(CHUNK)).json()
    r = bob.http.post(
        f"/api/file/{reg['file_id']}/commit", json={"upload_id": bob_reg["upload_id"]}
    )
    assert r.status_code == 404
    assert bob.http.get("/api/file").json()["items"] == []
    # No cross-user dedup: Bob must send bytes Alice already stored.
    assert len(bob.register("/copy.bin", data).json()["missing"]) == 2
    assert alice.http.get(f"/api/file/{f['id']}/content").content == data


def test_quota_is_enforced_at_register(alice: User, stack: Stack) -> None:
    with MongoClient(stack.env["MONGODB_URL"]) as mongo:
        mongo.coffer.users.update_one(
            {"username": alice.username}, {"$set": {"quota_bytes": 3 * CHUNK}}
        )
    alice.upload("/q1.bin", os.urandom(2 * CHUNK))
    r = alice.register("/q2.bin", os.urandom(2 * CHUNK))
    assert r.status_code == 507 and r.json()["error"]["code"] == "quota_exceeded"
    assert alice.register("/q2.bin", os.urandom(CHUNK)).status_code == 201


def test_fifty_gib_file(alice: User) -> None:
    """A 50 GiB file of one repeated 4 MiB chunk: one PUT, commit, exact Range near the end."""
    chunk_size = 4 * 1024 * 1024
    count = 12_800
    block = os.urandom(chunk_size)
    sha = hashlib.sha256(block).hexdigest()
    size = chunk_size * count
    started = time.monotonic()
    reg = alice.http.post(
        "/api/file",
        json={
            "path": "/huge/50g.bin",
            "size": size,
            "chunks": [{"sha256": sha, "size": chunk_size}] * count,
        },
    )
    assert reg.status_code == 201, reg.text
    body = reg.json()
    assert [m["index"] for m in body["missing"]] == [0]
    httpx.put(body["missing"][0]["url"], content=block, timeout=60).raise_for_status()
    f = alice.http.post(
        f"/api/file/{body['file_id']}/commit", json={"upload_id": body["upload_id"]}
    )
    assert f.status_code == 200 and f.json()["size"] == 50 * 1024**3
    start = size - chunk_size - 100
    r = alice.http.get(
        f"/api/file/{body['file_id']}/content", headers={"Range": f"bytes={start}-{start + 199}"}
    )
    assert r.status_code == 206
    assert r.content == block[-100:] + block[:100]
    manifest_tail = alice.http.get(
        f"/api/file/{body['file_id']}", params={"chunk_offset": count - 1}
    ).json()
    assert (
        manifest_tail["chunk_count"] == count and manifest_tail["chunks"][0]["index"] == count - 1
    )
    assert time.monotonic() - started < 30


def test_upload_resumes_after_server_kill(alice: User, stack: Stack, tmp_path: Path) -> None:
    data = os.urandom(6 * CHUNK)
    reg = alice.register("/killed.bin", data).json()
    for m in reg["missing"][:3]:
        httpx.put(m["url"], content=data[m["index"] * CHUNK :][: m["size"]]).raise_for_status()
    stack.procs["web"].kill9()
    stack.restart("web")
    again = alice.register("/killed.bin", data).json()
    assert [m["index"] for m in again["missing"]] == [3, 4, 5]
    for m in again["missing"]:
        httpx.put(m["url"], content=data[m["index"] * CHUNK :][: m["size"]]).raise_for_status()
    r = alice.http.post(
        f"/api/file/{again['file_id']}/commit", json={"upload_id": again["upload_id"]}
    )
    assert r.status_code == 200
    assert alice.http.get(f"/api/file/{again['file_id']}/content").content == data
