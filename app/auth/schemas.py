"""Request and response bodies of the auth API."""

from __future__ import annotations

import msgspec


class Credentials(msgspec.Struct):
    username: str
    password: str


class TokenRequest(msgspec.Struct):
    username: str
    password: str
    device_name: str | None = None


class UserOut(msgspec.Struct):
    id: str
    username: str


class SessionOut(msgspec.Struct):
    id: str
    username: str
    csrf_token: str


class TokenOut(msgspec.Struct):
    token: str


class MeOut(msgspec.Struct):
    id: str
    username: str
    usage_bytes: int
    quota_bytes: int | None
