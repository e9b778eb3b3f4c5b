"""Public links: password, expiry, view-only, revoke, counters, folder confinement, logs."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from pymongo import MongoClient

from tests.conftest import User
from tests.stack import Stack


@pytest.fixture
def fresh_throttle(stack: Stack) -> Iterator[None]:
    """Every test here comes from 127.0.0.1: start and end with no failed attempts."""

    def clear() -> None:
        with MongoClient(stack.env["MONGODB_URL"]) as mongo:
            mongo.coffer.rate_limits.delete_many({"_id": {"$regex": "^linkpw:"}})

    clear()
    yield
    clear()


def link(owner: User, file_id: str, **body) -> dict:
    r = owner.http.post(f"/api/file/{file_id}/links", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def anonymous(base_url: str) -> httpx.Client:
    return httpx.Client(base_url=base_url, follow_redirects=False, timeout=30)


def test_password_link_to_a_file(alice: User, base_url: str, fresh_throttle: None) -> None:
    data = b"%PDF-1.4 quarterly report " * 4000
    f = alice.upload("/reports/q3.pdf", data)
    expires = (datetime.now(UTC) + timedelta(days=7)).isoformat().replace("+00:00", "Z")
    created = link(alice, f["id"], password="open sesame", expires_at=expires, allow_download=True)
    token = created["token"]
    assert created["url"].endswith(f"/s/{token}") and created["allow_download"] is True
    assert created["expires_at"].startswith(expires[:19])
    assert len(token) >= 43 and re.fullmatch(r"[A-Za-z0-9_-]+", token)

    visitor = anonymous(base_url)
    page = visitor.get(f"/s/{token}")
    assert page.status_code == 200 and 'type="password"' in page.text and "q3.pdf" not in page.text
    assert visitor.get(f"/s/{token}/download").status_code == 401
    wrong = visitor.post(f"/s/{token}", data={"password": "guess"})
    assert wrong.status_code == 401 and "not right" in wrong.text
    right = visitor.post(f"/s/{token}", data={"password": "open sesame"})
    assert right.status_code == 303 and right.headers["location"] == f"/s/{token}"
    assert "httponly" in right.headers["set-cookie"].lower()
    page = visitor.get(f"/s/{token}")
    assert page.status_code == 200 and "q3.pdf" in page.text and "Download" in page.text
    body = visitor.get(f"/s/{token}/download")
    assert body.status_code == 200
    assert hashlib.sha256(body.content).digest() == hashlib.sha256(data).digest()
    assert "q3.pdf" in body.headers["content-disposition"]
    part = visitor.get(f"/s/{token}/download", headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == data[100:200]
    preview = visitor.get(f"/s/{token}/preview")
    assert preview.status_code == 200 and preview.headers["content-type"] == "application/pdf"
    assert preview.headers["content-disposition"].startswith("inline")
    # Another browser without the cookie is asked again.
    assert anonymous(base_url).get(f"/s/{token}/download").status_code == 401

    listed = alice.http.get(f"/api/file/{f['id']}/links").json()["items"]
    assert [(k["token"], k["has_password"], k["views"], k["downloads"]) for k in listed] == [
        (token, True, 1, 1)
    ]
    # Revoked: 410 on the next request, for the page and the bytes.
    assert alice.http.delete(f"/api/links/{token}").status_code == 204
    assert visitor.get(f"/s/{token}").status_code == 410
    assert "turned this link off" in visitor.get(f"/s/{token}").text
    assert visitor.get(f"/s/{token}/download").status_code == 410
    assert alice.http.get(f"/api/file/{f['id']}/links").json()["items"] == []


def test_expired_view_only_and_unknown_links(alice: User, base_url: str, stack: Stack) -> None:
    f = alice.upload("/notes.txt", b"<script>alert(1)</script> hello")
    view_only = link(alice, f["id"], allow_download=False)
    visitor = anonymous(base_url)
    page = visitor.get(f"/s/{view_only['token']}")
    assert page.status_code == 200 and "view only" in page.text and 'id="download"' not in page.text
    assert visitor.get(f"/s/{view_only['token']}/download").status_code == 403
    preview = visitor.get(f"/s/{view_only['token']}/preview")
    # Text is shown as text, in a sandbox: never rendered as HTML in our origin.
    assert preview.status_code == 200
    assert preview.headers["content-type"].startswith("text/plain")
    assert "sandbox" in preview.headers["content-security-policy"]

    soon = link(
        alice,
        f["id"],
        expires_at=(datetime.now(UTC) + timedelta(hours=1)).isoformat(),
    )
    assert visitor.get(f"/s/{soon['token']}").status_code == 200
    with MongoClient(stack.env["MONGODB_URL"]) as mongo:
        mongo.coffer.share_links.update_one(
            {"token_hash": hashlib.sha256(soon["token"].encode()).hexdigest()},
            {"$set": {"expires_at": datetime.now(UTC) - timedelta(seconds=1)}},
        )
    expired = visitor.get(f"/s/{soon['token']}")
    assert expired.status_code == 410 and "expired" in expired.text
    assert visitor.get(f"/s/{soon['token']}/download").status_code == 410

    assert visitor.get("/s/" + "A" * 43).status_code == 404
    past = alice.http.post(
        f"/api/file/{f['id']}/links", json={"expires_at": "2001-01-01T00:00:00Z"}
    )
    assert past.status_code == 400
    assert (
        alice.http.post(f"/api/file/{f['id']}/links", json={"expires_at": "soon"}).status_code
        == 400
    )
    # Deleting the file takes its links down too.
    alice.http.delete(f"/api/file/{f['id']}")
    assert visitor.get(f"/s/{view_only['token']}").status_code == 410


def test_folder_link_never_exposes_anything_outside(alice: User, base_url: str) -> None:
    alice.upload("/Album/a.jpg", b"\xff\xd8 image a")
    alice.upload("/Album/2024/b.txt", b"bee")
    alice.upload("/Private/secret.txt", b"top secret")
    alice.upload("/Albumx/sibling.txt", b"sibling")
    album = next(
        i
        for i in alice.http.get("/api/file", params={"path": "/"}).json()["items"]
        if i["name"] == "Album"
    )
    token = link(alice, album["id"])["token"]
    visitor = anonymous(base_url)
    page = visitor.get(f"/s/{token}")
    assert page.status_code == 200 and "a.jpg" in page.text and "2024" in page.text
    assert "Private" not in page.text
    sub = visitor.get(f"/s/{token}", params={"path": "2024"})
    assert sub.status_code == 200 and "b.txt" in sub.text
    assert visitor.get(f"/s/{token}/download", params={"path": "2024/b.txt"}).content == b"bee"
    assert visitor.get(f"/s/{token}/download", params={"path": "/2024/b.txt"}).content == b"bee"
    for escape in [
        "../Private/secret.txt",
        "../../Private/secret.txt",
        "2024/../../Private/secret.txt",
        "..%2FPrivate%2Fsecret.txt",
        "/Private/secret.txt",
        "Private/secret.txt",
        "../Albumx/sibling.txt",
        "x\x00y",
        "..\\Private\\secret.txt",
    ]:
        for route in ("", "/download", "/preview"):
            r = visitor.get(f"/s/{token}{route}", params={"path": escape})
            assert r.status_code in (400, 404), (escape, route, r.status_code)
            assert b"top secret" not in r.content and b"sibling" not in r.content
    # A folder itself cannot be downloaded as bytes.
    assert visitor.get(f"/s/{token}/download").status_code == 400


def test_five_wrong_passwords_block_the_address(
    alice: User, base_url: str, fresh_throttle: None
) -> None:
    f = alice.upload("/locked.txt", b"locked")
    token = link(alice, f["id"], password="right one")["token"]
    visitor = anonymous(base_url)
    for _ in range(5):
        assert visitor.post(f"/s/{token}", data={"password": "wrong"}).status_code == 401
    blocked = visitor.post(f"/s/{token}", data={"password": "right one"})
    assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) > 0
    assert "Too many" in blocked.text


def test_link_tokens_are_unguessable_and_never_logged(
    alice: User, base_url: str, stack: Stack
) -> None:
    f = alice.upload("/logged.txt", b"log me not")
    tokens = {link(alice, f["id"])["token"] for _ in range(50)}
    assert len(tokens) == 50
    visitor = anonymous(base_url)
    for token in list(tokens)[:5]:
        visitor.get(f"/s/{token}")
        visitor.get(f"/s/{token}/download")
        alice.http.delete(f"/api/links/{token}")
        visitor.get(f"/s/{token}")
    with MongoClient(stack.env["MONGODB_URL"]) as mongo:
        stored = list(mongo.coffer.share_links.find({"file_id": f["id"]}))
    assert stored and all(doc["token_hash"] not in tokens for doc in stored)
    dump = str(stored)
    logs = "".join(p.read_text(errors="replace") for p in (stack.root / "logs").glob("*.log"))
    for token in tokens:
        assert token not in logs and token not in dump
