"""The S3 blob store against real S3 servers, and the `coffer-server run` launcher.

The S3 tests run on SeaweedFS (`weed server -s3`, tests/stack.py `start_seaweedfs`): it
checks signatures, expiry and the SHA-256 signed into a presigned PUT, like AWS S3. moto is
kept for what SeaweedFS cannot be: a server that takes any bytes under a checksummed URL,
the case where Coffer must read every staged chunk back and hash it (and where the probe at
start must say so).
"""

from __future__ import annotations

import base64
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import httpx
import psutil
import pytest
from pymongo import MongoClient

from app.cli import free_port
from app.settings import Settings
from app.storage.base import chunk_key, staging_key
from app.storage.s3 import PROBE_PREFIX, S3BlobStore
from tests.conftest import User, content_hash, manifest
from tests.stack import Proc, SeaweedFS, Stack, start_moto

CHUNK = 64 * 1024
BUCKET = "coffer-test"
DB = "coffer_s3"


@pytest.fixture(scope="module")
def bucket(seaweedfs: SeaweedFS) -> Any:
    """The test bucket, read directly (to see what is really stored where)."""
    return seaweedfs.client()


@pytest.fixture(scope="module")
def s3_web(stack: Stack, seaweedfs: SeaweedFS) -> Iterator[str]:
    proc = stack.start_web("web-s3", **seaweedfs.s3_env(BUCKET), COFFER_DB_NAME=DB)
    try:
        yield stack.url("web-s3")
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    proc = start_moto(tmp_path_factory.mktemp("moto"))
    try:
        yield proc
    finally:
        proc.stop()


def moto_env(moto: Proc) -> dict[str, str]:
    return {
        "COFFER_BLOB_STORE": "s3",
        "S3_ENDPOINT_URL": f"http://127.0.0.1:{moto.port}",
        "S3_BUCKET": BUCKET,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
    }


def stored_record(stack: Stack, owner: str, sha: str) -> dict | None:
    """The server's record of a chunk (the authority on whether uploads may count on it)."""
    with MongoClient(stack.env["MONGODB_URL"]) as mongo:
        return mongo[DB].chunks.find_one({"_id": f"{owner}:{sha}"})


def absent(bucket: Any, key: str) -> bool:
    return bucket.list_objects_v2(Bucket=BUCKET, Prefix=key).get("KeyCount", 0) == 0


def put(m: dict, body: bytes, headers: dict | None = None) -> httpx.Response:
    return httpx.put(m["url"], content=body, headers=m["headers"] if headers is None else headers)


def commit(user: User, reg: dict) -> httpx.Response:
    return user.http.post(
        f"/api/file/{reg['file_id']}/commit", json={"upload_id": reg["upload_id"]}
    )


def test_s3_upload_download_and_verification(s3_web: str, stack: Stack, bucket: Any) -> None:
    user = User(s3_web)
    data = os.urandom(4 * CHUNK + 99)
    reg = user.register("/s3/file.bin", data).json()
    assert len(reg["missing"]) == 5
    assert "X-Amz-Signature" in reg["missing"][0]["url"]  # presigned, straight to S3

    # One chunk gets the wrong bytes under its URL: the store itself refuses them
    # (BadDigest: they do not match the SHA-256 signed into the URL), and nothing of them
    # is kept or counted as stored.
    bad = reg["missing"][2]
    for m in reg["missing"]:
        body = data[m["index"] * CHUNK :][: m["size"]]
        if m is bad:
            refused = put(m, os.urandom(m["size"]))
            assert refused.status_code == 400 and "BadDigest" in refused.text
        else:
            assert put(m, body).status_code == 200
    assert absent(bucket, staging_key(user.id, reg["upload_id"], bad["sha256"]))
    r = commit(user, reg)
    assert r.status_code == 409 and [m["index"] for m in r.json()["error"]["missing"]] == [2]
    assert stored_record(stack, user.id, bad["sha256"]) is None
    assert absent(bucket, chunk_key(user.id, bad["sha256"]))
    # Resume: only the refused chunk is asked for again.
    again = user.register("/s3/file.bin", data).json()
    assert [m["index"] for m in again["missing"]] == [2]
    assert put(again["missing"][0], data[2 * CHUNK : 3 * CHUNK]).status_code == 200
    f = commit(user, reg).json()
    assert f["content_hash"] == content_hash(data)
    assert stored_record(stack, user.id, bad["sha256"])["state"] == "stored"

    assert user.http.get(f"/api/file/{f['id']}/content").content == data
    part = user.http.get(
        f"/api/file/{f['id']}/content", headers={"Range": f"bytes={CHUNK - 1}-{CHUNK}"}
    )
    assert part.status_code == 206 and part.content == data[CHUNK - 1 : CHUNK + 1]
    chunk = user.http.get(f"/api/file/{f['id']}").json()["chunks"][1]
    assert httpx.get(chunk["url"]).content == data[CHUNK : 2 * CHUNK]
    assert user.register("/s3/again.bin", data).json()["missing"] == []
    assert httpx.get(f"{s3_web}/readyz").json()["checks"]["blob_store"] == "ok"
    # What the probe at start found, as the operator reads it in the log.
    log = (stack.root / "logs" / "web-s3.log").read_text()
    assert f"S3 bucket {BUCKET} enforces signed checksums" in log
    # Nothing staged is left behind once committed.
    assert absent(bucket, f"incoming/{user.id}/")


