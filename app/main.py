"""The Litestar application: wiring of routes, dependencies, auth and error handling."""

from __future__ import annotations

import logging

from litestar import Litestar, Request, Router
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig

from app.auth.middleware import IdentityMiddleware, refuse_forged_requests, require_user
from app.auth.routes import AuthController, DeviceController, me
from app.core.crypto import PasswordHashing
from app.db import connect
from app.errors import exception_handlers
from app.events.hub import Hub
from app.events.queue import JobQueue
from app.events.routes import events_socket, read_events
from app.events.service import ChangeFeed
from app.files.history import HistoryService
from app.files.routes import FileController, TrashController, create_folder
from app.files.service import FileService, finish_interrupted_writes
from app.health import healthz, readyz
from app.settings import Settings, get_settings
from app.sharing.public import link_download, link_page, link_preview, unlock_link
from app.sharing.routes import ShareController, revoke_link, shared_with_me
from app.sharing.service import SharingService
from app.storage.base import BlobStore
from app.storage.factory import open_store
from app.storage.routes import get_chunk, put_chunk
from ui.headers import SecurityHeadersMiddleware
from ui.routes import (
    STATIC_DIR,
    TEMPLATE_DIR,
    devices_page,
    devices_password,
    devices_revoke,
    devices_revoke_others,
    files_page,
    home,
    login_page,
    login_submit,
    logout_submit,
    preview,
    register_page,
    register_submit,
    shared_page,
    trash_page,
)

log = logging.getLogger("coffer")


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or get_settings()

    async def on_startup(app: Litestar) -> None:
        app.state.mongo = await connect(settings)
        app.state.store = await open_store(settings)
        app.state.hub = Hub(settings.redis)
        app.state.hub.start()
        app.state.queue = JobQueue(settings.redis)
        app.state.feed = ChangeFeed(app.state.hub, app.state.queue.enqueue_fanout)
        app.state.passwords = PasswordHashing(
            settings.password_hash_workers, settings.password_hash_queue
        )
        finished = await finish_interrupted_writes()
        if finished:
            log.warning("completed %d write(s) interrupted by a crash", finished)

    async def on_shutdown(app: Litestar) -> None:
        app.state.passwords.close()
        await app.state.hub.close()
        await app.state.queue.close()
        await app.state.store.close()
        await app.state.mongo.close()

    def provide_settings() -> Settings:
        return settings

    def provide_store(state: State) -> BlobStore:
        return state.store

    def provide_hub(state: State) -> Hub:
        return state.hub

    def provide_feed(state: State) -> ChangeFeed:
        return state.feed

    def provide_passwords(state: State) -> PasswordHashing:
        return state.passwords

    def provide_files(request: Request, store: BlobStore, feed: ChangeFeed) -> FileService:
        return FileService.for_caller(
            settings, store, feed, request.scope["auth"], str(request.base_url)
        )

    def provide_sharing(files: FileService) -> SharingService:
        return SharingService(files)

    def provide_history(files: FileService) -> HistoryService:
        return HistoryService(files)

    api = Router(
        path="/",
        guards=[require_user, refuse_forged_requests],
        route_handlers=[
            AuthController,
            DeviceController,
            me,
            read_events,
            events_socket,
            FileController,
            TrashController,
            create_folder,
            put_chunk,
            get_chunk,
            ShareController,
            shared_with_me,
            revoke_link,
            link_page,
            unlock_link,
            link_download,
            link_preview,
            home,
            login_page,
            login_submit,
            register_page,
            register_submit,
            logout_submit,
            files_page,
            shared_page,
            trash_page,
            preview,
            devices_page,
            devices_revoke,
            devices_revoke_others,
            devices_password,
        ],
    )
    return Litestar(
        route_handlers=[
            api,
            healthz,
            readyz,
            create_static_files_router(path="/static", directories=[STATIC_DIR]),
        ],
        dependencies={
            "settings": Provide(provide_settings, sync_to_thread=False),
            "store": Provide(provide_store, sync_to_thread=False),
            "files": Provide(provide_files, sync_to_thread=False),
            "hub": Provide(provide_hub, sync_to_thread=False),
            "feed": Provide(provide_feed, sync_to_thread=False),
            "passwords": Provide(provide_passwords, sync_to_thread=False),
            "sharing": Provide(provide_sharing, sync_to_thread=False),
            "history": Provide(provide_history, sync_to_thread=False),
        },
        template_config=TemplateConfig(
            directory=TEMPLATE_DIR, engine=JinjaTemplateEngine
        ),
        middleware=[SecurityHeadersMiddleware(settings), IdentityMiddleware(settings)],
        exception_handlers=exception_handlers,
        on_startup=[on_startup],
        on_shutdown=[on_shutdown],
        openapi_config=OpenAPIConfig(title="Coffer", version="0.1.0", path="/schema"),
        debug=False,
    )
