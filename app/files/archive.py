"""Zip downloads: a folder, a file, or a selection of items streamed as one zip archive.

The archive is written while it is sent: no temporary file, and memory stays at about two
chunks (the one being sent and the one read ahead) plus the central directory, which a zip
keeps until its end (one small record per member; `MAX_MEMBERS` bounds it).

Which zip writer, checked on this machine (2 shared cores):
- PyPI `zipstream-ng` 1.9.3 streams stored members with data descriptors and ZIP64, but
  only from synchronous iterables, and cannot set a member's modification time (every
  member gets the time of the download; upstream issue pR0Ps/zipstream-ng#27).
- PyPI `stream-zip` 0.0.84 sets times and does ZIP64, but its stored methods need each
  member's CRC-32 before its data, or read the whole member into memory to get it (a 4 GiB
  file in RAM); its async API hops to the thread pool for every piece (0.8 GB/s here even
  with deflate level 0).
- Python's own `zipfile`, writing to an unseekable sink, streams stored members with data
  descriptors, ZIP64 when a member passes 2 GiB or the archive 4 GiB, UTF-8 names and the
  times we give it, at 4.0 GB/s (CRC-32 bound). Its writes are synchronous but land in an
  in-memory sink that is drained after each chunk, so it runs on the event loop with no
  thread and no buffering beyond the chunk in hand. That is what this module uses: no
  dependency, the most widely read writer there is.

Members are stored, not deflated: deflate level 1 runs at 135 MB/s on source text (3.6x
smaller) and 53 MB/s on already-compressed data (1.0x) on one core here, and would hold the
event loop ~30 ms per 4 MiB chunk; what people keep in a file store in bulk (photos, video,
archives, office documents) is compressed already, and stored members go as fast as the
chunks can be read and verified (SHA-256, 1.4 GB/s).

What goes in: every item given, and for a folder everything below it that is live and
committed (one indexed range scan on (owner, path_key) per page; the trash and unfinished
uploads are left out). Each file is the head version it has when its turn comes (small
files are looked up in groups just before they are written): one consistent version per
member, whatever changes meanwhile. Names are made safe (relative, no `..`, `.`, backslash,
control character or drive letter) and unique (a second "a.txt" becomes "a (2).txt").
Empty folders appear as directory entries. A file whose data is damaged, or that was
deleted before its turn, is left out and named in a last member, `COFFER-ERRORS.txt`; a
chunk that turns out bad in the middle of a member aborts the download (the connection is
cut and the client reports a failed download) rather than send a truncated member.
"""

from __future__ import annotations

import logging
import re
import secrets
import struct
import unicodedata
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from beanie import PydanticObjectId
from bson.errors import InvalidId
from litestar.response import Stream

from app.acl.access import resolve_access
from app.core import paths
from app.core.clock import as_utc, now
from app.core.crypto import token_hash
from app.core.errors import BadRequest, CofferError, CorruptData, NotFound
from app.core.http import ByteRange, content_disposition
from app.core.query import match
from app.db.archives import ZipTicket
from app.db.files import PAGE_SIZE, ChunkMapPage, FileNode, FileVersion
from app.files.reads import read_ahead, stream_content
from app.files.scope import Caller
from app.storage.base import BlobStore

log = logging.getLogger("coffer.archive")

MAX_ITEMS = 10_000  # ids in one selection
MAX_MEMBERS = 100_000  # entries in one archive (its central directory is held to the end)
TICKET_SECONDS = 600
ERRORS_NAME = "COFFER-ERRORS.txt"
MAX_NAME_BYTES = 255
TREE_PAGE = 500  # nodes per range-scan page of a folder's subtree
GROUP_FILES = 100  # small files looked up together just before they are written
GROUP_BYTES = 16 * 1024 * 1024
READ_AHEAD = 4  # chunk reads in flight for a small file's chunks
MAX_NOTES = 1000  # lines of COFFER-ERRORS.txt

StillAllowed = Callable[[FileNode], Awaitable[bool]]


def caller_may_read(caller: Caller) -> StillAllowed:
    """The check for a signed-in caller: their access to the root, from the ACL now."""

    async def check(root: FileNode) -> bool:
        return root.owner_id == caller.user_id or (
            await resolve_access(caller.user_id, root) is not None
        )

    return check


