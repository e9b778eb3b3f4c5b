"""Coffer's tree as wsgidav resources: the caller's own files and folders at /dav/.

Every operation goes through the same services as the API, with the same rules: a PUT
is an upload (chunked, deduplicated, a new version with history, quota, events), DELETE
moves to the trash, MOVE is a move (same file id, no bytes copied), COPY copies by chunk
reference within one owner's tree, MKCOL makes a folder. Reads stream verified chunks.

wsgidav calls these methods from a2wsgi's worker threads; each one runs its async work
on the server's event loop through the bridge (app/dav/bridge.py) and waits for it.
Dead properties are stored per file id (app/db/dav.py), so they follow the file on a
move and are copied with it.
"""

from __future__ import annotations

import mimetypes
import shutil
import unicodedata
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote, unquote

from wsgidav import util, xml_tools
from wsgidav.dav_error import (
    HTTP_BAD_REQUEST,
    HTTP_CONFLICT,
    HTTP_FORBIDDEN,
    HTTP_INSUFFICIENT_STORAGE,
    HTTP_NOT_FOUND,
    DAVError,
)
from wsgidav.dav_provider import DAVCollection, DAVNonCollection, DAVProvider

from app.acl.access import resolve_access
from app.core import paths
from app.core.errors import CofferError
from app.core.http import ByteRange
from app.core.query import match
from app.dav.bridge import CURRENT, LoopBridge
from app.db.dav import DavProperties
from app.db.files import FileNode, FileVersion
from app.files.reads import stream_content
from app.files.schemas import ChunkIn, UploadRequest
from app.files.scope import (
    Caller,
    Scope,
    node_by_path,
    open_node,
    own_scope,
    parse_id,
    reload,
)
from app.files.uploads import StreamedWrite
from app.files.verify import version_chunks
from app.settings import Settings
from app.storage.base import BlobStore
from app.wiring import Services

# wsgidav reads request bodies and content in pieces of this size (its default is 8 KiB:
# one thread hop per 8 KiB would cost more than the bytes).
BLOCK_SIZE = 1024 * 1024
# A PUT's bytes are handed to the event loop in pieces of this size.
WRITE_PIECE = 4 * 1024 * 1024


@dataclass(frozen=True)
class DavRequest:
    """Who is calling and what they reach, put into the ASGI scope by app/dav/mount.py."""

    caller: Caller
    services: Services
    store: BlobStore
    settings: Settings


def dav_request(environ: dict[str, Any]) -> DavRequest:
    return environ["asgi.scope"]["coffer.dav"]


def dav_error(exc: CofferError) -> DAVError:
    """Coffer's errors as WebDAV statuses (a viewer's write is 403, a full quota 507)."""
    status = {
        400: HTTP_BAD_REQUEST,
        403: HTTP_FORBIDDEN,
        404: HTTP_NOT_FOUND,
        409: HTTP_CONFLICT,
        507: HTTP_INSUFFICIENT_STORAGE,
    }.get(exc.status_code, exc.status_code)
    return DAVError(status, context_info=exc.message)


