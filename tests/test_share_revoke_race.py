"""A change fanned out late must not reach a recipient after their share was revoked.

Found by the soak (bench/soak.py): a file created in a shared folder two seconds before
the owner revoked a viewer reached the viewer's feed *after* its share.removed, so the
viewer's devices, replaying their feed, brought the file back into a folder they had just
dropped (a fresh listing no longer showed it). Here the race is made certain: a web
instance whose inline fan-out waits (failpoint `fanout.later`) takes the upload, the
revoke goes through another instance, and the late event lands after the share.removed.
"""

from __future__ import annotations

import httpx
from pymongo import MongoClient

from tests.conftest import User, manifest
from tests.stack import Stack
from tests.test_sharing import wait_for


def test_a_late_fan_out_after_a_revoke_is_never_shown(stack: Stack, base_url: str) -> None:
    owner, viewer = User(base_url), User(base_url)
    team = owner.http.post("/api/folder", json={"path": "/Team"}).json()
    r = owner.http.post(
        f"/api/file/{team['id']}/share", json={"username": viewer.username, "role": "viewer"}
    )
    assert r.status_code == 201
    assert wait_for(lambda: any(e["type"] == "share.added" for e in viewer.events(0)))
    cursor = viewer.http.get("/api/file/events", params={"cursor": "latest"}).json()["cursor"]

    slow = stack.start_web("web-late-fanout", COFFER_FAILPOINTS="fanout.later=3")
    try:
        via_slow = httpx.Client(
            base_url=stack.url("web-late-fanout"),
            headers={"Authorization": f"Bearer {owner.token}"},
        )
        data = b"written just before the revoke"
        reg = via_slow.post(
            "/api/file", json={"parent_id": team["id"], "name": "late.txt", **manifest(data)}
        ).json()
        for m in reg["missing"]:
            assert httpx.put(m["url"], content=data, headers=m["headers"]).status_code == 201
        commit = {"upload_id": reg["upload_id"]}
        r = via_slow.post(f"/api/file/{reg['file_id']}/commit", json=commit)
        assert r.status_code == 200, r.text
        # The viewer's copy of that event is still waiting in the slow instance.
        r = owner.http.delete(f"/api/file/{team['id']}/share/{viewer.username}")
        assert r.status_code == 204
        # Wait for the late fan-out to land in the viewer's feed (stored, whether shown
        # or not), and for the share.removed, which the worker appends.
        with MongoClient(stack.env["MONGODB_URL"]) as mongo:
            late = {"recipient_id": viewer.id, "file_id": reg["file_id"]}
            assert wait_for(lambda: mongo.coffer.events.find_one(late)), "no late fan-out"
    finally:
        slow.stop()

    assert wait_for(lambda: any(e["type"] == "share.removed" for e in viewer.events(cursor)))
    events = viewer.events(cursor)
    types = [(e["type"], e["path"]) for e in events]
    assert ("share.removed", "/Team") in types, types
    removed_at = types.index(("share.removed", "/Team"))
    after = [t for t in types[removed_at + 1 :] if t[1].startswith("/Team")]
    assert after == [], f"events of a revoked share shown after its share.removed: {after}"
    # Nothing of the folder is visible to the viewer any more: what the feed says holds.
    assert viewer.http.get("/api/shared").json()["items"] == []
    assert viewer.http.get(f"/api/file/{reg['file_id']}").status_code == 404
