"""Who hears of a change, and how each recipient sees it.

The writer computes a change's audience just before its write (`audience_for`) and stores
it with the change, so fan-out needs no lookups and shows each recipient the paths as they
were at the change. `deliveries` turns a change into the events one recipient gets: the
owner sees the change as made; a share recipient sees paths under their shared root, a
move into their view as a creation and a move out as a deletion, and trashing a folder
above their root as the deletion of their root. Both are pure over their inputs (the one
query is `audience_for`'s read of the owner's grants), and tested as decision tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from beanie import PydanticObjectId

from app.core import paths
from app.core.clock import as_utc
from app.core.paths import relative_path
from app.core.query import match
from app.db.events import Event
from app.db.files import FileNode
from app.db.outbox import EVENT_FIELDS, AudienceEntry, Change
from app.db.sharing import ROLES, Share


@dataclass(frozen=True)
class OwnerShares:
    """An owner's live grants (file id, recipient id) and the shared nodes they are on."""

    grants: list[tuple[str, str]]
    roots: dict[str, FileNode]


NO_SHARES = OwnerShares([], {})


async def owner_shares(owner_id: str) -> OwnerShares:
    """Read once per write (or per batch): one indexed query, raw and projected; most
    owners share nothing, and then this is all a write pays for its audience."""
    grants = await (
        Share.get_pymongo_collection()
        .find(
            match(owner_id=owner_id, role={"$in": list(ROLES)}),
            {"file_id": 1, "user_id": 1},
        )
        .to_list()
    )
    if not grants:
        return NO_SHARES
    roots = {
        str(n.id): n
        for n in await FileNode.find(
            {"_id": {"$in": list({PydanticObjectId(g["file_id"]) for g in grants})}}
        ).to_list()
    }
    return OwnerShares([(g["file_id"], g["user_id"]) for g in grants], roots)


async def audience_for(
    owner_id: str,
    file_id: str,
    new_path: str,
    old_path: str | None,
    *,
    includes_descendants: bool = False,
) -> list[AudienceEntry]:
    """Recipients (other than the owner) of a change to `file_id`, with how each sees it
    (see `audience_in`)."""
    return audience_in(
        await owner_shares(owner_id),
        file_id,
        new_path,
        old_path,
        includes_descendants=includes_descendants,
    )


def audience_in(
    shares: OwnerShares,
    file_id: str,
    new_path: str,
    old_path: str | None,
    *,
    includes_descendants: bool = False,
) -> list[AudienceEntry]:
    """Recipients (other than the owner) of a change to `file_id`, with how each sees it.

    Computed by the writer just before its write, and stored with the change, so fan-out
    needs no lookups and shows each recipient the paths as they were at the change.
    Entries: {"id", "new": [root_path, root_name] | None, "old": [...] | None,
    "roots": [[root_id, root_name, kind], ...]} where `roots` lists shared items *below*
    a trashed or restored folder (their recipients see their own root go or come back).
    """
    out: dict[str, AudienceEntry] = {}
    for grant_file, user_id in shares.grants:
        root = shares.roots.get(grant_file)
        if root is None:
            continue
        if grant_file == file_id:
            root_new, root_old = new_path, old_path or new_path
        elif root.deleted_at is not None and not includes_descendants:
            continue
        else:
            root_new = root_old = root.path
        entry = out.setdefault(user_id, {"id": user_id, "new": None, "old": None})
        _, new_name = paths.split(root_new)
        if paths.within(new_path, root_new) and _outer(entry["new"], root_new):
            entry["new"] = [root_new, new_name]
            entry["new_root"] = grant_file
        if old_path is not None:
            _, old_name = paths.split(root_old)
            if paths.within(old_path, root_old) and _outer(entry["old"], root_old):
                entry["old"] = [root_old, old_name]
                entry["old_root"] = grant_file
        if (
            includes_descendants
            and grant_file != file_id
            and paths.within(root.path, new_path)
            and not paths.within(new_path, root.path)
        ):
            entry.setdefault("roots", []).append([grant_file, root.name, root.kind])
    return [e for e in out.values() if e["new"] or e["old"] or e.get("roots")]


def _outer(current: list[str] | None, candidate_root: str) -> bool:
    return current is None or len(candidate_root) < len(current[0])


def deliveries(change: Change, recipient: str) -> list[tuple[str, dict[str, Any]]]:
    """The events (delivery id, fields) that one recipient gets for a change.

    The owner sees the change as made. A share recipient sees paths relative to their
    shared root; a move into their view is a creation for them, a move out a deletion;
    trashing a folder above their root deletes their root for them. A recipient's events
    name the shared items they come through (`via`, for `through_live_shares`).
    """
    base = {k: change.get(k) for k in EVENT_FIELDS}
    if recipient == change["owner_id"]:
        return [(change["id"], base)]
    entry = next((e for e in change.get("audience", []) if e["id"] == recipient), None)
    if entry is None:
        return []
    via = [r for r in (entry.get("new_root"), entry.get("old_root")) if r]
    if via:
        base["via"] = sorted(set(via))
    out = []
    new, old = entry.get("new"), entry.get("old")
    if new and (old or change.get("old_path") is None):
        fields = {**base, "path": relative_path(change["path"], *new)}
        if old:
            fields["old_path"] = relative_path(change["old_path"], *old)
        out.append((change["id"], fields))
    elif new:
        path = relative_path(change["path"], *new)
        out.append((change["id"], {**base, "type": "file.created", "path": path, "old_path": None}))
    elif old:
        path = relative_path(change["old_path"], *old)
        out.append((change["id"], {**base, "type": "file.deleted", "path": path, "old_path": None}))
    for root_id, root_name, kind in entry.get("roots", []):
        out.append(
            (
                f"{change['id']}:{root_id}",
                {
                    **base,
                    "via": [root_id],
                    "file_id": root_id,
                    "path": "/" + root_name,
                    "old_path": None,
                    "kind": kind,
                    "version": None,
                    "size": None,
                    "content_hash": None,
                },
            )
        )
    return out


async def through_live_shares(recipient: str, events: list[Event]) -> list[Event]:
    """The events a recipient may still be shown: those that come through no share, or
    through a share of theirs granted since before the change (one indexed query).

    A change's audience is fixed when it is written, and its fan-out may land in a feed
    after a revocation's share.removed (measured in bench/soak.py: a file created in a
    shared folder two seconds before a revoke reached the feed after the share.removed,
    so the recipient's devices brought the file back into a folder they had dropped).
    Such an event can only become visible after the revoke, so hiding it at read time
    closes the race exactly. Events that came before the revoke and are read after it are
    hidden too: harmless, as the share.removed that follows drops the whole folder.
    """
    roots = {r for e in events if e.via for r in e.via}
    if not roots:
        return events
    granted = {
        g["file_id"]: _instant(g["created_at"])
        for g in await Share.get_pymongo_collection()
        .find(
            match(user_id=recipient, role={"$in": list(ROLES)}),
            {"file_id": 1, "created_at": 1},
        )
        .to_list()
    }

    def shown(event: Event) -> bool:
        if not event.via:
            return True
        return any(r in granted and granted[r] <= as_utc(event.at) for r in event.via)

    return [e for e in events if shown(e)]


def _instant(value: datetime | str) -> datetime:
    """A stored time as an aware datetime: nx-27017 keeps a datetime that a top-level
    `$set` wrote (a re-grant's `created_at`) as its string form."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return as_utc(value)
