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

SCAN = 2000
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


def touches(event: Event, folder: str) -> bool:
    """The change happened in `folder` or below it (a move: on either side)."""
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
        folder = scope.out(node).path
    else:
        folder = paths.normalize_path(raw_path if raw_path else "/")
    limit = max(1, min(limit, 200))
    recent = (
        await Event.find(match(recipient_id=caller.user_id))
        .sort("-seq")
        .limit(SCAN)
        .to_list()
    )
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
        if e.type not in HIDDEN and touches(e, folder)
    ]
    return ActivityOut(folder=folder, items=items[:limit], complete=len(recent) < SCAN)
