"""Delta chunk uploads over the API: an edited chunk goes up as the bytes that changed,
built on the chunk it replaces, and nothing else can be built on."""

from __future__ import annotations

import hashlib
import random
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import zstandard

from app.protocol.delta import encode
from tests.conftest import User, content_hash, manifest

KIB = 1024
MIB = 1024 * KIB


def rand(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def chunk_list(
    data: bytes, sizes: list[int], bases: dict[int, list[str]] | None = None
) -> list[dict]:
    out, pos = [], 0
    for i, size in enumerate(sizes):
        piece = data[pos : pos + size]
        out.append(
            {
                "sha256": hashlib.sha256(piece).hexdigest(),
                "size": size,
                **({"bases": bases[i]} if bases and i in bases else {}),
            }
        )
        pos += size
    return out


def register(user: User, path: str, data: bytes, chunks: list[dict]) -> dict:
    r = user.http.post(
        "/api/file",
        json={
            "path": path,
            "size": len(data),
            "chunks": chunks,
            "content_hash": content_hash(data),
        },
    )
    assert r.status_code == 201, r.text
    return r.json()


def commit(user: User, reg: dict) -> httpx.Response:
    return user.http.post(
        f"/api/file/{reg['file_id']}/commit", json={"upload_id": reg["upload_id"]}
    )


def with_param(url: str, **changes: str | None) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    for key, value in changes.items():
        if value is None:
            query.pop(key, None)
        else:
            query[key] = value
    return urlunsplit(parts._replace(query=urlencode(query)))


SIZES = [MIB, MIB, MIB]
OLD = rand(3 * MIB, 1)
# 50 KB overwritten inside the middle chunk.
NEW = OLD[: MIB + 300_000] + rand(50_000, 2) + OLD[MIB + 350_000 :]


def edited(user: User, path: str) -> tuple[list[dict], dict]:
    """`path` uploaded as OLD, then NEW registered with the middle chunk's base named."""
    user.upload(path, OLD, chunk_size=MIB)
    old_middle = hashlib.sha256(OLD[MIB : 2 * MIB]).hexdigest()
    chunks = chunk_list(NEW, SIZES, {1: [old_middle]})
    return chunks, register(user, path, NEW, chunks)


def test_an_edited_chunk_goes_up_as_the_bytes_that_changed(alice: User) -> None:
    chunks, reg = edited(alice, "/edited.bin")
    [missing] = reg["missing"]
    assert missing["index"] == 1
    base = missing["base"]
    assert base["sha256s"] == chunks[1]["bases"] and base["size"] == MIB
    body, copied = encode(NEW[MIB : 2 * MIB], base["pieces"])
    assert len(body) < 150_000, "about the 50 KB that changed, not the 1 MiB chunk"
    assert copied > 850_000
    put = httpx.put(missing["url"], content=body)
    assert put.status_code == 201, put.text
    assert commit(alice, reg).status_code == 200
    got = alice.http.get(f"/api/file/{reg['file_id']}/content")
    assert got.status_code == 200 and got.content == NEW
    # The old version is whole too: its chunk was only read.
    versions = alice.http.get(f"/api/file/{reg['file_id']}/versions").json()
    first = min(v["version"] for v in versions)
    old = alice.http.get(f"/api/file/{reg['file_id']}/content", params={"version": first})
    assert old.content == OLD


def test_a_chunk_that_spans_two_old_chunks_builds_on_both(alice: User) -> None:
    """An edit moves the cut points after it: a new chunk made of the end of one old chunk
    and the start of the next copies from both."""
    alice.upload("/spans.bin", OLD, chunk_size=MIB)
    shas = [hashlib.sha256(OLD[i : i + MIB]).hexdigest() for i in range(0, 3 * MIB, MIB)]
    sizes = [MIB // 2, MIB, MIB + MIB // 2]  # the middle chunk is old chunk 0's end + 1's start
    chunks = chunk_list(OLD, sizes, {1: shas[:2], 2: shas[1:]})
    reg = register(alice, "/spans.bin", OLD, chunks)
    sent = 0
    for missing in reg["missing"]:
        start = sum(sizes[: missing["index"]])
        piece = OLD[start : start + missing["size"]]
        if missing["base"] is None:
            body = piece
        else:
            body, _ = encode(piece, missing["base"]["pieces"])
        sent += len(body)
        assert httpx.put(missing["url"], content=body).status_code == 201
    assert sent < MIB // 2 + 100_000, "only the first chunk, which names no base, went whole"
    assert commit(alice, reg).status_code == 200
    assert alice.http.get(f"/api/file/{reg['file_id']}/content").content == OLD


def test_a_delta_may_be_zstd_compressed(alice: User) -> None:
    _, reg = edited(alice, "/edited-zstd.bin")
    [missing] = reg["missing"]
    body, _ = encode(NEW[MIB : 2 * MIB], missing["base"]["pieces"])
    packed = zstandard.ZstdCompressor().compress(body)
    put = httpx.put(missing["url"], content=packed, headers={"Content-Encoding": "zstd"})
    assert put.status_code == 201, put.text
    assert commit(alice, reg).status_code == 200


def test_a_delta_that_makes_other_bytes_is_refused_and_stores_nothing(alice: User) -> None:
    _, reg = edited(alice, "/edited-bad.bin")
    [missing] = reg["missing"]
    wrong = NEW[MIB : 2 * MIB - 1] + b"?"
    body, _ = encode(wrong, missing["base"]["pieces"])
    put = httpx.put(missing["url"], content=body)
    assert put.status_code == 400 and put.json()["error"]["code"] == "hash_mismatch"
    garbage = httpx.put(missing["url"], content=b"Z" + bytes(20))
    assert garbage.status_code == 400 and garbage.json()["error"]["code"] == "bad_delta"
    # A body longer than any delta of the chunk is refused before it is read.
    huge = httpx.put(missing["url"], content=bytes(MIB + 2 * 65536))
    assert huge.status_code == 413
    # Nothing was stored: the chunk is still missing, the commit says so.
    refused = commit(alice, reg)
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "missing_chunks"
    assert alice.http.get(f"/api/file/{reg['file_id']}/content").content == OLD


def test_a_delta_url_builds_on_its_own_base_only(alice: User) -> None:
    _, reg = edited(alice, "/edited-url.bin")
    [missing] = reg["missing"]
    body, _ = encode(NEW[MIB : 2 * MIB], missing["base"]["pieces"])
    other = hashlib.sha256(OLD[:MIB]).hexdigest()
    for url in (with_param(missing["url"], base=other), with_param(missing["url"], base=None)):
        r = httpx.put(url, content=body)
        assert r.status_code == 403 and r.json()["error"]["code"] == "bad_signature"


def test_only_a_chunk_of_the_files_current_version_is_offered_as_a_base(
    alice: User, bob: User
) -> None:
    secret = rand(MIB, 7)
    alice.upload("/secret.bin", secret, chunk_size=MIB)
    secret_sha = hashlib.sha256(secret).hexdigest()
    # A new file has no current version: nothing to build on.
    data = secret[:-10] + b"0123456789"
    reg = register(alice, "/new.bin", data, chunk_list(data, [MIB], {0: [secret_sha]}))
    assert reg["missing"][0]["base"] is None
    # Another file's chunk is not a base for this one, even for its owner.
    alice.upload("/mine.bin", OLD, chunk_size=MIB)
    chunks = chunk_list(NEW, SIZES, {1: [secret_sha]})
    reg = register(alice, "/mine.bin", NEW, chunks)
    assert [m["base"] for m in reg["missing"]] == [None]
    # An editor of a shared file gets bases from that file, never from the owner's others.
    folder = alice.http.post("/api/folder", json={"path": "/team"}).json()
    doc = alice.upload("/team/doc.bin", OLD, chunk_size=MIB)
    r = alice.http.post(
        f"/api/file/{folder['id']}/share", json={"username": bob.username, "role": "editor"}
    )
    assert r.status_code == 201
    old_middle = hashlib.sha256(OLD[MIB : 2 * MIB]).hexdigest()

    def bob_registers(bases: list[str]) -> httpx.Response:
        body = {
            "file_id": doc["id"],
            "size": len(NEW),
            "chunks": chunk_list(NEW, SIZES, {1: bases}),
            "content_hash": content_hash(NEW),
        }
        r = bob.http.post("/api/file", json=body)
        assert r.status_code == 201, r.text
        return r

    r = bob_registers([secret_sha])
    # (An editor sends every chunk: dedup never tells them what the owner holds.)
    assert [m["base"] for m in r.json()["missing"]] == [None, None, None]
    r = bob_registers([old_middle])
    for missing in r.json()["missing"]:
        start = missing["index"] * MIB
        if missing["index"] == 1:
            assert missing["base"]["sha256s"] == [old_middle]
            body, _ = encode(NEW[start : start + MIB], missing["base"]["pieces"])
        else:
            assert missing["base"] is None
            body = NEW[start : start + MIB]
        assert httpx.put(missing["url"], content=body).status_code == 201
    assert commit(bob, r.json()).status_code == 200
    assert alice.http.get(f"/api/file/{doc['id']}/content").content == NEW


def test_a_malformed_base_is_a_clear_400(alice: User) -> None:
    data = rand(100, 9)
    body = {**manifest(data), "path": "/x.bin"}
    for bases in (["not-a-hash"], ["0" * 64] * 5, "0" * 64, ["0" * 64, "0" * 64]):
        body["chunks"][0]["bases"] = bases
        r = alice.http.post("/api/file", json=body)
        assert r.status_code == 400, r.text
