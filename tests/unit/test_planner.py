"""The sync's decision table: `client.planner.decide(local, remote, base) -> Action`.

Each row names a situation, what the local side, the server and the base (the last
agreement) hold at one path, and the action the sync must take. `a` is the content last
synced, `b` a local edit, `c` a server edit; `?` is a local file known changed by its size
or mtime but not hashed (as the event path sees it).
"""

from __future__ import annotations

import itertools

import pytest

from client.planner import Action, Kind, Origin, Side, decide, same

F = Side.file
D = Side.folder()
A, B, C = "a" * 64, "b" * 64, "c" * 64
UNHASHED = None


def moved(h: str | None, other: Side | None) -> Side:
    """A file (bytes `h`) that arrived by a rename on its side, from a path where `a` was
    synced and where the other side now holds `other`."""
    return F(h, Origin("old/path", F(A), other))


ROWS: list[tuple[str, Side | None, Side | None, Side | None, Action]] = [
    # --- files, synced before (base a) -------------------------------------------------
    ("deleted on both sides", None, None, F(A), Action.FORGET),
    ("deleted here, untouched there", None, F(A), F(A), Action.DELETE_REMOTE),
    ("deleted here, changed there", None, F(C), F(A), Action.DOWNLOAD),
    ("untouched here, deleted there", F(A), None, F(A), Action.DELETE_LOCAL),
    ("untouched on both sides", F(A), F(A), F(A), Action.RECORD),
    ("untouched here, changed there", F(A), F(C), F(A), Action.DOWNLOAD),
    ("changed here, deleted there", F(B), None, F(A), Action.UPLOAD),
    ("changed here, untouched there", F(B), F(A), F(A), Action.UPLOAD),
    ("changed on both sides, differently", F(B), F(C), F(A), Action.CONFLICT),
    ("changed on both sides to the same bytes", F(B), F(B), F(A), Action.RECORD),
    ("changed back here to what was synced", F(A), F(C), F(A), Action.DOWNLOAD),
    ("changed here (unhashed), untouched there", F(UNHASHED), F(A), F(A), Action.UPLOAD),
    ("changed here (unhashed), changed there", F(UNHASHED), F(C), F(A), Action.CONFLICT),
    ("changed here (unhashed), deleted there", F(UNHASHED), None, F(A), Action.UPLOAD),
    # --- files, never synced (no base) -------------------------------------------------
    ("nothing anywhere", None, None, None, Action.NOTHING),
    ("created here", F(B), None, None, Action.UPLOAD),
    ("created there", None, F(C), None, Action.DOWNLOAD),
    ("created on both sides, differently", F(B), F(C), None, Action.CONFLICT),
    ("created on both sides, same bytes", F(B), F(B), None, Action.RECORD),
    ("created here (unhashed) and there", F(UNHASHED), F(C), None, Action.CONFLICT),
    # --- files where a folder was synced ---------------------------------------------
    ("folder replaced by a file here, gone there", F(B), None, D, Action.UPLOAD),
    ("folder replaced by a file there, gone here", None, F(C), D, Action.DOWNLOAD),
    ("folder replaced by the same file on both sides", F(B), F(B), D, Action.RECORD),
    ("folder replaced by different files", F(B), F(C), D, Action.CONFLICT),
    # --- folders ---------------------------------------------------------------------
    ("folder on both sides, not recorded", D, D, None, Action.RECORD),
    ("folder on both sides, synced", D, D, D, Action.NOTHING),
    ("folder created here", D, None, None, Action.MAKE_REMOTE_FOLDER),
    ("folder created there", None, D, None, Action.MAKE_LOCAL_FOLDER),
    ("folder deleted there (removed here if empty)", D, None, D, Action.DELETE_LOCAL),
    ("folder deleted here (removed there if empty)", None, D, D, Action.DELETE_REMOTE),
    ("folder deleted on both sides", None, None, D, Action.FORGET),
    ("file replaced by a folder on both sides", D, D, F(A), Action.RECORD),
    ("file replaced by a folder here, deleted there", D, None, F(A), Action.MAKE_REMOTE_FOLDER),
    ("file replaced by a folder there, deleted here", None, D, F(A), Action.MAKE_LOCAL_FOLDER),
    # --- a file on one side, a folder on the other -----------------------------------
    ("new file here, new folder there", F(B), D, None, Action.CLASH),
    ("new folder here, new file there", D, F(C), None, Action.CLASH),
    ("synced file replaced by a folder there", F(A), D, F(A), Action.DELETE_LOCAL),
    ("synced file replaced by a folder here", D, F(A), F(A), Action.DELETE_REMOTE),
    ("edited here, replaced by a folder there", F(B), D, F(A), Action.CLASH),
    ("edited here (unhashed), folder there", F(UNHASHED), D, F(A), Action.CLASH),
    ("replaced by a folder here, edited there", D, F(C), F(A), Action.CLASH),
    ("synced folder replaced by a file here", F(B), D, D, Action.CLASH),
    ("synced folder replaced by a file there", D, F(C), D, Action.CLASH),
    # --- moved on the server (remote file carries the synced file's id) --------------
    ("moved there, old copy here untouched", None, moved(A, F(A)), None, Action.MOVE_LOCAL),
    ("moved and edited there", None, moved(C, F(A)), None, Action.MOVE_LOCAL),
    ("moved there over a file deleted here", None, moved(A, F(A)), F(B), Action.MOVE_LOCAL),
    ("moved there, old copy edited here", None, moved(A, F(B)), None, Action.DOWNLOAD),
    ("moved there, old copy touched here", None, moved(A, F(UNHASHED)), None, Action.DOWNLOAD),
    ("moved there, old copy gone here", None, moved(A, None), None, Action.DOWNLOAD),
    ("moved there onto a new file here", F(B), moved(A, F(A)), None, Action.CONFLICT),
    ("moved there onto the same bytes here", F(A), moved(A, F(A)), None, Action.RECORD),
    ("moved there onto a folder here", D, moved(A, F(A)), None, Action.CLASH),
    # --- renamed here (local file carries where it was synced) -----------------------
    ("renamed here, server still as synced", moved(A, F(A)), None, None, Action.MOVE_REMOTE),
    ("renamed here, changed on the server", moved(A, F(C)), None, None, Action.UPLOAD),
    ("renamed here, deleted on the server", moved(A, None), None, None, Action.UPLOAD),
    ("renamed and edited here", moved(B, F(A)), None, None, Action.UPLOAD),
    ("renamed and touched here (unhashed)", moved(UNHASHED, F(A)), None, None, Action.UPLOAD),
    ("renamed here onto a path the server has", moved(A, F(A)), F(C), None, Action.CONFLICT),
    ("renamed here onto the same bytes there", moved(A, F(A)), F(A), None, Action.RECORD),
    # A rename onto a synced path replaces that file: an edit of it, with its history.
    ("renamed here over a synced file", moved(A, F(A)), F(C), F(C), Action.UPLOAD),
    ("renamed over a synced file also edited there", moved(A, F(A)), F(B), F(C), Action.CONFLICT),
    # --- safe saves: a temp file (never synced) renamed over the original ------------
    ("safe save", F(B), F(A), F(A), Action.UPLOAD),
    ("safe save of the same bytes", F(A), F(A), F(A), Action.RECORD),
    ("safe save while the server changed it", F(B), F(C), F(A), Action.CONFLICT),
    ("safe save after the server deleted it", F(B), None, F(A), Action.UPLOAD),
]


