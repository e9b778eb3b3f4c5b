"""Events tell every recipient the whole truth (in the style of Zulip's `verify_action`).

A scripted sequence of actions (uploads, edits by owner and editor, moves into and out of
a share, renames, a folder trash and restore, a folder move, share and revoke) runs
against a real stack. After each action every user's client-side model, built only from
their own event feed (from the cursor they held), must equal a fresh listing of what they
can see: for the owner, for an editor, for a viewer, and for a recipient whose share is
revoked midway. Like a real client, a model re-lists a subtree only where an event says a
whole subtree appeared (share.added, a restored folder); everything else comes from the
events alone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import httpx

from tests.conftest import User, manifest

Entry = tuple[str, str, str | None]  # (file id, kind, content hash)


def _under(path: str, root: str) -> bool:
    key, root_key = path.casefold(), root.casefold()
    return key == root_key or key.startswith(root_key + "/")


@dataclass
class Model:
    """What one user's client believes exists, by path as that user sees it."""

    user: User
    cursor: int = 0
    tree: dict[str, Entry] = field(default_factory=dict)

    def listing(self, path: str | None = None, folder_id: str | None = None) -> dict[str, Entry]:
        """Everything under a folder, recursively (a fresh listing, as a client makes)."""
        out: dict[str, Entry] = {}
        todo = [{"path": path} if folder_id is None else {"id": folder_id}]
        while todo:
            params = todo.pop()
            cursor = None
            while True:
                query = {**params, "limit": 1000, **({"cursor": cursor} if cursor else {})}
                r = self.user.http.get("/api/file", params=query)
                assert r.status_code == 200, r.text
                body = r.json()
                for item in body["items"]:
                    out[item["path"].casefold()] = (item["id"], item["kind"], item["content_hash"])
                    if item["kind"] == "folder":
                        todo.append({"id": item["id"]})
                cursor = body["cursor"]
                if not cursor:
                    break
        return out

    def fresh(self, owner: bool) -> dict[str, Entry]:
        if owner:
            return self.listing("/")
        state: dict[str, Entry] = {}
        for item in self.user.http.get("/api/shared").json()["items"]:
            state[item["path"].casefold()] = (item["id"], item["kind"], item["content_hash"])
            if item["kind"] == "folder":
                state.update(self.listing(folder_id=item["id"]))
        return state

    def start(self, owner: bool) -> None:
        """Register: the cursor first, then the state, so nothing falls in between."""
        self.cursor = self.user.http.get("/api/file/events", params={"cursor": "latest"}).json()[
            "cursor"
        ]
        self.tree = self.fresh(owner)

    def remove(self, path: str) -> None:
        for key in [k for k in self.tree if _under(k, path)]:
            del self.tree[key]

    def apply(self, event: dict) -> None:
        kind, path = event["type"], event.get("path") or ""
        entry = (event["file_id"], event["kind"], event.get("content_hash"))
        if kind in ("file.created", "file.updated"):
            self.tree[path.casefold()] = entry
        elif kind == "file.moved":
            old = event["old_path"].casefold()
            for key in [k for k in self.tree if _under(k, old)]:
                moved = path.casefold() + key[len(old) :]
                self.tree[moved] = self.tree.pop(key)
            self.tree[path.casefold()] = entry
        elif kind == "file.deleted":
            self.remove(path)
        elif kind == "file.restored":
            self.tree[path.casefold()] = entry
            if event["kind"] == "folder":  # it comes back with everything trashed with it
                self.tree.update(self.listing(folder_id=event["file_id"]))
        elif kind == "share.added" and event.get("username") == self.user.username:
            root = self.user.http.get(f"/api/file/{event['file_id']}").json()
            self.tree[root["path"].casefold()] = (root["id"], root["kind"], root["content_hash"])
            if root["kind"] == "folder":
                self.tree.update(self.listing(folder_id=root["id"]))
        elif kind == "share.removed" and event.get("username") == self.user.username:
            self.remove("/" + event["path"].rsplit("/", 1)[-1])

    def catch_up(self) -> None:
        while True:
            body = self.user.http.get(
                "/api/file/events", params={"cursor": self.cursor, "limit": 1000}
            ).json()
            for event in body["events"]:
                self.apply(event)
            self.cursor = body["cursor"]
            if not body["has_more"]:
                return


