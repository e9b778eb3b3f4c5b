"""The /dav/ mount: HTTP Basic authentication, then wsgidav (through a2wsgi) over Coffer.

Authentication happens here, in async code, before wsgidav sees the request: the
password is either a device token (an "app password": `POST /api/auth/token`, or the
Devices page) or the account password. A token is one lookup; a password is an argon2
check under the login throttle (10 wrong tries → 429), so a client that sends the account
password with every request is verified once and then remembered for a minute (keyed by
an HMAC of the credentials and checked against the account's current password hash, so
a password change ends it at once). Anonymous requests get 401 with a Basic challenge.

Why wsgidav: it passed litmus in full with a small provider here, where a native
implementation would re-do RFC 4918's locking and If-header rules by hand. Its providers
are synchronous: app/dav/bridge.py carries their calls to the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import time
from typing import Any
from urllib.parse import unquote, urlsplit

from a2wsgi import WSGIMiddleware
from litestar import asgi
from litestar.handlers import ASGIRouteHandler
from litestar.types import Message, Receive, Scope, Send
from wsgidav.error_printer import ErrorPrinter
from wsgidav.mw.base_mw import BaseMiddleware
from wsgidav.request_resolver import RequestResolver
from wsgidav.wsgidav_app import WsgiDAVApp

from app.auth import service as auth_service
from app.core.crypto import PasswordHashing
from app.core.encoding import replay_body
from app.core.errors import CofferError, TooManyRequests, Unauthorized, send_error
from app.dav import propfind
from app.dav.bridge import CURRENT, LoopBridge
from app.dav.locks import MongoLockStorage
from app.dav.provider import BLOCK_SIZE, CofferProvider, DavRequest, dav_request, place_of
from app.db.accounts import User
from app.files.scope import Caller
from app.settings import Settings
from app.storage.base import BlobStore
from app.wiring import Services

MOUNT = "/dav"
REALM = "Coffer"
PASSWORD_MEMORY_SECONDS = 60.0
# The answer to a request without valid credentials (also the Nextcloud endpoints').
SIGN_IN = "sign in with your username and a device token or your password"
CHALLENGE = {"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"'}
XML_BODY_MAX = 1024 * 1024  # PROPFIND, PROPPATCH, LOCK bodies


class CofferIdentity(BaseMiddleware):
    """Tells wsgidav who was authenticated (lock owners are users)."""

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        CURRENT.environ = environ
        environ["wsgidav.auth.user_name"] = dav_request(environ).caller.user.username
        environ["wsgidav.auth.realm"] = REALM
        return self.next_app(environ, start_response)


class NextcloudHeaders(BaseMiddleware):
    """After a successful PUT, MKCOL, MOVE or COPY, say the item's id and ETag as
    Nextcloud does (`OC-FileId`, `OC-ETag`): its desktop client records them instead of
    asking again."""

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        method = environ.get("REQUEST_METHOD", "")
        if method not in ("PUT", "MKCOL", "MOVE", "COPY"):
            return self.next_app(environ, start_response)

        def respond(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            if status[:3] in ("201", "204"):
                headers = headers + self._ids(environ, method)
            return start_response(status, headers, exc_info)

        return self.next_app(environ, respond)

    def _ids(self, environ: dict[str, Any], method: str) -> list[tuple[str, str]]:
        path = environ.get("PATH_INFO", "/")
        if method in ("MOVE", "COPY"):
            destination = unquote(urlsplit(environ.get("HTTP_DESTINATION", "")).path)
            mount = environ["asgi.scope"].get("coffer.mount", MOUNT)
            if not destination.startswith(mount + "/"):
                return []
            path = destination[len(mount) :]
        provider = environ["wsgidav.provider"]
        try:
            place = provider.bridge.run(place_of(dav_request(environ), path))
        except Exception:  # only a courtesy: never fail the request for it
            return []
        if place is None or place.node is None:
            return []
        found = [("OC-FileId", str(place.node.id))]
        if place.node.kind == "file":
            found.append(("OC-ETag", f'"{place.node.content_hash}"'))
        else:
            etag = provider.bridge.run(propfind.folder_etag(place.scope.owner_id, place.node))
            found.append(("OC-ETag", etag))
        return found


class DavMount:
    """The ASGI app mounted at /dav; `bind` gives it the running services at startup."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.bridge = LoopBridge()
        self.provider = CofferProvider(self.bridge)
        config = {
            "mount_path": MOUNT,
            "provider_mapping": {"/": self.provider},
            "lock_storage": MongoLockStorage(self.bridge),
            "property_manager": None,  # dead properties live per file (provider.py)
            "block_size": BLOCK_SIZE,
            # Authentication is done before wsgidav; no CORS (cross-site pages must not
            # reach a user's files with credentials the browser remembers), no HTML.
            "middleware_stack": [ErrorPrinter, CofferIdentity, NextcloudHeaders, RequestResolver],
            "http_authenticator": {"domain_controller": None},
            "simple_dc": {"user_mapping": {"*": True}},
            "dir_browser": {"enable": False},
            "suppress_version_info": True,
            "verbose": 1,
            "logging": {"enable": False},
            "add_header_MS_Author_Via": True,
            "hotfixes": {"re_encode_path_info": True, "unquote_path_info": False},
        }
        # wsgidav holds a thread for a whole request, and a slow client's PUT or GET can
        # take minutes: enough threads that a few slow transfers do not stall the rest
        # (PROPFIND, the most frequent request, does not use them).
        self.wsgi = WSGIMiddleware(WsgiDAVApp(config), workers=64)  # type: ignore[arg-type]
        self.services: Services | None = None
        self.store: BlobStore | None = None
        self.passwords: PasswordHashing | None = None
        self.remembered: dict[bytes, tuple[str, str, float]] = {}
        self.key = hashlib.sha256(settings.resolved_secret_key().encode() + b"dav").digest()

    def bind(self, services: Services, store: BlobStore, passwords: PasswordHashing) -> None:
        self.services, self.store, self.passwords = services, store, passwords
        self.bridge.bind(asyncio.get_running_loop())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """/dav/...: the caller's tree."""
        caller = await self.signed_in(scope, send)
        if caller is not None:
            await self.serve(caller, scope, receive, send, MOUNT)

    async def signed_in(self, scope: Scope, send: Send) -> Caller | None:
        """The caller, or None after answering 401 (with the Basic challenge) or 429."""
        assert self.services is not None and self.store is not None
        try:
            caller = await self.authenticate(scope)
        except TooManyRequests as exc:
            await send_error(send, 429, exc.code, exc.message, exc.extra.get("headers") or {})
            return None
        if caller is None:
            await send_error(send, 401, "unauthorized", SIGN_IN, CHALLENGE)
        return caller

    async def serve(
        self, caller: Caller, scope: Scope, receive: Receive, send: Send, mount: str
    ) -> None:
        """A WebDAV request on the caller's tree, `scope["path"]` below `mount`."""
        assert self.services is not None and self.store is not None
        refused = _refused(scope)
        if refused is not None:
            await send_error(send, *refused, {})
            return
        request = DavRequest(caller, self.services, self.store, self.settings)
        scope["coffer.dav"] = request  # type: ignore[typeddict-unknown-key]
        scope["coffer.mount"] = mount  # type: ignore[typeddict-unknown-key]
        receive = raise_on_disconnect(receive)
        if scope["method"].upper() == "PROPFIND":
            body = await _read_body(receive)
            if await self.propfind(request, scope, send, body, mount):
                return
            receive = replay_body(body, receive)
        await self.wsgi(scope, receive, send)  # type: ignore[arg-type]

    async def propfind(
        self, request: DavRequest, scope: Scope, send: Send, body: bytes, mount: str
    ) -> bool:
        """Answer a PROPFIND natively (app/dav/propfind.py); False: leave it to wsgidav."""
        headers = dict(scope.get("headers") or [])
        depth = headers.get(b"depth", b"infinity").decode("latin-1").strip()
        try:
            wanted = propfind.parse_body(body)
            answer = await propfind.answer(request, mount, scope["path"] or "/", depth, wanted)
        except CofferError as exc:
            await send_error(send, exc.status_code, exc.code, exc.message, {})
            return True
        if answer is None:
            return False
        if isinstance(answer, int):
            await send_error(send, answer, "not_found", "nothing is there", {})
            return True
        first = await anext(answer)  # what fails, fails before the answer starts
        await send(
            {
                "type": "http.response.start",
                "status": 207,
                "headers": [
                    (b"content-type", b"application/xml; charset=utf-8"),
                    (b"dav", b"1, 2"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": first, "more_body": True})
        async for piece in answer:
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return True

    async def authenticate(self, scope: Scope) -> Caller | None:
        header = dict(scope.get("headers") or []).get(b"authorization", b"")
        if header[:6].lower() != b"basic ":
            return None
        try:
            username, _, password = base64.b64decode(header[6:].strip()).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        base_url = self.settings.public_url or _base_url(scope)
        client = scope.get("client")
        address = client[0] if client else "-"
        # A device token as the password: its device's name goes into the versions.
        principal = await auth_service.resolve_bearer(self.settings, password, address)
        if principal is not None:
            if principal.user.username_key != username.casefold():
                return None
            return Caller(user=principal.user, device=principal.device_name, base_url=base_url)
        user = await self._password_user(username, password, address)
        return Caller(user=user, device="WebDAV", base_url=base_url) if user else None

    async def _password_user(self, username: str, password: str, address: str) -> User | None:
        memo = hmac.new(self.key, f"{username}\0{password}".encode(), "sha256").digest()
        remembered = self.remembered.get(memo)
        if remembered is not None and remembered[2] > time.monotonic():
            user = await User.get(remembered[0])  # type: ignore[arg-type]
            if user is not None and user.password_hash == remembered[1]:
                return user
        assert self.passwords is not None
        try:
            user = await auth_service.authenticate(
                self.settings, self.passwords, address, username, password
            )
        except Unauthorized:
            return None
        if len(self.remembered) > 10_000:
            self.remembered.clear()
        self.remembered[memo] = (
            str(user.id),
            user.password_hash,
            time.monotonic() + PASSWORD_MEMORY_SECONDS,
        )
        return user


class ClientGone(ConnectionError):
    """The client went away before its request body was complete."""


def raise_on_disconnect(receive: Receive) -> Receive:
    """`receive` that raises ClientGone when the client disconnects, instead of handing
    over `http.disconnect`, which body readers (a2wsgi's among them) take for the end of
    the body: a PUT cut short must fail, never commit what arrived."""

    async def receive_or_raise() -> Message:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone("the client went away mid-request")
        return message

    return receive_or_raise  # type: ignore[return-value]


async def _read_body(receive: Receive) -> bytes:
    """A request body already known to be at most XML_BODY_MAX (see `_refused`)."""
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return bytes(body)
        body += message.get("body", b"")
        if not message.get("more_body", False) or len(body) > XML_BODY_MAX:
            return bytes(body)


def _refused(scope: Scope) -> tuple[int, str, str] | None:
    """Requests refused before wsgidav sees them: `.`/`..` path segments (after decoding:
    nothing may climb out of a folder, whatever wsgidav would make of it); requests
    whose cost has no bound: an XML body wsgidav would read whole (anything
    but a PUT over XML_BODY_MAX, or of unknown length), and PROPFIND of a whole subtree
    (`Depth: infinity`, also the default without a Depth header; RFC 4918 lets a server
    refuse it)."""
    headers = dict(scope.get("headers") or [])
    method = scope["method"].upper()
    destination = urlsplit(headers.get(b"destination", b"").decode("latin-1")).path
    for path in (scope.get("path", ""), unquote(destination)):
        if any(segment in (".", "..") for segment in path.split("/")):
            return 400, "invalid_path", "paths may not hold '.' or '..' segments"
    if method != "PUT":
        length = headers.get(b"content-length")
        if length is None and b"transfer-encoding" in headers:
            return 411, "length_required", "send a Content-Length with the body"
        if length is not None and (not length.isdigit() or int(length) > XML_BODY_MAX):
            return 413, "too_large", f"request bodies of at most {XML_BODY_MAX} bytes"
    if method == "PROPFIND":
        depth = headers.get(b"depth", b"infinity").strip().lower()
        if depth not in (b"0", b"1"):
            return 403, "propfind_finite_depth", "PROPFIND with Depth 0 or 1"
    return None


def _base_url(scope: Scope) -> str:
    headers = dict(scope.get("headers") or [])
    host = headers.get(b"host", b"localhost").decode("latin-1")
    return f"{scope.get('scheme', 'http')}://{host}"


def dav_route(mount: DavMount) -> ASGIRouteHandler:
    @asgi(MOUNT, is_mount=True, is_static=True, copy_scope=False)
    async def dav(scope: Scope, receive: Receive, send: Send) -> None:
        await mount(scope, receive, send)

    return dav
