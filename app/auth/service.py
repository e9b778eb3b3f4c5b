"""Account rules: registration, password checks, sessions and device tokens."""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from beanie import PydanticObjectId
from pymongo.errors import DuplicateKeyError

from app.auth.models import ApiToken, BrowserSession, User
from app.core.query import match
from app.errors import BadRequest, Conflict, Unauthorized
from app.settings import Settings

USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{2,31}$")
MIN_PASSWORD = 8
MAX_PASSWORD = 1024
_hasher = PasswordHasher()
# Verified against when the username is unknown, so that timing does not reveal which
# usernames exist.
_DUMMY_HASH = _hasher.hash("not-a-real-password")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, and how they proved it."""

    user: User
    via: Literal["token", "session"]
    credential_id: str  # hash of the token or session cookie
    device_name: str | None = None
    csrf_token: str | None = None


def now() -> datetime:
    return datetime.now(UTC)


def token_hash(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


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


async def register(settings: Settings, username: object, password: object) -> User:
    name, pw = _check_credentials_shape(username, password)
    pw_hash = await asyncio.to_thread(_hasher.hash, pw)
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


async def authenticate(username: object, password: object) -> User:
    """The user these credentials belong to, or 401 (same answer for any wrong part)."""
    if not isinstance(username, str) or not isinstance(password, str) or not username:
        raise Unauthorized("wrong username or password", code="bad_credentials")
    user = await User.find_one(match(username_key=username.casefold()))
    try:
        await asyncio.to_thread(
            _hasher.verify, user.password_hash if user else _DUMMY_HASH, password[:MAX_PASSWORD]
        )
    except (VerificationError, InvalidHashError):
        user = None
    if user is None:
        raise Unauthorized("wrong username or password", code="bad_credentials")
    return user


async def start_session(settings: Settings, user: User) -> tuple[str, BrowserSession]:
    raw = secrets.token_urlsafe(32)
    session = BrowserSession(
        id=token_hash(raw),
        user_id=str(user.id),
        csrf_token=secrets.token_urlsafe(24),
        created_at=now(),
        expires_at=now() + timedelta(seconds=settings.session_ttl_seconds),
    )
    await session.insert()
    return raw, session


async def issue_token(user: User, device_name: object) -> str:
    if device_name is None:
        device_name = "device"
    if not isinstance(device_name, str) or not 1 <= len(device_name) <= 100:
        raise BadRequest("device_name must be 1-100 characters", code="invalid_device_name")
    raw = "cft_" + secrets.token_urlsafe(32)
    await ApiToken(
        id=token_hash(raw), user_id=str(user.id), device_name=device_name, created_at=now()
    ).insert()
    return raw


async def resolve_bearer(raw: str) -> Principal | None:
    token = await ApiToken.get(token_hash(raw))
    if token is None:
        return None
    user = await User.get(PydanticObjectId(token.user_id))
    if user is None:
        return None
    return Principal(user, "token", token.id, device_name=token.device_name)


async def resolve_session(raw: str) -> Principal | None:
    session = await BrowserSession.get(token_hash(raw))
    if session is None or session.expires_at < now():
        return None
    user = await User.get(PydanticObjectId(session.user_id))
    if user is None:
        return None
    return Principal(user, "session", session.id, csrf_token=session.csrf_token)


async def revoke(principal: Principal) -> None:
    model = ApiToken if principal.via == "token" else BrowserSession
    await model.find_one(model.id == principal.credential_id).delete()