def upload_into(user: User, parent_id: str, name: str, data: bytes) -> dict:
    reg = user.http.post("/api/file", json={"parent_id": parent_id, "name": name, **manifest(data)})
    assert reg.status_code == 201, reg.text
    body = reg.json()
    for m in body["missing"]:
        assert httpx.put(m["url"], content=data, headers=m["headers"]).status_code == 201
    r = user.http.post(f"/api/file/{body['file_id']}/commit", json={"upload_id": body["upload_id"]})
    assert r.status_code == 200, r.text
    return r.json()


def test_every_users_events_rebuild_exactly_what_a_fresh_listing_shows(base_url: str) -> None:
    owner, editor, viewer, revoked = (User(base_url) for _ in range(4))
    models = {
        name: Model(u)
        for name, u in (
            ("owner", owner),
            ("editor", editor),
            ("viewer", viewer),
            ("revoked", revoked),
        )
    }
    for name, model in models.items():
        model.start(owner=name == "owner")

    def check(step: str) -> None:
        """Every model, caught up from its feed, equals a fresh listing (events may take
        a moment to reach recipients: late is allowed, wrong or missing is not)."""
        for name, model in models.items():
            deadline = time.monotonic() + 30
            while True:
                model.catch_up()
                fresh = model.fresh(owner=name == "owner")
                if model.tree == fresh or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            missing = {k: v for k, v in fresh.items() if model.tree.get(k) != v}
            extra = {k: v for k, v in model.tree.items() if fresh.get(k) != v}
            assert not missing and not extra, (
                f"after {step!r}, {name}'s events disagree with a fresh listing:\n"
                f"  not learned from events: {missing}\n  wrongly believed: {extra}"
            )

    http = owner.http
    team = http.post("/api/folder", json={"path": "/Team"}).json()
    docs = http.post("/api/folder", json={"path": "/Team/Docs"}).json()
    private = http.post("/api/folder", json={"path": "/Private"}).json()
    p = owner.upload("/Private/p.txt", b"private note")
    check("folders and a private file")

    for user, role in ((editor, "editor"), (viewer, "viewer"), (revoked, "viewer")):
        r = http.post(
            f"/api/file/{team['id']}/share", json={"username": user.username, "role": role}
        )
        assert r.status_code == 201
    check("share /Team with three people")

    a = owner.upload("/Team/Docs/a.txt", b"version one")
    check("owner uploads into the share")

    b = upload_into(editor, docs["id"], "b.txt", b"from the editor")
    check("editor uploads into the share")

    owner.upload("/Team/Docs/a.txt", b"version two, longer")
    check("owner edits a file")

    assert http.patch(f"/api/file/{p['id']}", json={"path": "/Team/p.txt"}).status_code == 200
    check("move a file into the share")

    assert http.patch(f"/api/file/{b['id']}", json={"path": "/Private/b.txt"}).status_code == 200
    check("move a file out of the share")

    r = editor.http.patch(f"/api/file/{a['id']}", json={"name": "a2.txt"})
    assert r.status_code == 200, r.text
    check("editor renames a file")

    assert http.delete(f"/api/file/{team['id']}/share/{revoked.username}").status_code == 204
    check("revoke one recipient")

    assert http.delete(f"/api/file/{docs['id']}").status_code == 204
    check("trash a folder inside the share")

    assert http.post(f"/api/trash/{docs['id']}/restore", json={}).status_code == 200
    check("restore it")

    r = http.patch(f"/api/file/{docs['id']}", json={"path": "/Team/Papers"})
    assert r.status_code == 200, r.text
    check("rename the folder (its files move with it)")

    r = http.post(
        f"/api/file/{private['id']}/share", json={"username": viewer.username, "role": "viewer"}
    )
    assert r.status_code == 201
    check("share a second folder with the viewer")

    assert http.delete(f"/api/file/{p['id']}").status_code == 204
    check("trash a file")

    assert http.delete(f"/api/file/{team['id']}").status_code == 204
    check("trash the shared folder itself")
