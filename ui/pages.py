"""The browser UI's pages: sign-in forms, the file browser, shared items, trash, devices.

One handler renders the whole page, or only its fragment when htmx asks (`HTMXRequest`),
so pages work without JavaScript for the basics: sign in, register, list, download, sign
out devices, change the password. Everything else that changes data goes through the JSON
API (the one the sync client uses) with the session cookie and the X-CSRF-Token header;
the forms served here carry the CSRF token as a field and are refused from other sites.

Pages under the signed-in router (`ui_router`) need a session: without one they redirect
to /login; their errors are an HTML page, never the API's JSON.
"""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import msgspec
from litestar import Request, Response, Router, get, post
from litestar.connection import ASGIConnection
from litestar.enums import RequestEncodingType
from litestar.handlers import BaseRouteHandler
from litestar.params import Body
from litestar.plugins.htmx import HTMXRequest
from litestar.response import Redirect, Template

import static
from app.auth import service as auth
from app.auth.routes import CLEARED_COOKIES, client_address, session_cookies
from app.core import paths
from app.core.crypto import PasswordHashing
from app.core.errors import CofferError
from app.core.http import cross_site
from app.events.feed import ChangeFeed
from app.events.hub import Hub
from app.files.activity import folder_activity
from app.files.history import HistoryService
from app.files.reads import ReadService
from app.files.scope import Caller, open_node
from app.files.search import SearchHit, SearchService
from app.files.tree import TreeService
from app.settings import Settings
from app.sharing.service import SharingService
from app.storage.base import BlobStore
from ui.formatting import crumbs, describe, previewable, row, sort_rows, storage_text
from ui.previews import preview_response

FormData = Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)]
STATIC_DIR = Path(static.__file__).resolve().parent
TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
SORTS = {"name", "size", "modified"}
NOTICES = {
    "revoked": "That device or session was signed out.",
    "others": "Every other device and session was signed out.",
    "password": "Your password was changed; every other device and session was signed out.",
}


class SignInRequired(Exception):
    """A page that needs a session was asked for without one."""


def _principal(request: Request) -> auth.Principal | None:
    principal = request.scope.get("auth")
    return principal if isinstance(principal, auth.Principal) else None


def page(request: Request, template: str, context: dict[str, Any], status: int = 200) -> Template:
    principal = _principal(request)
    user = principal.user if principal else None
    storage = None
    if user is not None:
        quota = user.quota_bytes or 0
        usage = user.usage_bytes
        storage = {"usage": usage, "quota": quota, "text": storage_text(usage, quota)}
    return Template(
        template_name=template,
        context={
            "user": user,
            "csrf": principal.csrf_token if principal and principal.via == "session" else "",
            "storage": storage,
            **context,
        },
        status_code=status,
    )


def _fragment(request: HTMXRequest, full: str, fragment: str) -> str:
    """The whole page, or only its fragment when htmx asks for it."""
    return fragment if request.htmx else full


def _safe_next(target: str) -> str:
    # Only same-site paths: "//evil.example" or "https://..." would leave the site.
    return target if target.startswith("/") and not target.startswith("//") else "/files"


def _refuse_cross_site(request: Request) -> Template:
    return page(
        request,
        "error.html",
        {"title": "Not from this site", "message": "This form must be sent from this site."},
        status=403,
    )


def _form_token_ok(principal: auth.Principal | None, data: dict[str, str]) -> bool:
    """Plain form posts carry the CSRF token as a field instead of a header."""
    return (
        principal is not None
        and principal.via == "session"
        and hmac.compare_digest(data.get("csrf", ""), principal.csrf_token or "")
    )


# ---------------------------------------------------------------- account pages


@get("/")
async def home(request: Request) -> Redirect:
    return Redirect("/files" if _principal(request) else "/login")


@get("/login")
async def login_page(request: Request, next: str = "/files") -> Template:
    return page(request, "login.html", {"next": _safe_next(next), "error": None, "username": ""})


@post("/login")
async def login_submit(
    request: Request, settings: Settings, passwords: PasswordHashing, data: FormData
) -> Response[Any]:
    if cross_site(request.headers):  # login CSRF: signing the victim into our account
        return _refuse_cross_site(request)
    username, password = data.get("username", ""), data.get("password", "")
    target = _safe_next(data.get("next", "/files"))
    try:
        user = await auth.authenticate(
            settings, passwords, client_address(request), username, password
        )
    except CofferError as exc:
        return page(
            request,
            "login.html",
            {"next": target, "error": exc.message, "username": username},
            status=exc.status_code,
        )
    return await _signed_in(request, settings, user, target)


async def _signed_in(request: Request, settings: Settings, user: Any, target: str) -> Redirect:
    raw, session = await auth.start_session(
        settings, user, client_address(request), request.headers.get("user-agent", "")
    )
    return Redirect(target, cookies=session_cookies(settings, raw, session.csrf_token))


@get("/register")
async def register_page(request: Request) -> Template:
    return page(request, "register.html", {"error": None, "username": ""})


