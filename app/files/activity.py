"""A folder's recent activity, as its viewer's own event feed recorded it.

Read from the caller's feed (the `events` collection, one document per change per
recipient), newest first, so it shows exactly what this user was told of and nothing of
the owner's tree outside what they can see: a recipient's events carry paths as they see
them. Filtering by folder happens after a bounded read of the newest `SCAN` events (one
indexed range walk on (recipient, seq)); a folder whose last change is older than that
shows what is in the window, and the panel says so through `complete`.
"""

from __future__ import annotations

import msgspec

from app.core import paths
from app.core.clock import iso
from app.core.query import match
from app.db.events import HOLE, Event
from app.files.scope import Caller, open_folder
from app.protocol import UPLOAD_STARTED

SCAN = 1000
HIDDEN = {HOLE, UPLOAD_STARTED}


class ActivityItem(msgspec.Struct):
    type: str
    path: str | None
    old_path: str | None
    kind: str | None
    actor: str | None
    size: int | None
    at: str


class ActivityOut(msgspec.Struct):
    folder: str  # the folder's path as the caller sees it
    items: list[ActivityItem]
    complete: bool  # False: older changes exist beyond what was read


def touches(event: Event, owner_id: str, folder: str) -> bool:
    """The change happened in `folder` of `owner_id`'s tree or below it (a move: on either
    side). The owner matters: a recipient sees a share at "/<name>", where a folder of
    their own by that name may be too."""
    if event.owner_id != owner_id:
        return False
    if folder == "/":
        return True
    return any(
        p is not None and p != folder and paths.within(p, folder)
        for p in (event.path, event.old_path)
    )


async def folder_activity(
    caller: Caller, raw_path: object, folder_id: str | None, limit: int
) -> ActivityOut:
    if folder_id is not None:
        scope, node = await open_folder(caller, folder_id)
        folder, owner_id = scope.out(node).path, node.owner_id
    else:
        folder = paths.normalize_path(raw_path if raw_path else "/")
        owner_id = caller.user_id
    limit = max(1, min(limit, 200))
    recent = await Event.find(match(recipient_id=caller.user_id)).sort("-seq").limit(SCAN).to_list()
    items = [
        ActivityItem(
            type=e.type,
            path=e.path,
            old_path=e.old_path,
            kind=e.kind,
            actor=e.actor,
            size=e.size,
            at=iso(e.at),
        )
        for e in recent
        if e.type not in HIDDEN and touches(e, owner_id, folder)
    ]
    return ActivityOut(folder=folder, items=items[:limit], complete=len(recent) < SCAN)