def test_s3_an_editor_cannot_overwrite_the_owners_chunks(s3_web: str, bucket: Any) -> None:
    """The review's attack: an editor registers a chunk the owner already stores and PUTs
    garbage to the URL it gets. No PUT URL names a stored chunk; the store refuses bytes
    that are not the signed ones, and the length is signed too."""
    owner, editor = User(s3_web), User(s3_web)
    secret = os.urandom(CHUNK)
    private = owner.upload("/private/secret.bin", secret)
    folder = owner.http.post("/api/folder", json={"path": "/team"}).json()
    r = owner.http.post(
        f"/api/file/{folder['id']}/share", json={"username": editor.username, "role": "editor"}
    )
    assert r.status_code == 201

    reg = editor.http.post(
        "/api/file", json={"parent_id": folder["id"], "name": "copy.bin", **manifest(secret)}
    ).json()
    [m] = reg["missing"]  # an editor is asked for it (dedup never tells them it exists)
    target = urlsplit(m["url"])
    assert "/incoming/" in target.path and "/chunks/" not in target.path
    signed = parse_qs(target.query)["X-Amz-SignedHeaders"][0].split(";")
    assert "content-length" in signed and "x-amz-checksum-sha256" in signed
    assert put(m, b"garbage " * 9).status_code == 403  # not the signed length
    assert put(m, os.urandom(CHUNK)).status_code == 400  # the signed length, other bytes
    assert put(m, os.urandom(CHUNK), {}).status_code == 403  # without the signed checksum

    def owner_copy_intact() -> None:
        got = owner.http.get(f"/api/file/{private['id']}/content")
        assert got.status_code == 200 and got.content == secret

    owner_copy_intact()
    r = commit(editor, reg)
    assert r.status_code == 409 and r.json()["error"]["code"] == "missing_chunks"
    owner_copy_intact()
    assert absent(bucket, f"incoming/{owner.id}/")

    # 20 MB sent to a URL registered for 100 bytes: refused, never stored, never counted.
    small = os.urandom(100)
    reg = editor.http.post(
        "/api/file", json={"parent_id": folder["id"], "name": "small.bin", **manifest(small)}
    ).json()
    used = owner.http.get("/api/me").json()["usage_bytes"]
    assert put(reg["missing"][0], os.urandom(20 * 1024 * 1024)).status_code == 403
    r = commit(editor, reg)
    assert r.status_code == 409
    assert owner.http.get("/api/me").json()["usage_bytes"] == used
    assert absent(bucket, f"incoming/{owner.id}/")

    # Sent properly, the same upload works, and the owner's copy is untouched.
    m = r.json()["error"]["missing"][0]
    assert put(m, small).status_code == 200
    done = commit(editor, reg)
    assert done.status_code == 200, done.text
    assert editor.http.get(f"/api/file/{reg['file_id']}/content").content == small
    owner_copy_intact()


@pytest.fixture(scope="module")
def short_web(stack: Stack, seaweedfs: SeaweedFS) -> Iterator[str]:
    """Upload URLs that live 1 s (to see one expire)."""
    proc = stack.start_web(
        "web-s3-short", **seaweedfs.s3_env(BUCKET), COFFER_DB_NAME=DB, COFFER_URL_TTL_SECONDS="1"
    )
    try:
        yield stack.url("web-s3-short")
    finally:
        proc.stop()


