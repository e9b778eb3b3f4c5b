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
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
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

from app.core import paths
from app.core.errors import CofferError
from app.core.http import ByteRange
from app.core.query import match
from app.dav.bridge import LoopBridge
from app.db.dav import DavProperties
from app.db.files import FileNode, FileVersion
from app.files.reads import stream_content
from app.files.schemas import ChunkIn, UploadRequest
from app.files.scope import Caller, Scope, node_by_path, own_scope, reload
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
        super().__init__()
        self.bridge = bridge

    def run(self, coro: Any) -> Any:
        """Run on the event loop; Coffer's errors come out as DAV errors."""
        try:
            return self.bridge.run(coro)
        except CofferError as exc:
            raise dav_error(exc) from exc

    def ref_url_to_path(self, ref_url: str) -> str:
        """The path of a lock's root (a reference URL, see `get_ref_url`), as the owner's
        tree has it (in its own case)."""
        owner_id, _, key = unquote(ref_url).lstrip("/").partition("/")
        key = "/" + key.rstrip("/")
        if key == "/":
            return "/"
        node = self.bridge.run(node_by_path(owner_id, key))
        return node.path if node is not None else key

    def get_resource_inst(self, path: str, environ: dict[str, Any]) -> Any:
        self._count_get_resource_inst += 1
        return self.run(self.resource_at(path, environ))

    async def resource_at(self, path: str, environ: dict[str, Any]) -> Any:
        request = dav_request(environ)
        scope = own_scope(request.caller)
        try:
            tree_path = paths.normalize_path(path or "/")
        except CofferError:
            return None  # a name Coffer never stores: nothing is there
        if tree_path == "/":
            return Folder(path or "/", environ, self, scope, None)
        node = await node_by_path(scope.owner_id, tree_path)
        if node is None or not node.committed or node.deleted_at is not None:
            return None
        return resource_of(path, environ, self, scope, node)


def resource_of(
    path: str, environ: dict[str, Any], provider: CofferProvider, scope: Scope, node: FileNode
) -> Folder | File:
    if node.kind == "folder":
        return Folder(path, environ, provider, scope, node)
    return File(path, environ, provider, scope, node)


def tree_path_of(dav_path: str) -> str:
    try:
        return paths.normalize_path(dav_path)
    except CofferError as exc:
        raise dav_error(exc) from exc


class CofferResource:
    """What files and folders share: identity, dates, the owner's tree, dead properties."""

    provider: CofferProvider
    environ: dict[str, Any]
    path: str
    scope: Scope
    node: FileNode | None

    def run(self, coro: Any) -> Any:
        return self.provider.run(coro)

    @property
    def request(self) -> DavRequest:
        return dav_request(self.environ)

    @property
    def services(self) -> Services:
        return self.request.services

    def get_ref_url(self) -> str:
        """The resource's key for locks: the owner and the case-folded path, the same
        resource whatever case or route a client uses to reach it."""
        key = self.node.path_key if self.node is not None else "/"
        ref = quote(f"/{self.scope.owner_id}{key}".rstrip("/"))
        return ref + "/" if self.is_collection else ref

    def get_creation_date(self) -> float | None:
        return self.node.created_at.timestamp() if self.node is not None else None

    def get_last_modified(self) -> float | None:
        return self.node.modified_at.timestamp() if self.node is not None else None

    def get_display_name(self) -> str:
        return self.node.name if self.node is not None else ""

    def check_writable(self) -> None:
        if not self.scope.access.can_write:
            raise DAVError(HTTP_FORBIDDEN, context_info="shared with you to view only")

    # -- dead properties, by file id ------------------------------------------------

    def _props(self) -> dict[str, str]:
        if self.node is None:
            return {}
        doc = self.run(DavProperties.get(str(self.node.id)))
        return {unquote(k): v for k, v in doc.props.items()} if doc is not None else {}

    def get_property_names(self, *, is_allprop: bool) -> list[str]:
        names = super().get_property_names(is_allprop=is_allprop)  # type: ignore[misc]
        return names + [n for n in self._props() if n not in names]

    def get_property_value(self, name: str) -> Any:
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
            text = xml_tools.xml_to_bytes(value, pretty=False).decode()
            self.run(coll.update_one(key, {"$set": {field: text}}, upsert=True))
        return None

    def remove_all_properties(self, *, recursive: bool) -> None:
        # A deleted item goes to the trash with its properties: restored, it has them.
        return None

    def copy_properties_to(self, target: FileNode) -> None:
        props = self._props()
        if props:
            stored = {_field(name): value for name, value in props.items()}
            self.run(
                DavProperties.get_pymongo_collection().replace_one(
                    {"_id": str(target.id)}, {"props": stored}, upsert=True
                )
            )

    # -- moves and deletes --------------------------------------------------------

    def support_recursive_move(self, dest_path: str) -> bool:
        return self.node is not None

    def move_recursive(self, dest_path: str) -> None:
        assert self.node is not None
        self.check_writable()
        self.run(self.services.tree.move_node(self.scope, self.node, tree_path_of(dest_path)))

    def handle_delete(self) -> bool:
        """Trash the item (a folder with everything in it, at once)."""
        if self.node is None:
            raise DAVError(HTTP_FORBIDDEN, context_info="the root cannot be deleted")
        self.check_writable()
        # wsgidav checked the parent's locks; this one's and (a folder's) everything
        # inside it are checked here, since the whole subtree goes at once (423 Locked).
        locks = self.provider.lock_manager
        if locks is not None:
            if "wsgidav.conditions.if" not in self.environ:
                util.parse_if_header_dict(self.environ)
            locks.check_write_permission(
                url=self.get_ref_url(),
                depth="infinity",
                token_list=self.environ["wsgidav.ifLockTokenList"],
                principal=self.environ["wsgidav.user_name"],
            )
        self.run(self.services.tree.trash_node(self.scope, self.node))
        return True

    def delete(self) -> None:
        self.handle_delete()


