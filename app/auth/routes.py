"""HTTP routes of the auth API (thin: parse, call the service, shape the answer)."""

from __future__ import annotations

from litestar import Controller, Request, Response, delete, get, post
from litestar.datastructures import Cookie

from app.auth import service
from app.auth.middleware import CSRF_COOKIE, SESSION_COOKIE
from app.auth.models import User
from app.auth.schemas import Credentials, MeOut, SessionOut, TokenOut, TokenRequest, UserOut
from app.errors import TooManyRequests, Unauthorized
from app.settings import Settings
from app.sharing import ratelimit

PUBLIC = {"public": True}
# Password guessing: this many wrong passwords per address and username, per window.
LOGIN_FAILURES = 10
LOGIN_WINDOW_SECONDS = 15 * 60


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


async def authenticate(request: Request, username: str, password: str) -> User:
    key = f"{request.client.host if request.client else '-'}:{str(username).casefold()}"
    wait = await ratelimit.blocked("login", key, LOGIN_FAILURES, LOGIN_WINDOW_SECONDS)
    if wait:
        raise TooManyRequests(
            "too many wrong passwords; try again later",
            code="rate_limited",
            headers={"Retry-After": str(wait)},
        )
    try:
        return await service.authenticate(username, password)
    except Unauthorized:
        await ratelimit.failed("login", key, LOGIN_WINDOW_SECONDS)
        raise


class AuthController(Controller):
    path = "/api/auth"
    tags = ["auth"]

    @post("/register", opt=PUBLIC, status_code=201)
    async def register(self, data: Credentials, settings: Settings) -> UserOut:
        user = await service.register(settings, data.username, data.password)
        return UserOut(id=str(user.id), username=user.username)

    @post("/login", opt=PUBLIC, status_code=200)
    async def login(
        self, request: Request, data: Credentials, settings: Settings
    ) -> Response[SessionOut]:
        user = await authenticate(request, data.username, data.password)
        raw, session = await service.start_session(settings, user)
        return Response(
            SessionOut(id=str(user.id), username=user.username, csrf_token=session.csrf_token),
            cookies=session_cookies(settings, raw, session.csrf_token),
        )

    @post("/logout", status_code=204)
    async def logout(self, request: Request) -> Response[None]:
        await service.revoke(request.scope["auth"])
        return Response(None, status_code=204, cookies=CLEARED_COOKIES)

    @post("/token", opt=PUBLIC, status_code=201)
    async def create_token(self, request: Request, data: TokenRequest) -> TokenOut:
        user = await authenticate(request, data.username, data.password)
        return TokenOut(token=await service.issue_token(user, data.device_name))

    @delete("/token", status_code=204)
    async def revoke_token(self, request: Request) -> None:
        await service.revoke(request.scope["auth"])


@get("/api/me", tags=["auth"])
async def me(request: Request) -> MeOut:
    user = request.scope["auth"].user
    return MeOut(
        id=str(user.id),
        username=user.username,
        usage_bytes=user.usage_bytes,
        quota_bytes=user.quota_bytes or None,
    )