class CofferProvider(DAVProvider):
    def __init__(self, bridge: LoopBridge) -> None:
        self._mount_path = ""
        super().__init__()
        self.bridge = bridge

    # The same tree answers at /dav and at the Nextcloud paths (/remote.php/webdav,
    # /remote.php/dav/files/USER): hrefs and Destination headers use the prefix of the
    # request being served, which app/dav/mount.py puts in the ASGI scope.
    @property  # type: ignore[override]
    def mount_path(self) -> str:
        environ = getattr(CURRENT, "environ", None)
        if environ is None:
            return self._mount_path
        return environ["asgi.scope"].get("coffer.mount", self._mount_path)

    @mount_path.setter
    def mount_path(self, value: str) -> None:
        self._mount_path = value

    def run(self, coro: Any) -> Any:
        """Run on the event loop; Coffer's errors come out as DAV errors."""
        try:
            return self.bridge.run(coro)
        except CofferError as exc:
            raise dav_error(exc) from exc

    def ref_url_to_path(self, ref_url: str) -> str:
        """The caller's path of a lock's root (a reference URL, see `get_ref_url`)."""
        owner_id, _, key = unquote(ref_url).lstrip("/").partition("/")
        key = "/" + key.rstrip("/")
        environ = getattr(CURRENT, "environ", None)
        if environ is None:
            return key
        return self.run(dav_path_of(dav_request(environ), owner_id, key))

    def get_resource_inst(self, path: str, environ: dict[str, Any]) -> Any:
        self._count_get_resource_inst += 1
        return self.run(self.resource_at(path, environ))

    async def resource_at(self, path: str, environ: dict[str, Any]) -> Any:
        try:
            place = await place_of(dav_request(environ), path)
        except CofferError:
            return None  # a name Coffer never stores, or nothing the caller may see
        if place is None:
            return None
        if place.shared_root:
            return SharedRoot(path, environ, self, place)
        if place.node is None and place.tree_path != "/":
            return None
        if place.node is not None and place.node.kind == "file":
            return File(path, environ, self, place)
        return Folder(path, environ, self, place)

    def place(self, path: str, environ: dict[str, Any]) -> Place:
        """Where a path a client names (e.g. a Destination) lands, existing or not."""
        place = self.run(place_of(dav_request(environ), path))
        if place is None or place.shared_root:
            raise DAVError(HTTP_FORBIDDEN, context_info="nothing can be created there")
        return place


SHARED = "Shared with me"


def ref_url(owner_id: str, tree_path: str, collection: bool = False) -> str:
    """An item's key for locks: the owner and the case-folded path, the same item
    whatever case or route (own tree, "Shared with me", the Nextcloud paths) reaches it."""
    ref = quote(f"/{owner_id}{paths.path_key(tree_path)}".rstrip("/"))
    return ref + "/" if collection else ref


def quota_of(request: DavRequest, place: Place) -> tuple[int, int]:
    """(used, available) bytes of the owner of `place`: the quota's rest, or the data
    disk's free space for an owner without a quota."""
    owner = place.scope.owner
    if owner.quota_bytes:
        return owner.usage_bytes, max(0, owner.quota_bytes - owner.usage_bytes)
    return owner.usage_bytes, shutil.disk_usage(request.settings.data_dir).free


@dataclass(frozen=True)
class Place:
    """Where a DAV path lands: a tree (its scope, with the caller's role), the path in
    the owner's tree, and the node there if any. `shared_root`: the virtual folder that
    lists what others shared with the caller."""

    scope: Scope
    tree_path: str
    node: FileNode | None
    shared_root: bool = False

    def child(self, name: str) -> str:
        """The owner-tree path of a new item called `name` here."""
        try:
            return paths.join(self.tree_path, paths.validate_name(name))
        except CofferError as exc:
            raise dav_error(exc) from exc


async def shared_roots(request: DavRequest) -> dict[str, tuple[str, str]]:
    """What was shared with the caller, by the name it has under "Shared with me"
    (casefolded) -> (shown name, file id); two shares of the same name are told apart by
    their owner."""
    items = await request.services.sharing.shared_with_me(request.caller)
    counts = Counter(i.name.casefold() for i in items)
    roots: dict[str, tuple[str, str]] = {}
    for item in items:
        name = item.name if counts[item.name.casefold()] == 1 else f"{item.name} ({item.owner})"
        roots.setdefault(unicodedata.normalize("NFC", name).casefold(), (name, item.id))
    return roots


async def place_of(request: DavRequest, dav_path: str) -> Place | None:
    own = own_scope(request.caller)
    segments = [s for s in (dav_path or "/").split("/") if s]
    if not segments:
        return Place(own, "/", None)
    if segments[0].casefold() != SHARED.casefold():
        tree_path = paths.normalize_path("/" + "/".join(segments))
        return Place(own, tree_path, await _live_node(own.owner_id, tree_path))
    if len(segments) == 1:
        return Place(own, "/", None, shared_root=True)
    root = (await shared_roots(request)).get(unicodedata.normalize("NFC", segments[1]).casefold())
    if root is None:
        return None
    scope, node = await open_node(request.caller, root[1])
    tree_path = paths.normalize_path("/".join([node.path, *segments[2:]]))
    if len(segments) == 2:
        return Place(scope, tree_path, node)
    inner = await _live_node(scope.owner_id, tree_path)
    if inner is None:
        return Place(scope, tree_path, None)
    access = await resolve_access(request.caller.user_id, inner)
    return Place(scope.with_access(access or scope.access), tree_path, inner)


