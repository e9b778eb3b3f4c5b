"""Sharing with users: grants, roles, "Shared with me", revoke, and the events recipients get."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

import httpx
from bson import ObjectId
from pymongo import MongoClient

from tests.conftest import User, content_hash, manifest
from tests.stack import Stack


def share(owner: User, file_id: str, username: str, role: str = "viewer") -> httpx.Response:
    return owner.http.post(f"/api/file/{file_id}/share", json={"username": username, "role": role})


def wait_for(pred: Callable[[], object], timeout: float = 30.0) -> object:
    """`pred()` once it is truthy, or its last value after `timeout` seconds. Generous:
    much of what tests wait for is the worker's, which runs at a lower priority."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def shared_items(user: User) -> list[dict]:
    r = user.http.get("/api/shared")
    assert r.status_code == 200, r.text
    return r.json()["items"]


def upload_into(user: User, parent_id: str, name: str, data: bytes) -> dict:
    """Upload as `user` into a folder by id (the way a share recipient does)."""
    reg = user.http.post("/api/file", json={"parent_id": parent_id, "name": name, **manifest(data)})
    assert reg.status_code == 201, reg.text
    body = reg.json()
    for m in body["missing"]:
        start = m["index"] * 64 * 1024
        assert httpx.put(m["url"], content=data[start : start + m["size"]]).status_code == 201
    r = user.http.post(f"/api/file/{body['file_id']}/commit", json={"upload_id": body["upload_id"]})
    assert r.status_code == 200, r.text
    return r.json()


def test_viewer_sees_lists_and_downloads_but_cannot_change(alice: User, bob: User) -> None:
    folder = alice.http.post("/api/folder", json={"path": "/Trips/Japan"}).json()
    photo = alice.upload("/Trips/Japan/fuji.jpg", b"\xff\xd8" + b"p" * 300_000)
    r = share(alice, folder["id"], bob.username)
    assert r.status_code == 201
    assert r.json() == {
        "file_id": folder["id"],
        "username": bob.username,
        "role": "viewer",
        "created_at": r.json()["created_at"],
        "updated_at": r.json()["updated_at"],
    }
    items = wait_for(lambda: shared_items(bob))
    assert len(items) == 1
    item = items[0]
    assert (item["id"], item["path"], item["owner"], item["role"]) == (
        folder["id"],
        "/Japan",
        alice.username,
        "viewer",
    )
    assert item["shared_at"] and item["kind"] == "folder"
    # Open and list by id; paths are shown under the shared folder, never the owner's tree.
    listing = bob.http.get("/api/file", params={"id": folder["id"]}).json()["items"]
    assert [(i["name"], i["path"], i["role"]) for i in listing] == [
        ("fuji.jpg", "/Japan/fuji.jpg", "viewer")
    ]
    meta = bob.http.get(f"/api/file/{photo['id']}").json()
    assert meta["path"] == "/Japan/fuji.jpg" and meta["owner"] == alice.username
    body = bob.http.get(f"/api/file/{photo['id']}/content").content
    assert (
        hashlib.sha256(body).hexdigest() == hashlib.sha256(b"\xff\xd8" + b"p" * 300_000).hexdigest()
    )
    # A viewer changes nothing.
    data = b"nope"
    assert (
        bob.http.post(
            "/api/file", json={"parent_id": folder["id"], "name": "x.txt", **manifest(data)}
        ).status_code
        == 403
    )
    assert bob.http.patch(f"/api/file/{photo['id']}", json={"name": "y.jpg"}).status_code == 403
    assert bob.http.delete(f"/api/file/{photo['id']}").status_code == 403
    assert (
        bob.http.post("/api/folder", json={"parent_id": folder["id"], "name": "d"}).status_code
        == 403
    )
    # The owner's paths stay the owner's: bob's own tree has no /Trips.
    assert bob.http.get("/api/file", params={"path": "/Trips"}).status_code == 404


