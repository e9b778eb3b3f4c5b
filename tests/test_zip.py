"""Zip downloads: folders, files and selections streamed as zip archives, read back with
Python's zipfile as a user's unzip would; who may download what; public folder links;
unsafe names; damaged data; and a 5 GiB archive (ZIP64) with the server's memory flat."""

from __future__ import annotations

import hashlib
import io
import os
import re
import struct
import time
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import httpx
import psutil
import pytest
from bson import ObjectId
from pymongo import MongoClient

from tests.conftest import User
from tests.stack import Stack
from tests.test_integrity import wait_damaged
from tests.test_links import anonymous, fresh_throttle, link  # noqa: F401 (a fixture)

CHUNK = 64 * 1024


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_zip(r: httpx.Response) -> zipfile.ZipFile:
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(r.content))
    assert archive.testzip() is None
    return archive


def contents(archive: zipfile.ZipFile) -> dict[str, str | None]:
    """Member name -> SHA-256 of its bytes (None for a directory entry)."""
    return {i.filename: None if i.is_dir() else sha(archive.read(i)) for i in archive.infolist()}


def folder(user: User, path: str) -> dict:
    r = user.http.post("/api/folder", json={"path": path})
    assert r.status_code == 201, r.text
    return r.json()


def share(owner: User, file_id: str, username: str, role: str) -> None:
    r = owner.http.post(f"/api/file/{file_id}/share", json={"username": username, "role": role})
    assert r.status_code == 201, r.text


def test_owner_zips_a_folder_tree(alice: User) -> None:
    files = {
        "Trip/notes.txt": b"hello zip\n",
        "Trip/Фото/ü 名前.bin": os.urandom(3 * CHUNK + 17),
        "Trip/Фото/deep/er/x.bin": os.urandom(CHUNK),
        "Trip/empty-file": b"",
    }
    for path, data in files.items():
        alice.upload("/" + path, data)
    trip = alice.http.get("/api/file", params={"path": "/"}).json()["items"][0]
    folder(alice, "/Trip/Nothing here")
    gone = alice.upload("/Trip/gone.txt", b"trashed")
    assert alice.http.delete(f"/api/file/{gone['id']}").status_code == 204
    folder(alice, "/Trips elsewhere")  # a sibling whose name starts like the folder's

    r = alice.http.get(f"/api/file/{trip['id']}/zip")
    assert r.headers["content-disposition"] == (
        "attachment; filename=\"Trip.zip\"; filename*=UTF-8''Trip.zip"
    )
    archive = read_zip(r)
    assert contents(archive) == {
        "Trip/": None,
        "Trip/Nothing here/": None,
        "Trip/Фото/": None,
        "Trip/Фото/deep/": None,
        "Trip/Фото/deep/er/": None,
        **{path: sha(data) for path, data in files.items()},
    }
    # Unicode names are flagged UTF-8; times are the files' own (UTC), not the download's.
    info = archive.getinfo("Trip/Фото/ü 名前.bin")
    assert info.flag_bits & 0x800
    modified = datetime.fromisoformat(
        alice.http.get("/api/file", params={"path": "/Trip/Фото"})
        .json()["items"][1]["modified_at"]
        .replace("Z", "+00:00")
    )
    assert abs(datetime(*info.date_time, tzinfo=UTC) - modified) <= timedelta(seconds=2)
    # ...and exactly, in the "UT" extra field that unzip tools read for the local time.
    assert struct.pack("<HHBl", 0x5455, 5, 1, int(modified.timestamp())) in info.extra

    # A single file zips alone, under its own name.
    notes = alice.http.get("/api/file", params={"path": "/Trip"}).json()["items"]
    note = next(i for i in notes if i["name"] == "notes.txt")
    r = alice.http.get(f"/api/file/{note['id']}/zip")
    assert "filename*=UTF-8''notes.txt.zip" in r.headers["content-disposition"]
    assert contents(read_zip(r)) == {"notes.txt": sha(b"hello zip\n")}