def test_s3_presigned_urls_fail_at_the_store(
    s3_web: str, short_web: str, stack: Stack, bucket: Any
) -> None:
    """Expired, pointed at another key, or replayed with other bytes: the S3 server itself
    refuses the PUT, and nothing it refused is stored or registered."""
    user = User(s3_web)
    data = os.urandom(2 * CHUNK)
    one, two = data[:CHUNK], data[CHUNK:]
    reg = user.register("/urls/a.bin", data).json()
    m1, _ = reg["missing"]

    # For another key: the owner's stored-chunk key, or another upload's staging key.
    for key in (chunk_key(user.id, m1["sha256"]), f"incoming/{user.id}/other/{m1['sha256']}"):
        url = urlsplit(m1["url"])._replace(path=f"/{BUCKET}/{key}").geturl()
        moved = httpx.put(url, content=one, headers=m1["headers"])
        assert moved.status_code == 403 and "SignatureDoesNotMatch" in moved.text
        assert absent(bucket, key)

    # Replayed with other bytes after a good PUT: refused, the good bytes stay.
    assert put(m1, one).status_code == 200
    replay = put(m1, os.urandom(CHUNK))
    assert replay.status_code == 400 and "BadDigest" in replay.text
    staged = bucket.get_object(
        Bucket=BUCKET, Key=staging_key(user.id, reg["upload_id"], m1["sha256"])
    )
    assert staged["Body"].read() == one

    # Expired: a URL of the short-lived web instance (same database, same token), used
    # after its 1 s.
    late = httpx.Client(base_url=short_web, headers=user.http.headers)
    lreg = late.post("/api/file", json={"path": "/urls/late.bin", **manifest(two)}).json()
    [lm] = lreg["missing"]
    time.sleep(2)
    expired = put(lm, two)
    assert expired.status_code == 403 and "expired" in expired.text.lower()
    assert absent(bucket, staging_key(user.id, lreg["upload_id"], lm["sha256"]))
    r = late.post(f"/api/file/{lreg['file_id']}/commit", json={"upload_id": lreg["upload_id"]})
    assert r.status_code == 409 and r.json()["error"]["code"] == "missing_chunks"

    # The first upload goes on: its good chunk counts, the other one is still wanted.
    r = commit(user, reg)
    assert r.status_code == 409 and [m["index"] for m in r.json()["error"]["missing"]] == [1]
    assert stored_record(stack, user.id, m1["sha256"])["state"] == "stored"
    assert put(r.json()["error"]["missing"][0], two).status_code == 200
    f = commit(user, reg).json()
    assert user.http.get(f"/api/file/{f['id']}/content").content == data


def test_s3_bytes_the_store_did_not_verify_are_read_back(
    s3_web: str, stack: Stack, bucket: Any
) -> None:
    """Bytes put at a staging key some other way (with the bucket's own credentials, no
    signed checksum): the store vouches for no SHA-256, so the commit hashes them itself."""
    user = User(s3_web)
    data = os.urandom(CHUNK)
    reg = user.register("/unverified.bin", data).json()
    [m] = reg["missing"]
    key = staging_key(user.id, reg["upload_id"], m["sha256"])
    bucket.put_object(Bucket=BUCKET, Key=key, Body=os.urandom(CHUNK))
    r = commit(user, reg)
    assert r.status_code == 409 and r.json()["error"]["code"] == "missing_chunks"
    assert absent(bucket, key) and stored_record(stack, user.id, m["sha256"]) is None
    # The right bytes the same way (no SHA-256 on record either): read back, and taken.
    bucket.put_object(Bucket=BUCKET, Key=key, Body=data)
    f = commit(user, reg).json()
    assert user.http.get(f"/api/file/{f['id']}/content").content == data


async def test_s3_a_store_that_takes_any_bytes_is_read_back(moto: Proc) -> None:
    """moto takes bytes that do not match the signed checksum (SeaweedFS and AWS S3 do
    not): the probe at start finds that out, and every staged chunk is hashed before it
    is copied into place; wrong bytes are thrown away. (The same read-back through the
    API: test_s3_bytes_the_store_did_not_verify_are_read_back.)"""
    store = S3BlobStore(Settings(**moto_env(moto)))
    await store.start()
    await store.ensure_bucket()
    await store.learn_checksums()
    try:
        assert store.verifies_checksums is False
        data = os.urandom(CHUNK)
        sha = hashlib.sha256(data).hexdigest()
        target = await store.upload_url("", "owner1", sha, CHUNK, "upload1")
        async with httpx.AsyncClient() as http:
            wrong = await http.put(target.url, content=os.urandom(CHUNK), headers=target.headers)
            assert wrong.status_code == 200  # moto takes it
            assert await store.accept_upload("owner1", sha, CHUNK, "upload1") == "corrupt"
            assert await store.stat("owner1", sha) is None
            right = await http.put(target.url, content=data, headers=target.headers)
            assert right.status_code == 200
        assert await store.accept_upload("owner1", sha, CHUNK, "upload1") == "stored"
        assert await store.read_all("owner1", sha) == data
    finally:
        await store.close()