MEDIA_TYPE = "application/zip"
DEFAULT_NAME = "Coffer.zip"
_DRIVE = re.compile(r"^([A-Za-z]):")
_UNSAFE = re.compile(r"[\x00-\x1f\x7f\\/]")


class Gone(CofferError):
    status_code = 410
    code = "gone"


# ------------------------------------------------------------------ names


def safe_segment(name: str) -> str:
    """One path segment as it may appear in an archive: never a separator, `.`, `..`, a
    control character or a drive letter (`C:`), which extractors could take for a path."""
    name = _UNSAFE.sub("_", unicodedata.normalize("NFC", name))
    name = _DRIVE.sub(r"\1_", name)
    if name.strip(" ") in ("", ".", ".."):
        name = name.replace(".", "_") or "_"
    while len(name.encode()) > MAX_NAME_BYTES:
        name = name[:-1]
    return name


def _numbered(name: str, n: int, is_dir: bool) -> str:
    """ "a (2).txt" for a file, "a (2)" for a folder."""
    stem, dot, ext = name.rpartition(".")
    if is_dir or not dot or not stem:
        return f"{name} ({n})"
    return f"{stem} ({n}).{ext}"


class ArchiveNames:
    """Unique member names, compared case-insensitively (as Windows and macOS extract)."""

    def __init__(self) -> None:
        self._used: set[str] = set()

    def claim(self, parent: str, name: str, *, is_dir: bool = False) -> str:
        """A free name for `name` (already safe) inside the archive folder `parent`."""
        prefix = f"{parent}/" if parent else ""
        candidate, n = name, 1
        while (prefix + candidate).casefold() in self._used:
            n += 1
            candidate = _numbered(name, n, is_dir)
        self._used.add((prefix + candidate).casefold())
        return prefix + candidate


def archive_file_name(requested: str | None, items: list[FileNode]) -> str:
    """The download's file name: the one asked for, else the single item's, else Coffer's."""
    if requested is not None and requested.strip():
        name = safe_segment(requested.strip())
    elif len(items) == 1:
        name = safe_segment(items[0].name)
    else:
        return DEFAULT_NAME
    if not name.casefold().endswith(".zip"):
        name = f"{name[: MAX_NAME_BYTES - 8]}.zip"
    return name


# ------------------------------------------------------------------ the zip writer


class _Sink:
    """Where `zipfile` writes: kept in memory until drained (one chunk at most)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        return None

    def drain(self) -> bytes:
        out, self.parts = b"".join(self.parts), []
        return out


def _zip_time(when: datetime) -> tuple[tuple[int, int, int, int, int, int], bytes]:
    """The DOS date of `when` (UTC, clamped to 1980-2107) and the "UT" extra field that
    gives extractors the exact time (Info-ZIP, 7-Zip and macOS read it)."""
    when = as_utc(when)
    clamped = min(max(when, datetime(1980, 1, 1, tzinfo=UTC)), datetime(2107, 12, 31, tzinfo=UTC))
    stamp = max(0, min(int(when.timestamp()), 2**31 - 1))
    extra = struct.pack("<HHBl", 0x5455, 5, 1, stamp)
    dos = (clamped.year, clamped.month, clamped.day, clamped.hour, clamped.minute, clamped.second)
    return dos, extra


class ZipWriter:
    """A zip archive produced piece by piece: each call returns the bytes to send next."""

    def __init__(self) -> None:
        self._sink = _Sink()
        self._zip = zipfile.ZipFile(self._sink, "w", zipfile.ZIP_STORED, allowZip64=True)
        self.members = 0

    def _info(self, name: str, when: datetime, mode: int) -> zipfile.ZipInfo:
        dos, extra = _zip_time(when)
        info = zipfile.ZipInfo(name, dos)
        info.extra = extra
        info.external_attr = mode << 16
        info.create_system = 3  # Unix: the mode bits above mean what they say
        self.members += 1
        return info

    def folder(self, name: str, when: datetime) -> bytes:
        info = self._info(name + "/", when, 0o40755)
        info.external_attr |= 0x10  # MS-DOS directory bit
        info.CRC = info.compress_size = info.file_size = 0
        self._zip.mkdir(info)
        return self._sink.drain()

    async def file(
        self, name: str, size: int, when: datetime, data: AsyncIterator[bytes]
    ) -> AsyncIterator[bytes]:
        """The member's header, its bytes as `data` yields them, and its data descriptor."""
        info = self._info(name, when, 0o100644)
        info.file_size = size  # decides ZIP64 up front (past 2 GiB, like zipfile itself)
        with self._zip.open(info, "w") as out:
            yield self._sink.drain()
            async for piece in data:
                out.write(piece)
                yield self._sink.drain()
        yield self._sink.drain()

    def text(self, name: str, content: str) -> bytes:
        info = self._info(name, now(), 0o100644)
        self._zip.writestr(info, content.encode())
        return self._sink.drain()

    def close(self) -> bytes:
        self._zip.close()
        return self._sink.drain()


