"""Regression tests for the security review (one per finding), against real processes.

Each test reproduces what an attacker did, with plain HTTP requests, and asserts the
attack now fails while the legitimate use next to it still works.
"""

from __future__ import annotations

from tests.conftest import User, manifest


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
