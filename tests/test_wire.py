"""zstd on the wire (app/core/encoding.py): compressed chunks and batch bodies are stored
as their uncompressed bytes; bodies that do not decode, decode to other bytes, or expand
past their limit (a zstd bomb) are refused and store nothing."""

from __future__ import annotations

import base64
import os

import httpx
import zstandard

from tests.conftest import User, content_hash, manifest

MIB = 1024 * 1024
TEXT = b"".join(b"def line_%06d(self):\n    return %d\n" % (i, i) for i in range(40_000))


def zstd(data: bytes, level: int = 1) -> bytes:
    return zstandard.ZstdCompressor(level=level).compress(data)


def register(user: User, path: str, data: bytes) -> dict:
    r = user.http.post("/api/file", json={"path": path, **manifest(data, 4 * MIB)})
    assert r.status_code == 201, r.text
    return r.json()


def test_a_compressed_chunk_is_stored_as_its_bytes(alice: User) -> None:
    data = TEXT[: 2 * MIB]
    reg = register(alice, "/code.py", data)
    (m,) = reg["missing"]
    assert m["encodings"] == ["zstd"]
    body = zstd(data)
    assert len(body) < len(data) // 4
    r = httpx.put(m["url"], content=body, headers={**m["headers"], "Content-Encoding": "zstd"})
    assert r.status_code == 201, r.text
    done = alice.http.post(
        f"/api/file/{reg['file_id']}/commit", json={"upload_id": reg["upload_id"]}
    )
    assert done.status_code == 200 and done.json()["content_hash"] == content_hash(data)
    assert alice.http.get(f"/api/file/{reg['file_id']}/content").content == data


def test_bad_compressed_chunks_are_refused_and_store_nothing(alice: User) -> None:
    data = TEXT[:MIB]
    reg = register(alice, "/bad.py", data)
    (m,) = reg["missing"]
    url, headers = m["url"], {**m["headers"], "Content-Encoding": "zstd"}
    bomb = zstd(b"\0" * (64 * MIB))  # 64 MiB of zeros in a few kilobytes
    assert len(bomb) < 10_000
    r = httpx.put(url, content=bomb, headers=headers)
    assert r.status_code == 413, r.text
    r = httpx.put(url, content=b"not zstd at all" * 100, headers=headers)
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_encoding"
    r = httpx.put(url, content=zstd(data[:-1] + b"?"), headers=headers)  # other bytes
    assert r.status_code == 400
    r = httpx.put(url, content=zstd(data)[:-20], headers=headers)  # cut short
    assert r.status_code == 400
    r = httpx.put(url, content=data, headers={**m["headers"], "Content-Encoding": "gzip"})
    assert r.status_code == 415
    commit = alice.http.post(
        f"/api/file/{reg['file_id']}/commit", json={"upload_id": reg["upload_id"]}
    )
    assert commit.status_code == 409 and commit.json()["error"]["code"] == "missing_chunks"


def test_a_compressed_batch_commits_and_a_bomb_or_garbage_is_refused(alice: User) -> None:
    files = [
        {"path": f"/src/m{i}.py", **manifest(TEXT[i * 1000 : (i + 1) * 1000])}
        | {"data": base64.b64encode(TEXT[i * 1000 : (i + 1) * 1000]).decode()}
        for i in range(50)
    ]
    raw = httpx.Request("POST", "/", json={"files": files}).content
    compressed = zstd(raw, 3)
    headers = {"Content-Type": "application/json", "Content-Encoding": "zstd"}
    r = alice.http.post("/api/batch/upload", content=compressed, headers=headers)
    assert r.status_code == 200, r.text
    assert {x["status"] for x in r.json()["results"]} == {"committed"}
    assert len(compressed) < len(raw) // 3
    bomb = zstd(b"[" + b" " * (100 * MIB) + b"]")
    r = alice.http.post("/api/batch/upload", content=bomb, headers=headers)
    assert r.status_code == 413
    r = alice.http.post("/api/batch/upload", content=os.urandom(1000), headers=headers)
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_encoding"
    r = alice.http.post(
        "/api/batch/upload",
        content=raw,
        headers={"Content-Type": "application/json", "Content-Encoding": "br"},
    )
    assert r.status_code == 415
    listed = alice.http.get("/api/file", params={"path": "/src"}).json()["items"]
    assert len(listed) == 50


def test_downloads_come_compressed_to_clients_that_take_zstd(alice: User) -> None:
    code = alice.upload("/code.py", TEXT[: 2 * MIB], chunk_size=MIB)
    noise = alice.upload("/noise.bin", os.urandom(MIB), chunk_size=MIB)
    chunk = alice.http.get(f"/api/file/{code['id']}").json()["chunks"][0]
    raw = httpx.get(chunk["url"], headers={"Accept-Encoding": "zstd"})
    assert raw.headers.get("content-encoding") == "zstd"
    assert int(raw.headers["content-length"]) < MIB // 4  # what crossed the wire
    assert raw.content == TEXT[:MIB]  # decoded: the chunk's own bytes
    plain = httpx.get(chunk["url"], headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers and plain.content == TEXT[:MIB]
    random_chunk = alice.http.get(f"/api/file/{noise['id']}").json()["chunks"][0]
    r = httpx.get(random_chunk["url"], headers={"Accept-Encoding": "zstd"})
    assert "content-encoding" not in r.headers  # would not shrink: sent as it is

    ids = {"ids": [code["id"], noise["id"]]}
    packed = alice.http.post("/api/batch/download", json=ids, headers={"Accept-Encoding": "zstd"})
    plain = alice.http.post("/api/batch/download", json=ids, headers={"Accept-Encoding": "gzip"})
    assert packed.headers.get("content-encoding") == "zstd"
    assert "content-encoding" not in plain.headers
    assert packed.content == plain.content  # the same files, however they travelled
