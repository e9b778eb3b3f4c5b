"""One content hash for the same bytes, however they were cut to be sent, and never a
claimed hash the bytes do not have (app/files/verify.py)."""

from __future__ import annotations

import asyncio
import os

import httpx
import pytest

from tests.conftest import User, content_hash, manifest
from tests.stack import Stack
from tests.test_faults import run_in_worker
from tests.test_sharing import wait_for

MIB = 1024 * 1024


def send(user: User, path: str, data: bytes, chunks: list[tuple[int, int]], **extra) -> dict:
    """Register with these (offset, size) chunks, PUT what is missing; the registration."""
    body = {
        "path": path,
        "size": len(data),
        "chunks": [
            {"sha256": manifest(data[o : o + n], n)["chunks"][0]["sha256"], "size": n}
            for o, n in chunks
        ],
        **extra,
    }
    r = user.http.post("/api/file", json=body)
    assert r.status_code == 201, r.text
    reg = r.json()
    for m in reg["missing"]:
        o, n = chunks[m["index"]]
        assert httpx.put(m["url"], content=data[o : o + n], headers=m["headers"]).is_success
    return reg


def commit(user: User, reg: dict) -> httpx.Response:
    return user.http.post(
        f"/api/file/{reg['file_id']}/commit", json={"upload_id": reg["upload_id"]}
    )


def cut(size: int, sizes: list[int]) -> list[tuple[int, int]]:
    """(offset, size) chunks of the given sizes, repeated until `size` is covered."""
    out, pos, i = [], 0, 0
    while pos < size:
        n = min(sizes[i % len(sizes)], size - pos)
        out.append((pos, n))
        pos += n
        i += 1
    return out


def test_the_same_bytes_have_one_hash_however_they_were_chunked(alice: User) -> None:
    data = os.urandom(9 * MIB + 12345)
    want = content_hash(data)
    # The 4 MiB blocks themselves (the browser, older clients): derived from the chunks.
    a = commit(alice, send(alice, "/a.bin", data, cut(len(data), [4 * MIB]))).json()
    # Content-defined-like chunks of varying sizes, no claim: hashed at commit.
    b = commit(alice, send(alice, "/b.bin", data, cut(len(data), [300_000, 1_700_000]))).json()
    # 64 KiB chunks with the right claim.
    c = commit(
        alice, send(alice, "/c.bin", data, cut(len(data), [64 * 1024]), content_hash=want)
    ).json()
    assert a["content_hash"] == b["content_hash"] == c["content_hash"] == want
    assert a["hash_verified"] and b["hash_verified"] and c["hash_verified"]
    got = alice.http.get(f"/api/file/{b['id']}/content")
    assert got.content == data and got.headers["etag"].strip('"') == want


