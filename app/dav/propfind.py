"""PROPFIND served natively: the request every WebDAV client makes most (each folder it
opens, each file it checks), answered from two queries and streamed as it is written.

Through wsgidav a listing costs a thread hop per property lookup and builds the whole
answer as an element tree first (2,000 entries: 0.6 s, 10,000 entries would be 3 s).
Here the folder's children come from one query, their dead properties from one more,
and the multistatus goes out in pieces of a few hundred entries. What this does not
cover goes to wsgidav as before: the "Shared with me" folder itself, and any tree whose
owner holds a lock (lock discovery is wsgidav's).
"""

from __future__ import annotations

import email.utils
import functools
import mimetypes
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote
from xml.etree.ElementTree import Element
from xml.sax.saxutils import escape

from defusedxml import ElementTree
from defusedxml.common import DefusedXmlException

from app.core.errors import BadRequest
from app.dav.locks import owner_holds_locks
from app.dav.provider import (
    SHARED,
    DavRequest,
    Place,
    children_query,
    owner_has_props,
    place_of,
    props_of,
    quota_of,
)
from app.db.events import EventCounter
from app.db.files import FileNode

DAV = "DAV:"
OC = "http://owncloud.org/ns"
PIECE_ENTRIES = 250  # entries per streamed piece
MAX_NAMES = 256  # properties one PROPFIND may name (each entry repeats them)

SUPPORTED_LOCK = (
    "<D:lockentry><D:lockscope><D:exclusive/></D:lockscope><D:locktype><D:write/>"
    "</D:locktype></D:lockentry><D:lockentry><D:lockscope><D:shared/></D:lockscope>"
    "<D:locktype><D:write/></D:locktype></D:lockentry>"
)


@dataclass(frozen=True)
class Wanted:
    """What the PROPFIND body asks for: every property, their names, or these."""

    mode: str  # "allprop", "propname" or "prop"
    names: tuple[str, ...] = ()  # "{namespace}local", for "prop"


def parse_body(body: bytes) -> Wanted:
    """The request's PROPFIND body (none means allprop); 400 for anything else,
    including entity tricks (defusedxml refuses DTDs with entities)."""
    if not body.strip():
        return Wanted("allprop")
    try:
        root = ElementTree.fromstring(body, forbid_dtd=True)
    except (ElementTree.ParseError, DefusedXmlException, ValueError) as exc:
        raise BadRequest(f"the PROPFIND body is not valid XML: {exc}", code="bad_xml") from exc
    if root.tag != f"{{{DAV}}}propfind":
        raise BadRequest("the body must be a DAV:propfind", code="bad_xml")
    for child in root:
        if child.tag == f"{{{DAV}}}allprop":
            return Wanted("allprop")
        if child.tag == f"{{{DAV}}}propname":
            return Wanted("propname")
        if child.tag == f"{{{DAV}}}prop":
            names = tuple(dict.fromkeys(el.tag for el in child if isinstance(el, Element)))
            if len(names) > MAX_NAMES:
                raise BadRequest(f"at most {MAX_NAMES} properties a request", code="bad_xml")
            return Wanted("prop", names)
    raise BadRequest("the propfind names no allprop, propname or prop", code="bad_xml")


@dataclass(frozen=True)
class Item:
    """What a listing shows of a node (read raw: 10,000 of them must not each be
    validated into a model)."""

    id: str | None  # None: not a stored node (the own root, "Shared with me")
    name: str
    folder: bool
    size: int = 0
    content_hash: str | None = None
    modified_at: datetime | str | None = None
    created_at: datetime | str | None = None

    @classmethod
    def of(cls, doc: dict[str, Any]) -> Item:
        return cls(
            id=str(doc["_id"]),
            name=doc["name"],
            folder=doc["kind"] == "folder",
            size=doc.get("size", 0),
            content_hash=doc.get("content_hash"),
            modified_at=doc.get("modified_at"),
            created_at=doc.get("created_at"),
        )


@dataclass(frozen=True)
class Listing:
    """What every entry of one answer shares: quota, the owner's tree version (folder
    ETags), the caller's role there."""

    quota: tuple[int, int]
    tree_seq: int
    owner_id: str
    writable: bool
    detachable: bool  # the top entry may be renamed, moved, deleted
    has_props: bool  # the owner has dead properties somewhere (else none are looked up)
    is_owner: bool = True


@dataclass(frozen=True)
class Entry:
    href: str
    item: Item
    dead: dict[str, str]
    top: bool = False

    @property
    def folder(self) -> bool:
        return self.item.folder


