"""The local side of a synced folder: walking its tree and hashing its files.

A file whose size and mtime are what they were when both sides last agreed (the state's
entry) is taken to hold the same bytes and is not re-read; only new or touched files are
hashed. Symbolic links are not followed and are not synced.
"""

from __future__ import annotations

import asyncio
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from app.protocol import BLOCK_SIZE
from client.hashing import Chunks, file_hashes, hash_file
from client.ignore import Ignore
from client.state import Entry, SyncState


@dataclass(frozen=True)
class LocalFile:
    """What a stat says about a regular file: enough to tell whether it was touched."""

    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> LocalFile:
        return cls(st.st_size, st.st_mtime_ns)


@dataclass
class LocalTree:
    """Every regular file (by relative path) and folder of the synced folder, ignored
    paths left out."""

    files: dict[str, LocalFile] = field(default_factory=dict)
    dirs: set[str] = field(default_factory=set)


def unchanged(lf: LocalFile, entry: Entry) -> bool:
    """The file looks as it did when last synced (same size and mtime)."""
    return lf.size == entry.size and lf.mtime_ns == entry.mtime_ns


def lexists(path: Path) -> bool:
    """Something (even a dangling link) is at `path`."""
    try:
        os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


class Scanner:
    """The synced folder on disk, as the sync walks and hashes it."""

    def __init__(self, root: Path, ignore: Ignore, state: SyncState | None = None) -> None:
        self.root = root
        self.ignore = ignore
        # Where the block digests of synced files are kept (the sync's state), if any.
        self.state = state

    def path(self, rel: str) -> Path:
        return self.root / rel

    def scan(self, under: str = "") -> LocalTree:
        """Walk the tree, or the part below the folder `under` (relative; it is included):
        blocking, run it in a thread."""
        tree = LocalTree()
        if under:
            if self.ignore(under) or not os.path.isdir(self.root / under):
                return tree
            tree.dirs.add(under)
        for dirpath, dirnames, filenames in os.walk(self.root / under):
            rel_dir = os.path.relpath(dirpath, self.root)
            rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/")
            keep = []
            for d in dirnames:
                rel = f"{rel_dir}/{d}" if rel_dir else d
                if not self.ignore(rel) and not os.path.islink(os.path.join(dirpath, d)):
                    keep.append(d)
                    tree.dirs.add(rel)
            dirnames[:] = keep
            for name in filenames:
                rel = f"{rel_dir}/{name}" if rel_dir else name
                if self.ignore(rel):
                    continue
                try:
                    st = os.stat(os.path.join(dirpath, name), follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    tree.files[rel] = LocalFile.of(st)
        return tree

    def stat(self, rel: str) -> os.stat_result:
        """The path's own stat (a link is not followed); FileNotFoundError when absent."""
        return os.stat(self.path(rel), follow_symlinks=False)

    async def hash(self, rel: str, lf: LocalFile, entry: Entry | None) -> tuple[str, Chunks | None]:
        """Content hash and chunk list of the local file; re-read only when its size or
        mtime changed since the last agreement."""
        if entry is not None and entry.content_hash and unchanged(lf, entry):
            return entry.content_hash, entry.chunks
        if self.state is None or lf.size <= BLOCK_SIZE:
            # One block, one chunk: nothing to keep (a bulk pass hashes thousands).
            return await asyncio.to_thread(file_hashes, self.path(rel))
        # The file as last synced: its blocks that an edit left alone need no new hash.
        previous = None
        if entry is not None and entry.chunks and (synced := self.state.block_hashes(rel)):
            previous = (entry.chunks, synced[0])
        found = await asyncio.to_thread(hash_file, self.path(rel), previous)
        # Kept for the next edit; used once the file is recorded as synced at this size
        # and mtime (SyncState.block_hashes).
        self.state.put_block_hashes(rel, found.size, found.mtime_ns, found.blocks)
        return found.content_hash, found.chunks