async def _live_node(owner_id: str, tree_path: str) -> FileNode | None:
    """The committed node at `tree_path` (an upload not yet committed is not there)."""
    node = await node_by_path(owner_id, tree_path)
    return node if node is not None and node.committed and node.deleted_at is None else None


async def dav_path_of(request: DavRequest, owner_id: str, key: str) -> str:
    """The caller's DAV path of an item of `owner_id`'s tree at path key `key`."""
    node = await node_by_path(owner_id, key) if key != "/" else None
    path = node.path if node is not None else key
    if owner_id == request.caller.user_id:
        return path
    for name, file_id in (await shared_roots(request)).values():
        root = await FileNode.get(parse_id(file_id))
        if root is not None and root.owner_id == owner_id and paths.within(key, root.path_key):
            return f"/{SHARED}/{name}" + path[len(root.path) :]
    return path


class CofferResource:
    """What files and folders share: identity, dates, the owner's tree, dead properties."""

    provider: CofferProvider
    environ: dict[str, Any]
    path: str
    place: Place
    is_collection: bool

    def run(self, coro: Any) -> Any:
        return self.provider.run(coro)

    @property
    def scope(self) -> Scope:
        return self.place.scope

    @property
    def node(self) -> FileNode | None:
        return self.place.node

    @property
    def request(self) -> DavRequest:
        return dav_request(self.environ)

    @property
    def services(self) -> Services:
        return self.request.services

    def get_ref_url(self) -> str:
        return ref_url(self.scope.owner_id, self.place.tree_path, self.is_collection)

    def get_creation_date(self) -> float | None:
        return self.node.created_at.timestamp() if self.node is not None else None

    def get_last_modified(self) -> float | None:
        return self.node.modified_at.timestamp() if self.node is not None else None

    def get_display_name(self) -> str:
        return self.node.name if self.node is not None else ""

    def check_writable(self) -> None:
        if not self.scope.access.can_write:
            raise DAVError(HTTP_FORBIDDEN, context_info="shared with you to view only")

    def check_detachable(self, what: str) -> None:
        """Rename, move or delete: needs write access on the parent too, and never the
        root of a share (app/acl/access.py `can_detach`)."""
        if self.node is None:
            raise DAVError(HTTP_FORBIDDEN, context_info=f"cannot {what} this folder")
        # Resolved afresh: wsgidav's walks hand over members with their folder's role,
        # and a member may carry its own grant (a nested share root) that must not go.
        access = self.run(resolve_access(self.scope.caller.user_id, self.node))
        if access is None:
            raise DAVError(HTTP_NOT_FOUND)
        try:
            self.scope.with_access(access).check_detach(what)
        except CofferError as exc:
            raise dav_error(exc) from exc

    def prevent_locking(self) -> bool:
        """Only those who may write take locks (a viewer's lock would shut the owner out)."""
        return not self.scope.access.can_write

    def check_locks(self) -> None:
        """423 if this item or anything under it is locked by someone else's token."""
        locks = self.provider.lock_manager
        if locks is None:
            return
        if "wsgidav.conditions.if" not in self.environ:
            util.parse_if_header_dict(self.environ)
        locks.check_write_permission(
            url=self.get_ref_url(),
            depth="infinity",
            token_list=self.environ["wsgidav.ifLockTokenList"],
            principal=self.environ["wsgidav.user_name"],
        )

    # -- dead properties, by file id ------------------------------------------------

    # Set for the members of a listing, read together in one query.
    props_cache: dict[str, str] | None = None

    def _props(self) -> dict[str, str]:
        if self.node is None:
            return {}
        if self.props_cache is not None:
            return self.props_cache
        doc = self.run(DavProperties.get(str(self.node.id)))
        return _unquoted(doc.props) if doc is not None else {}

    def get_property_names(self, *, is_allprop: bool) -> list[str]:
        names = super().get_property_names(is_allprop=is_allprop)  # type: ignore[misc]
        return names + [n for n in self._props() if n not in names]

    def get_property_value(self, name: str) -> Any:
        if name == "{DAV:}getetag" and self.get_etag() is not None:
            return f'"{self.get_etag()}"'  # an entity tag, quoted as in the ETag header
        try:
            return super().get_property_value(name)  # type: ignore[misc]
        except DAVError as exc:
            if exc.value != HTTP_NOT_FOUND:
                raise
        value = self._props().get(name)
        if value is None:
            raise DAVError(HTTP_NOT_FOUND)
        return xml_tools.string_to_xml(value)

    def set_property_value(self, name: str, value: Any, *, dry_run: bool = False) -> Any:
        if name.startswith("{DAV:}") or self.node is None:
            return super().set_property_value(name, value, dry_run=dry_run)  # type: ignore[misc]
        self.check_writable()
        if dry_run:
            return None
        key = {"_id": str(self.node.id)}
        coll = DavProperties.get_pymongo_collection()
        field = f"props.{_field(name)}"
        if value is None:
            self.run(coll.update_one(key, {"$unset": {field: ""}}))
        else:
            text = _bare(xml_tools.xml_to_bytes(value, pretty=False).decode())
            owner = {"owner_id": self.scope.owner_id}
            self.run(coll.update_one(key, {"$set": {field: text, **owner}}, upsert=True))
        return None

    def remove_all_properties(self, *, recursive: bool) -> None:
        # A deleted item goes to the trash with its properties: restored, it has them.
        return None

    def copy_properties_to(self, target: FileNode) -> None:
        props = self._props()
        if props:
            stored = {_field(name): value for name, value in props.items()}
            self.run(
                DavProperties.get_pymongo_collection().update_one(
                    {"_id": str(target.id)},
                    {"$set": {"props": stored, "owner_id": target.owner_id}},
                    upsert=True,
                )
            )

    # -- moves and deletes --------------------------------------------------------

    def support_recursive_move(self, dest_path: str) -> bool:
        """A move within one owner's tree is one move; across owners (your files into a
        share, or out of one) it is a copy and a delete, which wsgidav walks."""
        if self.node is None:
            return False
        return self.provider.place(dest_path, self.environ).scope.owner_id == self.scope.owner_id

    def handle_move(self, dest_path: str) -> bool:
        """A rename to the same name in another case (or Unicode form) lands on the item
        itself: wsgidav would delete the "existing" destination first, so it is done
        here, as one move. Anything else: wsgidav's usual way (False)."""
        if self.node is None:
            return False
        dest = self.provider.place(dest_path, self.environ)
        if dest.node is None or dest.node.id != self.node.id:
            return False
        self.check_detachable("rename")
        self.run(self.services.tree.move_node(self.scope, self.node, dest.tree_path))
        return True

    def move_recursive(self, dest_path: str) -> None:
        assert self.node is not None
        self.check_detachable("move")
        dest = self.provider.place(dest_path, self.environ)
        if not dest.scope.access.can_write:
            raise DAVError(HTTP_FORBIDDEN, context_info="the destination is view only")
        self.run(self.services.tree.move_node(self.scope, self.node, dest.tree_path))

    def handle_delete(self) -> bool:
        """Trash the item (a folder with everything in it, at once)."""
        self.check_detachable("delete")
        assert self.node is not None
        # wsgidav checked the parent's locks; this one's and (a folder's) everything
        # inside it are checked here, since the whole subtree goes at once.
        self.check_locks()
        self.run(self.services.tree.trash_node(self.scope, self.node))
        return True

    def delete(self) -> None:
        self.handle_delete()


