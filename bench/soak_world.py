"""The soak's ground truth: every file the simulated devices made, every operation on it
with when it started and ended, and the checks that hold any answer against that truth.

Only answers that are decidable are judged. A listing or download that overlaps an
operation on the same file may show either side of it; one that does not must show
exactly the state the finished operations left. Each file is changed by one device only
(its creator), one operation at a time, so a file's operations never overlap each other.

Contents are derived from a seed (`data_for`), so any answer can be checked byte for byte
without keeping the bytes.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

BLOCK = 4 * 1024 * 1024


def data_for(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def content_hash(data: bytes) -> str:
    """SHA-256 over the SHA-256 digests of the 4 MiB blocks (Coffer's content hash)."""
    h = hashlib.sha256()
    for i in range(0, len(data), BLOCK):
        h.update(hashlib.sha256(data[i : i + BLOCK]).digest())
    return h.hexdigest()


@dataclass
class Op:
    kind: str  # "commit", "move", "delete"
    start: float
    end: float | None = None
    ok: bool | None = None  # None while running, or when the outcome stayed unknown
    version: tuple[int, int] | None = None  # commit: (seed, size)
    folder: str | None = None  # move: where to
    name: str | None = None


@dataclass
class FileRec:
    id: str
    owner: int  # user index
    creator: int  # device index: the only device that changes it
    folder: str  # as the owner sees it, e.g. "/docs"
    name: str
    ops: list[Op] = field(default_factory=list)

    # ---------------------------------------------------------------- derived state

    def done(self, before: float) -> list[Op]:
        """Operations that finished successfully before `before`, in order."""
        return [o for o in self.ops if o.ok and o.end is not None and o.end < before]

    def overlapping(self, start: float, end: float) -> list[Op]:
        """Operations that may have taken effect between `start` and `end` (including any
        whose outcome is unknown)."""
        return [o for o in self.ops if o.start <= end and (o.end is None or o.end >= start)]

    def state_at(self, t: float) -> tuple[bool, str, str, tuple[int, int] | None]:
        """(exists, folder, name, head version) after the operations finished before t."""
        exists, folder, name, head = False, self.folder, self.name, None
        for op in self.done(t):
            if op.kind == "commit":
                exists, head = True, op.version
            elif op.kind == "move":
                folder, name = op.folder or folder, op.name or name
            elif op.kind == "delete":
                exists = False
        return exists, folder, name, head

    def committed(self) -> bool:
        return any(o.kind == "commit" and o.ok for o in self.ops)

    def deleted(self) -> bool:
        return any(o.kind == "delete" and o.ok is not False for o in self.ops)

    def current(self) -> tuple[str, str]:
        _, folder, name, _ = self.state_at(float("inf"))
        return folder, name

    def head(self) -> tuple[int, int] | None:
        return self.state_at(float("inf"))[3]

    def versions(self) -> list[tuple[int, int]]:
        return [o.version for o in self.ops if o.kind == "commit" and o.version]


@dataclass
class World:
    files: dict[str, FileRec] = field(default_factory=dict)
    # (team owner user index, recipient user index) -> when a revoke of it started
    revoked: dict[tuple[int, int], float] = field(default_factory=dict)
    checked_listings: int = 0
    checked_downloads: int = 0

    def add(self, rec: FileRec) -> FileRec:
        self.files[rec.id] = rec
        return rec

    # ---------------------------------------------------------------- judging answers

    def judge_listing(
        self, owner: int, folder: str, items: list[dict], start: float, end: float
    ) -> list[str]:
        """Problems with a listing of `owner`'s `folder` made between start and end."""
        problems = []
        listed = {i["id"]: i for i in items}
        for rec in self.files.values():
            if rec.owner != owner or rec.overlapping(start, end):
                continue
            exists, at_folder, name, head = rec.state_at(start)
            here = exists and at_folder.casefold() == folder.casefold()
            item = listed.get(rec.id)
            if here and item is None:
                problems.append(f"listing of {folder} misses {rec.id} ({at_folder}/{name})")
            elif not here and item is not None:
                why = "deleted" if rec.deleted() else f"moved to {at_folder}"
                problems.append(f"listing of {folder} shows {rec.id} ({why} before it began)")
            elif item is not None and head is not None:
                if item["name"] != name:
                    problems.append(f"listing shows {rec.id} as {item['name']!r}, not {name!r}")
                if item["content_hash"] != content_hash(data_for(*head)):
                    problems.append(f"listing shows {rec.id} with a stale content hash")
        self.checked_listings += 1
        return problems

    def judge_download(
        self,
        rec: FileRec,
        status: int,
        body: bytes,
        first: int,
        last: int | None,
        start: float,
        end: float,
        reader: int,
    ) -> str | None:
        """A problem with a download of `rec` (bytes first..last, None: the whole file)
        made between start and end by user `reader`, or None."""
        self.checked_downloads += 1
        overlapping = rec.overlapping(start, end)
        exists, _, _, head = rec.state_at(start)
        allowed = {head} if exists and head else set()
        allowed |= {o.version for o in overlapping if o.kind == "commit" and o.version}
        if status == 404:
            if any(o.kind == "delete" for o in overlapping) or not exists:
                return None
            revoke = self.revoked.get((rec.owner, reader))
            if reader != rec.owner and revoke is not None and revoke <= end:
                return None
            return f"download of {rec.id} answered 404 while it existed"
        if status == 416:  # the range lies beyond the end of a (shorter) version it had
            if any(size <= first for _, size in allowed):
                return None
            return f"download of {rec.id} bytes {first}-{last}: 416 though no version was short"
        if status not in (200, 206):
            return None  # judged by the status check
        for seed, size in allowed:
            data = data_for(seed, size)
            want = data[first : (last + 1 if last is not None else None)]
            if body == want:
                return None
        return f"download of {rec.id} bytes {first}-{last}: matches no version it had then"
