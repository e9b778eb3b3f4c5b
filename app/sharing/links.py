"""Public links: create, list and revoke them (owners), and open them (anyone).

A link's token is 256 bits, HMAC(server key, 128-bit random nonce): the owner can be shown
it again, but only its SHA-256 is stored and a database dump alone opens nothing. Opening
a link checks revocation, expiry and the password (throttled per address, counted before
it is checked); a folder link serves only what lies inside the folder. An upload-only link
(a file request) serves nothing at all: `target` refuses it, so no page or byte route
can read through one; visitors may only add files (app/sharing/requests.py).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from beanie import PydanticObjectId

from app.core import paths
from app.core.clock import as_utc, iso, now
from app.core.crypto import PasswordHashing, token_hash
from app.core.errors import BadRequest, CofferError, NotFound
from app.core.query import match
from app.core.ratelimit import give_back, take_attempt
from app.db.files import FileNode
from app.db.sharing import ShareLink
from app.files.scope import Caller, open_node
from app.settings import Settings
from app.sharing.schemas import LinkOut

MAX_LINK_PASSWORD = 1024
UNLOCK_SECONDS = 3600  # how long a right link password is remembered (signed cookie)
UNLOCK_COOKIE = "coffer_link"  # that cookie, scoped to the link's path (/s/<token>)
LIST_LIMIT = 1000  # entries a folder link page shows


def link_token(secret_key: str, nonce: str) -> str:
    """The link's token: 256 bits derived from a 128-bit random nonce and the server key."""
    digest = hmac.new(secret_key.encode(), b"link:" + bytes.fromhex(nonce), hashlib.sha256)
    return base64.urlsafe_b64encode(digest.digest()).decode().rstrip("=")


class LinkProblem(Exception):
    """Why a link cannot be opened, as a visitor should read it (the page shows it)."""

    def __init__(self, status: int, title: str, message: str, **headers: object) -> None:
        super().__init__(message)
        self.status, self.title, self.message = status, title, message
        self.headers = {k: str(v) for k, v in headers.items()}


@dataclass(frozen=True)
class OpenLink:
    token: str
    link: ShareLink
    root: FileNode

    @property
    def base(self) -> str:
        return f"/s/{self.token}"