def _unquoted(props: dict[str, str]) -> dict[str, str]:
    """Stored properties by their names; each value one XML element, no declaration."""
    return {unquote(k): _bare(v) for k, v in props.items()}


def _bare(xml: str) -> str:
    """An element's XML without a leading `<?xml ...?>` declaration."""
    xml = xml.lstrip()
    if xml.startswith("<?xml"):
        xml = xml[xml.index("?>") + 2 :].lstrip()
    return xml


def _field(name: str) -> str:
    """A property name as a MongoDB field name ('.' and a leading '$' are not allowed)."""
    return quote(name, safe="{}:/-_~").replace(".", "%2E").replace("$", "%24")


class Folder(CofferResource, DAVCollection):
    def __init__(
        self, path: str, environ: dict[str, Any], provider: CofferProvider, place: Place
    ) -> None:
        DAVCollection.__init__(self, path, environ)
        self.provider = provider
        self.place = place  # node None: the root of the caller's own tree

    def get_etag(self) -> None:
        return None

    def get_used_bytes(self) -> int:
        return quota_of(self.request, self.place)[0]

    def get_available_bytes(self) -> int:
        return quota_of(self.request, self.place)[1]

    def _member(self, node: FileNode) -> Folder | File:
        path = self.path.rstrip("/") + "/" + node.name
        # A child has the folder's role (a grant on the child itself is found when it
        # is opened on its own, as every write does).
        access = replace(self.scope.access, parent_role=self.scope.access.role, granted_here=False)
        place = Place(self.scope.with_access(access), node.path, node)
        if node.kind == "folder":
            return Folder(path, self.environ, self.provider, place)
        return File(path, self.environ, self.provider, place)

    def get_member_names(self) -> list[str]:
        names = [n.name for n in self.run(children_of(self.place))]
        return [SHARED, *names] if self.node is None else names

    def get_member_list(self) -> list[Any]:
        """All children from one query (not one lookup per name), with their dead
        properties from one more."""
        children = self.run(children_of(self.place))
        props = self.run(props_of([str(n.id) for n in children]))
        members: list[Any] = []
        for node in children:
            member = self._member(node)
            member.props_cache = props.get(str(node.id), {})
            members.append(member)
        if self.node is None:
            shared = self.path.rstrip("/") + "/" + SHARED
            members.insert(0, SharedRoot(shared, self.environ, self.provider, self.place))
        return members

    def get_member(self, name: str) -> Any:
        return self.provider.get_resource_inst(self.path.rstrip("/") + "/" + name, self.environ)

    def create_empty_resource(self, name: str) -> File:
        self.check_writable()
        path = self.path.rstrip("/") + "/" + name
        place = Place(self.scope, self.place.child(name), None)
        if self.environ.get("REQUEST_METHOD") == "PUT":
            return File(path, self.environ, self.provider, place)
        # LOCK on a name that does not exist yet makes it an empty file.
        self.run(StreamedWrite(self.services.uploads, self.scope, place.tree_path).finish())
        return self.provider.get_resource_inst(path, self.environ)

    def create_collection(self, name: str) -> None:
        self.check_writable()
        self.run(self.services.tree.ensure_folder(self.scope, self.place.child(name)))

    def copy_move_single(self, dest_path: str, *, is_move: bool) -> None:
        """The folder itself, without its members (wsgidav walks them)."""
        dest = self.provider.place(dest_path, self.environ)
        if not dest.scope.access.can_write:
            raise DAVError(HTTP_FORBIDDEN, context_info="the destination is view only")
        made = self.run(self.services.tree.ensure_folder(dest.scope, dest.tree_path))
        if made is not None:
            self.copy_properties_to(made)


