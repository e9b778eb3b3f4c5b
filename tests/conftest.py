"""Shared fixtures: one real Coffer stack per test session, and helpers to use its API."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import tempfile
from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path

import httpx
import pytest

from app.db import connect
from app.settings import Settings
from tests.stack import SeaweedFS, Stack, start_seaweedfs

_names = itertools.count()


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    # COFFER_TEST_DIR=dir keeps the stack's data and logs there for a post-mortem.
    keep = os.environ.get("COFFER_TEST_DIR")
    with tempfile.TemporaryDirectory(prefix="coffer-test-") as tmp:
        s = Stack(Path(tempfile.mkdtemp(dir=keep) if keep else tmp)).start_all()
        try:
            yield s
        finally:
            s.stop_all()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failing test that used a stack reports the end of each of its processes' logs:
    CI keeps nothing else of a run, and a flaky failure must be explainable from that."""
    report = yield
    stack = getattr(item, "funcargs", {}).get("stack")
    if report.failed and isinstance(stack, Stack):
        for log in sorted((stack.root / "logs").glob("*.log")):
            with contextlib.suppress(OSError):
                tail = log.read_bytes()[-4000:].decode(errors="replace")
                report.sections.append((f"log tail: {log.name}", tail))
    return report


@pytest.fixture(scope="module")
async def db(stack: Stack) -> AsyncIterator[None]:
    """The app's database models bound to the session stack's MongoDB, for tests that
    read or write documents directly."""
    client = await connect(Settings(mongodb_url=stack.env["MONGODB_URL"]))
    yield
    await client.close()


@pytest.fixture(scope="session")
def base_url(stack: Stack) -> str:
    return stack.url()


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """One real S3 server (SeaweedFS) for the session; each test module its own bucket."""
    proc = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
    try:
        yield proc
    finally:
        proc.stop()


def unique_name(prefix: str = "user") -> str:
    return f"{prefix}{os.getpid()}x{next(_names)}"


class User:
    """A registered user with a device token and an HTTP client that sends it."""

    def __init__(
        self, base_url: str, username: str | None = None, password: str = "correct horse"
    ) -> None:
        self.username = username or unique_name()
        self.password = password
        self.base_url = base_url
        r = httpx.post(
            f"{base_url}/api/auth/register", json={"username": self.username, "password": password}
        )
        assert r.status_code == 201, r.text
        self.id = r.json()["id"]
        r = httpx.post(
            f"{base_url}/api/auth/token",
            json={"username": self.username, "password": password, "device_name": "pytest"},
        )
        assert r.status_code == 201, r.text
        self.token = r.json()["token"]
        self.http = httpx.Client(
            base_url=base_url, headers={"Authorization": f"Bearer {self.token}"}, timeout=60
        )

    def upload(self, path: str, data: bytes, chunk_size: int = 64 * 1024, **extra) -> dict:
        """Register, PUT every missing chunk, commit; returns the committed file object."""
        reg = self.register(path, data, chunk_size, **extra)
        assert reg.status_code == 201, reg.text
        body = reg.json()
        for m in body["missing"]:
            start = m["index"] * chunk_size
            put = httpx.put(m["url"], content=data[start : start + m["size"]], headers=m["headers"])
            assert put.status_code in (200, 201), put.text  # S3 answers 200, Coffer 201
        r = self.http.post(
            f"/api/file/{body['file_id']}/commit", json={"upload_id": body["upload_id"]}
        )
        assert r.status_code == 200, r.text
        return r.json()

    def events(self, cursor: int = 0) -> list[dict]:
        """The user's feed after `cursor`, every page, as a device reads it: a page ends
        early at a seq not written yet (a hole the server fills after a moment), and
        `has_more` says to read on."""
        out: list[dict] = []
        while True:
            r = self.http.get("/api/file/events", params={"cursor": cursor, "limit": 1000})
            assert r.status_code == 200, r.text
            body = r.json()
            out += body["events"]
            cursor = body["cursor"]
            if not body["has_more"]:
                return out

    def register(
        self, path: str, data: bytes, chunk_size: int = 64 * 1024, **extra
    ) -> httpx.Response:
        return self.http.post(
            "/api/file", json={"path": path, **manifest(data, chunk_size), **extra}
        )


def manifest(data: bytes, chunk_size: int = 64 * 1024) -> dict:
    chunks = [
        {
            "sha256": hashlib.sha256(data[i : i + chunk_size]).hexdigest(),
            "size": len(data[i : i + chunk_size]),
        }
        for i in range(0, len(data), chunk_size)
    ]
    return {"size": len(data), "chunks": chunks}


def content_hash(data: bytes) -> str:
    """The file's content hash, computed here independently of app/protocol: SHA-256
    over the SHA-256 digests of its 4 MiB blocks, whatever chunks it was sent in."""
    h = hashlib.sha256()
    for i in range(0, len(data), 4 * 1024 * 1024):
        h.update(hashlib.sha256(data[i : i + 4 * 1024 * 1024]).digest())
    return h.hexdigest()


@pytest.fixture
def alice(base_url: str) -> User:
    return User(base_url)


@pytest.fixture
def bob(base_url: str) -> User:
    return User(base_url)
