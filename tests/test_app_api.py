"""The API behind the browser app's newer parts: leaving a share, the list/grid preference,
a folder's activity, and the pages that render them."""

from __future__ import annotations

import hashlib

import httpx

from tests.conftest import User
from tests.test_sharing import share, shared_items, wait_for


def test_a_recipient_leaves_a_share_and_nothing_moves(alice: User, bob: User) -> None:
    folder = alice.http.post("/api/folder", json={"path": "/Project"}).json()
    alice.upload("/Project/plan.txt", b"the plan")
    assert share(alice, folder["id"], bob.username, "editor").status_code == 201
    assert wait_for(lambda: shared_items(bob))
    cursor = bob.http.get("/api/file/events", params={"cursor": "latest"}).json()["cursor"]

    assert bob.http.delete(f"/api/shared/{folder['id']}").status_code == 204
    assert wait_for(lambda: not shared_items(bob))
    # Bob can no longer open it; Alice keeps the folder and its file, and no grant is left.
    assert bob.http.get("/api/file", params={"id": folder["id"]}).status_code == 404
    listed = alice.http.get("/api/file", params={"path": "/Project"}).json()["items"]
    assert [i["name"] for i in listed] == ["plan.txt"]
    assert alice.http.get(f"/api/file/{folder['id']}/share").json()["items"] == []
    # Bob's devices hear of it like of a revoke (and remove their copy of the share).
    # ("Shared with me" is derived first, the event appended right after.)
    gone = wait_for(lambda: [e for e in bob.events(cursor) if e["type"] == "share.removed"])
    assert len(gone) == 1 and gone[0]["file_id"] == folder["id"]
    assert gone[0]["owner"] == alice.username
    # Leaving again, or leaving what was never shared, says so; ids reveal nothing.
    assert bob.http.delete(f"/api/shared/{folder['id']}").status_code == 404
    mine = alice.upload("/mine.txt", b"x")
    r = bob.http.delete(f"/api/shared/{mine['id']}")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_shared"
    assert bob.http.delete("/api/shared/not-an-id").status_code == 404
    # The owner can share it again afterwards.
    assert share(alice, folder["id"], bob.username, "viewer").status_code == 201
    assert wait_for(lambda: shared_items(bob))


def test_the_view_preference_follows_the_user(alice: User) -> None:
    assert alice.http.get("/api/me").json()["view"] == "list"
    r = alice.http.put("/api/me/preferences", json={"view": "grid"})
    assert r.status_code == 200 and r.json()["view"] == "grid"
    assert alice.http.get("/api/me").json()["view"] == "grid"
    bad = alice.http.put("/api/me/preferences", json={"view": "mosaic"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_view"
    assert alice.http.put("/api/me/preferences", json={}).status_code == 400
    assert alice.http.get("/api/me").json()["view"] == "grid"
    anon = httpx.put(f"{alice.base_url}/api/me/preferences", json={"view": "list"})
    assert anon.status_code == 401


def test_activity_lists_who_did_what_in_a_folder_newest_first(alice: User, bob: User) -> None:
    team = alice.http.post("/api/folder", json={"path": "/Team"}).json()
    alice.upload("/Team/a.txt", b"a")
    alice.upload("/Elsewhere/x.txt", b"x")
    assert share(alice, team["id"], bob.username, "editor").status_code == 201
    assert wait_for(lambda: shared_items(bob))
    reg = bob.http.post(
        "/api/batch/upload",
        json={
            "files": [
                {
                    "parent_id": team["id"],
                    "name": "from-bob.txt",
                    "size": 1,
                    "data": "Yg==",
                    "chunks": [
                        {
                            "sha256": hashlib.sha256(b"b").hexdigest(),
                            "size": 1,
                        }
                    ],
                }
            ]
        },
    )
    assert reg.json()["results"][0]["status"] == "committed", reg.text
    a = alice.http.get("/api/file", params={"path": "/Team"}).json()["items"]
    a_id = next(i["id"] for i in a if i["name"] == "a.txt")
    alice.http.patch(f"/api/file/{a_id}", json={"name": "renamed.txt"})

    def activity(user: User, **params: str) -> dict:
        r = user.http.get("/api/activity", params=params)
        assert r.status_code == 200, r.text
        return r.json()

    def seen(user: User, **params: str) -> list[tuple]:
        return [(i["type"], i["path"], i["actor"]) for i in activity(user, **params)["items"]]

    mine = wait_for(lambda: len(seen(alice, path="/Team")) >= 3 and seen(alice, path="/Team"))
    assert mine[:3] == [
        ("file.moved", "/Team/renamed.txt", alice.username),
        ("file.created", "/Team/from-bob.txt", bob.username),
        ("file.created", "/Team/a.txt", alice.username),
    ]
    assert all(not p.startswith("/Elsewhere") for _, p, _ in mine)
    body = activity(alice, path="/Team")
    assert body["folder"] == "/Team" and body["complete"] is True
    # Bob sees the same folder by id, with its paths as he sees them, and nothing else:
    # not his own folder that has the same name.
    bob.upload("/Team/bobs-own.txt", b"his")
    assert ("file.created", "/Team/bobs-own.txt", bob.username) in seen(bob, path="/Team")
    theirs = seen(bob, id=team["id"])
    assert all(p != "/Team/bobs-own.txt" for _, p, _ in theirs)
    assert ("file.created", "/Team/from-bob.txt", bob.username) in theirs
    assert all(p.startswith("/Team") for _, p, _ in theirs)
    # Ids of folders one cannot see are 404; a file is not a folder.
    stranger = User(alice.base_url)
    assert stranger.http.get("/api/activity", params={"id": team["id"]}).status_code == 404
    assert alice.http.get("/api/activity", params={"id": a_id}).status_code == 400
    assert alice.http.get("/api/activity", params={"path": "/Team", "limit": 0}).status_code == 400


def test_pages_render_search_and_activity_for_a_session(alice: User) -> None:
    alice.upload("/Docs/Résumé.txt", b"cv")
    web = httpx.Client(base_url=alice.base_url, follow_redirects=False)
    r = web.post(
        "/login",
        data={"username": alice.username, "password": alice.password, "next": "/files"},
        headers={"Origin": alice.base_url},
    )
    assert r.status_code in (302, 303), r.text
    page = web.get("/search", params={"q": "resume"})
    assert page.status_code == 200 and "Résumé.txt" in page.text and "<h1>" in page.text
    fragment = web.get("/search", params={"q": "resume"}, headers={"HX-Request": "true"})
    assert fragment.text.lstrip().startswith('<div id="listing"')
    assert "Nothing is named like that." in web.get("/search", params={"q": "zzz"}).text
    assert "type something" not in web.get("/search").text  # an empty box is no error
    panel = web.get("/activity", params={"path": "/Docs"})
    assert panel.status_code == 200 and "added" in panel.text and "Résumé.txt" in panel.text
    files = web.get("/files", params={"path": "/Docs"}).text
    assert "<h1>Docs</h1>" in files and 'id="storage"' in files and "2 B used" in files