def _field(name: str) -> str:
    """A property name as a MongoDB field name ('.' and a leading '$' are not allowed)."""
    return quote(name, safe="{}:/-_~").replace(".", "%2E").replace("$", "%24")


class Folder(CofferResource, DAVCollection):
    def __init__(
        self,
        path: str,
        environ: dict[str, Any],
        provider: CofferProvider,
        scope: Scope,
        node: FileNode | None,
    ) -> None:
        DAVCollection.__init__(self, path, environ)
        self.provider = provider
        self.scope = scope
        self.node = node  # None: the root

    def get_etag(self) -> None:
        return None

    def get_display_name(self) -> str:
        return self.node.name if self.node is not None else ""

    def get_used_bytes(self) -> int:
        return self.scope.owner.usage_bytes

    def get_available_bytes(self) -> int:
        quota = self.scope.owner.quota_bytes
        if quota:
            return max(0, quota - self.scope.owner.usage_bytes)
        return shutil.disk_usage(self.request.settings.data_dir).free

    async def _children(self) -> list[FileNode]:
        parent_id = str(self.node.id) if self.node is not None else None
        query = match(
            owner_id=self.scope.owner_id, parent_id=parent_id, deleted_at=None, committed=True
        )
        return await FileNode.find(query).sort("+name_key").to_list()

    def get_member_names(self) -> list[str]:
        return [n.name for n in self.run(self._children())]

    def get_member_list(self) -> list[Folder | File]:
        """All children from one query (not one lookup per name)."""
        return [
            resource_of(
                self.path.rstrip("/") + "/" + n.name, self.environ, self.provider, self.scope, n
            )
            for n in self.run(self._children())
        ]

    def get_member(self, name: str) -> Any:
        return self.provider.get_resource_inst(self.path.rstrip("/") + "/" + name, self.environ)

    def create_empty_resource(self, name: str) -> File:
        self.check_writable()
        path = self.path.rstrip("/") + "/" + name
        tree_path = tree_path_of(path)
        if self.environ.get("REQUEST_METHOD") == "PUT":
            return File(path, self.environ, self.provider, self.scope, None, tree_path)
        # LOCK on a name that does not exist yet makes it an empty file.
        streamed = StreamedWrite(self.services.uploads, self.scope, tree_path)
        self.run(streamed.finish())
        return self.provider.get_resource_inst(path, self.environ)

    def create_collection(self, name: str) -> None:
        self.check_writable()
        self.run(self.services.tree.ensure_folder(self.scope, tree_path_of(self.path + "/" + name)))

    def copy_move_single(self, dest_path: str, *, is_move: bool) -> None:
        """The folder itself, without its members (wsgidav walks them)."""
        self.check_writable()
        made = self.run(self.services.tree.ensure_folder(self.scope, tree_path_of(dest_path)))
        if made is not None:
            self.copy_properties_to(made)


class File(CofferResource, DAVNonCollection):
    def __init__(
        self,
        path: str,
        environ: dict[str, Any],
        provider: CofferProvider,
        scope: Scope,
        node: FileNode | None,
        new_path: str | None = None,
    ) -> None:
        DAVNonCollection.__init__(self, path, environ)
        self.provider = provider
        self.scope = scope
        self.node = node  # None: a PUT is about to create it at `new_path`
        self.new_path = new_path
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
        path = self.node.path if self.node is not None else self.new_path
        assert path is not None
        self.writer = DavWriter(
            self.provider, StreamedWrite(self.services.uploads, self.scope, path)
        )
        return self.writer

    def end_write(self, *, with_errors: bool) -> None:
        """Commit what was written (a failed PUT commits nothing; its chunks are garbage)."""
        writer, self.writer = self.writer, None
        if writer is None or with_errors:
            return
        out = self.run(writer.streamed.finish())
        self.node = self.run(reload(self.scope, out.id))

    def copy_move_single(self, dest_path: str, *, is_move: bool) -> None:
        """A copy by chunk reference: the same chunks, a new file (no bytes move)."""
        assert self.node is not None
        self.check_writable()
        copied = self.run(self._copy_to(tree_path_of(dest_path)))
        self.copy_properties_to(copied)

    async def _copy_to(self, dest: str) -> FileNode:
        assert self.node is not None
        version = await FileVersion.get(self.node.head_version_id)
        if version is None:
            raise DAVError(HTTP_NOT_FOUND)
        chunks = [ChunkIn(sha256=sha, size=size) for sha, size in await version_chunks(version)]
        req = UploadRequest(size=version.size, chunks=chunks, content_hash=version.content_hash)
        uploads = self.services.uploads
        # started_ms=0: these chunks are the owner's, read by a caller who may read them.
        registered = await uploads.register_in(self.scope, dest, req, started_ms=0)
        if registered.missing:
            raise DAVError(HTTP_CONFLICT, context_info="the source's data is incomplete")
        out = await uploads.commit_in(self.scope, registered.file_id, registered.upload_id)
        return await reload(self.scope, out.id)


class DavWriter:
    """The file object wsgidav writes a PUT body into: pieces go to the event loop 4 MiB
    at a time (stored as chunks as they fill); `close` only flushes, the commit waits
    for `end_write` so that a body cut short commits nothing."""

    def __init__(self, provider: CofferProvider, streamed: StreamedWrite) -> None:
        self.provider = provider
        self.streamed = streamed
        self.pending = bytearray()

    def write(self, data: bytes) -> None:
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
