"""What to do with one path: the three-way comparison, as a pure function.

`decide(local, remote, base)` looks at what the local folder holds at a path, what the
server holds there, and what both held when they last agreed (the sync state), and names
one `Action`. It does no I/O: the sync (client/sync.py) gathers the facts (scans, hashes,
the state, a watcher's rename, a feed event), asks, and carries the answer out. So every
rule of the sync is in this file, and tests/unit/test_planner.py checks them as a table.

The rules, in short: only the side that changed since the last agreement is copied; both
changed to different bytes keeps ours as a conflicted copy; nothing is deleted unless it
is exactly what was last synced; a file that moved on one side (same file on the server,
same bytes locally) is moved on the other, not copied again; a file on one side where the
other has a folder is never resolved by destroying changed data.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Kind(StrEnum):
    """What is at a path."""

    FILE = "file"
    FOLDER = "folder"


@dataclass(frozen=True)
class Origin:
    """Where a file that arrived at a path by a rename on one side was last synced.

    `base` is what both sides held at `path` then; `other` is what the side that did not
    rename it holds at `path` now (None: nothing). The rename can be repeated on the other
    side only if that side still holds exactly `base` there.
    """

    path: str
    base: Side
    other: Side | None


@dataclass(frozen=True)
class Side:
    """What one side holds at a path, or (as the base) what both held at the last agreement.

    `content_hash` is a file's content hash; None means "changed since the base, not
    hashed" (a file known changed by its size or mtime alone): it equals nothing.
    `moved_from` is set when the file got here by a rename on this side (a watcher's
    rename, a server's move event, or a synced file's id or bytes found at a new path).
    """

    kind: Kind
    content_hash: str | None = None
    moved_from: Origin | None = None

    @classmethod
    def file(cls, content_hash: str | None, moved_from: Origin | None = None) -> Side:
        return cls(Kind.FILE, content_hash, moved_from)

    @classmethod
    def folder(cls) -> Side:
        return cls(Kind.FOLDER)


class Action(StrEnum):
    """What the sync does with a path."""

    NOTHING = "nothing"  # both sides and the state agree
    RECORD = "record"  # both sides hold the same: record that (ids, version, size, mtime)
    FORGET = "forget"  # gone from both sides: drop the state's entry
    UPLOAD = "upload"  # the local file is new or changed, the server's is not: send it
    DOWNLOAD = "download"  # the server's file is new or changed, the local is not: fetch it
    DELETE_LOCAL = "delete local"  # gone from the server, untouched here: delete it here
    DELETE_REMOTE = "delete remote"  # gone here, untouched there: trash it on the server
    CONFLICT = "conflict"  # both changed, differently: ours becomes a conflicted copy
    MOVE_LOCAL = "move local"  # moved on the server, untouched here: rename it here
    MOVE_REMOTE = "move remote"  # renamed here, untouched there: move it on the server
    MAKE_LOCAL_FOLDER = "make local folder"  # a new folder on the server
    MAKE_REMOTE_FOLDER = "make remote folder"  # a new folder here
    CLASH = "clash"  # a file on one side, a folder on the other: skip and report


def decide(local: Side | None, remote: Side | None, base: Side | None) -> Action:
    """The action for one path; None for a side (or the base) means nothing is there.

    Folders that are to be deleted (DELETE_LOCAL, DELETE_REMOTE) are deleted only when
    empty; that is checked when acting, after the files in them were dealt with.
    """
    if local is not None and remote is not None and local.kind is not remote.kind:
        return _clash(local, remote, base)
    move = _move(local, remote, base)
    if move is not None:
        return move
    present = local if local is not None else remote
    if present is None:
        return Action.NOTHING if base is None else Action.FORGET
    if base is not None and base.kind is not present.kind:
        base = None  # what was here was of the other kind: it says nothing about this one
    if present.kind is Kind.FOLDER:
        return _folder(local, remote, base)
    return _file(local, remote, base)


def same(a: Side | None, b: Side | None) -> bool:
    """Both hold the same: two folders, or two files with the same known bytes."""
    if a is None or b is None or a.kind is not b.kind:
        return False
    return a.kind is Kind.FOLDER or (
        a.content_hash is not None and a.content_hash == b.content_hash
    )


def _clash(local: Side, remote: Side, base: Side | None) -> Action:
    # A synced file replaced by a folder on one side: the other side's file gives way
    # when it is exactly what was last synced (its folder is made next). Any other mix
    # of a file and a folder would lose one of them: left for the user.
    if base is not None and base.kind is Kind.FILE:
        if local.kind is Kind.FILE and same(local, base):
            return Action.DELETE_LOCAL
        if remote.kind is Kind.FILE and same(remote, base):
            return Action.DELETE_REMOTE
    return Action.CLASH


def _move(local: Side | None, remote: Side | None, base: Side | None) -> Action | None:
    if (
        remote is not None
        and remote.moved_from is not None
        and local is None
        and remote.kind is Kind.FILE
        and same(remote.moved_from.other, remote.moved_from.base)
    ):
        # Moved on the server: rename ours too if it is as last synced at the old path
        # (content the server changed as well is downloaded after, as a delta).
        return Action.MOVE_LOCAL
    if (
        local is not None
        and local.moved_from is not None
        and remote is None
        and base is None
        and local.kind is Kind.FILE
    ):
        # Renamed here onto a free path, bytes unchanged, and the server still has the
        # file as last synced at the old path: move it there, no upload, history kept.
        # Renamed over a synced file (an editor's safe save) is an edit of that file.
        origin = local.moved_from
        if same(local, origin.base) and same(origin.other, origin.base):
            return Action.MOVE_REMOTE
    return None


def _folder(local: Side | None, remote: Side | None, base: Side | None) -> Action:
    if local is not None and remote is not None:
        return Action.NOTHING if base is not None else Action.RECORD
    if local is not None:
        return Action.DELETE_LOCAL if base is not None else Action.MAKE_REMOTE_FOLDER
    return Action.DELETE_REMOTE if base is not None else Action.MAKE_LOCAL_FOLDER


def _file(local: Side | None, remote: Side | None, base: Side | None) -> Action:
    if local is not None and remote is not None:
        if same(local, remote):
            # Also when nothing changed: the entry is refreshed (a touched file's mtime,
            # a new version with the same bytes), so the next pass need not re-read it.
            return Action.RECORD
        local_changed = not same(local, base)
        remote_changed = not same(remote, base)
        if local_changed and not remote_changed:
            return Action.UPLOAD
        if remote_changed and not local_changed:
            return Action.DOWNLOAD
        return Action.CONFLICT
    if local is not None:
        return Action.DELETE_LOCAL if same(local, base) else Action.UPLOAD
    return Action.DELETE_REMOTE if same(remote, base) else Action.DOWNLOAD
