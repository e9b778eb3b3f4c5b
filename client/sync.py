"""Two-way sync of one local folder with a folder of the account.

Three-way comparison of every path: the local file, the server's file, and the state both
had when they last agreed (client/state.py). Only the side that changed since is copied;
when both changed to different content, the server's version takes the real name and the
local one is kept as `name (conflicted copy DEVICE YYYY-MM-DD HHMMSS).ext` and uploaded.
Nothing local is deleted unless it is exactly what was last synced.

Downloads are assembled in `.coffer/tmp/` from chunks already on disk (any synced file,
by hash) plus the missing ones fetched in parallel, verified against the content hash and
renamed into place: a half-downloaded file never appears under its real name.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fnmatch
import hashlib
import os
import uuid
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

from rich.progress import Progress

from client.api import ApiError, CofferClient, chunk_hashes, content_hash, raise_for_error
from client.state import Entry, SyncState

PROGRESS_MIN = 8 * 1024 * 1024
DEFAULT_IGNORES = ["~$*", ".*.swp", "*.tmp", ".DS_Store", ".coffer", ".cofferignore"]


@dataclass
class Report:
    uploaded: list[str] = field(default_factory=list)
    downloaded: list[str] = field(default_factory=list)
    deleted_local: list[str] = field(default_factory=list)
    deleted_remote: list[str] = field(default_factory=list)
    moved: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # unreadable local files, with reason

    def total(self) -> int:
        return sum(len(v) for v in vars(self).values())


@dataclass
class LocalFile:
    size: int
    mtime_ns: int


class Ignore:
    def __init__(self, root: Path) -> None:
        self.patterns = list(DEFAULT_IGNORES)
        with_file = root / ".cofferignore"
        if with_file.exists():
            for line in with_file.read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    self.patterns.append(line.rstrip("/"))

    def __call__(self, rel: str) -> bool:
        parts = rel.split("/")
        return any(fnmatch.fnmatch(p, pat) for p in parts for pat in self.patterns) or any(
            fnmatch.fnmatch(rel, pat) for pat in self.patterns
        )


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def conflict_name(rel: str, device: str, when: datetime | None = None) -> str:
    p = PurePosixPath(rel)
    stamp = (when or datetime.now()).strftime("%Y-%m-%d %H%M%S")
    name = f"{p.stem} (conflicted copy {device} {stamp}){p.suffix}"
    return str(p.with_name(name)) if str(p.parent) != "." else name


# Files a pass syncs at once: small files are bound by round trips (register, PUT,
# commit), so several in flight multiply throughput; a large file's chunks are already
# sent in parallel by the API client.
FILES_IN_PARALLEL = 8


async def run_all(jobs: list[Coroutine[Any, Any, None]]) -> None:
    """Run the jobs concurrently; the first error cancels the rest and is raised as is."""
    tasks = [asyncio.create_task(job) for job in jobs]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _lexists(path: Path) -> bool:
    try:
        os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


class Syncer:
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
        self.remote_root = "/" + remote_root.strip("/") if remote_root.strip("/") else "/"
        self.device = device
        self.state = SyncState(self.root)
        self.ignore = Ignore(self.root)
        self.log = log
        # Shows transfers of files over PROGRESS_MIN bytes (a rich Progress, or None).
        self.progress = progress
        self.report = Report()
        self.lock = asyncio.Lock()
        # Set when the remote root is a folder another user shared with us: such a tree is
        # addressed by ids (parent_id + name), as it is not in our own path namespace.
        self.shared_root_id: str | None = None

    def discard_interrupted_downloads(self) -> None:
        """Remove temp files of downloads a crash cut short. Only the process about to
        sync may do this: `coffer status` beside a running sync must not."""
        for stale in (self.state.dir / "tmp").iterdir():
            stale.unlink(missing_ok=True)

    # ---------------------------------------------------------------- paths

    def remote_path(self, rel: str) -> str:
        return self.remote_root.rstrip("/") + "/" + rel

    def rel_of(self, remote: str) -> str | None:
        """The relative path of a server path, or None when outside the synced folder."""
        if self.remote_root == "/":
            return remote.lstrip("/") or None
        prefix = self.remote_root + "/"
        if remote.casefold().startswith(prefix.casefold()):
            return remote[len(prefix) :] or None
        return None

    def local(self, rel: str) -> Path:
        return self.root / rel

    # ---------------------------------------------------------------- scans

    def scan_local(self) -> tuple[dict[str, LocalFile], set[str]]:
        files: dict[str, LocalFile] = {}
        dirs: set[str] = set()
        for dirpath, dirnames, filenames in os.walk(self.root):
            rel_dir = os.path.relpath(dirpath, self.root)
            rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/")
            keep = []
            for d in dirnames:
                rel = f"{rel_dir}/{d}" if rel_dir else d
                if not self.ignore(rel) and not os.path.islink(os.path.join(dirpath, d)):
                    keep.append(d)
                    dirs.add(rel)
            dirnames[:] = keep
            for name in filenames:
                rel = f"{rel_dir}/{name}" if rel_dir else name
                if self.ignore(rel):
                    continue
                try:
                    st = os.stat(os.path.join(dirpath, name), follow_symlinks=False)
                except OSError:
                    continue
                if os.path.stat.S_ISREG(st.st_mode):
                    files[rel] = LocalFile(st.st_size, st.st_mtime_ns)
        return files, dirs

    async def scan_remote(self) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
        files: dict[str, dict[str, Any]] = {}
        folders: dict[str, dict[str, Any]] = {}
        pending: list[tuple[str, str | None]] = [(self.remote_root, self.shared_root_id)]
        while pending:
            folder, folder_id = pending.pop()
            try:
                items = await self.list_children(folder, folder_id)
            except ApiError as exc:
                if exc.status == 404 and folder == self.remote_root:
                    return files, folders
                raise
            for item in items:
                rel = self.rel_of(item["path"])
                if rel is None or self.ignore(rel):
                    continue
                if item["kind"] == "folder":
                    folders[rel] = item
                    pending.append((item["path"], item["id"]))
                else:
                    files[rel] = item
        return files, folders

    async def list_children(self, path: str, folder_id: str | None) -> list[dict[str, Any]]:
        if self.shared_root_id is None or folder_id is None:
            return await self.api.list(path)
        return await self.api.list_by_id(folder_id)

    async def _resolve_root(self) -> None:
        """Own folder (created if missing), or a folder shared with us of that name."""
        self.shared_root_id = None
        if self.remote_root == "/":
            return
        try:
            await self.api.request(
                "GET", "/api/file", params={"path": self.remote_root, "limit": 1}
            )
            return
        except ApiError as exc:
            if exc.status != 404:
                raise
        shared = await self.api.request("GET", "/api/shared")
        for item in shared["items"]:
            if item["kind"] == "folder" and item["path"].casefold() == self.remote_root.casefold():
                self.shared_root_id = item["id"]
                return
        await self._create_folder({"path": self.remote_root})

    def target(self, rel: str) -> dict[str, str]:
        """How to name `rel` to the server: a path in our tree, or parent id + name."""
        if self.shared_root_id is None:
            return {"path": self.remote_path(rel)}
        parent, _, name = rel.rpartition("/")
        parent_id = self.shared_root_id
        if parent:
            entry = self.state.get(parent)
            if entry is None or entry.file_id is None:
                raise ApiError(409, "parent_unknown", f"folder {parent} is not synced yet", {})
            parent_id = entry.file_id
        return {"parent_id": parent_id, "name": name}

    # ---------------------------------------------------------------- reconcile

    async def reconcile(self) -> Report:
        """One full pass: after it, both sides hold the same files (barring conflicts)."""
        async with self.lock:
            self.log("pass begins")
            start_cursor = await self._latest_cursor()
            await self._resolve_root()
            local_files, local_dirs = await asyncio.to_thread(self.scan_local)
            remote_files, remote_folders = await self.scan_remote()
            known = self.state.all()
            await self._apply_remote_moves(remote_files, local_files, known)
            known = self.state.all()
            await self._apply_local_moves(remote_files, local_files, known)
            known = self.state.all()

            # Folders first (parents before children), so files have somewhere to go.
            for rel in sorted(remote_folders.keys() - local_dirs):
                if rel in known:
                    continue  # deleted locally: handled after the files
                self.local(rel).mkdir(parents=True, exist_ok=True)
                self.state.put(Entry(rel, "folder", remote_folders[rel]["id"]))
            for rel in sorted(local_dirs - remote_folders.keys()):
                if rel in known and known[rel].kind == "folder":
                    continue  # deleted remotely: handled after the files
                folder = await self._create_folder(self.target(rel))
                self.state.put(Entry(rel, "folder", folder["id"] if folder else None))
            for rel in local_dirs & remote_folders.keys():
                if rel not in known:
                    self.state.put(Entry(rel, "folder", remote_folders[rel]["id"]))

            paths = iter(
                sorted(
                    local_files.keys()
                    | remote_files.keys()
                    | set(p for p, e in known.items() if e.kind == "file")
                )
            )

            async def sync_files() -> None:
                for rel in paths:  # shared by the workers: each path is taken once
                    try:
                        await self._sync_file(
                            rel, local_files.get(rel), remote_files.get(rel), known.get(rel)
                        )
                    except OSError as exc:
                        if not self._skip(rel, exc):
                            raise

            await run_all([sync_files() for _ in range(FILES_IN_PARALLEL)])

            # Folders deleted on one side since the last sync.
            for rel in sorted((e.path for e in known.values() if e.kind == "folder"), reverse=True):
                here, there = rel in local_dirs, rel in remote_folders
                if here and not there:
                    self._remove_local_dir_if_empty(rel)
                elif there and not here:
                    await self._remove_remote_folder_if_synced(rel, remote_folders[rel])
            # Every change before the pass began is covered by it: never replay those.
            if start_cursor is not None and start_cursor > int(self.state.get_meta("cursor") or -1):
                self.state.set_meta("cursor", str(start_cursor))
            self.log("pass done")
            return self.report

    async def apply_events(self, events: list[dict[str, Any]]) -> bool:
        """Apply simple remote file events directly, without a full pass: a new or changed
        file we have not edited locally is downloaded, a deleted one we have not edited is
        deleted, a renamed one is renamed, a new folder is made. False when any event needs
        a full pass (folder moves and deletions, shares, local edits: anything where the
        three-way comparison must look at everything)."""
        async with self.lock:
            for event in events:
                rel = self.rel_of(event.get("path") or "")
                old = event.get("old_path")
                if rel is None and (old is None or self.rel_of(old) is None):
                    continue  # not under the synced folder
                if rel is None or self.ignore(rel):
                    return False
                kind = event["type"]
                entry = self.state.get(rel)
                if event.get("kind") == "folder":
                    if kind == "file.created" and self._apply_new_folder(rel, event, entry):
                        continue
                    return False
                if entry is not None and entry.kind != "file":
                    return False
                try:
                    st = os.stat(self.local(rel))
                    here: LocalFile | None = LocalFile(st.st_size, st.st_mtime_ns)
                except FileNotFoundError:
                    here = None
                edited_here = here is not None and (
                    entry is None or not self._unchanged(here, entry)
                )
                if kind in ("file.created", "file.updated", "file.restored"):
                    if entry is not None and entry.content_hash == event.get("content_hash"):
                        continue  # our own change coming back, or already applied
                    if edited_here or (here is None and entry is not None):
                        return False  # changed or deleted here too: full comparison
                    remote = {
                        "id": event["file_id"],
                        "version": event["version"],
                        "content_hash": event["content_hash"],
                        "size": event["size"],
                    }
                    try:
                        await self._download(rel, remote)
                    except ApiError:
                        return False  # changed again or gone since: a full pass sorts it out
                elif kind == "file.moved":
                    if not self._apply_remote_rename(rel, event, entry):
                        return False
                elif kind == "file.deleted":
                    if entry is None:
                        continue
                    if edited_here:
                        return False
                    self.local(rel).unlink(missing_ok=True)
                    self.state.delete(rel)
                    self.report.deleted_local.append(rel)
                    self.log(f"deleted {rel}")
                else:
                    return False
            return True

    def _apply_remote_rename(self, rel: str, event: dict[str, Any], entry: Entry | None) -> bool:
        """A file renamed on the server: already here (our own move coming back) or renamed
        here now, if the local copy is as last synced and the new name is free. False:
        the full pass decides."""
        if entry is not None:
            return entry.file_id == event["file_id"]
        old = self.rel_of(event.get("old_path") or "")
        before = self.state.get(old) if old else None
        if old is None or before is None or before.file_id != event["file_id"]:
            return False
        source, target = self.local(old), self.local(rel)
        try:
            st = os.stat(source, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if (
            not self._unchanged(LocalFile(st.st_size, st.st_mtime_ns), before)
            or _lexists(target)
            or not self._in_synced_folder(rel)
        ):
            return False
        os.rename(source, target)
        self._record_move(before, rel, version=event.get("version") or before.version)
        return True

    def _in_synced_folder(self, rel: str) -> bool:
        """Its folder is the root or one the state knows as synced (exists on both sides)."""
        parent = rel.rpartition("/")[0]
        return not parent or getattr(self.state.get(parent), "kind", None) == "folder"

    def _record_move(self, entry: Entry, rel: str, **changes: Any) -> None:
        """A synced file now lives at `rel` on both sides (moved by either of them)."""
        self.state.delete(entry.path)
        self.state.put(Entry(**{**vars(entry), "path": rel, **changes}))
        self.report.moved.append(f"{entry.path} -> {rel}")
        self.log(f"moved {entry.path} -> {rel}")

    def _apply_new_folder(self, rel: str, event: dict[str, Any], entry: Entry | None) -> bool:
        """A folder created on the server: ours already (our own event coming back) or
        made here now. False when the tree around it is not as the state says."""
        if entry is not None:
            return entry.kind == "folder" and entry.file_id == event["file_id"]
        if not self._in_synced_folder(rel):
            return False
        path = self.local(rel)
        if path.exists() and not path.is_dir():
            return False
        path.mkdir(exist_ok=True)
        self.state.put(Entry(rel, "folder", event["file_id"]))
        return True

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
                entry = self.state.get(rel)
                if entry is not None and (entry.kind != "file" or not entry.file_id):
                    return False
                try:
                    st = os.stat(self.local(rel), follow_symlinks=False)
                except FileNotFoundError:
                    if entry is not None and not await self._delete_if_unchanged(entry):
                        return False
                    continue
                if not os.path.stat.S_ISREG(st.st_mode):
                    return False
                here = LocalFile(st.st_size, st.st_mtime_ns)
                if entry is not None and self._unchanged(here, entry):
                    continue
                if not self._in_synced_folder(rel):
                    return False  # a new folder: the full pass creates it first
                try:
                    local_hash, chunks = await self._local_hash(rel, here, entry)
                except FileNotFoundError:
                    continue  # gone again: its deletion event follows
                except OSError as exc:
                    if not self._skip(rel, exc):
                        raise
                    continue
                if entry is not None and local_hash == entry.content_hash:
                    self.state.put(Entry(**{**vars(entry), "mtime_ns": here.mtime_ns}))
                    continue  # touched, not changed
                try:
                    await self._upload(rel, entry.version if entry else None, chunks)
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
            or entry.kind != "file"
            or not entry.file_id
            or self.ignore(src)
            or self.ignore(dest)
            or _lexists(self.local(src))
        ):
            return {src, dest}
        try:
            st = os.stat(self.local(dest), follow_symlinks=False)
        except FileNotFoundError:
            return None  # renamed again since: the full pass sees where it ended up
        if (
            not os.path.stat.S_ISREG(st.st_mode)
            or (st.st_size, st.st_mtime_ns) != (entry.size, entry.mtime_ns)
            or self.state.get(dest) is not None
            or not self._in_synced_folder(dest)
        ):
            return None
        try:
            moved = await self.api.request(
                "PATCH", f"/api/file/{entry.file_id}", json=self.target(dest)
            )
        except ApiError:
            return None  # taken there, or gone: the full pass sorts it out
        self._record_move(entry, dest, version=moved["version"])
        return set()

    def _skip(self, rel: str, exc: OSError) -> bool:
        """A local problem with one file (cannot read it, cannot write there, the disk is
        full): report it and go on with the rest; the next pass tries it again. False for
        anything else, which ends the pass."""
        if isinstance(exc, PermissionError):
            why = "permission denied"
        elif exc.errno in (errno.ENOSPC, errno.EDQUOT):
            why = "disk full"
        else:
            return False
        self.report.skipped.append(f"{rel}: {exc.strerror or exc}")
        self.log(f"skipped {rel}: {why}")
        return True

    async def _delete_if_unchanged(self, entry: Entry) -> bool:
        """A synced file deleted here: delete it on the server (to the trash) if the server
        still has what we last agreed on. False when it changed there (full pass)."""
        try:
            remote = await self.api.request("GET", f"/api/file/{entry.file_id}")
        except ApiError as exc:
            if exc.status != 404:
                raise
            self.state.delete(entry.path)  # gone there too
            return True
        if remote["content_hash"] != entry.content_hash or self.rel_of(remote["path"]) != (
            entry.path
        ):
            return False
        await self._delete_remote(remote["id"])
        self.state.delete(entry.path)
        self.report.deleted_remote.append(entry.path)
        self.log(f"deleted {entry.path} on the server")
        return True

    async def _latest_cursor(self) -> int | None:
        try:
            body = await self.api.request("GET", "/api/file/events", params={"cursor": "latest"})
        except ApiError:
            return None
        return int(body["cursor"])

    async def _create_folder(self, target: dict[str, str]) -> dict[str, Any] | None:
        try:
            return await self.api.request("POST", "/api/folder", json=target)
        except ApiError as exc:
            if exc.code != "exists":
                raise
            return None

    async def _apply_remote_moves(
        self,
        remote_files: dict[str, dict[str, Any]],
        local_files: dict[str, LocalFile],
        known: dict[str, Entry],
    ) -> None:
        """A file the server now has under another path: rename it here too."""
        by_id = {e.file_id: e for e in known.values() if e.kind == "file" and e.file_id}
        for rel, item in remote_files.items():
            old = by_id.get(item["id"])
            if old is None or old.path == rel or rel in local_files:
                continue
            here = local_files.get(old.path)
            if here is None or not self._unchanged(here, old):
                continue
            target = self.local(rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.local(old.path), target)
            st = target.stat()
            self._record_move(old, rel, mtime_ns=st.st_mtime_ns)
            local_files[rel] = LocalFile(st.st_size, st.st_mtime_ns)
            del local_files[old.path]

    async def _apply_local_moves(
        self,
        remote_files: dict[str, dict[str, Any]],
        local_files: dict[str, LocalFile],
        known: dict[str, Entry],
    ) -> None:
        """A synced file gone from its path while an identical new file appeared: a rename,
        sent as a move (no re-upload)."""
        vanished = {
            e.content_hash: e
            for e in known.values()
            if e.kind == "file"
            and e.path not in local_files
            and e.path in remote_files
            and remote_files[e.path]["content_hash"] == e.content_hash
        }
        if not vanished:
            return
        for rel, lf in local_files.items():
            if rel in known or rel in remote_files:
                continue
            candidates = [e for e in vanished.values() if e.size == lf.size]
            if not candidates:
                continue
            chunks = await asyncio.to_thread(chunk_hashes, self.local(rel))
            old = vanished.get(content_hash(chunks))
            if old is None or old.file_id is None:
                continue
            try:
                moved = await self.api.request(
                    "PATCH", f"/api/file/{old.file_id}", json=self.target(rel)
                )
            except ApiError:
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
            remote_files[rel] = moved
            remote_files.pop(old.path, None)

    @staticmethod
    def _unchanged(lf: LocalFile, entry: Entry) -> bool:
        return lf.size == entry.size and lf.mtime_ns == entry.mtime_ns

    async def _local_hash(
        self, rel: str, lf: LocalFile, entry: Entry | None
    ) -> tuple[str, list[tuple[str, int]] | None]:
        """Content hash of the local file; re-read only when size or mtime changed."""
        if entry is not None and entry.content_hash and self._unchanged(lf, entry):
            return entry.content_hash, entry.chunks
        chunks = await asyncio.to_thread(chunk_hashes, self.local(rel))
        return content_hash(chunks), chunks

    async def _sync_file(
        self,
        rel: str,
        lf: LocalFile | None,
        remote: dict[str, Any] | None,
        entry: Entry | None,
    ) -> None:
        if entry is not None and entry.kind != "file":
            entry = None
        if lf is None and remote is None:
            if entry is not None:
                self.state.delete(rel)
            return
        if lf is not None and remote is None:
            local_hash, chunks = await self._local_hash(rel, lf, entry)
            if entry is not None and local_hash == entry.content_hash:
                # Deleted on the server, untouched here: delete here too.
                self.local(rel).unlink(missing_ok=True)
                self.state.delete(rel)
                self.report.deleted_local.append(rel)
                return
            await self._upload(rel, None, chunks)
            return
        assert remote is not None
        if lf is None:
            if entry is not None and remote["content_hash"] == entry.content_hash:
                # Deleted here, unchanged there: delete there (to the trash).
                await self._delete_remote(remote["id"])
                self.state.delete(rel)
                self.report.deleted_remote.append(rel)
                return
            await self._download(rel, remote)
            return
        local_hash, chunks = await self._local_hash(rel, lf, entry)
        if local_hash == remote["content_hash"]:
            self.state.put(
                Entry(
                    rel,
                    "file",
                    remote["id"],
                    remote["version"],
                    lf.size,
                    lf.mtime_ns,
                    local_hash,
                    chunks,
                )
            )
            return
        local_changed = entry is None or local_hash != entry.content_hash
        remote_changed = entry is None or remote["content_hash"] != entry.content_hash
        if local_changed and not remote_changed:
            await self._upload(rel, remote["version"], chunks)
        elif remote_changed and not local_changed:
            await self._download(rel, remote)
        else:
            await self._conflict(rel, remote)

    async def _upload(
        self, rel: str, base_version: int | None, chunks: list[tuple[str, int]] | None
    ) -> None:
        path = self.local(rel)
        st = path.stat()
        if chunks is None:
            chunks = await asyncio.to_thread(chunk_hashes, path)
        try:
            with self._bar(f"↑ {rel}", sum(size for _, size in chunks)) as advance:
                f = await self.api.upload(
                    path,
                    self.target(rel),
                    base_version=base_version,
                    chunks=chunks,
                    progress=advance,
                )
        except ApiError as exc:
            if exc.code in ("conflict", "exists"):
                files, _ = await self.scan_remote()
                match = files.get(rel)
                if match is not None and match["content_hash"] == content_hash(chunks):
                    self.state.put(
                        Entry(rel, "file", match["id"], match["version"], st.st_size,
                              st.st_mtime_ns, match["content_hash"], chunks)
                    )  # fmt: skip
                    return  # the server already has these bytes there
                if match is not None:
                    await self._conflict(rel, match)
                    return
            raise
        except RuntimeError:
            return  # the file changed while uploading: the next pass sends the new bytes
        now = path.stat()
        if (now.st_size, now.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
            return  # changed meanwhile: leave it unsynced so the next pass sees it
        self.state.put(
            Entry(
                rel,
                "file",
                f["id"],
                f["version"],
                st.st_size,
                st.st_mtime_ns,
                f["content_hash"],
                chunks,
            )
        )
        self.report.uploaded.append(rel)
        self.log(f"uploaded {rel}")

    async def _delete_remote(self, file_id: str) -> None:
        try:
            await self.api.request("DELETE", f"/api/file/{file_id}")
        except ApiError as exc:
            if exc.status != 404:
                raise

    async def _conflict(self, rel: str, remote: dict[str, Any]) -> None:
        """Both sides changed: the server's version keeps the name, ours becomes a copy."""
        copy = conflict_name(rel, self.device)
        os.replace(self.local(rel), self.local(copy))
        self.report.conflicts.append(copy)
        self.log(f"conflict: kept your version as {copy}")
        await self._upload(copy, None, None)
        await self._download(rel, remote)

    async def _download(self, rel: str, remote: dict[str, Any]) -> None:
        target = self.local(rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        with self._bar(f"↓ {rel}", remote["size"]) as advance:
            chunks, head = await self.fetch(remote["id"], target, advance)
        st = target.stat()
        # Record what was fetched (the head now), which may be newer than `remote`.
        self.state.put(
            Entry(
                rel,
                "file",
                remote["id"],
                head["version"],
                st.st_size,
                st.st_mtime_ns,
                head["content_hash"],
                chunks,
            )
        )
        self.report.downloaded.append(rel)
        self.log(f"downloaded {rel}")

    @contextlib.contextmanager
    def _bar(self, name: str, total: int) -> Iterator[Callable[[int], None]]:
        if self.progress is None or total < PROGRESS_MIN:
            yield lambda _n: None
            return
        task = self.progress.add_task(name, total=total)
        try:
            yield lambda n: self.progress.advance(task, n) if self.progress else None
        finally:
            self.progress.remove_task(task)

    async def fetch(
        self,
        file_id: str,
        target: Path,
        advance: Callable[[int], None] = lambda _n: None,
    ) -> tuple[list[tuple[str, int]], dict[str, Any]]:
        """Assemble the server's file at `target` from local chunks and downloaded ones;
        returns its chunk list and the file object it describes."""
        described: list[dict[str, Any]] = []
        offset = 0
        while True:
            body = await self.api.request(
                "GET", f"/api/file/{file_id}", params={"chunk_offset": offset, "chunk_limit": 1000}
            )
            described += body.get("chunks", [])
            offset = body.get("next_chunk_offset") or 0
            if not offset:
                break
        expected = body["content_hash"]
        self.log(f"fetching {target.name}")
        tmp = self.state.dir / "tmp" / f"{uuid.uuid4().hex}.part"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            offsets = []
            pos = 0
            for c in described:
                offsets.append(pos)
                pos += c["size"]
            os.ftruncate(fd, pos)
            if not any(self.state.chunk_source(c["sha256"]) for c in described):
                # Nothing to reuse: one streamed request is faster than a GET per chunk.
                await self._stream_content(file_id, body["version"], described, fd, advance)
                described_done = True
            else:
                described_done = False
            queue: asyncio.Queue[int] = asyncio.Queue()
            for i in range(0 if described_done else len(described)):
                queue.put_nowait(i)

            async def worker() -> None:
                while not queue.empty():
                    i = queue.get_nowait()
                    c = described[i]
                    source = self.state.chunk_source(c["sha256"])
                    if source and await asyncio.to_thread(
                        self._copy_local_chunk, *source, c["sha256"], c["size"], fd, offsets[i]
                    ):
                        advance(c["size"])
                        continue
                    resp = await self.api.blob_http.get(c["url"])
                    if resp.status_code == 403:
                        # Read URLs live minutes and die when access changes: ask again.
                        resp = await self.api.blob_http.get(
                            await self._fresh_chunk_url(file_id, i, c["sha256"], expected)
                        )
                    raise_for_error(resp)
                    data = resp.content
                    if await asyncio.to_thread(_sha256, data) != c["sha256"]:
                        raise ApiError(502, "corrupt_data", "a chunk arrived damaged", {})
                    self.api.stats.bytes_received += len(data)
                    await asyncio.to_thread(os.pwrite, fd, data, offsets[i])
                    advance(len(data))

            await asyncio.gather(*(worker() for _ in range(min(self.api.parallel, len(described)))))
            self.log(f"fetched {target.name}, syncing it to disk")
            await asyncio.to_thread(os.fsync, fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        chunks = [(c["sha256"], c["size"]) for c in described]
        if content_hash(chunks) != expected:
            tmp.unlink(missing_ok=True)
            raise ApiError(502, "corrupt_data", "downloaded file does not match its hash", {})
        os.replace(tmp, target)
        return chunks, body

    async def _fresh_chunk_url(self, file_id: str, index: int, sha: str, expected: str) -> str:
        body = await self.api.request(
            "GET", f"/api/file/{file_id}", params={"chunk_offset": index, "chunk_limit": 1}
        )
        chunks = body.get("chunks") or []
        if body.get("content_hash") != expected or not chunks or chunks[0]["sha256"] != sha:
            raise ApiError(409, "changed", "the file changed while it was downloading", {})
        return chunks[0]["url"]

    async def _stream_content(
        self,
        file_id: str,
        version: int,
        described: list[dict[str, Any]],
        fd: int,
        advance: Callable[[int], None],
    ) -> None:
        """Write the version's bytes to `fd`, checking each chunk's hash as it completes."""
        index = filled = 0
        hasher = hashlib.sha256()
        async with self.api.http.stream(
            "GET", f"/api/file/{file_id}/content", params={"version": version}
        ) as resp:
            if resp.status_code >= 400:
                await resp.aread()
                raise_for_error(resp)
            async for raw in resp.aiter_raw(1024 * 1024):
                piece = memoryview(raw)
                while piece:
                    need = described[index]["size"] - filled
                    part, piece = piece[:need], piece[need:]
                    hasher.update(part)
                    os.write(fd, part)
                    filled += len(part)
                    if filled == described[index]["size"]:
                        if hasher.hexdigest() != described[index]["sha256"]:
                            raise ApiError(502, "corrupt_data", "a chunk arrived damaged", {})
                        index, filled, hasher = index + 1, 0, hashlib.sha256()
                self.api.stats.bytes_received += len(raw)
                advance(len(raw))
        if index != len(described):
            raise ApiError(502, "incomplete", "the download ended early", {})

    def _copy_local_chunk(
        self,
        path: str,
        offset: int,
        synced: tuple[int, int],
        sha: str,
        size: int,
        fd: int,
        dst_offset: int,
    ) -> bool:
        """Copy a chunk from a synced local file that holds it into `fd`. The file is
        trusted without re-reading when its size and mtime are as last synced (copied in
        the kernel); otherwise its bytes are hashed first. False: get it from the server."""
        try:
            src = os.open(self.local(path), os.O_RDONLY)
        except OSError:
            return False
        try:
            st = os.fstat(src)
            if (st.st_size, st.st_mtime_ns) == tuple(synced):
                done = 0
                while done < size:
                    n = os.copy_file_range(src, fd, size - done, offset + done, dst_offset + done)
                    if n <= 0:
                        return False
                    done += n
                return True
            self.log(f"re-reading {path}: {(st.st_size, st.st_mtime_ns)} != {tuple(synced)}")
            data = os.pread(src, size, offset)
            if len(data) != size or _sha256(data) != sha:
                return False
            os.pwrite(fd, data, dst_offset)
            return True
        except OSError as exc:
            self.log(f"cannot copy a chunk of {path} ({exc}); downloading it")
            return False
        finally:
            os.close(src)

    def _remove_local_dir_if_empty(self, rel: str) -> None:
        try:
            self.local(rel).rmdir()
        except OSError:
            return  # not empty: something new is in it, keep it (and sync it next pass)
        self.state.delete(rel)
        self.report.deleted_local.append(rel + "/")

    async def _remove_remote_folder_if_synced(self, rel: str, folder: dict[str, Any]) -> None:
        try:
            items = await self.list_children(folder["path"], folder["id"])
        except ApiError:
            return
        if items:
            return  # the server has something we did not sync yet: keep the folder
        await self._delete_remote(folder["id"])
        self.state.delete(rel)
        self.report.deleted_remote.append(rel + "/")