def children_query(place: Place) -> dict[str, Any]:
    """The filter of a folder's live children (the own root's when `place.node` is None)."""
    parent_id = str(place.node.id) if place.node is not None else None
    return match(
        owner_id=place.scope.owner_id, parent_id=parent_id, deleted_at=None, committed=True
    )


async def children_of(place: Place) -> list[FileNode]:
    """A folder's live children, by name; at the own root without a folder named like
    the virtual "Shared with me" (which takes its place)."""
    found = await FileNode.find(children_query(place)).sort("+name_key").to_list()
    if place.node is None:
        found = [n for n in found if n.name_key != SHARED.casefold()]
    return found


async def owner_has_props(owner_id: str) -> bool:
    """Whether any of the owner's files has a dead property (most owners: none)."""
    found = await DavProperties.get_pymongo_collection().find_one(
        match(owner_id=owner_id), {"_id": 1}
    )
    return found is not None


async def props_of(ids: list[str]) -> dict[str, dict[str, str]]:
    found: dict[str, dict[str, str]] = {}
    for start in range(0, len(ids), 1000):
        cursor = DavProperties.get_pymongo_collection().find(
            {"_id": {"$in": ids[start : start + 1000]}}
        )
        async for doc in cursor:
            found[doc["_id"]] = _unquoted(doc.get("props") or {})
    return found