def test_editor_uploads_count_against_the_owner_and_reach_the_owners_devices(
    alice: User, bob: User, stack: Stack
) -> None:
    folder = alice.http.post("/api/folder", json={"path": "/Team"}).json()
    assert share(alice, folder["id"], bob.username, "viewer").status_code == 201
    upgraded = share(alice, folder["id"], bob.username, "editor")
    assert upgraded.status_code == 201 and upgraded.json()["role"] == "editor"
    grants = alice.http.get(f"/api/file/{folder['id']}/share").json()["items"]
    assert [(g["username"], g["role"]) for g in grants] == [(bob.username, "editor")]

    alice_cursor = alice.http.get("/api/file/events", params={"cursor": "latest"}).json()["cursor"]
    alice_before = alice.http.get("/api/me").json()["usage_bytes"]
    bob_before = bob.http.get("/api/me").json()["usage_bytes"]
    data = bytes(range(256)) * 1000
    f = upload_into(bob, folder["id"], "plans/q3.bin", data)
    assert f["path"] == "/Team/plans/q3.bin" and f["owner"] == alice.username
    # It is alice's file, in alice's tree, on alice's quota.
    mine = alice.http.get("/api/file", params={"path": "/Team/plans"}).json()["items"]
    assert [(i["name"], i["size"], i["content_hash"]) for i in mine] == [
        ("q3.bin", len(data), content_hash(data))
    ]
    assert alice.http.get("/api/me").json()["usage_bytes"] == alice_before + len(data)
    assert bob.http.get("/api/me").json()["usage_bytes"] == bob_before
    # Alice's devices hear of it, with bob as the actor.
    created = [e for e in alice.events(alice_cursor) if e["file_id"] == f["id"]]
    assert [(e["type"], e["path"], e["actor"]) for e in created] == [
        ("file.created", "/Team/plans/q3.bin", bob.username)
    ]
    # A new version by id, a rename, and a delete inside the folder.
    v2 = bob.http.post("/api/file", json={"file_id": f["id"], **manifest(data[:1000])})
    assert v2.status_code == 201
    renamed = bob.http.patch(f"/api/file/{f['id']}", json={"name": "q3-final.bin"})
    assert renamed.status_code == 200 and renamed.json()["path"] == "/Team/plans/q3-final.bin"
    sub = bob.http.post("/api/folder", json={"parent_id": folder["id"], "name": "archive"}).json()
    moved = bob.http.patch(f"/api/file/{f['id']}", json={"parent_id": sub["id"]})
    assert moved.status_code == 200 and moved.json()["path"] == "/Team/archive/q3-final.bin"
    assert alice.http.get(f"/api/file/{f['id']}").json()["path"] == "/Team/archive/q3-final.bin"
    assert bob.http.delete(f"/api/file/{sub['id']}").status_code == 204
    assert alice.http.get(f"/api/file/{f['id']}").status_code == 404
    assert alice.http.get("/api/me").json()["usage_bytes"] == alice_before
    # The shared folder itself stays the owner's to rename, move or delete.
    assert bob.http.patch(f"/api/file/{folder['id']}", json={"name": "Mine"}).status_code == 403
    assert bob.http.delete(f"/api/file/{folder['id']}").status_code == 403
    # Nothing leaves the share: not into bob's tree, not by an absolute path.
    inner = upload_into(bob, folder["id"], "keep.txt", b"keep")
    own = bob.http.post("/api/folder", json={"path": "/bobs"}).json()
    assert (
        bob.http.patch(f"/api/file/{inner['id']}", json={"parent_id": own["id"]}).status_code == 400
    )
    assert bob.http.patch(f"/api/file/{inner['id']}", json={"path": "/x.txt"}).status_code == 400
    assert (
        bob.http.post(
            "/api/file", json={"parent_id": folder["id"], "name": "../escape.txt", **manifest(b"e")}
        ).status_code
        == 400
    )
    # The owner's quota applies to the editor's uploads.
    with MongoClient(stack.env["MONGODB_URL"]) as mongo:
        mongo.coffer.users.update_one({"_id": ObjectId(alice.id)}, {"$set": {"quota_bytes": 1}})
    try:
        over = bob.http.post(
            "/api/file", json={"parent_id": folder["id"], "name": "big", **manifest(b"x" * 10)}
        )
        assert over.status_code == 507 and "owner" in over.json()["error"]["message"]
    finally:
        with MongoClient(stack.env["MONGODB_URL"]) as mongo:
            mongo.coffer.users.update_one({"_id": ObjectId(alice.id)}, {"$set": {"quota_bytes": 0}})


def test_an_editor_cannot_probe_the_owners_content_through_dedup(alice: User, bob: User) -> None:
    secret = b"salary figures " * 10_000
    alice.upload("/private/salaries.txt", secret)
    folder = alice.http.post("/api/folder", json={"path": "/inbox"}).json()
    share(alice, folder["id"], bob.username, "editor")
    reg = bob.http.post(
        "/api/file", json={"parent_id": folder["id"], "name": "guess.txt", **manifest(secret)}
    ).json()
    # Every distinct chunk is asked for, although alice has them all stored.
    assert len(reg["missing"]) == len({c["sha256"] for c in manifest(secret)["chunks"]})
    # Committing without sending them fails; after sending one, a resume asks for the rest.
    commit = bob.http.post(
        f"/api/file/{reg['file_id']}/commit", json={"upload_id": reg["upload_id"]}
    )
    assert commit.status_code == 409
    first = reg["missing"][0]
    assert httpx.put(first["url"], content=secret[: first["size"]]).status_code == 201
    again = bob.http.post(
        "/api/file", json={"parent_id": folder["id"], "name": "guess.txt", **manifest(secret)}
    ).json()
    assert {m["sha256"] for m in again["missing"]} == {m["sha256"] for m in reg["missing"][1:]}