# ------------------------------------------------------------------ what goes in


@dataclass
class _Run:
    """The state of one archive being written."""

    store: BlobStore
    # Asked again before each group of files is read (with the root freshly loaded): may
    # the archive still show what is under this root? A revoked share, a revoked link or a
    # root moved to the trash while a long archive streams stops it there.
    allowed: StillAllowed | None = None
    stopped: bool = False
    writer: ZipWriter = field(default_factory=ZipWriter)
    names: ArchiveNames = field(default_factory=ArchiveNames)
    notes: list[str] = field(default_factory=list)
    dropped: int = 0  # notes past MAX_NOTES
    full: bool = False  # MAX_MEMBERS reached

    def note(self, line: str) -> None:
        if len(self.notes) < MAX_NOTES:
            self.notes.append(line)
        else:
            self.dropped += 1

    async def may_go_on(self, root: FileNode) -> bool:
        """Whether the group about to be read may be: access to `root` still holds."""
        if self.stopped:
            return False
        fresh = await FileNode.get(root.id)
        ok = fresh is not None and fresh.deleted_at is None
        if ok and fresh is not None and self.allowed is not None:
            ok = await self.allowed(fresh)
        if not ok:
            self.stopped = True
            self.note(
                "Access to what was being archived ended while the archive was made "
                "(unshared, link revoked, or moved to the trash); the rest was left out."
            )
        return ok

    def room(self) -> bool:
        if self.writer.members < MAX_MEMBERS:
            return True
        if not self.full:
            self.full = True
            self.note(
                f"The archive stops at {MAX_MEMBERS:,} entries; the rest was left out. "
                "Download the remaining folders separately."
            )
        return False


async def zip_stream(
    store: BlobStore,
    roots: list[FileNode],
    notes: Iterable[str] = (),
    allowed: StillAllowed | None = None,
) -> AsyncIterator[bytes]:
    """The archive of `roots` (files and folders the caller may read), in that order,
    each under its own name at the top; `notes` start COFFER-ERRORS.txt. `allowed` is
    asked again before each group of files (see `_Run.allowed`)."""
    run = _Run(store, allowed=allowed)
    for line in notes:
        run.note(line)
    for root in roots:
        if not run.room() or run.stopped:
            break
        if root.kind == "folder":
            async for piece in _folder(run, root):
                yield piece
        else:
            name = run.names.claim("", safe_segment(root.name))
            async for piece in _files(run, root, [(name, root)]):
                yield piece
    if run.notes:
        if run.dropped:
            run.notes.append(f"... and {run.dropped} more.")
        text = "Some items could not be put in this archive:\n\n" + "\n".join(run.notes) + "\n"
        yield run.writer.text(run.names.claim("", ERRORS_NAME), text)
    yield run.writer.close()


async def _folder(run: _Run, root: FileNode) -> AsyncIterator[bytes]:
    """The folder and everything live below it, parents before their contents."""
    top = run.names.claim("", safe_segment(root.name), is_dir=True)
    yield run.writer.folder(top, root.modified_at)
    # Archive name of each folder written, by path key: children follow a renamed parent.
    placed: dict[str, str] = {root.path_key: top}
    depth = len(paths.split(root.path)[0].rstrip("/").split("/"))
    group: list[tuple[str, FileNode]] = []
    group_bytes = 0
    async for node in _subtree(root):
        if not run.room():
            break
        parent_key = paths.split(node.path_key)[0]
        parent = placed.get(parent_key)
        if parent is None:  # its folder was not seen (moved mid-walk): rebuild from the path
            parent = "/".join(
                [top, *(safe_segment(s) for s in node.path.split("/")[depth + 1 : -1])]
            )
        name = run.names.claim(parent, safe_segment(node.name), is_dir=node.kind == "folder")
        if node.kind == "folder":
            placed[node.path_key] = name
            yield run.writer.folder(name, node.modified_at)
            continue
        group.append((name, node))
        group_bytes += node.size
        if len(group) >= GROUP_FILES or group_bytes >= GROUP_BYTES:
            async for piece in _files(run, root, group):
                yield piece
            group, group_bytes = [], 0
        if run.stopped:
            return
    async for piece in _files(run, root, group):
        yield piece


