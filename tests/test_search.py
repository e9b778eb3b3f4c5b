"""Search by name over the API: what a user finds, what they never see, paging, bad input."""

from __future__ import annotations

from pathlib import Path

import httpx
from bson import ObjectId
from pymongo import MongoClient

from tests.conftest import User
from tests.stack import Stack
from tests.test_sharing import share, shared_items, wait_for


def found(user: User, q: str, **params: object) -> list[dict]:
    r = user.http.get("/api/search", params={"q": q, **params})
    assert r.status_code == 200, r.text
    return r.json()["items"]


def paths_of(items: list[dict]) -> list[str]:
    return [i["path"] for i in items]


def test_finds_by_substring_ignoring_case_and_accents(alice: User) -> None:
    alice.upload("/Docs/Résumé Final.pdf", b"cv")
    alice.upload("/Docs/notes.txt", b"n")
    alice.upload("/Straße/plan.txt", b"p")
    alice.http.post("/api/folder", json={"path": "/Reports 2026"})
    for query in ("resume", "RÉSUMÉ", "sumé fin", "ésum"):
        assert paths_of(found(alice, query)) == ["/Docs/Résumé Final.pdf"], query
    assert paths_of(found(alice, "strasse")) == ["/Straße"]
    hit = found(alice, "reports")[0]
    assert (hit["kind"], hit["folder"], hit["folder_id"]) == ("folder", "/", None)
    hit = found(alice, "final")[0]
    docs = alice.http.get("/api/file", params={"path": "/"}).json()["items"]
    assert hit["folder"] == "/Docs"
    assert hit["folder_id"] == next(i["id"] for i in docs if i["name"] == "Docs")
    assert hit["size"] == 2 and hit["role"] == "owner"
    assert found(alice, "nothing-like-this") == []


def test_query_is_text_not_a_pattern(alice: User) -> None:
    alice.upload("/a+b (1).txt", b"x")
    alice.upload("/plain.txt", b"y")
    assert paths_of(found(alice, "+b (1")) == ["/a+b (1).txt"]
    assert found(alice, ".*") == []
    assert found(alice, "[") == []


def test_shared_items_are_found_with_the_recipients_view_and_others_never(
    alice: User, bob: User
) -> None:
    team = bob.http.post("/api/folder", json={"path": "/Work/Team"}).json()
    bob.upload("/Work/Team/budget report.xlsx", b"b")
    bob.upload("/Work/Team/Sub/report notes.txt", b"n")
    bob.upload("/Work/private report.txt", b"secret")
    single = bob.upload("/Work/report q3.pdf", b"q3")
    alice.upload("/my report.txt", b"mine")
    assert share(bob, team["id"], alice.username, "viewer").status_code == 201
    assert share(bob, single["id"], alice.username, "editor").status_code == 201
    assert wait_for(lambda: len(shared_items(alice)) == 2)

    hits = found(alice, "report")
    # Own tree first, then each share in the order of its id, each in path order.
    in_team = ["/Team/budget report.xlsx", "/Team/Sub/report notes.txt"]
    shares = sorted([(team["id"], in_team), (single["id"], ["/report q3.pdf"])])
    assert paths_of(hits) == ["/my report.txt", *[p for _, ps in shares for p in ps]]
    by_path = {h["path"]: h for h in hits}
    assert set(by_path) == {
        "/my report.txt",
        "/Team/budget report.xlsx",
        "/Team/Sub/report notes.txt",
        "/report q3.pdf",
    }
    assert by_path["/Team/Sub/report notes.txt"]["folder"] == "/Team/Sub"
    assert by_path["/Team/budget report.xlsx"]["role"] == "viewer"
    assert by_path["/Team/budget report.xlsx"]["owner"] == bob.username
    assert by_path["/Team/budget report.xlsx"]["folder_id"] == team["id"]
    shared_file = by_path["/report q3.pdf"]
    assert (shared_file["role"], shared_file["folder"], shared_file["folder_id"]) == (
        "editor",
        "",
        None,
    )
    # Bob's unshared file is not in Alice's results; Bob finds his own, not Alice's.
    assert "private" not in str(hits)
    assert paths_of(found(bob, "my report")) == []

    # A revoke takes the shared items out of her results at once (the ACL decides).
    assert bob.http.delete(f"/api/file/{team['id']}/share/{alice.username}").status_code == 204
    assert set(paths_of(found(alice, "report"))) == {"/my report.txt", "/report q3.pdf"}


def test_trash_renames_and_moves_show_at_once(alice: User) -> None:
    old = alice.upload("/draft-old.txt", b"1")
    gone = alice.upload("/draft-gone.txt", b"2")
    assert alice.http.delete(f"/api/file/{gone['id']}").status_code == 204
    r = alice.http.patch(f"/api/file/{old['id']}", json={"name": "final-version.txt"})
    assert r.status_code == 200, r.text
    assert found(alice, "draft") == []
    assert paths_of(found(alice, "final-ver")) == ["/final-version.txt"]
    alice.http.post("/api/folder", json={"path": "/Archive"})
    r = alice.http.patch(f"/api/file/{old['id']}", json={"path": "/Archive/final-version.txt"})
    assert r.status_code == 200, r.text
    assert found(alice, "final-ver")[0]["folder"] == "/Archive"