def test_recipients_by_role_may_zip_strangers_get_404(
    alice: User, bob: User, base_url: str
) -> None:
    shared = folder(alice, "/Team/Shared")
    alice.upload("/Team/Shared/plan.txt", b"the plan")
    alice.upload("/Team/Shared/sub/more.txt", b"more")
    private = alice.upload("/Team/private.txt", b"mine")
    carol = User(base_url)
    share(alice, shared["id"], bob.username, "viewer")
    share(alice, shared["id"], carol.username, "editor")
    expected = {
        "Shared/": None,
        "Shared/plan.txt": sha(b"the plan"),
        "Shared/sub/": None,
        "Shared/sub/more.txt": sha(b"more"),
    }
    for user in (alice, bob, carol):
        assert contents(read_zip(user.http.get(f"/api/file/{shared['id']}/zip"))) == expected
    # Nothing above the shared folder is reachable, and a stranger learns nothing.
    team = alice.http.get("/api/file", params={"path": "/"}).json()["items"][0]
    dave = User(base_url)
    for user, item in ((bob, team), (bob, private), (dave, shared), (dave, private)):
        r = user.http.get(f"/api/file/{item['id']}/zip")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert alice.http.get("/api/file/not-an-id/zip").status_code == 404


def test_a_selection_by_ticket(alice: User, bob: User, stack: Stack) -> None:
    a1 = alice.upload("/One/a.txt", b"first a")
    a2 = alice.upload("/Three/a.txt", b"second a")
    inside = alice.upload("/Two/b.txt", b"inside two")
    two = alice.http.get("/api/file", params={"path": "/"}).json()["items"][2]
    assert two["name"] == "Two"
    theirs = bob.upload("/Bobs/c.txt", b"bob's c")
    share(bob, theirs["id"], alice.username, "viewer")

    ids = [a1["id"], a2["id"], two["id"], inside["id"], theirs["id"], a1["id"]]
    r = alice.http.post("/api/zip", json={"ids": ids, "name": "Picked"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert re.fullmatch(r"/api/zip/[A-Za-z0-9_-]{32}", body["url"]) and body["name"] == "Picked.zip"
    expires = datetime.fromisoformat(body["expires_at"].replace("Z", "+00:00"))
    assert timedelta(minutes=9) < expires - datetime.now(UTC) <= timedelta(minutes=10)

    download = alice.http.get(body["url"])
    assert "filename*=UTF-8''Picked.zip" in download.headers["content-disposition"]
    # Same names get "(2)"; an item inside a selected folder comes once, inside it.
    assert contents(read_zip(download)) == {
        "a.txt": sha(b"first a"),
        "a (2).txt": sha(b"second a"),
        "Two/": None,
        "Two/b.txt": sha(b"inside two"),
        "c.txt": sha(b"bob's c"),
    }
    # The ticket is alice's alone; it expires.
    assert bob.http.get(body["url"]).status_code == 404
    assert alice.http.get("/api/zip/no-such-ticket").status_code == 404
    ticket = body["url"].rsplit("/", 1)[1]
    with MongoClient(stack.env["MONGODB_URL"]) as mongo:
        mongo.coffer.zip_tickets.update_one(
            {"_id": sha(ticket.encode())},
            {"$set": {"expires_at": datetime.now(UTC) - timedelta(seconds=5)}},
        )
    expired = alice.http.get(body["url"])
    assert expired.status_code == 410 and expired.json()["error"]["code"] == "gone"

    # An item revoked after the ticket was made is left out and named in a note.
    again = alice.http.post("/api/zip", json={"ids": [a1["id"], theirs["id"]]}).json()
    assert again["name"] == "Coffer.zip"
    assert bob.http.delete(f"/api/file/{theirs['id']}/share/{alice.username}").status_code in (
        200,
        204,
    )
    archive = read_zip(alice.http.get(again["url"]))
    assert archive.namelist() == ["a.txt", "COFFER-ERRORS.txt"]
    assert b"1 selected item(s)" in archive.read("COFFER-ERRORS.txt")


def test_bad_selections(alice: User, bob: User) -> None:
    mine = alice.upload("/s.txt", b"s")
    private = bob.upload("/private.txt", b"p")
    for body in ({}, {"ids": "x"}, {"ids": [1]}, {"ids": []}, {"ids": [mine["id"]], "name": 5}):
        r = alice.http.post("/api/zip", json=body)
        assert r.status_code == 400, (body, r.text)
    r = alice.http.post("/api/zip", json={"ids": [mine["id"]] * 10_001})
    assert r.status_code == 400 and r.json()["error"]["code"] == "too_many_items"
    for bad in (private["id"], str(ObjectId()), "nonsense"):
        r = alice.http.post("/api/zip", json={"ids": [mine["id"], bad]})
        assert r.status_code == 404, r.text
        assert bad not in r.text and "private" not in r.text
    # A full selection of 10,000 ids is taken.
    r = alice.http.post("/api/zip", json={"ids": [mine["id"]] * 10_000})
    assert r.status_code == 201
    assert contents(read_zip(alice.http.get(r.json()["url"]))) == {"s.txt": sha(b"s")}


def test_public_folder_link_zip(alice: User, base_url: str, fresh_throttle: None) -> None:  # noqa: F811
    shared = folder(alice, "/Public")
    alice.upload("/Public/p.txt", b"public p")
    alice.upload("/Public/Sub Folder/q.txt", b"public q")
    visitor = anonymous(base_url)

    token = link(alice, shared["id"])["token"]
    page = visitor.get(f"/s/{token}")
    assert f'href="/s/{token}/zip"' in page.text and "Download all as zip" in page.text
    r = visitor.get(f"/s/{token}/zip")
    assert r.headers["referrer-policy"] == "no-referrer"
    assert contents(read_zip(r)) == {
        "Public/": None,
        "Public/p.txt": sha(b"public p"),
        "Public/Sub Folder/": None,
        "Public/Sub Folder/q.txt": sha(b"public q"),
    }
    sub = visitor.get(f"/s/{token}", params={"path": "Sub Folder"})
    assert f'href="/s/{token}/zip?path={quote("Sub Folder")}"' in sub.text
    r = visitor.get(f"/s/{token}/zip", params={"path": "Sub Folder"})
    assert contents(read_zip(r)) == {"Sub Folder/": None, "Sub Folder/q.txt": sha(b"public q")}
    assert visitor.get(f"/s/{token}/zip", params={"path": "../.."}).status_code in (400, 404)
    assert visitor.get(f"/s/{token}/zip", params={"path": "nope"}).status_code == 404
    listed = alice.http.get(f"/api/file/{shared['id']}/links").json()["items"]
    assert listed[0]["downloads"] == 2

    view_only = link(alice, shared["id"], allow_download=False)["token"]
    assert "Download all as zip" not in visitor.get(f"/s/{view_only}").text
    r = visitor.get(f"/s/{view_only}/zip")
    assert r.status_code == 403 and "zip" not in r.headers["content-type"]

    locked = link(alice, shared["id"], password="zip pass")["token"]
    assert visitor.get(f"/s/{locked}/zip").status_code == 401
    assert visitor.post(f"/s/{locked}", data={"password": "zip pass"}).status_code == 303
    assert "Public/p.txt" in read_zip(visitor.get(f"/s/{locked}/zip")).namelist()
    # The unlock cookie is the link's own: it opens no other link.
    other = link(alice, shared["id"], password="other pass")["token"]
    assert visitor.get(f"/s/{other}/zip").status_code == 401


def test_unsafe_names_never_appear(alice: User, stack: Stack) -> None:
    """Names the API refuses, written straight into the database (as an old or foreign
    writer might have): the archive still holds only safe, relative, unique names."""
    alice.upload("/U/x.txt", b"x")
    alice.upload("/U/s/y.txt", b"y")
    alice.upload("/U/z.txt", b"z")
    top = alice.upload("/top.txt", b"top")
    renames = {
        "/U/x.txt": "..",
        "/U/s": "C:",
        "/U/s/y.txt": "C:",  # moved with its parent below
        "/U/z.txt": "..\\..\\evil\x01.txt",
        "/top.txt": "/etc/passwd",
    }
    with MongoClient(stack.env["MONGODB_URL"]) as mongo:
        files = mongo.coffer.files
        owner = alice.id
        for old, name in renames.items():
            node = files.find_one({"owner_id": owner, "path": old})
            parent = old.rsplit("/", 1)[0] if old != "/U/s/y.txt" else "/U/C:"
            path = f"{parent}/{name}" if old != "/U/s/y.txt" else "/U/C:/y.txt"
            if old == "/U/s/y.txt":
                name = "y.txt"
            if old == "/top.txt":
                path = "/top.txt"  # only the name is odd
            files.update_one(
                {"_id": node["_id"]},
                {
                    "$set": {
                        "name": name,
                        "path": path,
                        "path_key": path.casefold(),
                        "live_key": path.casefold(),
                    }
                },
            )
    u = alice.http.get("/api/file", params={"path": "/"}).json()["items"]
    u_id = next(i["id"] for i in u if i["name"] == "U")
    archive = read_zip(alice.http.get(f"/api/file/{u_id}/zip"))
    names = archive.namelist()
    picked = alice.http.post("/api/zip", json={"ids": [top["id"], u_id]}).json()
    names += read_zip(alice.http.get(picked["url"])).namelist()
    for name in names:
        assert not name.startswith("/") and "\\" not in name, name
        segments = name.rstrip("/").split("/")
        assert all(s not in ("", ".", "..") for s in segments), name
        assert not any(re.match(r"^[A-Za-z]:", s) for s in segments), name
        assert not any(ord(c) < 32 for c in name), name
    assert sorted(contents(archive).items(), key=str) == sorted(
        {
            "U/": None,
            "U/__": sha(b"x"),
            "U/C_/": None,
            "U/C_/y.txt": sha(b"y"),
            "U/.._.._evil_.txt": sha(b"z"),
        }.items(),
        key=str,
    )
    assert "_etc_passwd" in names


def test_damaged_files_are_left_out_with_a_note(alice: User, stack: Stack) -> None:
    good = os.urandom(CHUNK)
    alice.upload("/D/good.bin", good)
    lost = os.urandom(CHUNK + 10)
    lost_id = alice.upload("/D/lost.bin", lost)["id"]
    blob = next((stack.root / "blobs").rglob(sha(lost[:CHUNK])))
    blob.unlink()
    d = alice.http.get("/api/file", params={"path": "/"}).json()["items"][0]
    archive = read_zip(alice.http.get(f"/api/file/{d['id']}/zip"))
    assert archive.namelist() == ["D/", "D/good.bin", "COFFER-ERRORS.txt"]
    assert sha(archive.read("D/good.bin")) == sha(good)
    assert b"D/lost.bin" in archive.read("COFFER-ERRORS.txt")
    # Once the server knows, the file is flagged damaged and skipped before any read.
    assert wait_damaged(alice, lost_id, True)["damaged"] is True
    archive = read_zip(alice.http.get(f"/api/file/{d['id']}/zip"))
    assert b"D/lost.bin: its data is damaged" in archive.read("COFFER-ERRORS.txt")


def test_a_chunk_lost_mid_file_cuts_the_download(alice: User, stack: Stack) -> None:
    """Never a member silently shorter than the file: the stream is cut instead, and the
    client sees a failed download."""
    data = os.urandom(8 * CHUNK)
    f = alice.upload("/cut/many.bin", data)
    next((stack.root / "blobs").rglob(sha(data[5 * CHUNK : 6 * CHUNK]))).unlink()
    with pytest.raises(httpx.RemoteProtocolError):
        alice.http.get(f"/api/file/{f['id']}/zip")


@pytest.mark.slow
def test_a_five_gib_archive_is_zip64_and_memory_stays_flat(
    alice: User, stack: Stack, tmp_path: Path
) -> None:
    chunk = 4 * 1024 * 1024
    count = 1280  # 5 GiB of one repeated 4 MiB block: one PUT
    block = os.urandom(chunk)
    reg = alice.http.post(
        "/api/file",
        json={
            "path": "/Big/a-huge.bin",
            "size": chunk * count,
            "chunks": [{"sha256": sha(block), "size": chunk}] * count,
        },
    )
    assert reg.status_code == 201, reg.text
    body = reg.json()
    httpx.put(body["missing"][0]["url"], content=block, timeout=60).raise_for_status()
    r = alice.http.post(
        f"/api/file/{body['file_id']}/commit", json={"upload_id": body["upload_id"]}
    )
    assert r.status_code == 200, r.text
    alice.upload("/Big/b-small.txt", b"after the big one")
    alice.upload("/Big/c-more.bin", os.urandom(CHUNK))
    big = alice.http.get("/api/file", params={"path": "/"}).json()["items"][0]

    web = psutil.Process(stack.procs["web"].pid)
    rss = [web.memory_info().rss]
    target = tmp_path / "big.zip"
    started = time.monotonic()
    try:
        with alice.http.stream("GET", f"/api/file/{big['id']}/zip", timeout=120) as resp:
            assert resp.status_code == 200
            with target.open("wb") as out:
                for n, piece in enumerate(resp.iter_bytes(1024 * 1024)):
                    out.write(piece)
                    if n % 512 == 0:
                        rss.append(web.memory_info().rss)
        took = time.monotonic() - started
        size = target.stat().st_size
        assert size > 5 * 1024**3
        print(
            f"5 GiB zip: {size / took / 1e6:.0f} MB/s, "
            f"web RSS {min(rss) >> 20}-{max(rss) >> 20} MiB"
        )
        assert max(rss) - rss[0] < 150 * 1024 * 1024, rss

        with zipfile.ZipFile(target) as archive:
            assert archive.testzip() is None
            info = {i.filename: i for i in archive.infolist()}
            assert list(info) == ["Big/", "Big/a-huge.bin", "Big/b-small.txt", "Big/c-more.bin"]
            assert info["Big/a-huge.bin"].file_size == 5 * 1024**3
            assert info["Big/b-small.txt"].header_offset > 2**32  # a ZIP64 offset
            h = hashlib.sha256()
            with archive.open("Big/a-huge.bin") as member:
                while piece := member.read(8 * 1024 * 1024):
                    h.update(piece)
            assert archive.read("Big/b-small.txt") == b"after the big one"
        expected = hashlib.sha256()
        for _ in range(count):
            expected.update(block)
        assert h.hexdigest() == expected.hexdigest()
    finally:
        target.unlink(missing_ok=True)
    # ~40 s here (the download ~23 s, reading it back twice the rest); generous for CI.
    assert time.monotonic() - started < 120


def test_a_revoke_mid_stream_stops_the_archive_there(alice: User, bob: User) -> None:
    team = folder(alice, "/Midway")
    big = os.urandom(17 * 1024 * 1024)  # a group of its own: the next group is checked again
    alice.upload("/Midway/a.bin", big, chunk_size=4 * 1024 * 1024)
    alice.upload("/Midway/b.txt", b"before the revoke")
    share(alice, team["id"], bob.username, "viewer")
    received = io.BytesIO()
    with bob.http.stream("GET", f"/api/file/{team['id']}/zip") as r:
        assert r.status_code == 200
        pieces = r.iter_bytes()
        while received.tell() < 1024 * 1024:
            received.write(next(pieces))
        r_revoke = alice.http.delete(f"/api/file/{team['id']}/share/{bob.username}")
        assert r_revoke.status_code == 204
        alice.upload("/Midway/b.txt", b"NEW PRIVATE CONTENT AFTER REVOKE")
        for piece in pieces:
            received.write(piece)
    archive = zipfile.ZipFile(io.BytesIO(received.getvalue()))
    names = archive.namelist()
    assert "Midway/b.txt" not in names
    assert b"NEW PRIVATE" not in received.getvalue()
    assert sha(archive.read("Midway/a.bin")) == sha(big)  # what was allowed is whole
    note = archive.read("COFFER-ERRORS.txt").decode()
    assert "Access to what was being archived ended" in note
