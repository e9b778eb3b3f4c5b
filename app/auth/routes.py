"""HTTP routes of the auth API (thin: parse, call the service, shape the answer)."""

from __future__ import annotations

from litestar import Controller, Request, Response, delete, get, post, put
from litestar.datastructures import Cookie

from app.auth import service
from app.auth.middleware import CSRF_COOKIE, SESSION_COOKIE
from app.auth.schemas import (
    Credentials,
    DeviceListOut,
    DeviceOut,
    MeOut,
    PasswordChange,
    PreferencesIn,
    RevokedOut,
    SessionOut,
    TokenOut,
    TokenRequest,
    UserOut,
)
from app.core.crypto import PasswordHashing
from app.core.http import PUBLIC
from app.db.accounts import User
from app.events.hub import Hub
from app.settings import Settings


def client_address(request: Request) -> str:
    return request.client.host if request.client else "-"


def session_cookies(settings: Settings, raw: str, csrf_token: str) -> list[Cookie]:
    max_age = settings.session_ttl_seconds
    return [
        Cookie(
            key=SESSION_COOKIE,
            value=raw,
            httponly=True,
            samesite="lax",
            secure=settings.cookie_secure,
            max_age=max_age,
            path="/",
        ),
        # Readable by the page's JavaScript, which echoes it in X-CSRF-Token.
        Cookie(
            key=CSRF_COOKIE,
            value=csrf_token,
            httponly=False,
            samesite="lax",
            secure=settings.cookie_secure,
            max_age=max_age,
            path="/",
        ),
    ]


CLEARED_COOKIES = [
    Cookie(key=SESSION_COOKIE, value="", max_age=0, path="/"),
    Cookie(key=CSRF_COOKIE, value="", max_age=0, path="/"),
]


class AuthController(Controller):
    path = "/api/auth"
    tags = ["auth"]

    @post("/register", opt=PUBLIC, status_code=201)
    async def register(
        self, data: Credentials, settings: Settings, passwords: PasswordHashing
    ) -> UserOut:
        user = await service.register(settings, passwords, data.username, data.password)
        return UserOut(id=str(user.id), username=user.username)

    @post("/login", opt=PUBLIC, status_code=200)
    async def login(
        self, request: Request, data: Credentials, settings: Settings, passwords: PasswordHashing
    ) -> Response[SessionOut]:
        address = client_address(request)
        user = await service.authenticate(
            settings, passwords, address, data.username, data.password
        )
        raw, session = await service.start_session(
            settings, user, address, request.headers.get("user-agent", "")
        )
        return Response(
            SessionOut(id=str(user.id), username=user.username, csrf_token=session.csrf_token),
            cookies=session_cookies(settings, raw, session.csrf_token),
        )

    @post("/logout", status_code=204)
    async def logout(self, request: Request, hub: Hub) -> Response[None]:
        await hub.credentials_revoked(await service.revoke(request.scope["auth"]))
        return Response(None, status_code=204, cookies=CLEARED_COOKIES)

    @post("/token", opt=PUBLIC, status_code=201)
    async def create_token(
        self,
        request: Request,
        data: TokenRequest,
        settings: Settings,
        passwords: PasswordHashing,
    ) -> TokenOut:
        address = client_address(request)
        user = await service.authenticate(
            settings, passwords, address, data.username, data.password
        )
        return TokenOut(token=await service.issue_token(user, data.device_name, address))

    @delete("/token", status_code=204)
    async def revoke_token(self, request: Request, hub: Hub) -> None:
        await hub.credentials_revoked(await service.revoke(request.scope["auth"]))

    @post("/password", status_code=200)
    async def change_password(
        self,
        request: Request,
        data: PasswordChange,
        settings: Settings,
        passwords: PasswordHashing,
        hub: Hub,
    ) -> RevokedOut:
        """Set a new password; every other session and device token ends."""
        revoked = await service.change_password(
            settings,
            passwords,
            request.scope["auth"],
            client_address(request),
            data.current_password,
            data.new_password,
        )
        await hub.credentials_revoked(revoked)
        return RevokedOut(revoked=len(revoked))


class DeviceController(Controller):
    """The caller's signed-in browsers and device tokens: list them, cut one off, or all
    but this one."""

    path = "/api/devices"
    tags = ["auth"]

    @get("/")
    async def list_devices(self, request: Request) -> DeviceListOut:
        items = await service.list_devices(request.scope["auth"])
        return DeviceListOut(items=[DeviceOut(**d) for d in items])  # type: ignore[arg-type]

    @delete("/{device_id:str}", status_code=204)
    async def revoke_device(self, request: Request, device_id: str, hub: Hub) -> None:
        await hub.credentials_revoked(await service.revoke_device(request.scope["auth"], device_id))

    @post("/revoke-others", status_code=200)
    async def revoke_others(self, request: Request, hub: Hub) -> RevokedOut:
        revoked = await service.revoke_others(request.scope["auth"])
        await hub.credentials_revoked(revoked)
        return RevokedOut(revoked=len(revoked))


def _me(user: User) -> MeOut:
    return MeOut(
        id=str(user.id),
        username=user.username,
        usage_bytes=user.usage_bytes,
        quota_bytes=user.quota_bytes or None,
        view=user.view,
    )


@get("/api/me", tags=["auth"])
async def me(request: Request) -> MeOut:
    return _me(request.scope["auth"].user)


@put("/api/me/preferences", tags=["auth"])
async def set_preferences(request: Request, data: PreferencesIn) -> MeOut:
    """Settings that follow the user to every browser (today: list or grid view)."""
    principal = request.scope["auth"]
    await service.set_view(principal, data.view)
    return _me(principal.user)
