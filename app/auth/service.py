"""Account rules: registration, password checks, sessions and device tokens."""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from beanie import PydanticObjectId
from pymongo.errors import DuplicateKeyError

from app.core.clock import as_utc, iso, now
from app.core.crypto import PasswordHashing, token_hash
from app.core.errors import BadRequest, Conflict, NotFound, TooManyRequests, Unauthorized
from app.core.query import match
from app.core.ratelimit import give_back, take_attempt
from app.db.accounts import ApiToken, BrowserSession, User
from app.settings import Settings

USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{2,31}$")
MIN_PASSWORD = 8
MAX_PASSWORD = 1024


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, and how they proved it."""

    user: User
    via: Literal["token", "session"]
    credential_id: str  # hash of the token or session cookie
    device_name: str | None = None
    csrf_token: str | None = None


def _check_credentials_shape(username: object, password: object) -> tuple[str, str]:
    if not isinstance(username, str) or not USERNAME_RE.fullmatch(username):
        raise BadRequest(
            "username must be 3-32 characters: letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
            code="invalid_username",
        )
    if not isinstance(password, str) or len(password) < MIN_PASSWORD:
        raise BadRequest(
            f"password must be at least {MIN_PASSWORD} characters", code="invalid_password"
        )
    if len(password) > MAX_PASSWORD:
        raise BadRequest(
            f"password must be at most {MAX_PASSWORD} characters", code="invalid_password"
        )
    return username, password


async def register(
    settings: Settings, passwords: PasswordHashing, username: object, password: object
) -> User:
    name, pw = _check_credentials_shape(username, password)
    pw_hash = await passwords.hash(pw)
    user = User(
        username=name,
        username_key=name.casefold(),
        password_hash=pw_hash,
        quota_bytes=settings.default_quota_bytes,
        created_at=now(),
    )
    try:
        await user.insert()
    except DuplicateKeyError as exc:
        raise Conflict("that username is taken", code="username_taken") from exc
    return user


async def authenticate(
    settings: Settings,
    passwords: PasswordHashing,
    address: str,
    username: object,
    password: object,
) -> User:
    """The user these credentials belong to, or 401 (same answer for any wrong part).

    Each try counts against (address, username) *before* the password is checked, so a
    burst of concurrent guesses cannot slip past the limit; a right password gives its
    try back. Over the limit: 429 with Retry-After.
    """
    if not isinstance(username, str) or not isinstance(password, str) or not username:
        raise Unauthorized("wrong username or password", code="bad_credentials")
    key = f"{address}:{username.casefold()}"
    attempt = await take_attempt(
        "login", key, settings.login_attempts, settings.login_window_seconds
    )
    if attempt.wait:
        raise TooManyRequests(
            "too many wrong passwords; try again later",
            code="rate_limited",
            headers={"Retry-After": str(attempt.wait)},
        )
    user = await User.find_one(match(username_key=username.casefold()))
    # Unknown users are checked against a dummy hash, so timing reveals nothing.
    ok = await passwords.verify(
        user.password_hash if user else passwords.dummy_hash, password[:MAX_PASSWORD]
    )
    if user is None or not ok:
        raise Unauthorized("wrong username or password", code="bad_credentials")
    await give_back(attempt)
    return user


def device_id(credential_id: str) -> str:
    """The public id of a session or token: derived from its stored hash, never the hash
    itself (which is what a request is looked up by)."""
    return hashlib.sha256(f"device:{credential_id}".encode()).hexdigest()[:20]


async def start_session(
    settings: Settings, user: User, address: str = "", user_agent: str = ""
) -> tuple[str, BrowserSession]:
    raw = secrets.token_urlsafe(32)
    t = now()
    session = BrowserSession(
        id=token_hash(raw),
        user_id=str(user.id),
        csrf_token=secrets.token_urlsafe(24),
        created_at=t,
        expires_at=t + timedelta(seconds=settings.session_ttl_seconds),
        last_used_at=t,
        last_address=address,
        user_agent=user_agent[:300],
    )
    await session.insert()
    return raw, session


async def issue_token(user: User, device_name: object, address: str = "") -> str:
    if device_name is None:
        device_name = "device"
    if not isinstance(device_name, str) or not 1 <= len(device_name) <= 100:
        raise BadRequest("device_name must be 1-100 characters", code="invalid_device_name")
    raw = "cft_" + secrets.token_urlsafe(32)
    t = now()
    await ApiToken(
        id=token_hash(raw),
        user_id=str(user.id),
        device_name=device_name,
        created_at=t,
        last_used_at=t,
        last_address=address,
    ).insert()
    return raw


async def _mark_used(
    model: type[ApiToken] | type[BrowserSession], doc_id: str, address: str
) -> None:
    await model.get_pymongo_collection().update_one(
        {"_id": doc_id}, {"$set": {"last_used_at": now(), "last_address": address}}
    )


def _stale(last_used: datetime | None) -> bool:
    """Record use at most once a minute per credential: one write, not one per request."""
    return last_used is None or now() - as_utc(last_used) > timedelta(seconds=60)


async def resolve_bearer(settings: Settings, raw: str, address: str = "") -> Principal | None:
    token = await ApiToken.get(token_hash(raw))
    if token is None:
        return None
    last = as_utc(token.last_used_at or token.created_at)
    idle = settings.token_idle_days
    if idle and now() - last > timedelta(days=idle):
        await ApiToken.get_pymongo_collection().delete_one({"_id": token.id})
        return None
    user = await User.get(PydanticObjectId(token.user_id))
    if user is None:
        return None
    if _stale(token.last_used_at) or token.last_address != address:
        await _mark_used(ApiToken, token.id, address)
    return Principal(user, "token", token.id, device_name=token.device_name)


async def resolve_session(raw: str, address: str = "") -> Principal | None:
    session = await BrowserSession.get(token_hash(raw))
    if session is None or as_utc(session.expires_at) < now():
        return None
    user = await User.get(PydanticObjectId(session.user_id))
    if user is None:
        return None
    if _stale(session.last_used_at) or session.last_address != address:
        await _mark_used(BrowserSession, session.id, address)
    return Principal(user, "session", session.id, csrf_token=session.csrf_token)


async def still_valid(principal: Principal) -> bool:
    """Whether the credential behind a long-lived connection still works (the backstop
    for a revocation notice that did not arrive)."""
    model = ApiToken if principal.via == "token" else BrowserSession
    doc = await model.get(principal.credential_id)
    if doc is None:
        return False
    expires = getattr(doc, "expires_at", None)
    return expires is None or as_utc(expires) >= now()


async def revoke(principal: Principal) -> list[str]:
    """End the caller's own session or token; returns the credential ids revoked."""
    model = ApiToken if principal.via == "token" else BrowserSession
    await model.get_pymongo_collection().delete_one({"_id": principal.credential_id})
    return [principal.credential_id]


