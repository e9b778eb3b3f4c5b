"""The browser UI: server-rendered pages, enhanced by htmx and static/app.js.

One handler renders the whole page, or only the `#listing` fragment when htmx asks
(`HX-Request`), so pages work without JavaScript for the basics: login, register, listing,
download. Everything that changes data goes through the JSON API (the same one the sync
client uses) with the session cookie and the X-CSRF-Token header; the forms served here
(login, register, logout) carry their own checks.
"""

from __future__ import annotations

import hmac
import mimetypes
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

from litestar import Request, Response, get, post
from litestar.enums import RequestEncodingType
from litestar.params import Body
from litestar.response import Redirect, Template

import static
from app.auth import service as auth
from app.auth.routes import CLEARED_COOKIES, client_address, session_cookies
from app.core.crypto import PasswordHashing
from app.errors import CofferError
from app.events.hub import Hub
from app.events.service import ChangeFeed
from app.files import paths
from app.files.history import HistoryService
from app.files.service import FileService
from app.settings import Settings
from app.sharing.public import human_size, preview_response, previewable
from app.sharing.service import SharingService
from app.storage.base import BlobStore

PUBLIC = {"public": True}
FormData = Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)]
STATIC_DIR = Path(static.__file__).resolve().parent
TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
SORTS = {"name", "size", "modified"}


def _principal(request: Request) -> auth.Principal | None:
    principal = request.scope.get("auth")
    return principal if isinstance(principal, auth.Principal) else None


def _login_redirect(request: Request) -> Redirect:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return Redirect(f"/login?next={quote(target)}")


def _files_for(
    request: Request,
    settings: Settings,
    store: BlobStore,
    feed: ChangeFeed,
    principal: auth.Principal,
) -> FileService:
    return FileService.for_caller(settings, store, feed, principal, str(request.base_url))


def icon_for(item: dict[str, Any]) -> tuple[str, str]:
    """A small text badge (and its colour class): DIR, or the kind of file."""
    if item["kind"] == "folder":
        return "DIR", "folder"
    kind = mimetypes.guess_type(item["name"])[0] or ""
    if kind.startswith("image/"):
        return "IMG", "image"
    if kind == "application/pdf":
        return "PDF", "pdf"
    ext = item["name"].rpartition(".")[2] if "." in item["name"] else ""
    return (ext[:4].upper() or "FILE"), "file"


def _decorate(item: dict[str, Any], date_field: str = "modified_at") -> dict[str, Any]:
    """What a row shows besides the API's fields: badge, human size and date."""
    when = datetime.fromisoformat(item[date_field].replace("Z", "+00:00"))
    icon, icon_class = icon_for(item)
    return {
        **item,
        "icon": icon,
        "icon_class": icon_class,
        "human_size": "—" if item["kind"] == "folder" else human_size(item["size"]),
        "human_date": when.astimezone(UTC).strftime("%Y-%m-%d %H:%M"),
        "previewable": item["kind"] == "file" and previewable(item["name"]) is not None,
    }


def _sorted(items: list[dict[str, Any]], sort: str, order: str) -> list[dict[str, Any]]:
    key = {
        "name": lambda i: i["name"].casefold(),
        "size": lambda i: i["size"],
        "modified": lambda i: i["modified_at"],
    }[sort]
    ordered = sorted(items, key=key, reverse=order == "desc")
    return [i for i in ordered if i["kind"] == "folder"] + [
        i for i in ordered if i["kind"] != "folder"
    ]


def _crumbs(path: str) -> list[tuple[str, str]]:
    out = [("All files", "/")]
    for ancestor in [*paths.ancestors(path), path] if path != "/" else []:
        out.append((paths.split(ancestor)[1], ancestor))
    return out


def _page(request: Request, template: str, context: dict[str, Any], status: int = 200) -> Template:
    principal = _principal(request)
    return Template(
        template_name=template,
        context={
            "user": principal.user if principal else None,
            "csrf": principal.csrf_token if principal and principal.via == "session" else "",
            **context,
        },
        status_code=status,
    )


# ---------------------------------------------------------------- account pages


@get("/", opt=PUBLIC, include_in_schema=False)
async def home(request: Request) -> Redirect:
    return Redirect("/files" if _principal(request) else "/login")


@get("/login", opt=PUBLIC, include_in_schema=False)
async def login_page(request: Request, next: str = "/files") -> Template:
    return _page(request, "login.html", {"next": _safe_next(next), "error": None, "username": ""})