@pytest.mark.parametrize(
    ("local", "remote", "base", "expected"),
    [pytest.param(*row[1:], id=row[0]) for row in ROWS],
)
def test_decision_table(
    local: Side | None, remote: Side | None, base: Side | None, expected: Action
) -> None:
    assert decide(local, remote, base) is expected


def test_every_action_is_in_the_table() -> None:
    assert {row[-1] for row in ROWS} == set(Action)


def test_row_names_are_unique() -> None:
    names = [row[0] for row in ROWS]
    assert len(names) == len(set(names))


# Every combination over a small domain, for the rules that must hold whatever the case.
SIDES: list[Side | None] = [None, D, F(A), F(B), F(C), F(UNHASHED)]
BASES: list[Side | None] = [None, D, F(A)]


@pytest.mark.parametrize(("local", "remote", "base"), list(itertools.product(SIDES, SIDES, BASES)))
def test_nothing_changed_is_ever_deleted_or_overwritten(
    local: Side | None, remote: Side | None, base: Side | None
) -> None:
    action = decide(local, remote, base)
    if action is Action.DELETE_LOCAL:
        assert same(local, base)  # a folder: only if empty, checked when acting
    if action is Action.DELETE_REMOTE:
        assert same(remote, base)
    if action is Action.DOWNLOAD and local is not None:
        assert same(local, base)  # the local file is exactly what was synced
    if action is Action.UPLOAD and remote is not None:
        assert same(remote, base)
    if action is Action.CONFLICT:
        assert local is not None and remote is not None
        assert local.kind is remote.kind is Kind.FILE
    if action is Action.RECORD:
        assert same(local, remote)
    if action is Action.CLASH:
        assert local is not None and remote is not None and local.kind is not remote.kind


def test_sides_are_values() -> None:
    """Frozen and compared by value: the planner cannot change what it is given."""
    side = F(A)
    assert side == F(A) and hash(side) == hash(F(A))
    with pytest.raises(AttributeError):
        side.content_hash = B  # type: ignore[misc]