def test_pages_cover_every_hit_once_across_own_tree_and_shares(alice: User, bob: User) -> None:
    folder = bob.http.post("/api/folder", json={"path": "/Shared pics"}).json()
    for n in range(4):
        bob.upload(f"/Shared pics/pic {n}.jpg", bytes([n]))
    for n in range(5):
        alice.upload(f"/Pics/pic {n}.jpg", bytes([n]))
    assert share(bob, folder["id"], alice.username).status_code == 201
    assert wait_for(lambda: len(shared_items(alice)) == 1)
    everything = paths_of(found(alice, "pic", limit=200))
    pages, cursor = [], None
    while True:
        params = {"q": "pic", "limit": 3, **({"cursor": cursor} if cursor else {})}
        body = alice.http.get("/api/search", params=params).json()
        pages.append(paths_of(body["items"]))
        cursor = body["cursor"]
        if cursor is None:
            break
    flat = [p for page in pages for p in page]
    # /Pics and its 5 pictures, then "Shared pics" and its 4
    assert flat == everything and len(flat) == len(set(flat)) == 11
    assert all(len(page) <= 3 for page in pages) and len(pages) == 4


def test_bad_input_is_a_clear_400(alice: User) -> None:
    for params in ({"q": ""}, {"q": "   "}, {"q": "x" * 201}, {"q": "a", "cursor": "!!nope"}):
        r = alice.http.get("/api/search", params=params)
        assert r.status_code == 400, (params, r.text)
        assert r.json()["error"]["code"] in ("bad_query", "bad_cursor")
    assert alice.http.get("/api/search", params={"q": "a", "limit": 0}).status_code == 400
    assert alice.http.get("/api/search", params={"q": "a", "limit": 500}).status_code == 400
    assert httpx.get(f"{alice.base_url}/api/search", params={"q": "a"}).status_code == 401


def test_files_from_before_search_get_their_keys_on_start(alice: User, stack: Stack) -> None:
    f = alice.upload("/Ancient Écrit.txt", b"old")
    with MongoClient(stack.env["MONGODB_URL"]) as mongo:
        db = mongo.coffer
        db.files.update_one({"_id": ObjectId(f["id"])}, {"$unset": {"search_key": ""}})
        db.maintenance.delete_one({"_id": "search_keys"})
    assert found(alice, "ecrit") == []  # as on a database from before search
    stack.restart("web")
    assert wait_for(lambda: found(alice, "ecrit"), timeout=30)
    assert paths_of(found(alice, "ancient ecrit")) == ["/Ancient Écrit.txt"]


def test_coffer_find_prints_matches_with_paths(base_url: str, tmp_path: Path) -> None:
    from tests.test_client import Device

    user = User(base_url)
    user.upload("/Taxes/2025/Déclaration finale.pdf", b"tax")
    user.upload("/Taxes/receipts.zip", b"zip")
    device = Device(tmp_path, "finder", base_url, user)
    done = device.run("find", "declaration")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1 and lines[0].endswith("/Taxes/2025/Déclaration finale.pdf")
    assert lines[0].startswith("-") and " 3 " in lines[0]
    assert device.run("find", "nothing-here").returncode == 1
    bad = device.run("find", " ")
    assert bad.returncode == 2 and "type something" in bad.stderr


def test_nested_shares_are_searched_once_with_the_stronger_role(alice: User, bob: User) -> None:
    proj = alice.http.post("/api/folder", json={"path": "/Proj"}).json()
    sub = alice.http.post("/api/folder", json={"path": "/Proj/Sub"}).json()
    alice.upload("/Proj/top-needle.txt", b"1")
    alice.upload("/Proj/Sub/deep-needle.txt", b"2")
    assert share(alice, proj["id"], bob.username, "viewer").status_code == 201
    assert share(alice, sub["id"], bob.username, "editor").status_code == 201
    assert wait_for(lambda: len(shared_items(bob)) == 2)
    hits = {h["path"]: h for h in found(bob, "needle")}
    assert set(hits) == {"/Proj/top-needle.txt", "/Proj/Sub/deep-needle.txt"}
    assert hits["/Proj/top-needle.txt"]["role"] == "viewer"
    deep = hits["/Proj/Sub/deep-needle.txt"]
    assert deep["role"] == "editor"
    assert bob.http.get(f"/api/file/{deep['id']}").json()["role"] == "editor"


def test_a_forged_deeply_nested_cursor_is_a_400(alice: User) -> None:
    import base64

    forged = base64.urlsafe_b64encode(b"[" * 5000).decode()
    r = alice.http.get("/api/search", params={"q": "a", "cursor": forged})
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_cursor"
    r = alice.http.get("/api/search", params={"q": "a", "cursor": "x" * 20000})
    assert r.status_code == 400
