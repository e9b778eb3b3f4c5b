"""The Litestar application: one router per surface, dependencies by name, one error map.

Surfaces:
- the API (`/api/...`, JSON): a session or device token required (`require_user`), and
  unsafe requests must be same-site JSON (`refuse_forged_requests`);
- the blob store's signed chunk URLs: the signature is the authorization;
- public links (`/s/...`, HTML and bytes): anyone with the link;
- the browser pages: sign-in pages for anyone, the rest for a session (else /login),
  with HTML error pages.
"""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import urlsplit

from litestar import Litestar, Request, Router
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig

from app.auth import service as auth_service
from app.auth.middleware import IdentityMiddleware, refuse_forged_requests, require_user
from app.auth.routes import AuthController, DeviceController, me, set_preferences
from app.core import failpoints
from app.core.admission import admission
from app.core.crypto import PasswordHashing
from app.core.encoding import decompressing_bodies
from app.core.errors import exception_handlers
from app.core.headers import SecurityHeadersMiddleware, page_policy
from app.dav.mount import DavMount, dav_route
from app.dav.nextcloud import nextcloud_routes
from app.db import connect
from app.events.queue import JobQueue
from app.events.routes import CredentialCheck, events_socket, read_events
from app.files.archive_routes import ZIP_ROUTES
from app.files.batch_routes import BATCH_BODY_MAX, BatchController, list_tree
from app.files.blob_routes import blob_router
from app.files.recovery import finish_interrupted_writes
from app.files.routes import (
    FileController,
    TrashController,
    activity,
    create_folder,
    search,
    upload_progress,
)
from app.files.scope import Caller
from app.files.search import backfill_search_keys
from app.files.thumbnail_routes import file_thumbnail
from app.files.thumbnails import ThumbnailService
from app.health import WIRE, healthz, metrics, readyz
from app.settings import Settings, get_settings
from app.sharing.routes import ShareController, leave_share, revoke_link, shared_with_me
from app.storage.factory import open_store
from app.wiring import Services, feed_for, hub_for, services_for
from ui.pages import STATIC_DIR, TEMPLATE_DIR, account_router, ui_router
from ui.public import public_router

log = logging.getLogger("coffer")

# A zstd JSON body may expand to this much (the largest JSON body the API takes).
MAX_JSON_BODY = BATCH_BODY_MAX


def _bucket_origin(settings: Settings) -> list[str]:
    """Where browsers PUT chunks besides us: the S3 endpoint, for the pages' CSP."""
    if settings.blob_store != "s3":
        return []
    endpoint = urlsplit(settings.s3_endpoint_url)
    if not endpoint.netloc:
        return ["https://*.amazonaws.com"]
    return [f"{endpoint.scheme}://{endpoint.netloc}"]


async def _backfill_search_keys() -> None:
    try:
        done = await backfill_search_keys()
    except Exception:  # search misses old names until the next start; nothing else breaks
        log.exception("could not give old files their search keys")
        return
    if done:
        log.info("gave %d file(s) written before search existed their search key", done)


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or get_settings()
    dav = DavMount(settings)

    async def on_startup(app: Litestar) -> None:
        failpoints.configure(settings.failpoints)
        app.state.mongo = await connect(settings)
        app.state.store = await open_store(settings)
        app.state.hub = hub_for(settings)
        app.state.hub.start()
        app.state.queue = JobQueue(settings.redis)
        app.state.feed = feed_for(settings, app.state.hub, app.state.queue.enqueue_fanout)
        app.state.thumbnails = ThumbnailService(settings, app.state.queue.enqueue)
        app.state.passwords = PasswordHashing(
            settings.password_hash_workers, settings.password_hash_queue
        )
        app.state.services = services_for(
            settings, app.state.store, app.state.feed, app.state.passwords
        )
        dav.bind(app.state.services, app.state.store, app.state.passwords)
        finished = await finish_interrupted_writes()
        if finished:
            log.warning("completed %d write(s) interrupted by a crash", finished)
        # In the background: a first start on an old database must not wait for it.
        app.state.backfill = asyncio.create_task(_backfill_search_keys())

    async def on_shutdown(app: Litestar) -> None:
        app.state.passwords.close()
        await app.state.hub.close()
        await app.state.queue.close()
        await app.state.store.close()
        await app.state.mongo.close()

    def service(name: str) -> Provide:
        def provide(state: State) -> object:
            services: Services = state.services
            return getattr(services, name)

        return Provide(provide, sync_to_thread=False)

    def state_value(name: str) -> Provide:
        def provide(state: State) -> object:
            return getattr(state, name)

        return Provide(provide, sync_to_thread=False)

    def provide_settings() -> Settings:
        return settings

    def provide_caller(request: Request) -> Caller:
        return Caller.of(request.scope["auth"], settings.public_url or str(request.base_url))

    def provide_credential_alive() -> CredentialCheck:
        return auth_service.still_valid

    api = Router(
        path="/",
        guards=[require_user, refuse_forged_requests],
        route_handlers=[
            AuthController,
            DeviceController,
            me,
            set_preferences,
            read_events,
            events_socket,
            FileController,
            BatchController,
            list_tree,
            TrashController,
            create_folder,
            upload_progress,
            *ZIP_ROUTES,
            search,
            activity,
            ShareController,
            shared_with_me,
            leave_share,
            revoke_link,
            file_thumbnail,
        ],
    )
    dependencies = {
        "settings": Provide(provide_settings, sync_to_thread=False),
        "caller": Provide(provide_caller, sync_to_thread=False),
        "credential_alive": Provide(provide_credential_alive, sync_to_thread=False),
        "store": state_value("store"),
        "hub": state_value("hub"),
        "feed": state_value("feed"),
        "passwords": state_value("passwords"),
        "thumbnails": state_value("thumbnails"),
        **{name: service(name) for name in Services.__dataclass_fields__},
    }
    return Litestar(
        route_handlers=[
            api,
            blob_router(settings),
            dav_route(dav),
            *nextcloud_routes(dav),
            public_router(),
            account_router(),
            ui_router(),
            healthz,
            readyz,
            metrics,
            create_static_files_router(path="/static", directories=[STATIC_DIR]),
        ],
        dependencies=dependencies,
        template_config=TemplateConfig(directory=TEMPLATE_DIR, engine=JinjaTemplateEngine),
        middleware=[
            *([WIRE.middleware] if settings.metrics else []),
            admission(settings.max_inflight_requests, settings.inflight_wait_seconds),
            decompressing_bodies(MAX_JSON_BODY),
            SecurityHeadersMiddleware(page_policy(_bucket_origin(settings))),
            IdentityMiddleware(settings),
        ],
        exception_handlers=exception_handlers,
        on_startup=[on_startup],
        on_shutdown=[on_shutdown],
        openapi_config=OpenAPIConfig(title="Coffer", version="0.1.0", path="/schema"),
        debug=False,
    )