async def test_s3_store_learns_whether_the_server_enforces_checksums(
    seaweedfs: SeaweedFS, moto: Proc
) -> None:
    """COFFER_S3_VERIFIES_CHECKSUMS: "auto" probes (SeaweedFS enforces, moto does not;
    the probe leaves nothing behind); "true"/"false" force it. Forced "true" on a server
    that does not enforce still never takes wrong bytes: moto reports no stored checksum,
    so the staged chunk is read back."""

    async def open_store(env: dict[str, str], mode: str) -> S3BlobStore:
        store = S3BlobStore(Settings(**env, s3_verifies_checksums=mode))
        await store.start()
        await store.ensure_bucket()
        await store.learn_checksums()
        return store

    weed_env = seaweedfs.s3_env("coffer-probe-test")
    cases = [
        (weed_env, "auto", True),
        (moto_env(moto), "auto", False),
        (weed_env, "false", False),
        (moto_env(moto), "true", True),
    ]
    for env, mode, expected in cases:
        store = await open_store(env, mode)
        try:
            assert store.verifies_checksums is expected, (env["S3_ENDPOINT_URL"], mode)
        finally:
            await store.close()
    weed = seaweedfs.client()
    left = weed.list_objects_v2(Bucket="coffer-probe-test", Prefix=PROBE_PREFIX)
    assert left.get("KeyCount", 0) == 0

    forced = await open_store(moto_env(moto), "true")
    try:
        data = os.urandom(1000)
        sha = hashlib.sha256(data).hexdigest()
        raw = boto3.client("s3", **_boto_args(moto_env(moto)))
        key = staging_key("someone", "upload1", sha)
        claimed = base64.b64encode(bytes.fromhex(sha)).decode()
        raw.put_object(Bucket=BUCKET, Key=key, Body=os.urandom(1000), ChecksumSHA256=claimed)
        assert await forced.accept_upload("someone", sha, 1000, "upload1") == "corrupt"
        raw.put_object(Bucket=BUCKET, Key=key, Body=data, ChecksumSHA256=claimed)
        assert await forced.accept_upload("someone", sha, 1000, "upload1") == "stored"
        assert await forced.read_all("someone", sha) == data
    finally:
        await forced.close()


def _boto_args(env: dict[str, str]) -> dict[str, str]:
    return {
        "endpoint_url": env["S3_ENDPOINT_URL"],
        "aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
        "region_name": env["AWS_REGION"],
    }


def _children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def test_launcher_starts_everything_and_keeps_data(tmp_path: Path) -> None:
    """`coffer-server run` as `make run` uses it: URL printed, Ctrl-C stops all, data kept."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("MONGODB_URL", "REDIS_URL")}
    env.update(COFFER_DATA_DIR=str(tmp_path / "data"), PORT=str(port))

    def start() -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "run"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        assert proc.stdout is not None
        deadline = time.monotonic() + 90
        for line in proc.stdout:
            if f"http://127.0.0.1:{port}" in line:
                return proc
            assert time.monotonic() < deadline, "no URL printed"
        raise AssertionError(f"launcher exited: {proc.wait()}")

    proc = start()
    kids = _children(proc.pid)
    names = " ".join(" ".join(k.cmdline()) for k in kids)
    assert "app.embedded mongo" in names and "redis-server" in names
    assert "app.cli worker" in names and "app.cli web" in names
    user = User(f"http://127.0.0.1:{port}")
    f = user.upload("/kept.txt", b"still here" * 1000)

    # Private to this user: the database answers only on a 0600 Unix socket (no TCP port),
    # Redis wants the password kept in the 0600 conf file, and nothing under the data dir
    # is readable by anyone else.
    data = tmp_path / "data"
    mongo = next(k for k in kids if "app.embedded" in " ".join(k.cmdline()))
    assert not [c for c in mongo.net_connections(kind="inet") if c.status == "LISTEN"]
    assert (data / "run" / "mongo.sock").stat().st_mode & 0o777 == 0o600
    redis_port = next(
        c.laddr.port
        for k in kids
        if "redis-server" in " ".join(k.cmdline())
        for c in k.net_connections(kind="inet")
        if c.status == "LISTEN"
    )
    with socket.create_connection(("127.0.0.1", redis_port)) as s:
        s.sendall(b"PING\r\n")
        assert s.recv(100).startswith(b"-NOAUTH")
    loose = [p for p in data.rglob("*") if p.stat().st_mode & 0o077 and not p.is_symlink()]
    assert not loose, f"readable by others: {loose[:5]}"

    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 0 or proc.returncode in (0, -2, 130)
    time.sleep(0.2)
    assert not [k for k in kids if k.is_running() and k.status() != psutil.STATUS_ZOMBIE]

    proc = start()
    try:
        r = httpx.post(
            f"http://127.0.0.1:{port}/api/auth/token",
            json={"username": user.username, "password": user.password, "device_name": "again"},
        )
        token = r.json()["token"]
        got = httpx.get(
            f"http://127.0.0.1:{port}/api/file/{f['id']}/content",
            headers={"Authorization": f"Bearer {token}"},
        )
        assert got.content == b"still here" * 1000
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
