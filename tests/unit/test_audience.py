"""Who sees what of a change (`deliveries`) and who may detach a node (`Access`), as tables.

A change's audience is fixed by its writer: each recipient besides the owner with the
shared root they see the node through before (`old`) and after (`new`) the change, and
for a trashed or restored folder the shared items below it (`roots`).
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from app.acl.access import OWNER, Access
from app.acl.audience import deliveries
from app.db.outbox import AudienceEntry, Change

OWNER_ID, BOB, CAROL = "owner", "bob", "carol"


def change(
    type_: str, path: str, old_path: str | None = None, audience: list[AudienceEntry] = ()
) -> Change:
    return {
        "id": "c1",
        "type": type_,
        "file_id": "f1",
        "owner_id": OWNER_ID,
        "path": path,
        "old_path": old_path,
        "kind": "file",
        "version": 2,
        "size": 10,
        "content_hash": "h",
        "actor": "owner",
        "at": datetime(2026, 11, 30, tzinfo=UTC),
        "audience": list(audience),
        "owner": "owner",
    }


TEAM = ["/Work/Team", "Team"]  # bob's view: /Work/Team is "/Team" for him
ARCHIVE = ["/Work/Archive", "Archive"]

# (what happened, recipient, [(type, path, old_path)] they get)
CASES = [
    (
        "the owner sees any change as made",
        change("file.moved", "/Work/Team/b.txt", "/Work/Team/a.txt"),
        OWNER_ID,
        [("file.moved", "/Work/Team/b.txt", "/Work/Team/a.txt")],
    ),
    (
        "someone not in the audience (a stranger, a revoked recipient) gets nothing",
        change("file.updated", "/Work/Team/a.txt", audience=[{"id": BOB, "new": TEAM}]),
        CAROL,
        [],
    ),
    (
        "a new file inside the share: its path under the recipient's root",
        change("file.created", "/Work/Team/Q3/a.txt", audience=[{"id": BOB, "new": TEAM}]),
        BOB,
        [("file.created", "/Team/Q3/a.txt", None)],
    ),
    (
        "a move inside the share: both paths under the root",
        change(
            "file.moved",
            "/Work/Team/b.txt",
            "/Work/Team/a.txt",
            [{"id": BOB, "new": TEAM, "old": TEAM}],
        ),
        BOB,
        [("file.moved", "/Team/b.txt", "/Team/a.txt")],
    ),
    (
        "a move into the share is a creation for the recipient",
        change("file.moved", "/Work/Team/a.txt", "/Private/a.txt", [{"id": BOB, "new": TEAM}]),
        BOB,
        [("file.created", "/Team/a.txt", None)],
    ),
    (
        "a move out of the share is a deletion for the recipient",
        change("file.moved", "/Private/a.txt", "/Work/Team/a.txt", [{"id": BOB, "old": TEAM}]),
        BOB,
        [("file.deleted", "/Team/a.txt", None)],
    ),
    (
        "a move from one share of the recipient into another",
        change(
            "file.moved",
            "/Work/Archive/a.txt",
            "/Work/Team/a.txt",
            [{"id": BOB, "new": ARCHIVE, "old": TEAM}],
        ),
        BOB,
        [("file.moved", "/Archive/a.txt", "/Team/a.txt")],
    ),
    (
        "renaming the shared folder itself renames the recipient's root",
        change(
            "file.moved",
            "/Work/Crew",
            "/Work/Team",
            [{"id": BOB, "new": ["/Work/Crew", "Crew"], "old": TEAM}],
        ),
        BOB,
        [("file.moved", "/Crew", "/Team")],
    ),
]


@pytest.mark.parametrize(("what", "the_change", "recipient", "expected"), CASES)
def test_deliveries(
    what: str, the_change: Change, recipient: str, expected: list[tuple[str, str, str | None]]
) -> None:
    got = [
        (fields["type"], fields["path"], fields.get("old_path"))
        for _, fields in deliveries(the_change, recipient)
    ]
    assert got == expected, what


def test_trashing_a_folder_above_a_share_deletes_the_recipients_root() -> None:
    trashed = change(
        "file.deleted",
        "/Work",
        audience=[{"id": BOB, "new": None, "old": None, "roots": [["s1", "Team", "folder"]]}],
    )
    [(delivery_id, fields)] = deliveries(trashed, BOB)
    assert delivery_id == "c1:s1"  # one event per root, each delivered exactly once
    assert (fields["type"], fields["file_id"], fields["path"]) == ("file.deleted", "s1", "/Team")
    assert fields["kind"] == "folder" and fields["content_hash"] is None
    assert deliveries(trashed, CAROL) == []


def test_every_delivery_of_a_change_has_its_own_id() -> None:
    """Feeds are unique on (recipient, delivery id): a retried fan-out adds nothing."""
    moved = change(
        "file.moved",
        "/Work/Team/a.txt",
        "/Work/Team/b.txt",
        [{"id": BOB, "new": TEAM, "old": TEAM, "roots": [["s2", "Sub", "folder"]]}],
    )
    ids = [delivery_id for delivery_id, _ in deliveries(moved, BOB)]
    assert len(ids) == len(set(ids)) == 2


# Renaming, moving or deleting takes a node out of its parent: the caller needs write
# access on the node and on its parent, and never on a node shared with them itself.
DETACH = [
    ("the owner", OWNER, True),
    ("editor of the folder above", Access("editor", parent_role="editor"), True),
    ("editor here, viewer on the parent", Access("editor", parent_role="viewer"), False),
    ("editor here, nothing on the parent", Access("editor", parent_role=None), False),
    ("editor through a grant on this very node", Access("editor", granted_here=True), False),
    ("viewer", Access("viewer", parent_role="viewer"), False),
    (
        "viewer here, editor above (cannot happen: the stronger grant wins)",
        Access("viewer", parent_role="editor"),
        False,
    ),
]


@pytest.mark.parametrize(("who", "access", "may"), DETACH)
def test_who_may_rename_move_or_delete(who: str, access: Access, may: bool) -> None:
    assert access.can_detach is may, who


def test_paths_are_shown_under_the_recipients_root() -> None:
    access = Access("viewer", root_id="s1", root_path="/Work/Team", root_name="Team")
    assert access.view_path("/Work/Team/Q3/a.txt") == "/Team/Q3/a.txt"
    assert OWNER.view_path("/Work/Team/a.txt") == "/Work/Team/a.txt"
