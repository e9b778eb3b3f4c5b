"""File requests (upload-only links): anyone with the link adds files to a folder, sees none.

Each test makes its own link, and the throttle counts per link and address, so the tests
(all from 127.0.0.1) do not throttle one another.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from datetime import UTC, datetime, timedelta

import httpx
from pymongo import MongoClient

from tests.conftest import User, content_hash
from tests.stack import Stack

MIB = 1024 * 1024


def make_folder(owner: User, path: str) -> dict:
    r = owner.http.post("/api/folder", json={"path": path})
    assert r.status_code == 201, r.text
    return r.json()


def file_request(owner: User, folder_id: str, **body: object) -> dict:
    r = owner.http.post(f"/api/file/{folder_id}/links", json={"upload_only": True, **body})
    assert r.status_code == 201, r.text
    return r.json()


def visitor(base_url: str) -> httpx.Client:
    return httpx.Client(base_url=base_url, follow_redirects=False, timeout=60)


def send(
    client: httpx.Client, token: str, name: str, data: bytes, who: str = "Carol", **headers: str
) -> httpx.Response:
    return client.post(
        f"/s/{token}/upload", params={"name": name, "from": who}, content=data, headers=headers
    )


def names_in(owner: User, path: str) -> dict[str, dict]:
    r = owner.http.get("/api/file", params={"path": path})
    assert r.status_code == 200, r.text
    return {item["name"]: item for item in r.json()["items"]}


def usage(owner: User) -> int:
    return owner.http.get("/api/me").json()["usage_bytes"]


def mongo(stack: Stack) -> MongoClient:
    return MongoClient(stack.env["MONGODB_URL"])


def test_only_the_owner_of_a_folder_makes_a_file_request(alice: User, bob: User) -> None:
    folder = make_folder(alice, "/Inbox")
    made = file_request(alice, folder["id"], max_bytes=5_000_000)
    assert made["upload_only"] is True and made["max_bytes"] == 5_000_000
    assert made["allow_download"] is False  # nothing can be read through it
    listed = alice.http.get(f"/api/file/{folder['id']}/links").json()["items"]
    assert [(k["token"], k["upload_only"], k["max_bytes"]) for k in listed] == [
        (made["token"], True, 5_000_000)
    ]
    # An ordinary link still says it is not upload-only.
    plain = alice.http.post(f"/api/file/{folder['id']}/links", json={}).json()
    assert plain["upload_only"] is False and plain["max_bytes"] is None

    f = alice.upload("/Inbox/a.txt", b"a file")
    on_file = alice.http.post(f"/api/file/{f['id']}/links", json={"upload_only": True})
    assert on_file.status_code == 400 and on_file.json()["error"]["code"] == "not_a_folder"
    by_bob = bob.http.post(f"/api/file/{folder['id']}/links", json={"upload_only": True})
    assert by_bob.status_code == 404
    for bad in ({"max_bytes": 0}, {"max_bytes": -5}, {"upload_only": False, "max_bytes": 10}):
        r = alice.http.post(f"/api/file/{folder['id']}/links", json={"upload_only": True, **bad})
        assert r.status_code == 400, (bad, r.text)


def test_an_anonymous_upload_lands_in_the_folder_with_its_bytes_and_uploader(
    alice: User, base_url: str
) -> None:
    folder = make_folder(alice, "/Requests")
    token = file_request(alice, folder["id"])["token"]
    start = alice.http.get("/api/file/events", params={"cursor": "latest"}).json()["cursor"]
    data = os.urandom(9 * MIB + 12345)  # three 4 MiB blocks: chunked like any upload

    with visitor(base_url) as anon:
        page = anon.get(f"/s/{token}")
        assert page.status_code == 200 and 'id="request-form"' in page.text
        assert "/static/js/file-request.js" in page.text
        r = send(anon, token, "photo.raw", data, who="Carol Jones")
    assert r.status_code == 201, r.text
    assert r.json() == {"status": "received", "size": len(data)}  # no name, no listing

    item = names_in(alice, "/Requests")["photo.raw"]
    assert item["size"] == len(data) and item["content_hash"] == content_hash(data)
    body = alice.http.get(f"/api/file/{item['id']}/content")
    assert hashlib.sha256(body.content).hexdigest() == hashlib.sha256(data).hexdigest()
    versions = alice.http.get(f"/api/file/{item['id']}/versions").json()
    assert [v["author_device"] for v in versions] == ["file request: Carol Jones"]

    events = alice.http.get("/api/file/events", params={"cursor": start}).json()["events"]
    created = [e for e in events if e["type"] == "file.created" and e["path"].endswith("photo.raw")]
    assert [(e["path"], e["actor"]) for e in created] == [
        ("/Requests/photo.raw", "Carol Jones (file request)")
    ]


def test_the_uploaders_name_is_cleaned_and_limited(alice: User, base_url: str) -> None:
    folder = make_folder(alice, "/Named")
    token = file_request(alice, folder["id"])["token"]
    with visitor(base_url) as anon:
        ok = send(anon, token, "a.txt", b"a", who="  Eve\u202e\x1b[31m\n  Adams\x00 ")
        assert ok.status_code == 201, ok.text
        for who, code in (
            ("", "name_required"),
            (" \t\n", "name_required"),
            ("x" * 101, "name_too_long"),
        ):
            r = send(anon, token, "b.txt", b"b", who=who)
            assert r.status_code == 400 and r.json()["error"]["code"] == code, (who, r.text)
        missing = anon.post(f"/s/{token}/upload", params={"name": "c.txt"}, content=b"c")
        assert missing.status_code == 400
        for bad in ("", "..", "a/b.txt", "x\\y", "x" * 256):
            r = send(anon, token, bad, b"n")
            assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_name", bad
    item = names_in(alice, "/Named")["a.txt"]
    versions = alice.http.get(f"/api/file/{item['id']}/versions").json()
    assert versions[0]["author_device"] == "file request: Eve [31m Adams"
    assert set(names_in(alice, "/Named")) == {"a.txt"}


def test_a_name_that_exists_is_never_overwritten(alice: User, base_url: str) -> None:
    folder = make_folder(alice, "/Scans")
    original = alice.upload("/Scans/scan.pdf", b"the owner's own scan")
    alice.upload("/Scans/README", b"readme")
    token = file_request(alice, folder["id"])["token"]
    with visitor(base_url) as anon:
        for data in (b"first visitor", b"second visitor", b"third visitor"):
            assert send(anon, token, "scan.pdf", data).status_code == 201
        assert send(anon, token, "SCAN.PDF", b"shouting").status_code == 201
        assert send(anon, token, "readme", b"no extension").status_code == 201
    items = names_in(alice, "/Scans")
    assert set(items) == {
        "scan.pdf",
        "scan (2).pdf",
        "scan (3).pdf",
        "scan (4).pdf",
        "SCAN (5).PDF",
        "README",
        "readme (2)",
    }
    kept = items["scan.pdf"]
    assert kept["version"] == 1 and kept["content_hash"] == original["content_hash"]
    assert alice.http.get(f"/api/file/{kept['id']}/content").content == b"the owner's own scan"
    assert alice.http.get(f"/api/file/{items['scan (3).pdf']['id']}/content").content == (
        b"second visitor"
    )


def test_concurrent_uploads_of_one_name_all_arrive_under_distinct_names(
    alice: User, base_url: str
) -> None:
    folder = make_folder(alice, "/Busy")
    token = file_request(alice, folder["id"])["token"]
    results: list[int] = []

    def one(i: int) -> None:
        with visitor(base_url) as anon:
            results.append(send(anon, token, "same.txt", f"copy {i}".encode()).status_code)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [201] * 6
    items = names_in(alice, "/Busy")
    assert set(items) == {"same.txt", *(f"same ({n}).txt" for n in range(2, 7))}
    contents = {alice.http.get(f"/api/file/{i['id']}/content").content for i in items.values()}
    assert contents == {f"copy {i}".encode() for i in range(6)}


def test_a_file_over_the_links_limit_is_refused_and_nothing_is_stored(
    alice: User, base_url: str
) -> None:
    folder = make_folder(alice, "/Small")
    token = file_request(alice, folder["id"], max_bytes=1000)["token"]
    before = usage(alice)
    with visitor(base_url) as anon:
        r = send(anon, token, "big.bin", os.urandom(1001))
        assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"
        assert send(anon, token, "fits.bin", os.urandom(1000)).status_code == 201
    assert set(names_in(alice, "/Small")) == {"fits.bin"}
    assert usage(alice) == before + 1000


def test_the_owners_quota_bounds_what_arrives(alice: User, base_url: str, stack: Stack) -> None:
    folder = make_folder(alice, "/Full")
    token = file_request(alice, folder["id"])["token"]
    alice.upload("/Full/mine.bin", os.urandom(2000))
    with mongo(stack) as db:
        db.coffer.users.update_one(
            {"username": alice.username}, {"$set": {"quota_bytes": usage(alice) + 5 * MIB}}
        )
    before = usage(alice)
    with visitor(base_url) as anon:
        r = send(anon, token, "huge.bin", os.urandom(6 * MIB))
        assert r.status_code == 507, r.text
        assert r.json()["error"]["code"] == "quota_exceeded"
        assert "owner" in r.json()["error"]["message"]
    assert set(names_in(alice, "/Full")) == {"mine.bin"}
    assert usage(alice) == before


def test_a_password_protected_file_request_needs_the_unlock_cookie(
    alice: User, base_url: str
) -> None:
    folder = make_folder(alice, "/Secret")
    alice.upload("/Secret/private.txt", b"private")
    token = file_request(alice, folder["id"], password="drop here")["token"]
    with visitor(base_url) as anon:
        page = anon.get(f"/s/{token}")
        assert page.status_code == 200 and 'type="password"' in page.text
        assert "request-form" not in page.text
        r = send(anon, token, "x.txt", b"x")
        assert r.status_code == 401 and r.json()["error"]["code"] == "password_required"
        right = anon.post(f"/s/{token}", data={"password": "drop here"})
        assert right.status_code == 303
        page = anon.get(f"/s/{token}")
        assert "request-form" in page.text and "private.txt" not in page.text
        assert send(anon, token, "x.txt", b"x").status_code == 201
    assert set(names_in(alice, "/Secret")) == {"private.txt", "x.txt"}


def test_expired_and_revoked_requests_take_nothing(
    alice: User, base_url: str, stack: Stack
) -> None:
    folder = make_folder(alice, "/Closed")
    soon = (datetime.now(UTC) + timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    expiring = file_request(alice, folder["id"], expires_at=soon)["token"]
    revoked = file_request(alice, folder["id"])["token"]
    with mongo(stack) as db:
        db.coffer.share_links.update_one(
            {"token_hash": hashlib.sha256(expiring.encode()).hexdigest()},
            {"$set": {"expires_at": datetime.now(UTC) - timedelta(minutes=1)}},
        )
    assert alice.http.delete(f"/api/links/{revoked}").status_code == 204
    with visitor(base_url) as anon:
        for token in (expiring, revoked):
            assert anon.get(f"/s/{token}").status_code == 410
            r = send(anon, token, "late.txt", b"too late")
            assert r.status_code == 410 and r.json()["error"]["code"] == "link_gone"
        unknown = send(anon, "A" * 43, "x.txt", b"x")
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_link"
    assert names_in(alice, "/Closed") == {}


def test_an_upload_only_link_shows_and_serves_nothing(alice: User, base_url: str) -> None:
    folder = make_folder(alice, "/Private")
    alice.upload("/Private/salary.pdf", b"%PDF-1.4 salaries")
    make_folder(alice, "/Private/sub")
    alice.upload("/Private/sub/notes.txt", b"notes")
    token = file_request(alice, folder["id"])["token"]
    with visitor(base_url) as anon:
        for path in (None, "salary.pdf", "sub", "sub/notes.txt"):
            params = {"path": path} if path else {}
            page = anon.get(f"/s/{token}", params=params)
            assert page.status_code == 200 and "request-form" in page.text
            assert "salary" not in page.text and "notes" not in page.text
            for route in ("download", "preview", "zip", "thumbnail"):
                r = anon.get(f"/s/{token}/{route}", params=params)
                assert r.status_code == 403, (route, path, r.status_code)
                assert b"salaries" not in r.content and b"notes" not in r.content
                assert b"PK" not in r.content[:2]  # no archive either
        # An ordinary link to the same folder takes no uploads.
        plain = alice.http.post(f"/api/file/{folder['id']}/links", json={}).json()["token"]
        r = send(anon, plain, "sneaky.txt", b"x")
        assert r.status_code == 403 and r.json()["error"]["code"] == "not_a_file_request"
    assert set(names_in(alice, "/Private")) == {"salary.pdf", "sub"}


def test_cross_site_uploads_are_refused(alice: User, base_url: str) -> None:
    folder = make_folder(alice, "/Forms")
    token = file_request(alice, folder["id"])["token"]
    with visitor(base_url) as anon:
        for headers in (
            {"Sec-Fetch-Site": "cross-site"},
            {"Sec-Fetch-Site": "same-site"},
            {"Origin": "https://evil.example"},
        ):
            r = send(anon, token, "forged.txt", b"x", **headers)
            assert r.status_code == 403 and r.json()["error"]["code"] == "cross_site", headers
        assert (
            send(anon, token, "ok.txt", b"x", **{"Sec-Fetch-Site": "same-origin"}).status_code
            == 201
        )
    assert set(names_in(alice, "/Forms")) == {"ok.txt"}


def test_many_files_from_one_address_are_throttled(
    alice: User, base_url: str, stack: Stack
) -> None:
    folder = make_folder(alice, "/Flood")
    token = file_request(alice, folder["id"])["token"]
    with mongo(stack) as db:
        link = db.coffer.share_links.find_one(
            {"token_hash": hashlib.sha256(token.encode()).hexdigest()}
        )
        # The window's allowance (60 files a minute) already used, in this window and
        # the next (should the minute turn during the test).
        bucket = int(time.time()) // 60
        for b in (bucket, bucket + 1):
            db.coffer.rate_limits.update_one(
                {"_id": f"filereq:{link['_id']}:127.0.0.1:{b}"},
                {"$set": {"attempts": 60, "expires_at": datetime.now(UTC) + timedelta(minutes=5)}},
                upsert=True,
            )
    with visitor(base_url) as anon:
        r = send(anon, token, "one-too-many.txt", b"x")
        assert r.status_code == 429 and r.json()["error"]["code"] == "throttled"
        # Until this minute ends and its 61 attempts have faded enough for one more
        # (sliding window: 60 * (1 - 59/61), about 2 s into the next minute).
        assert 0 < int(r.headers["retry-after"]) <= 60 + 2
    assert names_in(alice, "/Flood") == {}
    # Another link of the same owner is counted on its own.
    other = file_request(alice, folder["id"])["token"]
    with visitor(base_url) as anon:
        assert send(anon, other, "fine.txt", b"x").status_code == 201


def test_an_upload_cut_short_stores_no_file(alice: User, base_url: str) -> None:
    folder = make_folder(alice, "/Cut")
    token = file_request(alice, folder["id"])["token"]
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(
            f"POST /s/{token}/upload?name=half.bin&from=Dan HTTP/1.1\r\nHost: {host}\r\n"
            f"Content-Length: {5 * MIB}\r\n\r\n".encode()
            + os.urandom(MIB)
        )
    time.sleep(1)
    assert names_in(alice, "/Cut") == {}
    with visitor(base_url) as anon:
        assert send(anon, token, "half.bin", b"whole").status_code == 201
    assert set(names_in(alice, "/Cut")) == {"half.bin"}  # the name was never taken


def test_long_names_keep_getting_numbers_past_ten(alice: User, base_url: str) -> None:
    folder = make_folder(alice, "/Long")
    token = file_request(alice, folder["id"])["token"]
    name = "a" * 251 + ".txt"  # 255 bytes: numbering must shorten the stem
    with visitor(base_url) as anon:
        for i in range(12):
            r = send(anon, token, name, b"%d" % i)
            assert r.status_code == 201, (i, r.text)
    items = names_in(alice, "/Long")
    assert len(items) == 12 and all(len(n.encode()) <= 255 for n in items)
    assert "a" * 246 + " (12).txt" in items


def test_a_link_takes_at_most_its_total(alice: User, base_url: str, stack: Stack) -> None:
    folder = make_folder(alice, "/Capped")
    token = file_request(alice, folder["id"])["token"]
    with visitor(base_url) as anon:
        assert send(anon, token, "one.bin", b"x" * 1000).status_code == 201
        with mongo(stack) as db:
            link = db.coffer.share_links.find_one(
                {"token_hash": hashlib.sha256(token.encode()).hexdigest()}
            )
            assert link["received_bytes"] == 1000  # counted at each commit
            db.coffer.share_links.update_one(  # as if 10 GiB less 500 bytes had arrived
                {"_id": link["_id"]}, {"$set": {"received_bytes": 10 * 1024**3 - 500}}
            )
        r = send(anon, token, "two.bin", b"y" * 501)
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_full"
        assert send(anon, token, "three.bin", b"z" * 500).status_code == 201
    assert set(names_in(alice, "/Capped")) == {"one.bin", "three.bin"}