@dataclass(frozen=True)
class LinkService:
    settings: Settings
    passwords: PasswordHashing

    @property
    def _key(self) -> str:
        return self.settings.resolved_secret_key()

    def _link_out(self, caller: Caller, link: ShareLink) -> LinkOut:
        token = link_token(self._key, link.nonce)
        return LinkOut(
            token=token,
            url=f"{caller.base_url.rstrip('/')}/s/{token}",
            file_id=link.file_id,
            expires_at=iso(link.expires_at) if link.expires_at else None,
            allow_download=link.allow_download,
            has_password=link.password_hash is not None,
            views=link.views,
            downloads=link.downloads,
            created_at=iso(link.created_at),
            upload_only=link.upload_only,
            max_bytes=link.max_bytes,
        )

    async def create(
        self,
        caller: Caller,
        file_id: str,
        password: object = None,
        expires_at: object = None,
        allow_download: object = True,
        upload_only: object = False,
        max_bytes: object = None,
    ) -> LinkOut:
        _, node = await open_node(caller, file_id, "manage")
        if not isinstance(allow_download, bool) or not isinstance(upload_only, bool):
            raise BadRequest(
                "allow_download and upload_only must be true or false", code="invalid_link"
            )
        if upload_only and node.kind != "folder":
            raise BadRequest("only a folder can receive files", code="not_a_folder")
        if max_bytes is not None:
            if not upload_only:
                raise BadRequest("max_bytes is for upload-only links", code="invalid_link")
            if (
                isinstance(max_bytes, bool)
                or not isinstance(max_bytes, int)
                or not 0 < max_bytes <= self.settings.max_file_size
            ):
                raise BadRequest(
                    f"max_bytes must be 1..{self.settings.max_file_size}", code="invalid_link"
                )
        password_hash = None
        if password is not None and password != "":
            if not isinstance(password, str) or len(password) > MAX_LINK_PASSWORD:
                raise BadRequest("password must be a string", code="invalid_password")
            password_hash = await self.passwords.hash(password)
        expiry = parse_expiry(expires_at)
        nonce = secrets.token_hex(16)
        link = ShareLink(
            file_id=str(node.id),
            owner_id=node.owner_id,
            nonce=nonce,
            token_hash=token_hash(link_token(self._key, nonce)),
            password_hash=password_hash,
            expires_at=expiry,
            # Nothing can be read through a file request, so it never "allows download".
            allow_download=allow_download and not upload_only,
            upload_only=upload_only,
            max_bytes=max_bytes,
            created_at=now(),
        )
        await link.insert()
        return self._link_out(caller, link)

    async def list(self, caller: Caller, file_id: str) -> list[LinkOut]:
        _, node = await open_node(caller, file_id, "manage")
        links = await ShareLink.find(match(file_id=str(node.id), revoked=False)).to_list()
        return [self._link_out(caller, k) for k in sorted(links, key=lambda k: k.created_at)]

    async def revoke(self, caller: Caller, token: str) -> None:
        link = await ShareLink.find_one(match(token_hash=token_hash(token)))
        if link is None or link.owner_id != caller.user_id:
            raise NotFound("no such link", code="unknown_link")
        await ShareLink.get_pymongo_collection().update_one(
            {"_id": link.id}, {"$set": {"revoked": True}}
        )

    # ------------------------------------------------------------ visitors

    async def open(self, token: str) -> OpenLink:
        link = await ShareLink.find_one(match(token_hash=token_hash(token)))
        if link is None:
            raise LinkProblem(404, "Link not found", "This link does not exist. Check the address.")
        if link.revoked:
            raise LinkProblem(410, "Link revoked", "The owner has turned this link off.")
        if link.expires_at is not None and as_utc(link.expires_at) <= now():
            raise LinkProblem(410, "Link expired", "This link has expired.")
        root = await FileNode.get(PydanticObjectId(link.file_id))
        if root is None or root.deleted_at is not None or not root.committed:
            raise LinkProblem(410, "No longer available", "The shared item was deleted.")
        return OpenLink(token, link, root)

    def _unlock_signature(self, link: ShareLink, expires: int) -> str:
        message = f"unlock:{link.id}:{expires}:{link.password_hash}".encode()
        return hmac.new(self._key.encode(), message, hashlib.sha256).hexdigest()

    def unlocked(self, opened: OpenLink, cookie: str) -> bool:
        """Whether the visitor's unlock cookie opens this link (or it needs none)."""
        if opened.link.password_hash is None:
            return True
        link_id, _, rest = cookie.partition(".")
        expires_raw, _, signature = rest.partition(".")
        if link_id != str(opened.link.id) or not expires_raw.isdigit():
            return False
        expires = int(expires_raw)
        expected = self._unlock_signature(opened.link, expires)
        return expires > time.time() and hmac.compare_digest(signature, expected)

    async def unlock(self, opened: OpenLink, address: str, password: str) -> str | None:
        """The unlock cookie's value if the password is right, None if not; 429 (as a
        LinkProblem) past the throttle. Counted before it is checked, so concurrent
        guesses cannot slip past the limit; a right password gives its try back."""
        s = self.settings
        attempt = await take_attempt(
            "linkpw", address, s.link_password_attempts, s.link_password_window_seconds
        )
        if wait := attempt.wait:
            raise LinkProblem(
                429,
                "Too many attempts",
                "Too many wrong passwords from your address. Try again in "
                f"{(wait + 59) // 60} minute(s).",
                **{"Retry-After": wait},
            )
        if opened.link.password_hash is not None and not await self.passwords.verify(
            opened.link.password_hash, password[:MAX_LINK_PASSWORD]
        ):
            return None
        await give_back(attempt)
        expires = int(time.time()) + UNLOCK_SECONDS
        return f"{opened.link.id}.{expires}.{self._unlock_signature(opened.link, expires)}"

    async def target(self, opened: OpenLink, raw_path: str | None) -> tuple[FileNode, str]:
        """The item `raw_path` names inside the link's folder, and its path as shown.
        Every route that reads through a link comes here: a file request reads nothing."""
        if opened.link.upload_only:
            raise LinkProblem(403, "Upload only", "This link only accepts files; it shows nothing.")
        if not raw_path or raw_path.strip("/") == "":
            return opened.root, ""
        if opened.root.kind != "folder":
            raise LinkProblem(404, "Not found", "This link is to a single file.")
        try:
            relative = paths.normalize_path("/" + raw_path.lstrip("/"))
        except CofferError as exc:
            raise LinkProblem(400, "Bad path", exc.message) from None
        node = await FileNode.find_one(
            match(
                owner_id=opened.root.owner_id,
                live_key=paths.path_key(paths.join(opened.root.path, relative)),
            )
        )
        if node is None or not node.committed:
            raise LinkProblem(404, "Not found", "There is no such item in this shared folder.")
        return node, relative.lstrip("/")

    @staticmethod
    async def children(folder: FileNode) -> tuple[list[FileNode], bool]:
        """The folder's items (up to LIST_LIMIT) and whether there are more."""
        nodes = (
            await FileNode.find(
                match(
                    owner_id=folder.owner_id,
                    parent_id=str(folder.id),
                    deleted_at=None,
                    committed=True,
                )
            )
            .sort("+name_key")
            .limit(LIST_LIMIT + 1)
            .to_list()
        )
        return nodes[:LIST_LIMIT], len(nodes) > LIST_LIMIT

    @staticmethod
    async def counted(opened: OpenLink, counter: str) -> None:
        """One more view or download."""
        await ShareLink.get_pymongo_collection().update_one(
            {"_id": opened.link.id}, {"$inc": {counter: 1}}
        )


def parse_expiry(value: object) -> datetime | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BadRequest("expires_at must be an ISO-8601 timestamp", code="invalid_expiry")
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise BadRequest("expires_at must be an ISO-8601 timestamp", code="invalid_expiry") from exc
    if when.tzinfo is None:
        raise BadRequest("expires_at needs a timezone (e.g. Z)", code="invalid_expiry")
    if when <= now():
        raise BadRequest("expires_at must be in the future", code="invalid_expiry")
    return when.astimezone(UTC)