async def answer(
    request: DavRequest, mount: str, dav_path: str, depth: str, wanted: Wanted
) -> AsyncIterator[bytes] | int | None:
    """The multistatus, in pieces; an HTTP status to answer instead (404); or None when
    wsgidav should answer this one."""
    place = await place_of(request, dav_path)
    if place is None or (place.node is None and place.tree_path != "/"):
        return 404
    if place.shared_root or await owner_holds_locks(place.scope.owner_id):
        return None
    if place.node is None:
        top = Item(None, "", True)
    else:
        top = Item.of(place.node.model_dump(by_alias=True))
    base = mount + quote(dav_path.rstrip("/") if dav_path != "/" else "")
    counter = await EventCounter.get(place.scope.owner_id)
    access = place.scope.access
    listing = Listing(
        quota=quota_of(request, place),
        tree_seq=counter.seq if counter is not None else 0,
        owner_id=place.scope.owner_id,
        writable=access.can_write,
        detachable=place.node is not None and access.can_detach,
        has_props=await owner_has_props(place.scope.owner_id),
        is_owner=access.is_owner,
    )
    return stream(place, base, top, depth == "1" and top.folder, wanted, listing)


async def stream(
    place: Place, base: str, top: Item, members: bool, wanted: Wanted, listing: Listing
) -> AsyncIterator[bytes]:
    """The folder (or file) itself, then its members as they are read, PIECE_ENTRIES at
    a time, each batch's dead properties in one query."""
    yield b'<?xml version="1.0" encoding="utf-8"?>\n<D:multistatus xmlns:D="DAV:">'
    dead = await props_of([top.id]) if top.id and listing.has_props else {}
    first = [Entry(base + ("/" if top.folder else ""), top, dead.get(top.id or "", {}), True)]
    if members and place.node is None:
        joined = place.scope.caller.user.created_at
        shared = Item(None, SHARED, True, modified_at=joined, created_at=joined)
        first.append(Entry(f"{base}/{quote(SHARED)}/", shared, {}))
    yield "".join(response_xml(e, wanted, listing) for e in first).encode()
    if members:
        prefix = base.rstrip("/") + "/"
        batch: list[Item] = []
        async for doc in children_cursor(place):
            batch.append(Item.of(doc))
            if len(batch) == PIECE_ENTRIES:
                yield await _piece(batch, prefix, wanted, listing)
                batch = []
        if batch:
            yield await _piece(batch, prefix, wanted, listing)
    yield b"</D:multistatus>"


def children_cursor(place: Place) -> AsyncIterator[dict[str, Any]]:
    # No projection: the embedded server answers it slower than whole documents.
    cursor = FileNode.get_pymongo_collection().find(children_query(place))
    cursor = cursor.sort("name_key", 1)

    async def docs() -> AsyncIterator[dict[str, Any]]:
        async for doc in cursor:
            # At the own root "Shared with me" is the virtual folder (see provider.py).
            if place.node is None and doc["name_key"] == SHARED.casefold():
                continue
            yield doc

    return docs()


async def _piece(items: list[Item], prefix: str, wanted: Wanted, listing: Listing) -> bytes:
    dead = await props_of([i.id for i in items if i.id]) if listing.has_props else {}
    return "".join(
        response_xml(
            Entry(prefix + quote(i.name) + ("/" if i.folder else ""), i, dead.get(i.id or "", {})),
            wanted,
            listing,
        )
        for i in items
    ).encode()


def _utc(at: datetime | str) -> datetime:
    """A stored time in UTC (raw documents may hold it as an ISO string)."""
    if isinstance(at, str):
        at = datetime.fromisoformat(at)
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone(UTC)


def _http_date(at: datetime | str) -> str:
    return email.utils.format_datetime(_utc(at), usegmt=True)


def _folder_etag(tree_seq: int, tag: str) -> str:
    """Nextcloud clients look for changes below a folder by its ETag: any change to the
    owner's files moves the owner's feed on, so it changes every folder's ETag (a client
    re-lists more than it must, never less)."""
    return f'"{tree_seq:x}-{tag}"'


async def folder_etag(owner_id: str, folder: FileNode) -> str:
    counter = await EventCounter.get(owner_id)
    return _folder_etag(counter.seq if counter is not None else 0, str(folder.id))


def permissions(entry: Entry, listing: Listing) -> str:
    """Nextcloud's permission letters: G read, W write, C/K create files/folders in it,
    D/N/V delete, rename, move (not the top of a share, nor "Shared with me")."""
    if entry.item.id is None and entry.item.name == SHARED:
        return "G"
    letters = "G"
    if listing.writable:
        letters += "CK" if entry.folder else "W"
        if listing.detachable if entry.top else entry.item.id is not None:
            letters += "DNV"
    return letters


