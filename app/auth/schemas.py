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
    view: str = "list"


class PreferencesIn(msgspec.Struct):
    view: str


class PasswordChange(msgspec.Struct):
    current_password: str
    new_password: str


class RevokedOut(msgspec.Struct):
    revoked: int  # how many other sessions and device tokens were ended


class DeviceOut(msgspec.Struct):
    id: str
    kind: str  # "token" (a device) or "session" (a browser)
    name: str
    created_at: str
    last_used_at: str | None
    address: str | None
    current: bool  # the credential making this request


class DeviceListOut(msgspec.Struct):
    items: list[DeviceOut]
