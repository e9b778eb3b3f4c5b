"""Two-way sync of one local folder with a folder of the account: the passes.

Three-way comparison of every path: the local file, the server's file, and the state both
had when they last agreed (client/state.py). What to do with a path is decided by
client/planner.py (a pure function); this module gathers the facts it needs, asks, and
acts. Only the side that changed since is copied; when both changed to different content,
the server's version takes the real name and the local one is kept as
`name (conflicted copy DEVICE YYYY-MM-DD HHMMSS).ext` and uploaded. Nothing local is
deleted unless it is exactly what was last synced.

Three ways in:
- `reconcile`: the full pass. Walks the local tree, lists the remote one, pairs up moves,
  then makes folders (parents first), syncs files (several at once) and removes folders
  deleted on one side (children first).
- `sync_paths`: the targeted pass for files a watcher saw change or move. No tree walk, no
  remote listing: the server is taken to hold what was last agreed (an upload carries the
  version it was based on and a delete checks first, so a change there still surfaces).
- `apply_events`: simple remote file events applied directly.
The last two answer False whenever only the full pass can decide.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import json
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

from rich.progress import Progress

from app.protocol import (
    FILE_CREATED,
    FILE_DELETED,
    FILE_MOVED,
    FILE_RESTORED,
    FILE_UPDATED,
    UPLOAD_STARTED,
)
from app.protocol import Event as FeedEvent
from client.api import CofferClient
from client.bulk import Bulk, Download, Plan, Upload, fits_download, fits_upload
from client.errors import ApiError, ClientError, LocalFileChanged, ParentNotSynced
from client.hashing import Chunks, file_hashes
from client.ignore import Ignore
from client.planner import Action, Kind, Origin, Side, decide
from client.remote import Remote, RemoteItem, RemoteTree
from client.scanner import LocalFile, LocalTree, Scanner, lexists, unchanged
from client.state import Entry, SyncState
from client.streaming import Prefetcher
from client.transfer import Transfers, run_all

# Files a pass syncs at once: small files are bound by round trips (register, PUT,
# commit), so several in flight multiply throughput; a large file's chunks are already
# sent in parallel by the API client.
FILES_IN_PARALLEL = 8

FILE_CHANGES = (FILE_CREATED, FILE_UPDATED, FILE_RESTORED)


@dataclass
class Report:
    """What passes did (the `--once` JSON report): relative paths, per kind of change."""

    uploaded: list[str] = field(default_factory=list)
    downloaded: list[str] = field(default_factory=list)
    deleted_local: list[str] = field(default_factory=list)
    deleted_remote: list[str] = field(default_factory=list)
    moved: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # local trouble with a path, with reason

    def total(self) -> int:
        return sum(len(v) for v in vars(self).values())


def conflict_name(rel: str, device: str, when: datetime | None = None) -> str:
    p = PurePosixPath(rel)
    stamp = (when or datetime.now()).strftime("%Y-%m-%d %H%M%S")
    name = f"{p.stem} (conflicted copy {device} {stamp}){p.suffix}"
    return str(p.with_name(name)) if str(p.parent) != "." else name


def base_of(entry: Entry | None) -> Side | None:
    """What both sides held at the entry's path when they last agreed."""
    if entry is None:
        return None
    if entry.kind == Kind.FOLDER:
        return Side.folder()
    return Side.file(entry.content_hash)


def _records(entry: Entry | None, item: RemoteItem, lf: LocalFile) -> bool:
    """Whether the entry already says both sides hold `item` as the local file is now."""
    return (
        entry is not None
        and entry.chunks is not None
        and (entry.file_id, entry.version, entry.content_hash, entry.size, entry.mtime_ns)
        == (item["id"], item["version"], item["content_hash"], lf.size, lf.mtime_ns)
    )


def _entry_for(
    rel: str, item: RemoteItem, lf: LocalFile, content_hash: str, chunks: Chunks | None
) -> Entry:
    """The entry saying both sides hold these bytes at `rel`."""
    return Entry(
        rel, Kind.FILE, item["id"], item["version"], lf.size, lf.mtime_ns, content_hash, chunks
    )


def _kind(rel: str, files: dict[str, Any], folders: set[str] | dict[str, Any]) -> Kind | None:
    if rel in files:
        return Kind.FILE
    if rel in folders:
        return Kind.FOLDER
    return None


