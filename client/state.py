"""The sync state of one folder: SQLite in `<folder>/.coffer/state.db`.

For every synced path: the server's file id and version, and what the local file looked
like when both sides last agreed (size, mtime, content hash, chunk hashes). A file whose
size and mtime still match is not re-read. The feed cursor is stored here too, and written
only after the changes before it are applied, so a crash replays rather than skips.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    path TEXT PRIMARY KEY,          -- relative, '/'-separated, as on the server
    kind TEXT NOT NULL,             -- 'file' or 'folder'
    file_id TEXT,
    version INTEGER,
    size INTEGER,
    mtime_ns INTEGER,
    content_hash TEXT,
    chunks TEXT                     -- JSON [[sha256, size], ...]
);
CREATE INDEX IF NOT EXISTS entries_file_id ON entries(file_id);
-- Where each chunk of a synced file sits, so a download finds local copies by hash
-- without reading every entry's chunk list.
CREATE TABLE IF NOT EXISTS chunk_index (
    sha256 TEXT NOT NULL,
    path TEXT NOT NULL,
    offset INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS chunk_index_sha ON chunk_index(sha256);
CREATE INDEX IF NOT EXISTS chunk_index_path ON chunk_index(path);
-- The SHA-256 of each 4 MiB block of a synced file (32 bytes each, in order), as it was at
-- (size, mtime_ns): a device rebuilding an edited file from its own copy takes these for
-- the blocks that stay where they were instead of hashing them again.
CREATE TABLE IF NOT EXISTS block_hashes (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    digests BLOB NOT NULL
);
"""
SCHEMA_VERSION = 2  # 2: chunk_index


@dataclass
class Entry:
    """One synced path as of the last agreement of both sides."""

    path: str
    kind: str  # "file" or "folder"
    file_id: str | None = None
    version: int | None = None
    size: int | None = None
    mtime_ns: int | None = None
    content_hash: str | None = None
    chunks: list[tuple[str, int]] | None = None


class SyncState:
    """The state database of one synced folder."""

    def __init__(self, folder: Path) -> None:
        self.dir = folder / ".coffer"
        self.dir.mkdir(exist_ok=True)
        (self.dir / "tmp").mkdir(exist_ok=True)
        self.db = sqlite3.connect(self.dir / "state.db", isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        if self.db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
            self._rebuild_chunk_index()  # a state written by an older client
            self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        # The connection is in autocommit mode (isolation_level=None): begin explicitly.
        self.db.execute("BEGIN")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def _rebuild_chunk_index(self) -> None:
        with self._transaction():
            self.db.execute("DELETE FROM chunk_index")
            for path, chunks in self.db.execute(
                "SELECT path, chunks FROM entries WHERE chunks IS NOT NULL"
            ).fetchall():
                self._index_chunks(path, [tuple(c) for c in json.loads(chunks)])

    def _index_chunks(self, path: str, chunks: list[tuple[str, int]]) -> None:
        rows, offset = [], 0
        for sha, size in chunks:
            rows.append((sha, path, offset))
            offset += size
        self.db.executemany("INSERT INTO chunk_index VALUES (?, ?, ?)", rows)

    def close(self) -> None:
        self.db.close()

    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def get(self, path: str) -> Entry | None:
        row = self.db.execute("SELECT * FROM entries WHERE path=?", (path,)).fetchone()
        return self._entry(row) if row else None

    def all(self) -> dict[str, Entry]:
        return {row[0]: self._entry(row) for row in self.db.execute("SELECT * FROM entries")}

    def under(self, folder: str) -> dict[str, Entry]:
        """The entries of `folder` and of everything below it (an index range: a pass over
        one folder costs what is in it, not what the whole state holds)."""
        rows = self.db.execute(
            # "0" sorts right after "/": [folder + "/", folder + "0") is all below it.
            "SELECT * FROM entries WHERE path = ? OR (path >= ? AND path < ?)",
            (folder, folder + "/", folder + "0"),
        )
        return {row[0]: self._entry(row) for row in rows}

    def put(self, e: Entry) -> None:
        with self._transaction():  # the entry and its chunk positions change together
            self._put(e)

    def _put(self, e: Entry) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                e.path,
                e.kind,
                e.file_id,
                e.version,
                e.size,
                e.mtime_ns,
                e.content_hash,
                json.dumps(e.chunks) if e.chunks is not None else None,
            ),
        )
        self.db.execute("DELETE FROM chunk_index WHERE path=?", (e.path,))
        if e.chunks:
            self._index_chunks(e.path, e.chunks)

    def put_many(self, entries: list[Entry]) -> None:
        """`put` for many entries, in one transaction (a bulk pass records thousands)."""
        if not entries:
            return
        with self._transaction():
            for e in entries:
                self._put(e)

    def delete_many(self, paths: list[str]) -> None:
        if not paths:
            return
        with self._transaction():
            for path in paths:
                self._delete(path)

    def delete(self, path: str) -> None:
        """Forget the path and, for a folder, everything under it."""
        with self._transaction():
            self._delete(path)

    def _delete(self, path: str) -> None:
        below = (path, path + "/", path + "0")  # '0' sorts right after '/'
        self.db.execute("DELETE FROM entries WHERE path=? OR (path > ? AND path < ?)", below)
        self.db.execute("DELETE FROM chunk_index WHERE path=? OR (path > ? AND path < ?)", below)
        self.db.execute("DELETE FROM block_hashes WHERE path=? OR (path > ? AND path < ?)", below)

    def put_block_hashes(self, path: str, size: int, mtime_ns: int, digests: list[str]) -> None:
        """The file at `path`, as it is at (size, mtime_ns), has these block digests."""
        self.db.execute(
            "INSERT OR REPLACE INTO block_hashes VALUES (?, ?, ?, ?)",
            (path, size, mtime_ns, b"".join(bytes.fromhex(d) for d in digests)),
        )

    def block_hashes(self, path: str) -> tuple[list[str], tuple[int, int]] | None:
        """The block digests of the synced file at `path` and the (size, mtime_ns) they
        hold for, if recorded for the file as last synced."""
        row = self.db.execute(
            "SELECT b.digests, b.size, b.mtime_ns FROM block_hashes b JOIN entries e"
            " ON e.path = b.path AND e.size = b.size AND e.mtime_ns = b.mtime_ns"
            " WHERE b.path=?",
            (path,),
        ).fetchone()
        if row is None:
            return None
        raw = bytes(row[0])
        return [raw[i : i + 32].hex() for i in range(0, len(raw), 32)], (row[1], row[2])

    def chunk_source(self, sha: str) -> tuple[str, int, tuple[int, int]] | None:
        """A synced local file known to hold this chunk, to copy instead of downloading
        it: (path, offset, (size, mtime_ns) the file had when synced)."""
        row = self.db.execute(
            "SELECT c.path, c.offset, e.size, e.mtime_ns FROM chunk_index c"
            " JOIN entries e ON e.path = c.path WHERE c.sha256=? LIMIT 1",
            (sha,),
        ).fetchone()
        return (row[0], row[1], (row[2], row[3])) if row else None

    @staticmethod
    def _entry(row: tuple[Any, ...]) -> Entry:
        chunks = [tuple(c) for c in json.loads(row[7])] if row[7] else None
        return Entry(row[0], row[1], row[2], row[3], row[4], row[5], row[6], chunks)  # type: ignore[arg-type]