class SharedRoot(DAVCollection):
    """ "Shared with me": one folder per item others shared with the caller, with the
    caller's role there. Nothing can be created, moved or deleted at this level."""

    def __init__(
        self, path: str, environ: dict[str, Any], provider: CofferProvider, place: Place
    ) -> None:
        super().__init__(path, environ)
        self.provider = provider
        self.place = place

    def get_ref_url(self) -> str:
        return quote(f"/{self.place.scope.caller.user_id}/.shared") + "/"

    def get_display_name(self) -> str:
        return SHARED

    def get_etag(self) -> None:
        return None

    def get_creation_date(self) -> None:
        return None

    def get_last_modified(self) -> None:
        return None

    def prevent_locking(self) -> bool:
        return True

    def get_member_names(self) -> list[str]:
        roots = self.provider.run(shared_roots(dav_request(self.environ)))
        return [name for name, _ in roots.values()]

    def get_member(self, name: str) -> Any:
        return self.provider.get_resource_inst(self.path.rstrip("/") + "/" + name, self.environ)

    def create_empty_resource(self, name: str) -> Any:
        raise DAVError(HTTP_FORBIDDEN, context_info="nothing can be added here")

    def create_collection(self, name: str) -> None:
        raise DAVError(HTTP_FORBIDDEN, context_info="nothing can be added here")

    def handle_delete(self) -> bool:
        raise DAVError(HTTP_FORBIDDEN, context_info="this folder cannot be deleted")

    def support_recursive_move(self, dest_path: str) -> bool:
        return False

    def copy_move_single(self, dest_path: str, *, is_move: bool) -> None:
        raise DAVError(HTTP_FORBIDDEN, context_info="this folder cannot be copied or moved")


class File(CofferResource, DAVNonCollection):
    def __init__(
        self, path: str, environ: dict[str, Any], provider: CofferProvider, place: Place
    ) -> None:
        DAVNonCollection.__init__(self, path, environ)
        self.provider = provider
        self.place = place  # node None: a PUT is about to create it
        self.writer: DavWriter | None = None

    def get_content_length(self) -> int:
        return self.node.size if self.node is not None else 0

    def get_content_type(self) -> str:
        return mimetypes.guess_type(self.path)[0] or "application/octet-stream"

    def get_etag(self) -> str | None:
        return self.node.content_hash if self.node is not None else None

    def support_etag(self) -> bool:
        return True

    def support_ranges(self) -> bool:
        return True

    def get_content(self) -> ContentReader:
        assert self.node is not None
        version = self.run(FileVersion.get(self.node.head_version_id))
        if version is None:
            raise DAVError(HTTP_NOT_FOUND)
        return ContentReader(self.provider, self.request.store, version)

    def begin_write(self, *, content_type: str | None = None) -> DavWriter:
        self.check_writable()
        streamed = StreamedWrite(self.services.uploads, self.scope, self.place.tree_path)
        self.writer = DavWriter(self.provider, streamed)
        return self.writer

    def end_write(self, *, with_errors: bool) -> None:
        """Commit what was written (a failed PUT commits nothing; its chunks are garbage)."""
        writer, self.writer = self.writer, None
        if writer is None:
            return
        if with_errors:
            self.run(_abandon(writer.streamed))
            return
        declared = self.environ.get("CONTENT_LENGTH")
        if declared and declared.isdecimal() and int(declared) != writer.received:
            # A body cut short (the client went away) must not become a version.
            self.run(_abandon(writer.streamed))
            raise DAVError(HTTP_BAD_REQUEST, context_info="the body ended before its length")
        out = self.run(writer.streamed.finish())
        node = self.run(reload(self.scope, out.id))
        self.place = replace(self.place, node=node)

    def copy_move_single(self, dest_path: str, *, is_move: bool) -> None:
        """Within one owner's tree a copy takes the same chunks (no bytes move); into
        another owner's tree the bytes are streamed over (chunks are kept per owner)."""
        assert self.node is not None
        dest = self.provider.place(dest_path, self.environ)
        if not dest.scope.access.can_write:
            raise DAVError(HTTP_FORBIDDEN, context_info="the destination is view only")
        copied = self.run(self._copy_to(dest))
        self.copy_properties_to(copied)

    async def _copy_to(self, dest: Place) -> FileNode:
        assert self.node is not None
        version = await FileVersion.get(self.node.head_version_id)
        if version is None:
            raise DAVError(HTTP_NOT_FOUND)
        uploads = self.services.uploads
        if dest.scope.owner_id != self.scope.owner_id:
            streamed = StreamedWrite(uploads, dest.scope, dest.tree_path)
            async for piece in stream_content(
                self.request.store, version, ByteRange(0, max(0, version.size - 1))
            ):
                await streamed.write(piece)
            out = await streamed.finish()
            return await reload(dest.scope, out.id)
        chunks = [ChunkIn(sha256=sha, size=size) for sha, size in await version_chunks(version)]
        req = UploadRequest(size=version.size, chunks=chunks, content_hash=version.content_hash)
        out = await uploads.commit_stored(dest.scope, dest.tree_path, req)
        return await reload(dest.scope, out.id)