def test_a_wrong_claim_is_refused_and_nothing_is_committed(alice: User) -> None:
    data = os.urandom(3 * MIB)
    wrong = "0" * 64
    # Chunks that are the blocks: the claim is checked at once.
    r = alice.http.post(
        "/api/file", json={"path": "/x.bin", **manifest(data, 4 * MIB), "content_hash": wrong}
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "hash_mismatch"
    r = alice.http.post(
        "/api/file", json={"path": "/x.bin", **manifest(data), "content_hash": "nothex"}
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_hash"
    # Other chunks: checked against the stored bytes at commit.
    reg = send(alice, "/y.bin", data, cut(len(data), [1 * MIB]), content_hash=wrong)
    r = commit(alice, reg)
    assert r.status_code == 400 and r.json()["error"]["code"] == "hash_mismatch"
    assert alice.http.get("/api/file", params={"path": "/"}).json()["items"] == []
    # Registered again with the right claim, the same upload commits (nothing re-sent).
    again = send(alice, "/y.bin", data, cut(len(data), [1 * MIB]), content_hash=content_hash(data))
    assert again["upload_id"] == reg["upload_id"] and again["missing"] == []
    assert commit(alice, again).json()["content_hash"] == content_hash(data)


def test_a_large_file_is_verified_by_the_worker_and_a_wrong_claim_corrected(
    alice: User, stack: Stack
) -> None:
    """Over `verify_hash_at_commit_max` (64 MiB) with chunks that are not the blocks: the
    claim is required, shown as unverified until the worker has hashed the stored bytes;
    a claim that was wrong is replaced by the true hash and announced."""
    data = os.urandom(64 * MIB + 5)
    chunks = cut(len(data), [2 * MIB])
    r = alice.http.post(
        "/api/file",
        json={
            "path": "/big.bin",
            "size": len(data),
            "chunks": [{"sha256": "0" * 64, "size": n} for _, n in chunks],
        },
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "content_hash_required"
    right = commit(alice, send(alice, "/big.bin", data, chunks, content_hash=content_hash(data)))
    assert right.json()["hash_verified"] is False
    cursor = alice.http.get("/api/file/events", params={"cursor": "latest"}).json()["cursor"]
    data2 = data[:-5] + b"other"
    lie = commit(alice, send(alice, "/lie.bin", data2, chunks, content_hash=content_hash(data)))
    assert lie.json()["content_hash"] == content_hash(data) and not lie.json()["hash_verified"]

    asyncio.run(run_in_worker(stack, "verify_hashes"))
    ok = alice.http.get(f"/api/file/{right.json()['id']}").json()
    assert ok["hash_verified"] and ok["content_hash"] == content_hash(data)
    fixed = alice.http.get(f"/api/file/{lie.json()['id']}").json()
    assert fixed["hash_verified"] and fixed["content_hash"] == content_hash(data2)
    assert fixed["version"] == 1
    # Announced once. (The worker's own verification every 10 s may have been the one that
    # corrected it, its event appended just after the file: so wait for it a moment.)
    updates = wait_for(
        lambda: [e for e in alice.events(cursor) if e["type"] == "file.updated"], timeout=15
    )
    assert [(e["path"], e["content_hash"]) for e in updates] == [("/lie.bin", content_hash(data2))]
    history = alice.http.get(f"/api/file/{lie.json()['id']}/versions").json()
    assert history[0]["content_hash"] == content_hash(data2)


def test_a_file_rewritten_while_it_is_sent_is_not_committed(alice: User, tmp_path) -> None:
    """The sync client hashes a file, then sends it; if the bytes change in between, the
    store refuses the chunk and the client reports the file as changed (it is picked up
    again on the next pass); the server keeps no version of the mixed bytes."""
    from client.api import CofferClient
    from client.errors import LocalFileChanged
    from client.hashing import file_hashes
    from client.transfer import upload_file

    path = tmp_path / "draft.bin"
    path.write_bytes(os.urandom(12 * MIB))
    hashed = file_hashes(path)
    with open(path, "r+b") as fh:  # rewritten after it was hashed
        fh.seek(6 * MIB)
        fh.write(os.urandom(MIB))

    async def send_it() -> None:
        async with CofferClient(alice.base_url, alice.token) as api:
            await upload_file(api, path, "/draft.bin", hashed=hashed)

    with pytest.raises(LocalFileChanged):
        asyncio.run(send_it())
    listed = alice.http.get("/api/file", params={"path": "/"}).json()["items"]
    assert "draft.bin" not in [i["name"] for i in listed]


def test_a_chunk_gone_before_the_commit_is_asked_for_again(alice: User, stack: Stack) -> None:
    """A claimed hash is checked at commit over the stored chunks: one deleted from the
    store meanwhile is reported (never a 500), marked missing, and the next commit asks
    for it; sent again, the file commits with its hash verified."""
    data = os.urandom(5 * MIB + 7)
    chunks = cut(len(data), [2 * MIB])
    reg = send(alice, "/gone.bin", data, chunks, content_hash=content_hash(data))
    o, n = chunks[1]
    sha = manifest(data[o : o + n], n)["chunks"][0]["sha256"]
    (stack.root / "blobs" / "chunks" / alice.id / sha[:2] / sha).unlink()

    first = commit(alice, reg)
    assert first.status_code == 502 and first.json()["error"]["code"] == "corrupt_data"
    again = commit(alice, reg)
    assert again.status_code == 409 and again.json()["error"]["code"] == "missing_chunks"
    assert [m["index"] for m in again.json()["error"]["missing"]] == [1]
    resent = send(alice, "/gone.bin", data, chunks, content_hash=content_hash(data))
    done = commit(alice, resent)
    assert done.status_code == 200, done.text
    assert done.json()["hash_verified"] and done.json()["content_hash"] == content_hash(data)
    assert alice.http.get(f"/api/file/{done.json()['id']}/content").content == data