@post("/register")
async def register_submit(
    request: Request, settings: Settings, passwords: PasswordHashing, data: FormData
) -> Response[Any]:
    if cross_site(request.headers):
        return _refuse_cross_site(request)
    username, password = data.get("username", ""), data.get("password", "")
    if password != data.get("password2", password):
        return page(
            request,
            "register.html",
            {"error": "The two passwords differ.", "username": username},
            status=400,
        )
    try:
        user = await auth.register(settings, passwords, username, password)
    except CofferError as exc:
        return page(
            request,
            "register.html",
            {"error": exc.message, "username": username},
            status=exc.status_code,
        )
    return await _signed_in(request, settings, user, "/files")


@post("/logout")
async def logout_submit(request: Request, data: FormData, hub: Hub) -> Response[Any]:
    principal = _principal(request)
    if principal is None:
        return Redirect("/login")  # nothing to sign out of
    # Without the page's token (a cross-site form, say) nothing is cleared: signing
    # someone out is a forgery too.
    if cross_site(request.headers) or not _form_token_ok(principal, data):
        return _refuse_cross_site(request)
    await hub.credentials_revoked(await auth.revoke(principal))
    return Redirect("/login", cookies=CLEARED_COOKIES)


# ------------------------------------------------------------------ file pages


async def _cursor(feed: ChangeFeed, caller: Caller) -> int:
    """The caller's feed position, read *before* a page's state is: the page's script
    follows the feed from here, so a change made while the page renders is not missed
    (register = cursor first, then state)."""
    return await feed.latest(caller.user_id)


@get("/files")
async def files_page(
    request: HTMXRequest,
    caller: Caller,
    tree: TreeService,
    feed: ChangeFeed,
    path: str | None = None,
    id: str | None = None,
    sort: str = "name",
    order: str = "asc",
) -> Template:
    sort = sort if sort in SORTS else "name"
    order = "desc" if order == "desc" else "asc"
    cursor = await _cursor(feed, caller)
    try:
        folder_path = paths.normalize_path(path or "/") if id is None else None
        listed = await tree.list_folder(caller, folder_path, id, 1000, None)
        shared_folder = None
        if id is not None:
            scope, node = await open_node(caller, id)
            shared_folder = scope.out(node)
    except CofferError as exc:
        return page(
            request,
            "files.html",
            {"error": exc.message, "items": [], "crumbs": [], "title": "Not found"},
            status=exc.status_code,
        )
    where = shared_folder.path if shared_folder else folder_path or "/"
    context = {
        "title": "All files" if where == "/" else paths.split(where)[1],
        "feed_cursor": cursor,
        "view": caller.user.view,
        "items": sort_rows([row(i) for i in listed.items], sort, order),
        "more": listed.cursor is not None,
        "path": where,
        "folder_id": id or "",
        "role": shared_folder.role if shared_folder else "owner",
        "crumbs": [] if shared_folder else crumbs(where),
        "sort": sort,
        "order": order,
        "query": f"id={quote(id)}" if id else f"path={quote(where)}",
        "error": None,
    }
    return page(request, _fragment(request, "files.html", "_listing.html"), context)


@get("/search")
async def search_page(
    request: HTMXRequest,
    caller: Caller,
    search: SearchService,
    feed: ChangeFeed,
    q: str = "",
    cursor: str | None = None,
) -> Template:
    """Search results as a listing (live like any listing); the box in the header sends
    here without JavaScript, the box on this page updates the results as you type."""
    context: dict[str, Any] = {
        "q": q,
        "search_query": q,
        "items": [],
        "cursor": None,
        "feed_cursor": await _cursor(feed, caller),
    }
    if q.strip():
        try:
            found = await search.search(caller, q, 100, cursor)
        except CofferError as exc:
            context["error"] = exc.message
        else:
            context["items"] = [{**row(i), "folder_link": _folder_link(i)} for i in found.items]
            context["cursor"] = found.cursor
    return page(request, _fragment(request, "search.html", "_search.html"), context)


def _folder_link(hit: SearchHit) -> str:
    """Where "open the folder this is in" goes for a search hit."""
    if hit.role == "owner":
        return f"/files?path={quote(hit.folder)}"
    return f"/files?id={quote(hit.folder_id)}" if hit.folder_id else "/shared"


@get("/activity")
async def activity_fragment(
    request: Request, caller: Caller, path: str = "/", id: str | None = None
) -> Template:
    """A folder's recent changes (the listing's Activity panel loads this when opened)."""
    found = await folder_activity(caller, path, id, 50)
    items = [{**msgspec.structs.asdict(i), **describe(i, found.folder)} for i in found.items]
    return page(request, "_activity.html", {"items": items, "complete": found.complete})


@get("/shared")
async def shared_page(
    request: HTMXRequest, caller: Caller, sharing: SharingService, feed: ChangeFeed
) -> Template:
    cursor = await _cursor(feed, caller)
    items = [row(i) for i in await sharing.shared_with_me(caller)]
    context = {"items": items, "feed_cursor": cursor}
    return page(request, _fragment(request, "shared.html", "_shared.html"), context)