class Syncer:
    """Syncs one local folder with one remote folder."""

    def __init__(
        self,
        api: CofferClient,
        root: Path,
        remote_root: str,
        device: str,
        *,
        log: Callable[[str], None] = lambda _msg: None,
        progress: Progress | None = None,
    ) -> None:
        self.api = api
        self.root = root.resolve()
        self.device = device
        self.state = SyncState(self.root)
        self.ignore = Ignore(self.root)
        self.scanner = Scanner(self.root, self.ignore, self.state)
        self.remote = Remote(api, remote_root, self.state, self.ignore)
        self.transfers = Transfers(api, self.root, self.state, log=log, progress=progress)
        self.bulk = Bulk(api, self.root, self.state.dir / "tmp", log)
        self.prefetch = Prefetcher(
            api, self.state.dir / "tmp", log, reuse=self.transfers.local_chunks
        )
        self.ignore.excluded = self.excludes
        self.log = log
        self.report = Report()
        # Passes never overlap: each of the three ways in holds it throughout.
        self.lock = asyncio.Lock()

    # ---------------------------------------------------------------- selective sync

    @property
    def excludes(self) -> list[str]:
        """Folders this device leaves out (relative paths), remembered in its state."""
        return json.loads(self.state.get_meta("excludes") or "[]")

    def set_excludes(self, add: Sequence[str] = (), remove: Sequence[str] = ()) -> list[str]:
        """Leave more folders out, or take some back in (given as "/Photos", relative to
        the synced folder); the next pass applies it."""
        wanted = [e for e in self.excludes if e not in {r.strip("/") for r in remove}]
        for rel in (a.strip("/") for a in add):
            if rel and rel not in wanted:
                wanted.append(rel)
        self.state.set_meta("excludes", json.dumps(sorted(wanted)))
        self.ignore.excluded = sorted(wanted)
        return sorted(wanted)

    def _remove_left_out_copies(self) -> None:
        """Selective sync, as Dropbox and Nextcloud do it: the synced copies of a folder
        this device leaves out go from its disk (the server keeps them). A file changed
        here since it was synced stays (its entry goes, so taking the folder back in
        treats it as new: a conflicted copy if the server's differs)."""
        if not self.ignore.excluded:
            return
        left_out = {
            rel: e
            for rel, e in self.state.all().items()
            if any(rel == x or rel.startswith(x + "/") for x in self.ignore.excluded)
        }
        if not left_out:
            return
        for rel, e in left_out.items():
            if e.kind != Kind.FILE:
                continue
            try:
                st = (self.root / rel).lstat()
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode) and (st.st_size, st.st_mtime_ns) == (e.size, e.mtime_ns):
                (self.root / rel).unlink()
            else:
                self.log(f"kept {rel}: changed here, and not synced while its folder is left out")
        folders = [rel for rel, e in left_out.items() if e.kind == Kind.FOLDER]
        folders += [x for x in self.ignore.excluded if x not in left_out]
        for rel in sorted(set(folders), key=lambda r: r.count("/"), reverse=True):
            with contextlib.suppress(OSError):  # not empty (kept files) or not there
                (self.root / rel).rmdir()
        self.state.delete_many(list(left_out))
        self.log(f"removed the copies of {len(left_out)} left-out item(s) from this device")

    def discard_interrupted_downloads(self) -> None:
        self.transfers.discard_interrupted()

    def rel_of(self, remote: str) -> str | None:
        """The relative path of a server path, or None when outside the synced folder."""
        return self.remote.rel_of(remote)

    def local(self, rel: str) -> Path:
        return self.root / rel

    # ---------------------------------------------------------------- the full pass

    async def reconcile(self) -> Report:
        """One full pass: after it, both sides hold the same files (barring conflicts and
        skipped paths)."""
        async with self.lock:
            self.log("pass begins")
            self._remove_left_out_copies()  # once per left-out folder: little work
            start_cursor = await self.remote.latest_cursor()
            await self.remote.resolve_root()
            here = await asyncio.to_thread(self.scanner.scan)
            there = await self.remote.scan()
            await self._apply_remote_moves(there, here, self.state.all())
            await self._apply_local_moves(there, here, self.state.all())
            await self._sync_tree(here, there)
            # Every change before the pass began is covered by it: never replay those.
            if start_cursor is not None and start_cursor > int(self.state.get_meta("cursor") or -1):
                self.state.set_meta("cursor", str(start_cursor))
            self.log("pass done")
            return self.report

    async def _sync_tree(self, here: LocalTree, there: RemoteTree, under: str = "") -> None:
        """Sync every path of the two trees (and of the state), or only those below the
        folder `under` (a targeted folder pass)."""

        def mine(rel: str) -> bool:
            return not under or rel == under or rel.startswith(under + "/")

        # A file on one side where the other has a folder (rare) is settled first: what is
        # under it depends on which of the two stays.
        blocked: set[str] = set()  # clashes: left alone with all that is under them
        mixed = (set(here.files) & set(there.folders)) | (here.dirs & set(there.files))
        for rel in sorted(mixed):
            if not await self._settle_mixed(rel, here, there, self.state.get(rel)):
                blocked.add(rel)

        def is_blocked(rel: str) -> bool:
            return any(rel == b or rel.startswith(b + "/") for b in blocked)

        known = self.state.under(under) if under else self.state.all()
        plan = Plan()  # small files go in batches, after every file has been looked at
        # A synced folder deleted here, with nothing new or changed under it on the
        # server, goes to the trash whole: one request, not one per file.
        for rel in self._folders_deleted_here(here, there, known):
            plan.folder_deletes.append((rel, there.folders[rel]["id"]))
            blocked.add(rel)
        folder_paths: list[str] = []
        file_paths: list[str] = []
        for rel in sorted(
            here.files.keys() | here.dirs | there.files.keys() | there.folders.keys() | known.keys()
        ):
            if is_blocked(rel) or not mine(rel):
                continue
            local = _kind(rel, here.files, here.dirs)
            remote = _kind(rel, there.files, there.folders)
            entry = known.get(rel)
            if Kind.FILE in (local, remote) or (
                local is remote is None and entry is not None and entry.kind == Kind.FILE
            ):
                file_paths.append(rel)
            else:
                folder_paths.append(rel)

        # Folders first (parents before children), so files have somewhere to go; those
        # deleted on one side go after the files, when they may be empty.
        later: list[tuple[str, Action]] = []
        new_remote: list[str] = []  # made on the server in one request
        for rel in folder_paths:
            action = decide(
                Side.folder() if rel in here.dirs else None,
                Side.folder() if rel in there.folders else None,
                base_of(known.get(rel)),
            )
            if action in (Action.DELETE_LOCAL, Action.DELETE_REMOTE, Action.FORGET):
                later.append((rel, action))
            elif action is Action.MAKE_REMOTE_FOLDER:
                new_remote.append(rel)
            else:
                await self._act_on_folder(rel, action, there)
        if new_remote:
            await self._make_remote_folders(new_remote)

        paths = iter(file_paths)

        async def sync_files() -> None:
            for rel in paths:  # shared by the workers: each path is taken once
                try:
                    await self._sync_file(
                        rel, here.files.get(rel), there.files.get(rel), known.get(rel), plan
                    )
                except OSError as exc:
                    if not self._skip(rel, exc):
                        raise

        await run_all([sync_files() for _ in range(FILES_IN_PARALLEL)])
        await self._carry_out(plan)

        for rel, action in reversed(later):
            await self._act_on_folder(rel, action, there)

    async def _make_remote_folders(self, rels: list[str]) -> None:
        """New local folders made on the server, up to 1,000 a request (parents first)."""
        for start in range(0, len(rels), 1000):
            group = rels[start : start + 1000]
            results = await self.api.batch_folders(
                [self.remote.target_below_synced(rel) for rel in group]
            )
            entries = []
            for rel, result in zip(group, results, strict=True):
                if result["status"] != "ok":
                    error = result.get("error") or {}
                    raise ApiError(
                        error.get("status", 409),
                        error.get("code", "error"),
                        error.get("message", rel),
                        {},
                    )
                entries.append(Entry(rel, Kind.FOLDER, result["file"]["id"]))
            self.state.put_many(entries)

    @staticmethod
    def _folders_deleted_here(
        here: LocalTree, there: RemoteTree, known: dict[str, Entry]
    ) -> list[str]:
        """Synced folders gone here whose server copy holds exactly what was last synced
        (outermost first, none inside another)."""
        out: list[str] = []
        for rel in sorted(r for r, e in known.items() if e.kind == Kind.FOLDER):
            if rel in here.dirs or rel not in there.folders:
                continue
            if any(rel.startswith(o + "/") for o in out):
                continue
            prefix = rel + "/"
            if any(p.startswith(prefix) for p in here.files) or any(
                d.startswith(prefix) for d in here.dirs
            ):
                continue
            remote_files = {p: i for p, i in there.files.items() if p.startswith(prefix)}
            remote_dirs = [p for p in there.folders if p.startswith(prefix)]
            unchanged_there = all(
                p in known and known[p].content_hash == i["content_hash"]
                for p, i in remote_files.items()
            ) and all(p in known for p in remote_dirs)
            if unchanged_there:
                out.append(rel)
        return out

    async def _settle_mixed(
        self, rel: str, here: LocalTree, there: RemoteTree, entry: Entry | None
    ) -> bool:
        """A file on one side, a folder on the other. The file gives way when it is what
        was last synced (the other side replaced it by a folder); otherwise the path is
        skipped and reported. False: leave the path and all under it alone this pass."""
        local: Side = Side.folder()
        lf = here.files.get(rel)
        try:
            if lf is not None:
                local_hash, _ = await self.scanner.hash(rel, lf, entry)
                local = Side.file(local_hash)
            remote = Side.folder() if rel in there.folders else None
            item = there.files.get(rel)
            if item is not None:
                remote = Side.file(item["content_hash"])
            action = decide(local, remote, base_of(entry))
            if action is Action.DELETE_LOCAL:
                self._delete_local_file(rel)
                del here.files[rel]
                return True
            if action is Action.DELETE_REMOTE and item is not None:
                await self._delete_remote_file(rel, item["id"])
                del there.files[rel]
                return True
        except OSError as exc:
            if not self._skip(rel, exc):
                raise
            return False
        why = "a file here, a folder on the server" if lf else "a folder here, a file on the server"
        self.report.skipped.append(f"{rel}: {why}")
        self.log(f"skipped {rel}: {why}")
        return False

    async def _act_on_folder(self, rel: str, action: Action, there: RemoteTree) -> None:
        match action:
            case Action.NOTHING:
                pass
            case Action.MAKE_LOCAL_FOLDER:
                self.local(rel).mkdir(parents=True, exist_ok=True)
                self.state.put(Entry(rel, Kind.FOLDER, there.folders[rel]["id"]))
            case Action.RECORD:
                self.state.put(Entry(rel, Kind.FOLDER, there.folders[rel]["id"]))
            case Action.MAKE_REMOTE_FOLDER:
                folder = await self.remote.create_folder(self.remote.target(rel))
                self.state.put(Entry(rel, Kind.FOLDER, folder["id"] if folder else None))
            case Action.DELETE_LOCAL:
                self._remove_local_dir_if_empty(rel)
            case Action.DELETE_REMOTE:
                await self._remove_remote_folder_if_synced(rel, there.folders[rel])
            case Action.FORGET:
                self.state.delete(rel)  # gone from both sides
            case _:
                raise ClientError(f"{rel}: cannot {action} a folder")

    async def _sync_file(
        self,
        rel: str,
        lf: LocalFile | None,
        item: RemoteItem | None,
        entry: Entry | None,
        plan: Plan | None = None,
    ) -> None:
        local_hash: str | None = None
        chunks: Chunks | None = None
        if lf is not None:
            local_hash, chunks = await self.scanner.hash(rel, lf, entry)
        action = decide(
            Side.file(local_hash) if lf is not None else None,
            Side.file(item["content_hash"]) if item is not None else None,
            base_of(entry),
        )
        match action:
            case Action.NOTHING:
                pass
            case Action.FORGET:
                self.state.delete(rel)
            case Action.RECORD if lf is not None and item is not None:
                if _records(entry, item, lf):
                    pass  # a no-op pass writes nothing
                elif plan is not None:
                    plan.records.append(_entry_for(rel, item, lf, item["content_hash"], chunks))
                else:
                    self._record_file(rel, item, lf, item["content_hash"], chunks)
            case Action.UPLOAD if plan is not None and lf and fits_upload(chunks, lf.size):
                base = item["version"] if item else None
                plan.uploads.append(
                    Upload(rel, self.remote.target(rel), base, chunks or [], lf, local_hash or "")
                )
            case Action.UPLOAD:
                await self._upload(rel, item["version"] if item else None, local_hash, chunks)
            case Action.DOWNLOAD if item is not None and plan is not None and fits_download(item):
                plan.downloads.append(Download(rel, item))
            case Action.DOWNLOAD if item is not None:
                await self._download(rel, item)
            case Action.DELETE_LOCAL:
                # Deleted on the server, untouched here: delete here too.
                self._delete_local_file(rel)
            case Action.DELETE_REMOTE if item is not None and plan is not None:
                plan.deletes.append((rel, item["id"]))
            case Action.DELETE_REMOTE if item is not None:
                # Deleted here, unchanged there: delete there (to the trash).
                await self._delete_remote_file(rel, item["id"])
            case Action.CONFLICT if item is not None:
                await self._conflict(rel, item)
            case _:
                raise ClientError(f"{rel}: cannot {action} a file in a full pass")

    # ---------------------------------------------------------------- moves

    async def _apply_remote_moves(
        self, there: RemoteTree, here: LocalTree, known: dict[str, Entry]
    ) -> None:
        """A synced file the server now has under another path: rename it here too."""
        by_id = {e.file_id: e for e in known.values() if e.kind == Kind.FILE and e.file_id}
        for rel, item in there.files.items():
            old = by_id.get(item["id"])
            if old is None or old.path == rel:
                continue
            at_old = here.files.get(old.path)
            origin = Origin(
                old.path,
                Side.file(old.content_hash),
                None if at_old is None else Side.file(self._synced_hash(at_old, old)),
            )
            local = (
                Side.file(None)
                if rel in here.files
                else Side.folder()
                if rel in here.dirs
                else None
            )
            moved = Side.file(item["content_hash"], moved_from=origin)
            if decide(local, moved, base_of(known.get(rel))) is not Action.MOVE_LOCAL:
                continue
            target = self.local(rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.local(old.path), target)
            st = target.stat()
            self._record_move(old, rel, mtime_ns=st.st_mtime_ns)
            here.files[rel] = LocalFile.of(st)
            del here.files[old.path]

    async def _apply_local_moves(
        self, there: RemoteTree, here: LocalTree, known: dict[str, Entry]
    ) -> None:
        """A synced file gone from its path while an identical new file appeared: a rename,
        sent as a move (no re-upload)."""
        vanished = {
            e.content_hash: e
            for e in known.values()
            if e.kind == Kind.FILE
            and e.path not in here.files
            and e.path in there.files
            and there.files[e.path]["content_hash"] == e.content_hash
        }
        if not vanished:
            return
        for rel, lf in here.files.items():
            if rel in known or rel in there.files:
                continue
            if not any(e.size == lf.size for e in vanished.values()):
                continue
            try:
                found_hash, chunks = await asyncio.to_thread(file_hashes, self.local(rel))
            except OSError:
                continue  # not readable now: the file pass skips and reports it
            old = vanished.get(found_hash)
            if old is None or old.file_id is None:
                continue
            origin = Origin(
                old.path,
                Side.file(old.content_hash),
                Side.file(there.files[old.path]["content_hash"]),
            )
            renamed = Side.file(found_hash, moved_from=origin)
            if decide(renamed, None, None) is not Action.MOVE_REMOTE:
                continue
            try:
                moved = await self.api.move(old.file_id, self.remote.target(rel))
            except (ApiError, ParentNotSynced):
                continue
            del vanished[old.content_hash]
            self._record_move(
                old,
                rel,
                version=moved["version"],
                size=lf.size,
                mtime_ns=lf.mtime_ns,
                chunks=chunks,
            )
            there.files[rel] = moved
            there.files.pop(old.path, None)

    def _record_move(self, entry: Entry, rel: str, **changes: Any) -> None:
        """A synced file now lives at `rel` on both sides (moved by either of them)."""
        self.state.delete(entry.path)
        self.state.put(dataclasses.replace(entry, path=rel, **changes))
        self.report.moved.append(f"{entry.path} -> {rel}")
        self.log(f"moved {entry.path} -> {rel}")

    @staticmethod
    def _synced_hash(lf: LocalFile, entry: Entry) -> str | None:
        """The local file's content hash as known without reading it: the synced one if
        its size and mtime are as last synced, otherwise None (changed, not hashed)."""
        return entry.content_hash if unchanged(lf, entry) else None

    # ---------------------------------------------------------------- new local folders

    async def sync_folders(self, rels: set[str], *, deleted: bool = False) -> bool:
        """New (or, `deleted`, removed) local folders, with everything in them: a pass over
        each of those subtrees only (their part of the local tree, their part of the
        server's), never the whole tree. False when the full pass must decide (a folder
        whose parent is not synced)."""
        async with self.lock:
            if deleted:
                # A tree deleted bottom-up reports its folders one by one: take the
                # highest one gone, so it goes to the server's trash whole, in one request.
                rels = {self._highest_gone(rel) for rel in rels}
            done: set[str] = set()
            for rel in sorted(rels):  # parents first
                if any(rel.startswith(d + "/") for d in done):
                    continue  # already covered by its new parent's pass
                if self.ignore(rel):
                    continue
                known = self.state.get(rel)
                if deleted and lexists(self.local(rel)):
                    continue  # back already (or never gone): its files have their events
                if not deleted and known is not None and known.kind == Kind.FOLDER:
                    # Synced already: we made it (a download's folder). Files put in it
                    # have their own watcher events; a folder moved in whole is not known.
                    continue
                if not self._in_synced_folder(rel):
                    return False
                here = await asyncio.to_thread(self.scanner.scan, rel)
                there = await self.remote.scan(rel)
                await self._sync_tree(here, there, under=rel)
                done.add(rel)
            return True

    def _highest_gone(self, rel: str) -> str:
        parent = rel.rpartition("/")[0]
        while parent and not lexists(self.local(parent)):
            rel, parent = parent, parent.rpartition("/")[0]
        return rel

    # ---------------------------------------------------------------- the targeted pass

    async def sync_paths(self, rels: set[str], moves: Sequence[tuple[str, str]] = ()) -> bool:
        """Send local changes to these files without a full pass (no tree walk, no remote
        listing): what the watcher saw is compared with the state of the last agreement.
        Renames of synced files go first, as moves. False when anything needs the full
        three-way pass: folders, links, a file in a folder not synced yet, a rename onto a
        synced file, or a deletion the server's copy no longer matches."""
        async with self.lock:
            rels = set(rels)
            for src, dest in moves:
                left = await self._rename_file(src, dest)
                if left is None:
                    return False
                rels |= left
            for rel in sorted(rels):
                if self.ignore(rel):
                    continue
                if not await self._sync_changed(rel):
                    return False
            return True

    async def _sync_changed(self, rel: str) -> bool:
        entry = self.state.get(rel)
        if entry is not None and (entry.kind != Kind.FILE or not entry.file_id):
            return False
        try:
            st = self.scanner.stat(rel)
        except FileNotFoundError:
            return entry is None or await self._delete_if_unchanged(entry)
        if not stat.S_ISREG(st.st_mode):
            return False
        here = LocalFile.of(st)
        if entry is not None and unchanged(here, entry):
            return True
        if not self._in_synced_folder(rel):
            return False  # a new folder: the full pass creates it first
        try:
            local_hash, chunks = await self.scanner.hash(rel, here, entry)
        except FileNotFoundError:
            return True  # gone again: its deletion event follows
        except OSError as exc:
            if not self._skip(rel, exc):
                raise
            return True
        base = base_of(entry)
        # Not listed: the server is taken to hold what was last agreed.
        action = decide(Side.file(local_hash), base, base)
        if action is Action.RECORD and entry is not None:
            self.state.put(dataclasses.replace(entry, mtime_ns=here.mtime_ns))
            return True  # touched, not changed
        if action is not Action.UPLOAD:
            return False
        try:
            await self._upload(rel, entry.version if entry else None, local_hash, chunks)
        except OSError as exc:
            if not self._skip(rel, exc):
                raise
        return True

    async def _rename_file(self, src: str, dest: str) -> set[str] | None:
        """A file renamed here. A synced file renamed unchanged is moved on the server
        (no upload; history kept). Anything else, such as an editor saving through a temp
        file or a new name put back at the old path, is left as the two paths to compare
        one by one. None: the full pass must decide."""
        entry = self.state.get(src)
        if (
            entry is None
            or entry.kind != Kind.FILE
            or not entry.file_id
            or self.ignore(src)
            or self.ignore(dest)
            or lexists(self.local(src))
        ):
            return {src, dest}
        try:
            st = self.scanner.stat(dest)
        except FileNotFoundError:
            return None  # renamed again since: the full pass sees where it ended up
        if not stat.S_ISREG(st.st_mode) or not self._in_synced_folder(dest):
            return None
        was = Side.file(entry.content_hash)
        # Not listed: the server is taken to hold what was last agreed, at both paths.
        renamed = Side.file(self._synced_hash(LocalFile.of(st), entry), Origin(src, was, was))
        base = base_of(self.state.get(dest))
        action = decide(renamed, base, base)
        if action is not Action.MOVE_REMOTE:
            return None  # e.g. renamed over a synced file, or changed since
        try:
            moved = await self.api.move(entry.file_id, self.remote.target(dest))
        except (ApiError, ParentNotSynced):
            return None  # taken there, or gone: the full pass sorts it out
        self._record_move(entry, dest, version=moved["version"])
        return set()

    async def _delete_if_unchanged(self, entry: Entry) -> bool:
        """A synced file deleted here: delete it on the server (to the trash) if the server
        still has what we last agreed on. False when it changed there (full pass)."""
        if entry.file_id is None:
            return False
        try:
            item = await self.api.describe(entry.file_id)
        except ApiError as exc:
            if exc.status != 404:
                raise
            self.state.delete(entry.path)  # gone there too
            return True
        if self.rel_of(item["path"]) != entry.path:
            return False  # moved there: the full pass follows it
        action = decide(None, Side.file(item["content_hash"]), base_of(entry))
        if action is not Action.DELETE_REMOTE:
            return False
        await self._delete_remote_file(entry.path, item["id"])
        return True

    # ---------------------------------------------------------------- remote events

    async def apply_events(self, events: list[FeedEvent]) -> bool:
        """Apply simple remote file events directly, without a full pass: a new or changed
        file we have not edited locally is downloaded, a deleted one we have not edited is
        deleted, a renamed one is renamed, a new folder is made. False when any event needs
        a full pass (folder moves and deletions, shares, local edits: anything where the
        three-way comparison must look at everything)."""
        async with self.lock:
            # New and changed files are fetched in batches: deferred until the end, or
            # until a later event touches one of them.
            plan = Plan()
            for event in events:
                touched = {self.rel_of(event.path or ""), self.rel_of(event.old_path or "")}
                if any(d.rel in touched for d in plan.downloads):
                    if not await self._carry_out_events(plan):
                        return False
                    plan = Plan()
                if not await self._apply_event(event, plan):
                    await self._carry_out_events(plan)
                    return False
            return await self._carry_out_events(plan)

    async def _carry_out_events(self, plan: Plan) -> bool:
        try:
            await self._carry_out(plan)
        except (ClientError, OSError):
            # Changed again or gone since, or no room or no right to write it here: a full
            # pass sorts it out (and skips and reports what it cannot write).
            return False
        return True

    async def _apply_event(self, event: FeedEvent, plan: Plan | None = None) -> bool:
        rel = self.rel_of(event.path or "")
        old = event.old_path
        if rel is None and (old is None or self.rel_of(old) is None):
            return True  # not under the synced folder
        if rel is None:
            return False  # moved out of the synced folder: a full pass settles it
        if self.ignore(rel):
            # Nothing to do for an ignored or left-out path, unless a file we sync was
            # moved there (the full pass decides what happens to our copy).
            old_rel = self.rel_of(old) if old else None
            return old_rel is None or self.ignore(old_rel)
        if event.type == UPLOAD_STARTED:
            self._start_prefetch(rel, event)
            return True  # a hint: nothing changed yet
        entry = self.state.get(rel)
        if event.kind == Kind.FOLDER:
            if event.type == FILE_DELETED:
                return self._apply_folder_delete(rel, entry)
            return event.type == FILE_CREATED and self._apply_new_folder(rel, event, entry)
        if entry is not None and entry.kind != Kind.FILE:
            return False
        if event.type in FILE_CHANGES:
            return await self._apply_remote_change(rel, event, entry, plan)
        if event.type == FILE_MOVED:
            return self._apply_remote_rename(rel, event, entry)
        if event.type == FILE_DELETED:
            return self._apply_remote_delete(rel, entry)
        return False

    def _local_for_event(self, rel: str, entry: Entry | None) -> Side | None:
        """The local file as an event sees it: by stat alone, never read."""
        try:
            st = os.stat(self.local(rel))
        except FileNotFoundError:
            return None
        if entry is None:
            return Side.file(None)
        return Side.file(self._synced_hash(LocalFile.of(st), entry))

    async def _apply_remote_change(
        self, rel: str, event: FeedEvent, entry: Entry | None, plan: Plan | None = None
    ) -> bool:
        local = self._local_for_event(rel, entry)
        base = base_of(entry)
        action = decide(local, Side.file(event.content_hash), base)
        if action in (Action.RECORD, Action.UPLOAD, Action.DELETE_REMOTE):
            return True  # the server has what we last agreed: our own change coming back
        if action is not Action.DOWNLOAD or (local is None and base is not None):
            return False  # changed or deleted here too: full comparison
        item = {
            "id": event.file_id,
            "version": event.version,
            "content_hash": event.content_hash,
            "size": event.size,
        }
        if plan is not None and fits_download(item) and self._in_synced_folder(rel):
            plan.downloads.append(Download(rel, item))
            return True
        try:
            await self._download(rel, item)
        except (ClientError, OSError):
            # Changed again or gone since, or no room or no right to write it here: a full
            # pass sorts it out (and skips and reports what it cannot write).
            return False
        return True

    def _start_prefetch(self, rel: str, event: FeedEvent) -> None:
        """Another device began uploading a large file: fetch it as it arrives. A file we
        hold there is followed only when it is as last synced and other bytes are coming
        (an edit made elsewhere: its unchanged chunks are copied from our copy at once);
        one changed here means we are most likely the uploader, or it is a conflict for
        the full pass."""
        if not (event.file_id and event.upload_id) or not self._in_synced_folder(rel):
            return
        try:
            st = os.stat(self.local(rel), follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is not None:
            entry = self.state.get(rel)
            if (
                entry is None
                or entry.kind != Kind.FILE
                or (st.st_size, st.st_mtime_ns) != (entry.size, entry.mtime_ns)
                or entry.content_hash == event.content_hash
            ):
                return
        self.prefetch.start(event.file_id, event.upload_id, event.content_hash, rel)

    def _apply_remote_rename(self, rel: str, event: FeedEvent, entry: Entry | None) -> bool:
        """A file renamed on the server: already here (our own move coming back) or renamed
        here now, if the local copy is as last synced and the new name is free. False:
        the full pass decides."""
        if entry is not None:
            return entry.file_id == event.file_id
        old = self.rel_of(event.old_path or "")
        before = self.state.get(old) if old else None
        if old is None or before is None or before.file_id != event.file_id:
            return False
        if not self._in_synced_folder(rel):
            return False
        source, target = self.local(old), self.local(rel)
        try:
            st = os.stat(source, follow_symlinks=False)
        except FileNotFoundError:
            return False
        here = Side.file(self._synced_hash(LocalFile.of(st), before))
        origin = Origin(old, Side.file(before.content_hash), here)
        local = Side.file(None) if lexists(target) else None
        moved = Side.file(event.content_hash, moved_from=origin)
        if decide(local, moved, None) is not Action.MOVE_LOCAL:
            return False
        os.rename(source, target)
        self._record_move(before, rel, version=event.version or before.version)
        return True

    def _apply_remote_delete(self, rel: str, entry: Entry | None) -> bool:
        if entry is None:
            return True  # never synced here: nothing of ours to delete
        action = decide(self._local_for_event(rel, entry), None, base_of(entry))
        if action is Action.DELETE_LOCAL:
            self._delete_local_file(rel)
            return True
        if action is Action.FORGET:
            self.state.delete(rel)  # deleted here too
            return True
        return False  # edited here: the full pass keeps the edit

    def _apply_folder_delete(self, rel: str, entry: Entry | None) -> bool:
        """A folder trashed on the server: gone here too if everything in it is as last
        synced (nothing new, nothing edited). False: the full pass keeps what is ours."""
        if entry is None:
            return not lexists(self.local(rel))  # never synced here, nothing here
        if entry.kind != Kind.FOLDER:
            return False
        below = {p: e for p, e in self.state.all().items() if p.startswith(rel + "/")}
        local = self.scanner.scan(rel)
        if any(d != rel and d not in below for d in local.dirs):
            return False
        for p, lf in local.files.items():
            e = below.get(p)
            if e is None or e.kind != Kind.FILE or not unchanged(lf, e):
                return False
        for p in sorted(local.files):
            self.local(p).unlink(missing_ok=True)
        for d in sorted(local.dirs, key=len, reverse=True):
            with contextlib.suppress(OSError):
                self.local(d).rmdir()
        self.state.delete(rel)
        self.report.deleted_local.append(rel + "/")
        self.log(f"deleted {rel}/")
        return True

    def _apply_new_folder(self, rel: str, event: FeedEvent, entry: Entry | None) -> bool:
        """A folder created on the server: ours already (our own event coming back) or
        made here now. False when the tree around it is not as the state says."""
        if entry is not None:
            return entry.kind == Kind.FOLDER and entry.file_id == event.file_id
        if not self._in_synced_folder(rel):
            return False
        path = self.local(rel)
        local = Side.folder() if path.is_dir() else Side.file(None) if path.exists() else None
        action = decide(local, Side.folder(), None)
        if action not in (Action.MAKE_LOCAL_FOLDER, Action.RECORD):
            return False
        path.mkdir(exist_ok=True)
        self.state.put(Entry(rel, Kind.FOLDER, event.file_id))
        return True

    # ---------------------------------------------------------------- bulk

    async def _carry_out(self, plan: Plan) -> None:
        """Send, fetch and delete what a pass planned in bulk; whatever a batch could not
        do goes through the one-file path (conflicts, refusals, oversize, errors)."""
        if not plan:
            return
        if plan.records:
            self.state.put_many(plan.records)
        size = sum(u.local.size for u in plan.uploads) + sum(
            int(d.item.get("size") or 0) for d in plan.downloads
        )
        count = len(plan.uploads) + len(plan.downloads)
        with self.transfers.bulk_bar(count, size) as (advance, files_done):
            if plan.uploads:
                await self._bulk_upload(plan.uploads, advance, files_done)
            if plan.downloads:
                await self._bulk_download(plan.downloads, advance, files_done)
        for rel, folder_id in plan.folder_deletes:
            await self.remote.delete(folder_id)
            self.state.delete(rel)  # the folder and everything under it
            self.report.deleted_remote.append(rel + "/")
            self.log(f"deleted {rel}/ on the server")
        if plan.deletes:
            gone, left = await self.bulk.delete(plan.deletes)
            self.state.delete_many(gone)
            self.report.deleted_remote += gone
            for rel in gone:
                self.log(f"deleted {rel} on the server")
            for rel, file_id in left:
                await self._delete_remote_file(rel, file_id)

    async def _bulk_upload(
        self,
        uploads: list[Upload],
        advance: Callable[[int], None],
        files_done: Callable[[int], None],
    ) -> None:
        committed, refused = await self.bulk.upload(uploads, advance, files_done)
        self.state.put_many(
            [
                Entry(
                    u.rel,
                    Kind.FILE,
                    f["id"],
                    f["version"],
                    u.local.size,
                    u.local.mtime_ns,
                    f["content_hash"],
                    u.chunks,
                )
                for u, f in committed
            ]
        )
        for u, _ in committed:
            self.report.uploaded.append(u.rel)
        if committed:
            self.log(f"uploaded {len(committed)} file(s) in bulk")
        for u in refused:
            try:
                await self._upload(u.rel, u.base_version, u.content_hash, u.chunks)
            except OSError as exc:
                if not self._skip(u.rel, exc):
                    raise
            files_done(1)

    async def _bulk_download(
        self,
        downloads: list[Download],
        advance: Callable[[int], None],
        files_done: Callable[[int], None],
    ) -> None:
        done, left = await self.bulk.download(downloads, advance, files_done)
        self.state.put_many(
            [
                Entry(
                    d.rel,
                    Kind.FILE,
                    d.item["id"],
                    head["version"],
                    st.st_size,
                    st.st_mtime_ns,
                    head["content_hash"],
                    chunks,
                )
                for d, head, chunks, st in done
            ]
        )
        for d, _, _, _ in done:
            self.report.downloaded.append(d.rel)
        if done:
            self.log(f"downloaded {len(done)} file(s) in bulk")
        for d in left:
            try:
                await self._download(d.rel, d.item)
            except OSError as exc:
                if not self._skip(d.rel, exc):
                    raise
            files_done(1)

    # ---------------------------------------------------------------- acting

    def _in_synced_folder(self, rel: str) -> bool:
        """Its folder is the root or one the state knows as synced (exists on both sides)."""
        parent = rel.rpartition("/")[0]
        if not parent:
            return True
        entry = self.state.get(parent)
        return entry is not None and entry.kind == Kind.FOLDER

    def _record_file(
        self,
        rel: str,
        item: RemoteItem,
        lf: LocalFile,
        content_hash: str,
        chunks: Chunks | None,
    ) -> None:
        """Both sides hold these bytes at `rel` now."""
        self.state.put(_entry_for(rel, item, lf, content_hash, chunks))

    async def _upload(
        self,
        rel: str,
        base_version: int | None,
        local_hash: str | None,
        chunks: Chunks | None,
    ) -> None:
        """Send the local file (hashed as `local_hash` and `chunks`, or hashed now)."""
        path = self.local(rel)
        st = path.stat()
        if local_hash is None or chunks is None:
            local_hash, chunks = await asyncio.to_thread(file_hashes, path)
        synced = self.state.get(rel)
        try:
            f = await self.transfers.upload(
                rel,
                self.remote.target(rel),
                base_version,
                local_hash,
                chunks,
                previous=synced.chunks if synced is not None else None,
            )
        except ApiError as exc:
            if exc.code in ("conflict", "exists") and await self._upload_refused(
                rel, st, local_hash, chunks
            ):
                return
            raise
        except LocalFileChanged:
            return  # the file changed while uploading: the next pass sends the new bytes
        now = path.stat()
        if (now.st_size, now.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
            return  # changed meanwhile: leave it unsynced so the next pass sees it
        self._record_file(rel, f, LocalFile.of(st), f["content_hash"], chunks)
        self.report.uploaded.append(rel)
        self.log(f"uploaded {rel}")

    async def _upload_refused(
        self, rel: str, st: os.stat_result, local_hash: str, chunks: Chunks
    ) -> bool:
        """The server has something at `rel` we did not know of (another device was first):
        compare with it as if both had created the file. False: not a file we can compare
        with (the refusal stands)."""
        match = (await self.remote.scan()).files.get(rel)
        remote = Side.file(match["content_hash"]) if match is not None else None
        action = decide(Side.file(local_hash), remote, None)
        if action is Action.RECORD and match is not None:
            # The server already has these bytes there.
            self._record_file(rel, match, LocalFile.of(st), match["content_hash"], chunks)
            return True
        if action is Action.CONFLICT and match is not None:
            await self._conflict(rel, match)
            return True
        return False

    async def _conflict(self, rel: str, item: RemoteItem) -> None:
        """Both sides changed: the server's version keeps the name, ours becomes a copy."""
        copy = conflict_name(rel, self.device)
        os.replace(self.local(rel), self.local(copy))
        self.report.conflicts.append(copy)
        self.log(f"conflict: kept your version as {copy}")
        await self._upload(copy, None, None, None)
        await self._download(rel, item)

    async def _download(self, rel: str, item: RemoteItem) -> None:
        streamed = await self.prefetch.take(item["id"], item.get("content_hash") or "")
        if streamed is not None and await self.transfers.finish_prefetched(
            rel, streamed.tmp, streamed.chunks, item["content_hash"], streamed.durable_hash
        ):
            st = self.local(rel).stat()
            self._record_file(rel, item, LocalFile.of(st), item["content_hash"], streamed.chunks)
            if streamed.durable_hash is not None:  # every block's digest is known
                blocks = [streamed.blocks[b] for b in range(len(streamed.blocks))]
                self.state.put_block_hashes(rel, st.st_size, st.st_mtime_ns, blocks)
            self.report.downloaded.append(rel)
            self.log(f"downloaded {rel} (fetched while it was uploaded)")
            return
        chunks, head = await self.transfers.download(rel, item["id"], item["size"])
        st = self.local(rel).stat()
        # Record what was fetched (the head now), which may be newer than `item`.
        self._record_file(
            rel,
            {**item, "version": head["version"]},
            LocalFile.of(st),
            head["content_hash"],
            chunks,
        )
        self.report.downloaded.append(rel)
        self.log(f"downloaded {rel}")

    def _delete_local_file(self, rel: str) -> None:
        self.local(rel).unlink(missing_ok=True)
        self.state.delete(rel)
        self.report.deleted_local.append(rel)
        self.log(f"deleted {rel}")

    async def _delete_remote_file(self, rel: str, file_id: str) -> None:
        await self.remote.delete(file_id)
        self.state.delete(rel)
        self.report.deleted_remote.append(rel)
        self.log(f"deleted {rel} on the server")

    def _remove_local_dir_if_empty(self, rel: str) -> None:
        try:
            self.local(rel).rmdir()
        except OSError:
            return  # not empty: something new is in it, keep it (and sync it next pass)
        self.state.delete(rel)
        self.report.deleted_local.append(rel + "/")

    async def _remove_remote_folder_if_synced(self, rel: str, folder: RemoteItem) -> None:
        try:
            items = await self.remote.list_children(folder["path"], folder["id"])
        except ApiError:
            return
        if items:
            return  # the server has something we did not sync yet: keep the folder
        await self.remote.delete(folder["id"])
        self.state.delete(rel)
        self.report.deleted_remote.append(rel + "/")

    def _skip(self, rel: str, exc: OSError) -> bool:
        """A local problem with one file (cannot read it, cannot write there, the disk is
        full): report it and go on with the rest; the next pass tries it again. False for
        anything else, which ends the pass."""
        if isinstance(exc, FileNotFoundError):
            # It vanished (or was replaced) while the pass ran: a local change the watcher
            # reports, so the next pass takes it. Nothing to report as a problem.
            self.log(f"{rel} changed while syncing; the next pass takes it")
            return True
        if isinstance(exc, PermissionError):
            why = "permission denied"
        elif exc.errno in (errno.ENOSPC, errno.EDQUOT):
            why = "disk full"
        elif exc.errno == errno.EBUSY:
            why = "it is being written"
        else:
            return False
        self.report.skipped.append(f"{rel}: {exc.strerror or exc}")
        self.log(f"skipped {rel}: {why}")
        return True