def live_props(entry: Entry, listing: Listing) -> dict[str, str]:
    """The entry's live properties: "{DAV:}name" -> the XML inside the element."""
    item = entry.item
    quota = listing.quota
    props = {f"{{{DAV}}}resourcetype": "<D:collection/>" if entry.folder else ""}
    if item.name:
        props[f"{{{DAV}}}displayname"] = escape(item.name)
    if item.modified_at is not None:
        props[f"{{{DAV}}}getlastmodified"] = _http_date(item.modified_at)
    if item.created_at is not None:
        props[f"{{{DAV}}}creationdate"] = _utc(item.created_at).strftime("%Y-%m-%dT%H:%M:%SZ")
    if entry.folder and listing.is_owner:  # a share's recipients do not see its owner's
        props[f"{{{DAV}}}quota-used-bytes"] = str(quota[0])
        props[f"{{{DAV}}}quota-available-bytes"] = str(quota[1])
    else:
        kind = mimetypes.guess_type(item.name)[0] or "application/octet-stream"
        props[f"{{{DAV}}}getcontentlength"] = str(item.size)
        props[f"{{{DAV}}}getcontenttype"] = escape(kind)
        props[f"{{{DAV}}}getetag"] = escape(f'"{item.content_hash}"')
    if entry.folder:
        tag = item.id or ("shared" if item.name == SHARED else "root")
        props[f"{{{DAV}}}getetag"] = escape(_folder_etag(listing.tree_seq, tag), {'"': "&quot;"})
    file_id = item.id or f"{listing.owner_id}-{'shared' if item.name == SHARED else 'root'}"
    props[f"{{{OC}}}id"] = file_id
    props[f"{{{OC}}}fileid"] = file_id
    props[f"{{{OC}}}permissions"] = permissions(entry, listing)
    if not entry.folder:
        props[f"{{{OC}}}size"] = str(item.size)
    props[f"{{{DAV}}}supportedlock"] = SUPPORTED_LOCK
    props[f"{{{DAV}}}lockdiscovery"] = ""
    return props


@functools.lru_cache(maxsize=1024)
def _tags(name: str) -> tuple[str, str, str]:
    """(open, close, empty) tags of `name` ("{ns}local", or "local" in no namespace); a
    listing repeats a few names thousands of times."""
    if not name.startswith("{"):
        return f'<{name} xmlns="">', f"</{name}>", f'<{name} xmlns=""/>'
    ns, _, local = name[1:].partition("}")
    if ns == DAV:
        return f"<D:{local}>", f"</D:{local}>", f"<D:{local}/>"
    attr = f' xmlns:x="{escape(ns, {chr(34): "&quot;"})}"'
    return f"<x:{local}{attr}>", f"</x:{local}>", f"<x:{local}{attr}/>"


def _element(name: str, inner: str | None) -> str:
    """`name` ("{ns}local") as an element holding `inner` (None: empty)."""
    opening, closing, empty = _tags(name)
    return f"{opening}{inner}{closing}" if inner else empty


def _propstat(elements: Iterable[str], status: str) -> str:
    inner = "".join(elements)
    return (
        f"<D:propstat><D:prop>{inner}</D:prop><D:status>HTTP/1.1 {status}</D:status></D:propstat>"
    )


def response_xml(entry: Entry, wanted: Wanted, listing: Listing) -> str:
    live = live_props(entry, listing)
    if wanted.mode == "propname":
        names = [*live, *entry.dead]
        stats = _propstat((_element(n, None) for n in names), "200 OK")
    elif wanted.mode == "allprop":
        found = [_element(n, v) for n, v in live.items() if n != f"{{{DAV}}}lockdiscovery"]
        found.append(_element(f"{{{DAV}}}lockdiscovery", None))
        found += list(entry.dead.values())  # stored as whole elements
        stats = _propstat(found, "200 OK")
    else:
        found, missing = [], []
        for name in wanted.names:
            if name in live:
                found.append(_element(name, live[name]))
            elif name in entry.dead:
                found.append(entry.dead[name])
            else:
                missing.append(_element(name, None))
        stats = (_propstat(found, "200 OK") if found else "") + (
            _propstat(missing, "404 Not Found") if missing else ""
        )
    return f"<D:response><D:href>{escape(entry.href)}</D:href>{stats}</D:response>"