@get("/trash")
async def trash_page(
    request: HTMXRequest,
    caller: Caller,
    history: HistoryService,
    settings: Settings,
    feed: ChangeFeed,
) -> Template:
    """What you deleted, newest first, with restore and delete-forever buttons."""
    cursor = await _cursor(feed, caller)
    listed = await history.trash(caller, 1000, None)
    return page(
        request,
        _fragment(request, "trash.html", "_trash.html"),
        {
            "items": [row(item, "deleted_at") for item in listed.items],
            "retention_days": settings.trash_retention_days,
            "feed_cursor": cursor,
        },
    )


@get("/preview/{file_id:str}")
async def preview(
    request: Request, file_id: str, caller: Caller, reads: ReadService, store: BlobStore
) -> Response[Any]:
    """A file shown inline (images, text as plain text, PDF), sandboxed like link previews."""
    _, node = await open_node(caller, file_id)
    media_type = previewable(node.name)
    if node.kind != "file" or media_type is None:
        return page(
            request,
            "error.html",
            {"title": "No preview", "message": "This kind of file cannot be previewed."},
            status=415,
        )
    return await preview_response(request, store, node, media_type)


# ------------------------------------------------------------ devices and password


@get("/devices")
async def devices_page(request: Request, notice: str | None = None) -> Template:
    """Signed-in browsers and devices, with sign-out buttons and a password change form."""
    principal = _principal(request)
    devices = await auth.list_devices(principal)  # type: ignore[arg-type]
    return page(
        request,
        "devices.html",
        {"devices": devices, "error": None, "notice": NOTICES.get(notice or "")},
    )


def _device_form(request: Request, data: dict[str, str]) -> auth.Principal | Template:
    principal = _principal(request)
    if principal is None or cross_site(request.headers) or not _form_token_ok(principal, data):
        return _refuse_cross_site(request)
    return principal


@post("/devices/revoke")
async def devices_revoke(request: Request, data: FormData, hub: Hub) -> Response[Any]:
    principal = _device_form(request, data)
    if isinstance(principal, Template):
        return principal
    try:
        revoked = await auth.revoke_device(principal, data.get("id", ""))
    except CofferError:
        return Redirect("/devices")
    await hub.credentials_revoked(revoked)
    if principal.credential_id in revoked:
        return Redirect("/login", cookies=CLEARED_COOKIES)
    return Redirect("/devices?notice=revoked")


@post("/devices/revoke-others")
async def devices_revoke_others(request: Request, data: FormData, hub: Hub) -> Response[Any]:
    principal = _device_form(request, data)
    if isinstance(principal, Template):
        return principal
    await hub.credentials_revoked(await auth.revoke_others(principal))
    return Redirect("/devices?notice=others")


@post("/devices/password")
async def devices_password(
    request: Request, data: FormData, hub: Hub, settings: Settings, passwords: PasswordHashing
) -> Response[Any]:
    principal = _device_form(request, data)
    if isinstance(principal, Template):
        return principal
    if data.get("new_password", "") != data.get("new_password2", ""):
        error, status = "The two new passwords differ.", 400
    else:
        try:
            revoked = await auth.change_password(
                settings,
                passwords,
                principal,
                client_address(request),
                data.get("current_password", ""),
                data.get("new_password", ""),
            )
        except CofferError as exc:
            error, status = exc.message, exc.status_code
        else:
            await hub.credentials_revoked(revoked)
            return Redirect("/devices?notice=password")
    devices = await auth.list_devices(principal)
    context = {"devices": devices, "error": error, "notice": None}
    return page(request, "devices.html", context, status)


# ------------------------------------------------------------------ the routers


def require_session(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    if not isinstance(connection.scope.get("auth"), auth.Principal):
        raise SignInRequired


def _to_login(request: Request, _: SignInRequired) -> Response[Any]:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return Redirect(f"/login?next={quote(target)}")


def _error_page(request: Request, exc: CofferError) -> Response[Any]:
    return page(
        request,
        "error.html",
        {"title": "Something is not right", "message": exc.message},
        status=exc.status_code,
    )


def account_router() -> Router:
    """Sign in, register, sign out: reachable without a session."""
    return Router(
        path="/",
        route_handlers=[
            home,
            login_page,
            login_submit,
            register_page,
            register_submit,
            logout_submit,
        ],
        include_in_schema=False,
    )


def ui_router() -> Router:
    """The signed-in pages: no session redirects to /login; errors are an HTML page."""
    return Router(
        path="/",
        guards=[require_session],
        request_class=HTMXRequest,
        exception_handlers={SignInRequired: _to_login, CofferError: _error_page},
        route_handlers=[
            files_page,
            search_page,
            activity_fragment,
            shared_page,
            trash_page,
            preview,
            devices_page,
            devices_revoke,
            devices_revoke_others,
            devices_password,
        ],
        include_in_schema=False,
    )