def _cross_site(request: Request) -> bool:
    """A form posted from another site (login CSRF: signing the victim into the
    attacker's account). Browsers send Origin with every cross-site POST."""
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None:  # modern browsers say it outright
        return fetch_site not in ("same-origin", "none")
    origin = request.headers.get("origin")
    # "null": our pages send no referrer, and some browsers then send Origin: null.
    return (
        bool(origin) and origin != "null" and urlsplit(origin).netloc != request.headers.get("host")
    )


def _refuse_cross_site() -> Response[Any]:
    return Response(
        {"error": {"code": "cross_site", "message": "this form must be sent from this site"}},
        status_code=403,
    )


def _safe_next(target: str) -> str:
    # Only same-site paths: "//evil.example" or "https://..." would leave the site.
    return target if target.startswith("/") and not target.startswith("//") else "/files"


@post("/login", opt=PUBLIC, include_in_schema=False)
async def login_submit(
    request: Request,
    settings: Settings,
    passwords: PasswordHashing,
    data: FormData,
) -> Response[Any]:
    if _cross_site(request):
        return _refuse_cross_site()
    username, password = data.get("username", ""), data.get("password", "")
    target = _safe_next(data.get("next", "/files"))
    try:
        user = await auth.authenticate(
            settings, passwords, client_address(request), username, password
        )
    except CofferError as exc:
        return _page(
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


@get("/register", opt=PUBLIC, include_in_schema=False)
async def register_page(request: Request) -> Template:
    return _page(request, "register.html", {"error": None, "username": ""})


@post("/register", opt=PUBLIC, include_in_schema=False)
async def register_submit(
    request: Request,
    settings: Settings,
    passwords: PasswordHashing,
    data: FormData,
) -> Response[Any]:
    if _cross_site(request):
        return _refuse_cross_site()
    username, password = data.get("username", ""), data.get("password", "")
    if password != data.get("password2", password):
        return _page(
            request,
            "register.html",
            {"error": "The two passwords differ.", "username": username},
            status=400,
        )
    try:
        user = await auth.register(settings, passwords, username, password)
    except CofferError as exc:
        return _page(
            request,
            "register.html",
            {"error": exc.message, "username": username},
            status=exc.status_code,
        )
    return await _signed_in(request, settings, user, "/files")


def _form_token_ok(principal: auth.Principal | None, data: dict[str, str]) -> bool:
    """Plain form posts carry the CSRF token as a field instead of a header."""
    return (
        principal is not None
        and principal.via == "session"
        and hmac.compare_digest(data.get("csrf", ""), principal.csrf_token or "")
    )


@post("/logout", opt=PUBLIC, include_in_schema=False)
async def logout_submit(request: Request, data: FormData, hub: Hub) -> Response[Any]:
    principal = _principal(request)
    if principal is None:
        return Redirect("/login")  # nothing to sign out of
    # Without the page's token (a cross-site form, say) nothing is cleared: signing
    # someone out is a forgery too.
    if _cross_site(request) or not _form_token_ok(principal, data):
        return _refuse_cross_site()
    await hub.credentials_revoked(await auth.revoke(principal))
    return Redirect("/login", cookies=CLEARED_COOKIES)


# ------------------------------------------------------------------ file pages


@get("/files", opt=PUBLIC, include_in_schema=False)
async def files_page(
    request: Request,
    settings: Settings,
    store: BlobStore,
    feed: ChangeFeed,
    path: str | None = None,
    id: str | None = None,
    sort: str = "name",
    order: str = "asc",
) -> Response[Any]:
    principal = _principal(request)
    if principal is None:
        return _login_redirect(request)
    files = _files_for(request, settings, store, feed, principal)
    sort = sort if sort in SORTS else "name"
    order = "desc" if order == "desc" else "asc"
    try:
        folder_path = paths.normalize_path(path or "/") if id is None else None
        items, cursor = await files.list_folder(folder_path, id, 1000, None)
        shared_folder = None
        if id is not None:
            scoped, node = await files.open(id)
            shared_folder = scoped.out(node)
    except CofferError as exc:
        return _page(
            request,
            "files.html",
            {"error": exc.message, "items": [], "crumbs": []},
            status=exc.status_code,
        )
    where = shared_folder["path"] if shared_folder else folder_path or "/"
    context = {
        "items": [_decorate(i) for i in _sorted(items, sort, order)],
        "more": cursor is not None,
        "path": where,
        "folder_id": id or "",
        "role": shared_folder["role"] if shared_folder else "owner",
        "crumbs": [] if shared_folder else _crumbs(where),
        "sort": sort,
        "order": order,
        "query": f"id={quote(id)}" if id else f"path={quote(where)}",
        "error": None,
    }
    template = "_listing.html" if request.headers.get("hx-request") else "files.html"
    return _page(request, template, context)


@get("/shared", opt=PUBLIC, include_in_schema=False)
async def shared_page(
    request: Request, settings: Settings, store: BlobStore, feed: ChangeFeed
) -> Response[Any]:
    principal = _principal(request)
    if principal is None:
        return _login_redirect(request)
    sharing = SharingService(_files_for(request, settings, store, feed, principal))
    items = [_decorate(i) for i in await sharing.shared_with_me()]
    template = "_shared.html" if request.headers.get("hx-request") else "shared.html"
    return _page(request, template, {"items": items})


@get("/trash", opt=PUBLIC, include_in_schema=False)
async def trash_page(
    request: Request, settings: Settings, store: BlobStore, feed: ChangeFeed
) -> Response[Any]:
    """What you deleted, newest first, with restore and delete-forever buttons."""
    principal = _principal(request)
    if principal is None:
        return _login_redirect(request)
    history = HistoryService(_files_for(request, settings, store, feed, principal))
    items, _ = await history.trash(1000, None)
    items = [_decorate(item, "deleted_at") for item in items]
    template = "_trash.html" if request.headers.get("hx-request") else "trash.html"
    return _page(
        request, template, {"items": items, "retention_days": settings.trash_retention_days}
    )


@get("/preview/{file_id:str}", opt=PUBLIC, include_in_schema=False)
async def preview(
    request: Request, file_id: str, settings: Settings, store: BlobStore, feed: ChangeFeed
) -> Response[Any]:
    """A file shown inline (images, text as plain text, PDF), sandboxed like link previews."""
    principal = _principal(request)
    if principal is None:
        return _login_redirect(request)
    files = _files_for(request, settings, store, feed, principal)
    _, node = await files.open(file_id)
    media_type = previewable(node.name)
    if node.kind != "file" or media_type is None:
        return Response(
            {"error": {"code": "no_preview", "message": "cannot preview this"}}, status_code=415
        )
    return await preview_response(request, store, node, media_type)


# ------------------------------------------------------------ devices and password


@get("/devices", opt=PUBLIC, include_in_schema=False)
async def devices_page(request: Request, notice: str | None = None) -> Response[Any]:
    """Signed-in browsers and devices, with revoke buttons and a password change form.
    Plain forms: it works without JavaScript."""
    principal = _principal(request)
    if principal is None:
        return _login_redirect(request)
    devices = await auth.list_devices(principal)
    return _page(
        request,
        "devices.html",
        {"devices": devices, "error": None, "notice": NOTICES.get(notice or "")},
    )


NOTICES = {
    "revoked": "That device or session was signed out.",
    "others": "Every other device and session was signed out.",
    "password": "Your password was changed; every other device and session was signed out.",
}


async def _device_form(request: Request, data: dict[str, str]) -> auth.Principal | Response[Any]:
    principal = _principal(request)
    if principal is None:
        return _login_redirect(request)
    if _cross_site(request) or not _form_token_ok(principal, data):
        return _refuse_cross_site()
    return principal


@post("/devices/revoke", opt=PUBLIC, include_in_schema=False)
async def devices_revoke(request: Request, data: FormData, hub: Hub) -> Response[Any]:
    principal = await _device_form(request, data)
    if isinstance(principal, Response):
        return principal
    try:
        revoked = await auth.revoke_device(principal, data.get("id", ""))
    except CofferError:
        return Redirect("/devices")
    await hub.credentials_revoked(revoked)
    if principal.credential_id in revoked:
        return Redirect("/login", cookies=CLEARED_COOKIES)
    return Redirect("/devices?notice=revoked")


@post("/devices/revoke-others", opt=PUBLIC, include_in_schema=False)
async def devices_revoke_others(request: Request, data: FormData, hub: Hub) -> Response[Any]:
    principal = await _device_form(request, data)
    if isinstance(principal, Response):
        return principal
    await hub.credentials_revoked(await auth.revoke_others(principal))
    return Redirect("/devices?notice=others")


@post("/devices/password", opt=PUBLIC, include_in_schema=False)
async def devices_password(
    request: Request,
    data: FormData,
    hub: Hub,
    settings: Settings,
    passwords: PasswordHashing,
) -> Response[Any]:
    principal = await _device_form(request, data)
    if isinstance(principal, Response):
        return principal
    error = None
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
    if error is not None:
        devices = await auth.list_devices(principal)
        return _page(
            request,
            "devices.html",
            {"devices": devices, "error": error, "notice": None},
            status=status,
        )
    await hub.credentials_revoked(revoked)
    return Redirect("/devices?notice=password")
