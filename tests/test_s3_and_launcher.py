"""The S3 blob store against a real S3-protocol server, and the `coffer-server run` launcher."""

from __future__ import annotations

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

from app.cli import free_port
from tests.conftest import User, content_hash, manifest
from tests.stack import Proc, Stack, start_moto

CHUNK = 64 * 1024


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    proc = start_moto(tmp_path_factory.mktemp("moto"))
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def bucket(moto: Proc) -> Any:
    """The test bucket, read directly (to see what is really stored where)."""
    return boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{moto.port}",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name="us-east-1",
    )


@pytest.fixture(scope="module")
def s3_web(stack: Stack, moto: Proc) -> Iterator[str]:
    proc = stack.start_web(
        "web-s3",
        COFFER_BLOB_STORE="s3",
        S3_ENDPOINT_URL=f"http://127.0.0.1:{moto.port}",
        S3_BUCKET="coffer-test",
        AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test",
        AWS_REGION="us-east-1",
        COFFER_DB_NAME="coffer_s3",
    )
    try:
        yield stack.url("web-s3")
    finally:
        proc.stop()


def test_s3_upload_download_and_verification(s3_web: str) -> None:
    user = User(s3_web)
    data = os.urandom(4 * CHUNK + 99)
    reg = user.register("/s3/file.bin", data).json()
    assert len(reg["missing"]) == 5
    assert "X-Amz-Signature" in reg["missing"][0]["url"]  # presigned, straight to S3

    # One chunk gets the wrong bytes: this S3 server takes them (moto checks no signed
    # checksum), the commit's verification does not.
    for m in reg["missing"]:
        body = data[m["index"] * CHUNK :][: m["size"]]
        headers = m["headers"]
        if m["index"] == 2:
            body, headers = os.urandom(m["size"]), {}
        assert httpx.put(m["url"], content=body, headers=headers).status_code == 200
    r = user.http.post(f"/api/file/{reg['file_id']}/commit", json={"upload_id": reg["upload_id"]})
    assert r.status_code == 409 and [m["index"] for m in r.json()["error"]["missing"]] == [2]
    # Resume: only the bad chunk is asked for again.
    again = user.register("/s3/file.bin", data).json()
    assert [m["index"] for m in again["missing"]] == [2]
    httpx.put(
        again["missing"][0]["url"],
        content=data[2 * CHUNK : 3 * CHUNK],
        headers=again["missing"][0]["headers"],
    ).raise_for_status()
    f = user.http.post(
        f"/api/file/{reg['file_id']}/commit", json={"upload_id": reg["upload_id"]}
    ).json()
    assert f["content_hash"] == content_hash(data)

    assert user.http.get(f"/api/file/{f['id']}/content").content == data
    part = user.http.get(
        f"/api/file/{f['id']}/content", headers={"Range": f"bytes={CHUNK - 1}-{CHUNK}"}
    )
    assert part.status_code == 206 and part.content == data[CHUNK - 1 : CHUNK + 1]
    chunk = user.http.get(f"/api/file/{f['id']}").json()["chunks"][1]
    assert httpx.get(chunk["url"]).content == data[CHUNK : 2 * CHUNK]
    assert user.register("/s3/again.bin", data).json()["missing"] == []
    assert httpx.get(f"{s3_web}/readyz").json()["checks"]["blob_store"] == "ok"


def test_s3_an_editor_cannot_overwrite_the_owners_chunks(s3_web: str, bucket: Any) -> None:
    """The review's attack: an editor registers a chunk the owner already stores and PUTs
    garbage to the URL it gets. No PUT URL names a stored chunk any more; staged bytes are
    verified (and the wrong ones thrown away) before anything is copied into place."""
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
    assert httpx.put(m["url"], content=b"garbage " * 9).status_code == 200  # moto takes it

    def owner_copy_intact() -> None:
        got = owner.http.get(f"/api/file/{private['id']}/content")
        assert got.status_code == 200 and got.content == secret

    owner_copy_intact()
    commit = editor.http.post(
        f"/api/file/{reg['file_id']}/commit", json={"upload_id": reg["upload_id"]}
    )
    assert commit.status_code == 409 and commit.json()["error"]["code"] == "missing_chunks"
    owner_copy_intact()
    staged = bucket.list_objects_v2(Bucket="coffer-test", Prefix=f"incoming/{owner.id}/")
    assert staged.get("KeyCount", 0) == 0  # the garbage was thrown away

    # 20 MB sent to a URL registered for 100 bytes: never stored, never counted.
    small = os.urandom(100)
    reg = editor.http.post(
        "/api/file", json={"parent_id": folder["id"], "name": "small.bin", **manifest(small)}
    ).json()
    used = owner.http.get("/api/me").json()["usage_bytes"]
    httpx.put(reg["missing"][0]["url"], content=os.urandom(20 * 1024 * 1024))
    commit = editor.http.post(
        f"/api/file/{reg['file_id']}/commit", json={"upload_id": reg["upload_id"]}
    )
    assert commit.status_code == 409
    assert owner.http.get("/api/me").json()["usage_bytes"] == used
    staged = bucket.list_objects_v2(Bucket="coffer-test", Prefix=f"incoming/{owner.id}/")
    assert staged.get("KeyCount", 0) == 0

    # Sent properly, the same upload works, and the owner's copy is untouched.
    m = commit.json()["error"]["missing"][0]
    assert httpx.put(m["url"], content=small, headers=m["headers"]).status_code == 200
    done = editor.http.post(
        f"/api/file/{reg['file_id']}/commit", json={"upload_id": reg["upload_id"]}
    )
    assert done.status_code == 200, done.text
    assert editor.http.get(f"/api/file/{reg['file_id']}/content").content == small
    owner_copy_intact()


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