def _session_name(user_agent: str) -> str:
    """ "Chrome on Linux"-style names for browser sessions (a guess from the User-Agent)."""
    browser = next(
        (
            name
            for marker, name in (
                ("Edg/", "Edge"),
                ("Firefox/", "Firefox"),
                ("Chrome/", "Chrome"),
                ("Safari/", "Safari"),
            )
            if marker in user_agent
        ),
        "Browser",
    )
    system = next(
        (
            name
            for marker, name in (
                ("Android", "Android"),
                ("iPhone", "iOS"),
                ("iPad", "iOS"),
                ("Windows", "Windows"),
                ("Mac OS", "macOS"),
                ("Linux", "Linux"),
            )
            if marker in user_agent
        ),
        "",
    )
    return f"{browser} on {system}" if system else browser


async def _credentials(user_id: str) -> list[ApiToken | BrowserSession]:
    tokens = await ApiToken.find(match(user_id=user_id)).to_list()
    sessions = await BrowserSession.find(match(user_id=user_id)).to_list()
    t = now()
    return [*tokens, *(s for s in sessions if as_utc(s.expires_at) >= t)]


async def list_devices(principal: Principal) -> list[dict[str, object]]:
    """Every device token and browser session of the caller, newest use first."""
    docs = sorted(
        await _credentials(str(principal.user.id)),
        key=lambda d: as_utc(d.last_used_at or d.created_at),
        reverse=True,
    )
    out = []
    for doc in docs:
        is_token = isinstance(doc, ApiToken)
        out.append(
            {
                "id": device_id(doc.id),
                "kind": "token" if is_token else "session",
                "name": doc.device_name if is_token else _session_name(doc.user_agent or ""),
                "created_at": iso(doc.created_at),
                "last_used_at": iso(doc.last_used_at) if doc.last_used_at else None,
                "address": doc.last_address or None,
                "current": doc.id == principal.credential_id,
            }
        )
    return out


async def revoke_device(principal: Principal, public_id: str) -> list[str]:
    """End one of the caller's sessions or tokens by its public id; 404 if not theirs."""
    for doc in await _credentials(str(principal.user.id)):
        if device_id(doc.id) == public_id:
            await type(doc).get_pymongo_collection().delete_one({"_id": doc.id})
            return [doc.id]
    raise NotFound("no such device or session", code="unknown_device")


async def revoke_others(principal: Principal) -> list[str]:
    """End every session and token of the caller except the one making this request."""
    revoked = []
    for doc in await _credentials(str(principal.user.id)):
        if doc.id != principal.credential_id:
            await type(doc).get_pymongo_collection().delete_one({"_id": doc.id})
            revoked.append(doc.id)
    return revoked


async def change_password(
    settings: Settings,
    passwords: PasswordHashing,
    principal: Principal,
    address: str,
    current: object,
    new: object,
) -> list[str]:
    """Set a new password (the current one is checked, throttled like a login) and end
    every other session and token; returns the credential ids revoked."""
    user = await authenticate(settings, passwords, address, principal.user.username, current)
    _, new_password = _check_credentials_shape(user.username, new)
    await User.get_pymongo_collection().update_one(
        {"_id": user.id}, {"$set": {"password_hash": await passwords.hash(new_password)}}
    )
    return await revoke_others(principal)


VIEWS = ("list", "grid")


async def set_view(principal: Principal, view: object) -> None:
    """Remember how this user's folders are shown in the browser ("list" or "grid")."""
    if view not in VIEWS:
        raise BadRequest("view must be 'list' or 'grid'", code="invalid_view")
    await User.get_pymongo_collection().update_one(
        {"_id": principal.user.id}, {"$set": {"view": view}}
    )
    principal.user.view = str(view)