def test_revoke_takes_effect_on_the_next_request(alice: User, bob: User) -> None:
    folder = alice.http.post("/api/folder", json={"path": "/Revoked"}).json()
    f = alice.upload("/Revoked/a.txt", b"a")
    before = bob.http.get("/api/file/events", params={"cursor": "latest"}).json()["cursor"]
    share(alice, folder["id"], bob.username, "editor")
    assert bob.http.get(f"/api/file/{f['id']}").status_code == 200
    assert wait_for(lambda: any(e["type"] == "share.added" for e in bob.events(before)))
    assert shared_items(bob)
    cursor = bob.http.get("/api/file/events", params={"cursor": "latest"}).json()["cursor"]
    assert alice.http.delete(f"/api/file/{folder['id']}/share/{bob.username}").status_code == 204
    assert bob.http.get(f"/api/file/{f['id']}").status_code == 404
    assert bob.http.get(f"/api/file/{f['id']}/content").status_code == 404
    assert bob.http.get("/api/file", params={"id": folder["id"]}).status_code == 404
    assert bob.http.patch(f"/api/file/{f['id']}", json={"name": "b.txt"}).status_code == 404
    removed = wait_for(lambda: [e for e in bob.events(cursor) if e["type"] == "share.removed"])
    assert [(e["file_id"], e["path"], e["owner"]) for e in removed] == [
        (folder["id"], "/Revoked", alice.username)
    ]
    assert wait_for(lambda: shared_items(bob) == [])
    # Later changes in the folder no longer reach bob.
    alice.upload("/Revoked/after.txt", b"after")
    time.sleep(0.5)
    assert [e for e in bob.events(cursor) if e["type"] != "share.removed"] == []
    # Revoking again, sharing with yourself or with nobody: clear errors.
    assert alice.http.delete(f"/api/file/{folder['id']}/share/{bob.username}").status_code == 404
    assert share(alice, folder["id"], alice.username).status_code == 400
    assert share(alice, folder["id"], "no-such-user-here").status_code == 404
    assert share(alice, folder["id"], bob.username, "admin").status_code == 400


def test_a_share_granted_again_after_a_revoke_is_listed_newest_first(
    alice: User, bob: User
) -> None:
    older, again = (alice.http.post("/api/folder", json={"path": p}).json() for p in ("/O", "/A"))
    assert share(alice, older["id"], bob.username).status_code == 201
    assert share(alice, again["id"], bob.username).status_code == 201
    assert wait_for(lambda: len(shared_items(bob)) == 2)
    assert alice.http.delete(f"/api/file/{again['id']}/share/{bob.username}").status_code == 204
    assert wait_for(lambda: len(shared_items(bob)) == 1)
    # Granted again (its grant written over the revoked one's tombstone), as editor now.
    assert share(alice, again["id"], bob.username, "editor").status_code == 201
    listed = wait_for(
        lambda: (
            [(i["path"], i["role"]) for i in shared_items(bob)]
            == [("/A", "editor"), ("/O", "viewer")]
        )
    )
    assert listed, shared_items(bob)