async def _abandon(streamed: StreamedWrite) -> None:
    streamed.abandon()


class DavWriter:
    """The file object wsgidav writes a PUT body into: pieces go to the event loop 4 MiB
    at a time (stored as chunks as they fill); `close` only flushes, the commit waits
    for `end_write` so that a body cut short commits nothing."""

    def __init__(self, provider: CofferProvider, streamed: StreamedWrite) -> None:
        self.provider = provider
        self.streamed = streamed
        self.pending = bytearray()
        self.received = 0

    def write(self, data: bytes) -> None:
        self.received += len(data)
        self.pending += data
        if len(self.pending) >= WRITE_PIECE:
            self._flush()

    def writelines(self, pieces: Iterable[bytes]) -> None:
        for piece in pieces:
            self.write(piece)

    def _flush(self) -> None:
        if self.pending:
            data, self.pending = bytes(self.pending), bytearray()
            self.provider.run(self.streamed.write(data))

    def close(self) -> None:
        self._flush()


class ContentReader:
    """The file object wsgidav reads a GET from: verified chunks streamed from the store,
    one event-loop hop per chunk; `seek` restarts the stream at an offset (Range)."""

    def __init__(self, provider: CofferProvider, store: BlobStore, version: FileVersion) -> None:
        self.provider = provider
        self.store = store
        self.version = version
        self.position = 0
        self.buffer = b""
        self.stream: AsyncIterator[bytes] | None = None

    def seek(self, offset: int, whence: int = 0) -> int:
        self.close()
        self.position = offset if whence == 0 else self.version.size + offset
        return self.position

    def tell(self) -> int:
        return self.position

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            size = self.version.size - self.position
        while len(self.buffer) < size and self._more():
            pass
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        self.position += len(data)
        return data

    def _more(self) -> bool:
        start = self.position + len(self.buffer)
        if start >= self.version.size:
            return False
        if self.stream is None:
            self.stream = stream_content(
                self.store, self.version, ByteRange(start, self.version.size - 1)
            )

        async def next_piece(stream: AsyncIterator[bytes]) -> bytes | None:
            return await anext(stream, None)

        piece = self.provider.run(next_piece(self.stream))
        if piece is None:
            return False
        self.buffer += piece
        return True

    def close(self) -> None:
        self.buffer = b""
        if self.stream is not None:
            stream, self.stream = self.stream, None
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                self.provider.run(aclose())