async def _subtree(folder: FileNode) -> AsyncIterator[FileNode]:
    """Every live, committed node below `folder`, in path order, a page per query."""
    below = paths.subtree_range(folder.path_key)
    while True:
        page = (
            await FileNode.find(
                match(owner_id=folder.owner_id, path_key=below, deleted_at=None, committed=True)
            )
            .sort("+path_key")
            .limit(TREE_PAGE)
            .to_list()
        )
        for node in page:
            yield node
        if len(page) < TREE_PAGE:
            return
        below = {**below, "$gt": page[-1].path_key}


async def _files(
    run: _Run, root: FileNode, group: list[tuple[str, FileNode]]
) -> AsyncIterator[bytes]:
    """Files as they are now: their nodes, head versions and (one-page) chunk maps are
    read in three queries for the whole group, right before it is written, once access
    to `root` is checked again. A file no longer under `root` (moved out) is left out."""
    if not group or not await run.may_go_on(root):
        return
    ids = [node.id for _, node in group]
    fresh = {str(n.id): n for n in await FileNode.find({"_id": {"$in": ids}}).to_list()}
    version_ids = [PydanticObjectId(n.head_version_id) for n in fresh.values() if n.head_version_id]
    versions = {
        str(v.id): v for v in await FileVersion.find({"_id": {"$in": version_ids}}).to_list()
    }
    page_ids = [f"{v.id}:0" for v in versions.values() if 0 < v.chunk_count <= PAGE_SIZE]
    pages = {p.version_id: p for p in await ChunkMapPage.find({"_id": {"$in": page_ids}}).to_list()}
    for name, walked in group:
        if not run.room():
            return
        node = fresh.get(str(walked.id))
        if node is not None and not (
            node.id == root.id
            or (node.owner_id == root.owner_id and paths.within(node.path, root.path))
        ):
            run.note(f"{name}: moved out of what was being archived")
            continue
        if node is None or node.deleted_at is not None or node.kind != "file":
            run.note(f"{name}: deleted or moved to the trash while the archive was being made")
            continue
        version = versions.get(node.head_version_id or "")
        if version is None or version.damaged:
            run.note(
                f"{name}: its data is damaged on the server; restore an earlier version or "
                "upload it again from a device that has it"
            )
            continue
        async for piece in _member(run, name, node, version, pages.get(str(version.id))):
            yield piece


async def _member(
    run: _Run, name: str, node: FileNode, version: FileVersion, page: ChunkMapPage | None
) -> AsyncIterator[bytes]:
    """One file member. Its first chunk is read before its header is written, so a file
    whose data turns out missing is left out cleanly; a bad chunk further in cuts the
    download short (never a member silently shorter than the file)."""
    if version.size == 0:
        async for piece in run.writer.file(name, 0, node.modified_at, _nothing()):
            yield piece
        return
    chunks: AsyncIterator[bytes]
    if page is not None and version.chunk_count <= PAGE_SIZE:
        chunks = read_ahead(run.store, version.owner_id, page.chunks, READ_AHEAD)
    else:
        chunks = stream_content(run.store, version, ByteRange(0, version.size - 1))
    try:
        first = await anext(chunks)
    except (CofferError, StopAsyncIteration) as exc:
        await _close(chunks)
        run.note(f"{name}: its data could not be read on the server ({exc}); left out")
        return
    written = 0

    async def data() -> AsyncIterator[bytes]:
        nonlocal written
        written += len(first)
        yield first
        async for piece in chunks:
            written += len(piece)
            yield piece
        if written != version.size:  # the chunk map disagrees with the size: never send it
            raise CorruptData(f"{written} bytes of {version.size}", code="damaged_file")

    try:
        async for piece in run.writer.file(name, version.size, node.modified_at, data()):
            yield piece
    except CofferError:
        log.exception(
            "zip download cut short: %s (%s) failed after %d bytes", name, node.id, written
        )
        raise
    finally:
        await _close(chunks)


