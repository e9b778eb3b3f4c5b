"""The authorization matrix: every /api route x every kind of caller, expected status.

Callers: the owner, a viewer and an editor of the shared folder, a stranger, anonymous,
and a recipient whose share was revoked. A stranger (or a revoked recipient) must get
exactly the answer a non-existent id gets, so ids reveal nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import httpx
import pytest

from tests.conftest import User, manifest

ROLES = ("anonymous", "stranger", "revoked", "viewer", "editor", "owner")
MISSING_ID = "0123456789abcdef01234567"


@dataclass
class World:
    clients: dict[str, httpx.Client]
    users: dict[str, User]
    folder: dict  # shared with viewer and editor (and once with revoked)
    file: dict  # inside the folder
    private: dict  # the owner's, shared with nobody
    upload_id: str  # the owner's pending upload of `file`
    link_token: str


@pytest.fixture(scope="module")
def world(base_url: str) -> World:
    owner, viewer, editor, stranger, revoked, bystander = (User(base_url) for _ in range(6))
    folder = owner.http.post("/api/folder", json={"path": "/Matrix"}).json()
    file = owner.upload("/Matrix/doc.txt", b"matrix doc")
    private = owner.upload("/Private/mine.txt", b"mine")
    for user, role in ((viewer, "viewer"), (editor, "editor"), (revoked, "viewer")):
        r = owner.http.post(
            f"/api/file/{folder['id']}/share", json={"username": user.username, "role": role}
        )
        assert r.status_code == 201
    assert (
        owner.http.delete(f"/api/file/{folder['id']}/share/{revoked.username}").status_code == 204
    )
    pending = owner.http.post(
        "/api/file", json={"file_id": file["id"], **manifest(b"next version " * 100)}
    ).json()
    token = owner.http.post(f"/api/file/{folder['id']}/links", json={}).json()["token"]
    users = {
        "owner": owner,
        "viewer": viewer,
        "editor": editor,
        "stranger": stranger,
        "revoked": revoked,
        "bystander": bystander,  # only ever the subject of the owner's share calls
    }
    clients = {name: u.http for name, u in users.items() if name != "bystander"}
    clients["anonymous"] = httpx.Client(base_url=base_url, timeout=30)
    return World(clients, users, folder, file, private, pending["upload_id"], token)


def expect(
    anonymous: int, stranger: int, revoked: int, viewer: int, editor: int, owner: int
) -> dict[str, int]:
    return dict(zip(ROLES, (anonymous, stranger, revoked, viewer, editor, owner), strict=True))


READ = expect(401, 404, 404, 200, 200, 200)
WRITE = expect(401, 404, 404, 403, 201, 201)
MANAGE = expect(401, 404, 404, 403, 403, 200)
PRIVATE = expect(401, 404, 404, 404, 404, 200)

Request = Callable[[World, str, httpx.Client], httpx.Response]


def body(data: bytes) -> dict:
    return manifest(data)


# (name, request(world, role, client), expected status per role). Destructive calls on
# shared objects come last, so the owner's own delete runs after everyone else's tries.
ROUTES: list[tuple[str, Request, dict[str, int]]] = [
    ("GET file", lambda w, r, c: c.get(f"/api/file/{w.file['id']}"), READ),
    ("GET folder", lambda w, r, c: c.get(f"/api/file/{w.folder['id']}"), READ),
    ("GET list by id", lambda w, r, c: c.get("/api/file", params={"id": w.folder["id"]}), READ),
    ("GET content", lambda w, r, c: c.get(f"/api/file/{w.file['id']}/content"), READ),
    ("GET private", lambda w, r, c: c.get(f"/api/file/{w.private['id']}"), PRIVATE),
    (
        "GET private content",
        lambda w, r, c: c.get(f"/api/file/{w.private['id']}/content"),
        PRIVATE,
    ),
    (
        "GET list owner's path",
        lambda w, r, c: c.get("/api/file", params={"path": "/Matrix"}),
        expect(401, 404, 404, 404, 404, 200),
    ),
    (
        "POST upload into folder",
        lambda w, r, c: c.post(
            "/api/file", json={"parent_id": w.folder["id"], "name": f"{r}.bin", **body(b"u")}
        ),
        WRITE,
    ),
    (
        "POST new version by id",
        lambda w, r, c: c.post("/api/file", json={"file_id": w.file["id"], **body(r.encode())}),
        WRITE,
    ),
    (
        "POST upload into private",
        lambda w, r, c: c.post("/api/file", json={"file_id": w.private["id"], **body(r.encode())}),
        expect(401, 404, 404, 404, 404, 201),
    ),
    (
        "POST commit someone's upload",
        lambda w, r, c: c.post(f"/api/file/{w.file['id']}/commit", json={"upload_id": w.upload_id}),
        # The editor may commit to the file, but not the owner's upload session; the
        # owner's own commit is refused only because no chunk was sent.
        expect(401, 404, 404, 403, 404, 409),
    ),
    (
        "POST folder inside",
        lambda w, r, c: c.post("/api/folder", json={"parent_id": w.folder["id"], "name": r}),
        WRITE,
    ),
    (
        "PATCH rename inside",
        lambda w, r, c: c.patch(f"/api/file/{w.file['id']}", json={"name": f"doc-{r}.txt"}),
        expect(401, 404, 404, 403, 200, 200),
    ),
    (
        "PATCH private",
        lambda w, r, c: c.patch(f"/api/file/{w.private['id']}", json={"name": f"m-{r}.txt"}),
        expect(401, 404, 404, 404, 404, 200),
    ),
    ("GET shares", lambda w, r, c: c.get(f"/api/file/{w.folder['id']}/share"), MANAGE),
    (
        "POST share",
        lambda w, r, c: c.post(
            f"/api/file/{w.folder['id']}/share",
            json={"username": w.users["bystander"].username, "role": "viewer"},
        ),
        expect(401, 404, 404, 403, 403, 201),
    ),
    (
        "DELETE share",
        lambda w, r, c: c.delete(
            f"/api/file/{w.folder['id']}/share/{w.users['bystander'].username}"
        ),
        expect(401, 404, 404, 403, 403, 204),
    ),
    (
        "POST link",
        lambda w, r, c: c.post(f"/api/file/{w.folder['id']}/links", json={}),
        expect(401, 404, 404, 403, 403, 201),
    ),
    ("GET links", lambda w, r, c: c.get(f"/api/file/{w.folder['id']}/links"), MANAGE),
    (
        "DELETE link",
        lambda w, r, c: c.delete(f"/api/links/{w.link_token}"),
        expect(401, 404, 404, 404, 404, 204),
    ),
    ("GET shared", lambda w, r, c: c.get("/api/shared"), expect(401, 200, 200, 200, 200, 200)),
    (
        "GET events",
        lambda w, r, c: c.get("/api/file/events"),
        expect(401, 200, 200, 200, 200, 200),
    ),
    ("GET me", lambda w, r, c: c.get("/api/me"), expect(401, 200, 200, 200, 200, 200)),
    (
        "DELETE file inside",
        lambda w, r, c: c.delete(f"/api/file/{w.file['id']}"),
        expect(401, 404, 404, 403, 204, 404),  # the editor deleted it first
    ),
    (
        "PATCH shared folder itself",
        lambda w, r, c: c.patch(f"/api/file/{w.folder['id']}", json={"name": f"M-{r}"}),
        expect(401, 404, 404, 403, 403, 200),
    ),
    (
        "DELETE shared folder itself",
        lambda w, r, c: c.delete(f"/api/file/{w.folder['id']}"),
        expect(401, 404, 404, 403, 403, 204),
    ),
]


def test_authorization_matrix(world: World) -> None:
    failures = []
    for name, request, expected in ROUTES:
        for role in ROLES:
            response = request(world, role, world.clients[role])
            if response.status_code != expected[role]:
                failures.append(f"{name} as {role}: {response.status_code} != {expected[role]}")
            elif response.status_code >= 400:
                error = response.json()["error"]
                assert error["code"] and error["message"], (name, role)
    assert not failures, "\n".join(failures)


def test_a_stranger_cannot_tell_a_real_id_from_a_missing_one(world: World) -> None:
    stranger = world.clients["stranger"]
    for suffix, method in [("", "GET"), ("/content", "GET"), ("/share", "GET"), ("", "PATCH")]:
        kwargs = {"json": {"name": "x"}} if method == "PATCH" else {}
        real = stranger.request(method, f"/api/file/{world.private['id']}{suffix}", **kwargs)
        fake = stranger.request(method, f"/api/file/{MISSING_ID}{suffix}", **kwargs)
        assert (real.status_code, real.json()) == (fake.status_code, fake.json())


def test_nothing_of_the_owners_leaks_into_other_feeds_or_lists(world: World) -> None:
    for role in ("stranger", "revoked"):
        client = world.clients[role]
        feed = client.get("/api/file/events", params={"cursor": 0, "limit": 1000}).json()
        assert all("Private" not in (e["path"] or "") for e in feed["events"]), role
        assert all(i["name"] != "Private" for i in client.get("/api/shared").json()["items"])
    # The revoked recipient saw the share come and go, nothing inside it.
    revoked_feed = world.clients["revoked"].get("/api/file/events", params={"cursor": 0}).json()
    assert {e["type"] for e in revoked_feed["events"]} <= {"share.added", "share.removed"}