def test_a_recipients_feed_holds_exactly_what_they_may_see(
    alice: User, bob: User, base_url: str
) -> None:
    """Changes inside the share reach bob (with his paths), nothing outside does, moves
    across the boundary become creations and deletions; replaying bob's events gives the
    same tree as listing it fresh."""
    shared = alice.http.post("/api/folder", json={"path": "/Work/Shared"}).json()
    alice.http.post("/api/folder", json={"path": "/Work/Private"})
    cursor = bob.http.get("/api/file/events", params={"cursor": "latest"}).json()["cursor"]
    share(alice, shared["id"], bob.username, "viewer")
    assert wait_for(lambda: any(e["type"] == "share.added" for e in bob.events(cursor)))

    a = alice.upload("/Work/Shared/a.txt", b"a1")
    alice.upload("/Work/Private/secret.txt", b"s")
    p = alice.upload("/Work/Private/p.txt", b"p")
    alice.upload("/Work/Shared/a.txt", b"a2")
    alice.http.patch(f"/api/file/{p['id']}", json={"path": "/Work/Shared/p.txt"})
    alice.http.patch(f"/api/file/{a['id']}", json={"path": "/Work/Private/a.txt"})
    sub = alice.http.post("/api/folder", json={"path": "/Work/Shared/sub"}).json()
    alice.http.patch(f"/api/file/{p['id']}", json={"path": "/Work/Shared/sub/p2.txt"})
    doomed = alice.upload("/Work/Shared/sub/doomed.txt", b"d")
    alice.http.delete(f"/api/file/{doomed['id']}")
    alice.http.patch(f"/api/file/{sub['id']}", json={"path": "/Work/Shared/renamed"})
    alice.http.post("/api/folder", json={"path": "/Work/Private/more"})

    got = wait_for(
        lambda: (lambda evs: evs if evs and evs[-1]["path"] == "/Shared/renamed" else None)(
            [e for e in bob.events(cursor) if e["type"] != "share.added"]
        )
    )
    assert got, bob.events(cursor)
    assert [(e["type"], e["path"], e.get("old_path")) for e in got] == [
        ("file.created", "/Shared/a.txt", None),
        ("file.updated", "/Shared/a.txt", None),
        ("file.created", "/Shared/p.txt", None),  # moved in
        ("file.deleted", "/Shared/a.txt", None),  # moved out
        ("file.created", "/Shared/sub", None),
        ("file.moved", "/Shared/sub/p2.txt", "/Shared/p.txt"),
        ("file.created", "/Shared/sub/doomed.txt", None),
        ("file.deleted", "/Shared/sub/doomed.txt", None),
        ("file.moved", "/Shared/renamed", "/Shared/sub"),
    ]
    assert all("Private" not in (e["path"] + (e.get("old_path") or "")) for e in bob.events(0))

    # Replay: a path -> id map built from the events equals a fresh recursive listing.
    state: dict[str, str] = {"/Shared": shared["id"]}
    for e in got:
        if e["type"] == "file.moved":
            for path in [
                k for k in state if k == e["old_path"] or k.startswith(e["old_path"] + "/")
            ]:
                state[e["path"] + path[len(e["old_path"]) :]] = state.pop(path)
        elif e["type"] == "file.deleted":
            for path in [k for k in state if k == e["path"] or k.startswith(e["path"] + "/")]:
                del state[path]
        else:
            state[e["path"]] = e["file_id"]
    fresh: dict[str, str] = {"/Shared": shared["id"]}
    todo = [shared["id"]]
    while todo:
        for item in bob.http.get("/api/file", params={"id": todo.pop()}).json()["items"]:
            fresh[item["path"]] = item["id"]
            if item["kind"] == "folder":
                todo.append(item["id"])
    assert state == fresh


def test_trashing_a_folder_above_a_share_removes_it_for_the_recipient(
    alice: User, bob: User
) -> None:
    alice.http.post("/api/folder", json={"path": "/Outer/Inner"})
    inner = alice.http.get("/api/file", params={"path": "/Outer"}).json()["items"][0]
    outer_id = alice.http.get("/api/file", params={"path": "/"}).json()["items"]
    outer = next(i for i in outer_id if i["name"] == "Outer")
    before = bob.http.get("/api/file/events", params={"cursor": "latest"}).json()["cursor"]
    share(alice, inner["id"], bob.username, "viewer")
    # "Shared with me" is derived before the event is appended: wait for the event itself.
    assert wait_for(lambda: any(e["type"] == "share.added" for e in bob.events(before)))
    cursor = bob.http.get("/api/file/events", params={"cursor": "latest"}).json()["cursor"]
    assert alice.http.delete(f"/api/file/{outer['id']}").status_code == 204
    gone = wait_for(lambda: bob.events(cursor))
    assert [(e["type"], e["file_id"], e["path"]) for e in gone] == [
        ("file.deleted", inner["id"], "/Inner")
    ]
    assert bob.http.get(f"/api/file/{inner['id']}").status_code == 404
    assert shared_items(bob) == []


def test_recipient_gets_share_events_over_the_websocket(
    alice: User, bob: User, base_url: str
) -> None:
    import json

    from websockets.sync.client import connect as ws_connect

    folder = alice.http.post("/api/folder", json={"path": "/Live"}).json()
    url = base_url.replace("http", "ws") + "/api/ws?cursor=latest"
    with ws_connect(url, additional_headers={"Authorization": f"Bearer {bob.token}"}) as ws:
        share(alice, folder["id"], bob.username, "viewer")
        first = json.loads(ws.recv(timeout=30))
        assert (first["type"], first["path"], first["role"], first["owner"]) == (
            "share.added",
            "/Live",
            "viewer",
            alice.username,
        )
        # By the time the event arrives, "Shared with me" has the item.
        assert [i["id"] for i in shared_items(bob)] == [folder["id"]]
        alice.upload("/Live/new.txt", b"n")
        second = json.loads(ws.recv(timeout=30))
        assert (second["type"], second["path"]) == ("file.created", "/Live/new.txt")
