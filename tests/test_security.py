"""Regression tests for the security review (one per finding), against real processes.

Each test reproduces what an attacker did, with plain HTTP requests, and asserts the
attack now fails while the legitimate use next to it still works.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from pymongo import MongoClient
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from tests.conftest import User, manifest
from tests.stack import Stack
from tests.test_client import Device


def share(owner: User, file_id: str, username: str, role: str) -> None:
    r = owner.http.post(f"/api/file/{file_id}/share", json={"username": username, "role": role})
    assert r.status_code == 201, r.text


def test_a_nested_editor_grant_cannot_take_a_folder_out_of_its_viewer_parent(
    alice: User, bob: User
) -> None:
    """Viewer on /A, editor on /A/Sub: bob may work inside Sub, but not rename, move or
    delete Sub itself (that changes /A, where he is a viewer)."""
    a = alice.http.post("/api/folder", json={"path": "/A"}).json()
    sub = alice.http.post("/api/folder", json={"path": "/A/Sub"}).json()
    alice.upload("/A/Sub/keep.txt", b"keep me")
    elsewhere = alice.http.post("/api/folder", json={"path": "/Elsewhere"}).json()
    share(alice, a["id"], bob.username, "viewer")
    share(alice, sub["id"], bob.username, "editor")
    share(alice, elsewhere["id"], bob.username, "editor")

    rename = bob.http.patch(f"/api/file/{sub['id']}", json={"name": "Stolen"})
    assert rename.status_code == 403, rename.text
    move = bob.http.patch(f"/api/file/{sub['id']}", json={"parent_id": elsewhere["id"]})
    assert move.status_code == 403, move.text
    assert bob.http.delete(f"/api/file/{sub['id']}").status_code == 403
    listing = alice.http.get("/api/file", params={"path": "/A"}).json()["items"]
    assert [i["name"] for i in listing] == ["Sub"]

    # Inside Sub his editor role works as before.
    reg = bob.http.post(
        "/api/file", json={"parent_id": sub["id"], "name": "new.txt", **manifest(b"hi")}
    )
    assert reg.status_code == 201, reg.text
    inner = alice.http.get("/api/file", params={"path": "/A/Sub"}).json()["items"]
    keep = next(i for i in inner if i["name"] == "keep.txt")
    assert bob.http.patch(f"/api/file/{keep['id']}", json={"name": "kept.txt"}).status_code == 200


# ------------------------------------------------------------------ helpers


def at_once(
    base_url: str, count: int, request: Callable[[int, httpx.Client], httpx.Response]
) -> list[int]:
    """Send `count` requests truly at once: each on its own connection, opened beforehand,
    all released together by a barrier."""
    barrier = threading.Barrier(count)
    statuses: list[int] = [0] * count

    def run(i: int) -> None:
        with httpx.Client(base_url=base_url, timeout=60) as client:
            client.get("/healthz")  # the connection is open before the barrier
            barrier.wait()
            statuses[i] = request(i, client).status_code

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return statuses


@pytest.fixture
def mongo(stack: Stack) -> Iterator[MongoClient]:
    with MongoClient(stack.env["MONGODB_URL"]) as client:
        yield client


@pytest.fixture
def no_link_throttle(mongo: MongoClient) -> Iterator[None]:
    """Link-password throttles count per address, and every test comes from 127.0.0.1."""
    mongo.coffer.rate_limits.delete_many({"_id": {"$regex": "^linkpw:"}})
    yield
    mongo.coffer.rate_limits.delete_many({"_id": {"$regex": "^linkpw:"}})


# ------------------------------------------------- 3: throttles under concurrency


def test_forty_concurrent_password_guesses_get_at_most_ten_tries(base_url: str) -> None:
    victim = User(base_url)

    def guess(i: int, client: httpx.Client) -> httpx.Response:
        password = victim.password if i == 0 else f"wrong guess {i}"
        return client.post(
            "/api/auth/token",
            json={"username": victim.username, "password": password, "device_name": "x"},
        )

    statuses = at_once(base_url, 41, guess)
    tried = [s for s in statuses if s in (201, 401)]
    assert len(tried) <= 10, statuses
    assert set(statuses) <= {201, 401, 429}, statuses
    assert statuses.count(429) >= 31
    # The window stays closed: the right password now gets 429 too.
    late = httpx.post(
        f"{base_url}/api/auth/token",
        json={"username": victim.username, "password": victim.password, "device_name": "x"},
    )
    assert late.status_code == 429 and int(late.headers["retry-after"]) > 0


def test_guesses_just_before_a_new_window_still_lock_the_login(
    base_url: str, mongo: MongoClient
) -> None:
    """Wrong guesses counted in the 15-minute window that just ended still count in this
    one, for the part of it the last 15 minutes still cover: the new window does not open
    at zero. Planted as many as weigh 41 guesses now (as a burst of 41 in the last second
    before the boundary would, right after it)."""
    victim = User(base_url)
    window = 15 * 60
    if time.time() % window > window - 5:
        time.sleep(6)  # not across a boundary between planting and trying
    now = time.time()
    ended, elapsed = int(now // window) - 1, now % window
    planted = int(41 / (1 - elapsed / window)) + 1
    mongo.coffer.rate_limits.insert_one(
        {"_id": f"login:127.0.0.1:{victim.username.casefold()}:{ended}", "attempts": planted}
    )
    r = httpx.post(
        f"{base_url}/api/auth/token",
        json={"username": victim.username, "password": victim.password, "device_name": "x"},
    )
    assert r.status_code == 429, r.text
    assert int(r.headers["retry-after"]) > 0


def test_thirty_concurrent_link_password_guesses_get_at_most_five_tries(
    alice: User, base_url: str, no_link_throttle: None
) -> None:
    f = alice.upload("/linked.txt", b"behind a password")
    token = alice.http.post(f"/api/file/{f['id']}/links", json={"password": "open sesame"}).json()[
        "token"
    ]

    def guess(i: int, client: httpx.Client) -> httpx.Response:
        return client.post(f"/s/{token}", data={"password": f"guess {i}"})

    statuses = at_once(base_url, 30, guess)
    assert statuses.count(401) <= 5, statuses
    assert set(statuses) <= {401, 429}, statuses
    right = httpx.post(f"{base_url}/s/{token}", data={"password": "open sesame"})
    assert right.status_code == 429


def test_a_right_password_gives_its_try_back(base_url: str) -> None:
    """Someone who logs in correctly twenty times is never locked out by it."""
    user = User(base_url)
    for _ in range(20):
        r = httpx.post(
            f"{base_url}/api/auth/login",
            json={"username": user.username, "password": user.password},
        )
        assert r.status_code == 200, r.text


# ------------------------------------------------------------ 4: quota at commit


def test_uploads_registered_together_cannot_overshoot_the_quota(
    alice: User, bob: User, mongo: MongoClient
) -> None:
    mongo.coffer.users.update_one(
        {"username": alice.username}, {"$set": {"quota_bytes": 5_000_000}}
    )
    size = 4_000_000
    regs = []
    for i in range(4):
        data = os.urandom(size)
        reg = alice.register(f"/q/{i}.bin", data, chunk_size=size).json()
        for m in reg["missing"]:
            assert httpx.put(m["url"], content=data).status_code == 201
        regs.append(reg)

    def commit(i: int, client: httpx.Client) -> httpx.Response:
        return client.post(
            f"/api/file/{regs[i]['file_id']}/commit",
            json={"upload_id": regs[i]["upload_id"]},
            headers={"Authorization": f"Bearer {alice.token}"},
        )

    statuses = at_once(alice.base_url, 4, commit)
    assert sorted(statuses) == [200, 507, 507, 507], statuses
    me = alice.http.get("/api/me").json()
    assert me["usage_bytes"] == size <= me["quota_bytes"]

    # An editor fills the owner's quota the same way: refused at commit.
    folder = alice.http.post("/api/folder", json={"path": "/drop"}).json()
    share(alice, folder["id"], bob.username, "editor")
    data = os.urandom(2_000_000)
    reg = bob.http.post(
        "/api/file",
        json={"parent_id": folder["id"], "name": "big.bin", **manifest(data, 2_000_000)},
    )
    # Registration already refuses what cannot fit.
    assert reg.status_code == 507 and "owner" in reg.json()["error"]["message"]
    assert alice.http.get("/api/me").json()["usage_bytes"] == size


# --------------------------------------------------- 5: login CSRF via the JSON API


def test_cross_site_or_non_json_logins_are_refused(base_url: str) -> None:
    user = User(base_url)
    body = json.dumps({"username": user.username, "password": user.password})
    for path in ("/api/auth/login", "/api/auth/register"):
        forged = httpx.post(
            base_url + path,
            content=body,
            headers={
                "Content-Type": "text/plain",
                "Origin": "https://evil.example",
                "Sec-Fetch-Site": "cross-site",
            },
        )
        assert forged.status_code == 403, forged.text
        assert forged.json()["error"]["code"] == "cross_site"
        assert "set-cookie" not in forged.headers
        plain = httpx.post(base_url + path, content=body, headers={"Content-Type": "text/plain"})
        assert plain.status_code == 415 and "set-cookie" not in plain.headers
    ok = httpx.post(
        f"{base_url}/api/auth/login", json={"username": user.username, "password": user.password}
    )
    assert ok.status_code == 200 and "coffer_session" in ok.cookies


# -------------------------------------------------------- 6: devices and sessions


def login_session(base_url: str, user: User, password: str | None = None) -> httpx.Client:
    client = httpx.Client(base_url=base_url, timeout=30)
    r = client.post(
        "/api/auth/login", json={"username": user.username, "password": password or user.password}
    )
    assert r.status_code == 200, r.text
    client.headers["X-CSRF-Token"] = r.json()["csrf_token"]
    return client


def token_client(base_url: str, user: User, name: str) -> httpx.Client:
    r = httpx.post(
        f"{base_url}/api/auth/token",
        json={"username": user.username, "password": user.password, "device_name": name},
    )
    assert r.status_code == 201, r.text
    return httpx.Client(
        base_url=base_url, headers={"Authorization": f"Bearer {r.json()['token']}"}, timeout=30
    )


def test_a_lost_device_can_be_cut_off_and_a_password_change_ends_every_other_session(
    base_url: str, alice: User, bob: User, tmp_path: Path
) -> None:
    laptop = token_client(base_url, alice, "laptop")
    browser = login_session(base_url, alice)
    items = alice.http.get("/api/devices").json()["items"]
    assert sorted((d["kind"], d["name"]) for d in items) == [
        ("session", "Browser"),
        ("token", "laptop"),
        ("token", "pytest"),
    ]
    mine = next(d for d in items if d["current"])
    assert mine["name"] == "pytest" and mine["address"] == "127.0.0.1" and mine["last_used_at"]

    def last_use(device: dict) -> datetime:
        return datetime.fromisoformat(device["last_used_at"] or device["created_at"])

    assert [last_use(d) for d in items] == sorted(map(last_use, items), reverse=True)
    lost = next(d for d in items if d["name"] == "laptop")

    # Ids are not secrets: someone else's device id is simply not found.
    assert bob.http.delete(f"/api/devices/{lost['id']}").status_code == 404
    assert laptop.get("/api/me").status_code == 200
    assert alice.http.delete(f"/api/devices/{lost['id']}").status_code == 204
    assert laptop.get("/api/me").status_code == 401

    # The CLI shows and revokes the same list.
    device = Device(tmp_path, "phone", base_url, alice)
    listed = device.run("devices")
    assert listed.returncode == 0 and "phone" in listed.stdout and "(this device)" in listed.stdout
    session_id = next(
        d["id"] for d in alice.http.get("/api/devices").json()["items"] if d["kind"] == "session"
    )
    assert device.run("devices", "revoke", session_id).returncode == 0
    assert browser.get("/api/me").status_code == 401
    assert device.run("devices", "revoke", "nonexistent").returncode == 1

    # A password change checks the current one and ends everything else.
    wrong = alice.http.post(
        "/api/auth/password", json={"current_password": "nope nope", "new_password": "n3w secret!"}
    )
    assert wrong.status_code == 401
    changed = alice.http.post(
        "/api/auth/password",
        json={"current_password": alice.password, "new_password": "n3w secret!"},
    )
    assert changed.status_code == 200 and changed.json()["revoked"] == 1  # the CLI's token
    assert device.run("ls").returncode == 3  # "run coffer login again"
    assert alice.http.get("/api/me").status_code == 200  # the device that changed it
    old = httpx.post(
        f"{base_url}/api/auth/login", json={"username": alice.username, "password": alice.password}
    )
    assert old.status_code == 401
    assert login_session(base_url, alice, "n3w secret!").get("/api/me").status_code == 200
    others = alice.http.post("/api/devices/revoke-others")
    assert others.status_code == 200 and others.json()["revoked"] == 1
    assert [d["current"] for d in alice.http.get("/api/devices").json()["items"]] == [True]


# ------------------------------------------- 7: revocation ends open connections


def test_revoking_a_token_closes_its_websocket_and_ends_its_long_poll(
    stack: Stack, base_url: str, alice: User
) -> None:
    if "web2" not in stack.procs:
        stack.start_web("web2")
    other = stack.url("web2")
    phone = token_client(base_url, alice, "phone")
    token = phone.headers["Authorization"]
    # The socket is on another web instance than the revoke: the notice crosses Redis.
    with ws_connect(
        other.replace("http://", "ws://") + "/api/ws?cursor=latest",
        additional_headers={"Authorization": token},
    ) as ws:
        started = time.monotonic()
        assert phone.delete("/api/auth/token").status_code == 204
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
        assert time.monotonic() - started < 5

    laptop = token_client(other, alice, "laptop")
    laptop_id = next(
        d["id"] for d in alice.http.get("/api/devices").json()["items"] if d["name"] == "laptop"
    )
    result: dict[str, object] = {}

    def long_poll() -> None:
        started = time.monotonic()
        r = laptop.get("/api/file/events", params={"cursor": "0", "wait": 50, "limit": 1})
        while r.status_code == 200 and r.json()["events"]:  # read up to the end first
            cursor = r.json()["cursor"]
            started = time.monotonic()
            r = laptop.get("/api/file/events", params={"cursor": cursor, "wait": 50})
        result["status"], result["seconds"] = r.status_code, time.monotonic() - started

    poller = threading.Thread(target=long_poll)
    poller.start()
    time.sleep(1.0)  # let it reach the end of the feed and wait
    assert alice.http.delete(f"/api/devices/{laptop_id}").status_code == 204
    poller.join(timeout=20)
    assert result["status"] == 401 and float(result["seconds"]) < 10  # type: ignore[arg-type]


# ------------------------------------------- 8: chunk read URLs after revoke/purge


def chunk_url(user: User, file_id: str) -> str:
    r = user.http.get(f"/api/file/{file_id}")
    assert r.status_code == 200, r.text
    return r.json()["chunks"][0]["url"]


def test_chunk_read_urls_are_short_lived_and_die_on_revoke_and_purge(
    alice: User, bob: User
) -> None:
    folder = alice.http.post("/api/folder", json={"path": "/urls"}).json()
    f = alice.upload("/urls/doc.bin", b"chunk bytes " * 100)
    url = chunk_url(alice, f["id"])
    exp = int(parse_qs(urlsplit(url).query)["exp"][0])
    assert exp - time.time() <= 300 + 5

    share(alice, folder["id"], bob.username, "viewer")
    bobs = chunk_url(bob, f["id"])
    assert httpx.get(bobs).status_code == 200
    assert alice.http.delete(f"/api/file/{folder['id']}/share/{bob.username}").status_code == 204
    assert httpx.get(bobs).status_code == 403

    url = chunk_url(alice, f["id"])
    assert httpx.get(url).status_code == 200
    assert alice.http.delete(f"/api/file/{folder['id']}").status_code == 204
    assert alice.http.delete(f"/api/trash/{folder['id']}").status_code == 204
    gone = httpx.get(url)
    assert gone.status_code == 403 and b"chunk bytes" not in gone.content


# ------------------------------------------------------ 9: view-only link previews


def test_a_view_only_link_shows_a_preview_but_never_the_whole_file(
    alice: User, base_url: str
) -> None:
    text = b"".join(b"line %06d of a long report\n" % i for i in range(40_000))  # 1.1 MB
    f = alice.upload("/view/report.txt", text)
    binary = alice.upload("/view/data.bin", os.urandom(100_000))
    tokens = [
        alice.http.post(f"/api/file/{x['id']}/links", json={"allow_download": False}).json()[
            "token"
        ]
        for x in (f, binary)
    ]
    visitor = httpx.Client(base_url=base_url, timeout=30)
    assert visitor.get(f"/s/{tokens[0]}/download").status_code == 403
    preview = visitor.get(f"/s/{tokens[0]}/preview")
    assert preview.status_code == 200
    assert preview.content == text[: 256 * 1024] and len(preview.content) < len(text)
    assert preview.headers["cache-control"] == "private, no-store"
    # A Range request does not reach past the cut either.
    tail = visitor.get(f"/s/{tokens[0]}/preview", headers={"Range": f"bytes={len(text) - 100}-"})
    assert tail.content == text[: 256 * 1024]
    assert visitor.get(f"/s/{tokens[1]}/preview").status_code == 415
    assert visitor.get(f"/s/{tokens[1]}/download").status_code == 403


# ---------------------------------------------------------- 10: forged logouts


def test_a_cross_site_logout_without_the_token_signs_nobody_out(base_url: str) -> None:
    user = User(base_url)
    browser = login_session(base_url, user)
    forged = browser.post(
        "/logout",
        data={},
        headers={"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"},
    )
    assert forged.status_code == 403
    assert 'coffer_session=""' not in forged.headers.get("set-cookie", "")
    assert browser.get("/api/me").status_code == 200
    no_token = browser.post("/logout", data={"csrf": "wrong"})
    assert no_token.status_code == 403 and browser.get("/api/me").status_code == 200
    csrf = browser.headers["X-CSRF-Token"]
    out = browser.post("/logout", data={"csrf": csrf})
    assert out.status_code in (302, 303) and out.headers["location"] == "/login"
    assert browser.get("/api/me").status_code == 401


# ---------------------------------------------------------------- hardening


def test_pages_send_a_strict_content_security_policy(base_url: str) -> None:
    user = User(base_url)
    browser = login_session(base_url, user)
    for path in ("/login", "/files", "/devices"):
        r = browser.get(path) if path != "/login" else httpx.get(base_url + path)
        assert r.status_code == 200, path
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'self'" in csp
        assert "unsafe-inline" not in csp
        assert r.headers["x-frame-options"] == "SAMEORIGIN"
        assert "<script>" not in r.text and " style=" not in r.text


def test_a_flood_of_logins_is_shed_with_503_instead_of_queued(stack: Stack) -> None:
    """argon2 has its own small pool; past it, logins are refused at once (and say when
    to come back), so they cannot pile up in front of transfers."""
    stack.start_web("web-argon2", COFFER_PASSWORD_HASH_WORKERS="1", COFFER_PASSWORD_HASH_QUEUE="1")
    base = stack.url("web-argon2")
    users = [User(base) for _ in range(2)]

    def login(i: int, client: httpx.Client) -> httpx.Response:
        u = users[i % 2]
        return client.post("/api/auth/login", json={"username": u.username, "password": u.password})

    try:
        statuses = at_once(base, 16, login)
    finally:
        stack.procs["web-argon2"].stop()
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.count(503) >= 1 and statuses.count(200) >= 1, statuses
