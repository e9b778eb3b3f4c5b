"""Overload answers: a busy web instance says 503 + Retry-After instead of hanging, and an
unreachable database is a 503 to retry, never a 500."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.stack import Stack


@pytest.fixture
def tight_stack(tmp_path: Path) -> Iterator[Stack]:
    """Mongo and one web instance admitting two requests at once, waiting 0.3 s for more."""
    stack = Stack(tmp_path / "tight")
    try:
        stack.start_mongo()
        stack.start_web(COFFER_MAX_INFLIGHT_REQUESTS="2", COFFER_INFLIGHT_WAIT_SECONDS="0.3")
        yield stack
    finally:
        stack.stop_all()


def half_sent_request(port: int) -> socket.socket:
    """A request whose body never comes: the server works on it (holds a place) until
    the connection closes."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        b"POST /api/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n{"
    )
    return sock


def test_a_busy_instance_answers_503_with_retry_after(tight_stack: Stack) -> None:
    base = tight_stack.url()
    port = tight_stack.procs["web"].port
    assert port is not None
    assert httpx.get(f"{base}/api/me").status_code == 401  # admitted, and answered
    held = [half_sent_request(port) for _ in range(2)]
    try:
        # Once the server has taken both (it answers nothing to them meanwhile), the next
        # request is refused.
        deadline = time.monotonic() + 10
        while True:
            start = time.monotonic()
            r = httpx.get(f"{base}/api/me", timeout=10)
            if r.status_code != 401 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "overloaded" and r.headers["Retry-After"] == "2"
        assert time.monotonic() - start < 5  # refused after the short wait, not a hang
        # Health checks and long-polls are not counted: a balancer still sees it alive.
        assert httpx.get(f"{base}/healthz").status_code == 200
        assert httpx.get(f"{base}/api/file/events?wait=1").status_code == 401
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 10
    while httpx.get(f"{base}/api/me").status_code != 401:  # places given back
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_an_unreachable_database_is_a_503_to_retry(tight_stack: Stack) -> None:
    base = tight_stack.url()
    r = httpx.post(f"{base}/api/auth/register", json={"username": "dbdown", "password": "x" * 12})
    assert r.status_code == 201, r.text
    tight_stack.procs["mongo"].kill9()
    r = httpx.post(
        f"{base}/api/auth/token",
        json={"username": "dbdown", "password": "x" * 12, "device_name": "t"},
        timeout=30,
    )
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "database_unavailable" and "Retry-After" in r.headers