async def _close(it: AsyncIterator[bytes]) -> None:
    """Stop a chunk reader early (its read-ahead tasks are cancelled)."""
    aclose = getattr(it, "aclose", None)
    if aclose is not None:
        await aclose()


async def _nothing() -> AsyncIterator[bytes]:
    for piece in ():
        yield piece


def zip_response(name: str, body: AsyncIterator[bytes], **headers: str) -> Stream:
    """The archive as a download (no length: it is made while it is sent)."""
    return Stream(
        body,
        media_type=MEDIA_TYPE,
        headers={
            "Content-Disposition": content_disposition(name, "attachment"),
            "Cache-Control": "private, no-store",
            "X-Content-Type-Options": "nosniff",
            **headers,
        },
    )


# ------------------------------------------------------------------ selections and tickets


async def readable(caller: Caller, ids: list[str]) -> tuple[list[FileNode], int]:
    """The nodes of `ids` the caller may read, in order (duplicates and items inside
    another selected folder once), and how many of the ids are not (any more)."""
    wanted: dict[str, PydanticObjectId] = {}
    missing = 0
    for raw in dict.fromkeys(ids):
        try:
            wanted[raw] = PydanticObjectId(raw)
        except (InvalidId, TypeError, ValueError):
            missing += 1
    found: dict[str, FileNode] = {}
    oids = list(wanted.values())
    for start in range(0, len(oids), 1000):
        for node in await FileNode.find({"_id": {"$in": oids[start : start + 1000]}}).to_list():
            found[str(node.id)] = node
    nodes: list[FileNode] = []
    for raw in wanted:
        node = found.get(raw)
        ok = node is not None and node.deleted_at is None and node.committed
        if ok and node is not None and node.owner_id != caller.user_id:
            ok = await resolve_access(caller.user_id, node) is not None
        if ok and node is not None:
            nodes.append(node)
        else:
            missing += 1
    folders = {(n.owner_id, n.path_key) for n in nodes if n.kind == "folder"}
    return [
        n
        for n in nodes
        if not any((n.owner_id, paths.path_key(a)) in folders for a in paths.ancestors(n.path))
    ], missing


def _check_ids(ids: object) -> list[str]:
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise BadRequest("ids must be a list of file or folder ids", code="invalid_request")
    if not ids:
        raise BadRequest("select at least one item", code="no_items")
    if len(ids) > MAX_ITEMS:
        raise BadRequest(f"at most {MAX_ITEMS:,} items per zip", code="too_many_items")
    return ids


async def create_ticket(caller: Caller, ids: object, name: object) -> tuple[str, datetime, str]:
    """Check the selection (every id must be one the caller may read, else 404 naming
    none), store it, and return the ticket for `GET /api/zip/<ticket>`, its expiry and
    the archive's file name."""
    checked = _check_ids(ids)
    if name is not None and not isinstance(name, str):
        raise BadRequest("name must be a string", code="invalid_request")
    nodes, missing = await readable(caller, checked)
    if missing:
        raise NotFound("one or more of the selected items do not exist or are not yours to read")
    ticket = secrets.token_urlsafe(24)
    t = now()
    expires = t + timedelta(seconds=TICKET_SECONDS)
    await ZipTicket.get_pymongo_collection().delete_many(
        match(user_id=caller.user_id, expires_at={"$lt": t})
    )
    file_name = archive_file_name(name, nodes)
    await ZipTicket(
        id=token_hash(ticket),
        user_id=caller.user_id,
        ids=list(dict.fromkeys(checked)),
        name=file_name,
        created_at=t,
        expires_at=expires,
    ).insert()
    return ticket, expires, file_name


async def open_ticket(caller: Caller, ticket: str) -> tuple[str, list[FileNode], list[str]]:
    """The archive name, the items still readable, and notes on those that are not."""
    found = await ZipTicket.get(token_hash(ticket))
    if found is None or found.user_id != caller.user_id:
        raise NotFound("no such zip download", code="unknown_zip")
    if as_utc(found.expires_at) <= now():
        raise Gone("this zip download link has expired; select the items again")
    nodes, missing = await readable(caller, found.ids)
    notes = []
    if missing:
        notes.append(f"{missing} selected item(s) were deleted or are no longer shared with you.")
    return found.name, nodes, notes


def ticket_url(ticket: str) -> str:
    return f"/api/zip/{ticket}"
