"""The database: every MongoDB document model (one module per domain) and the connection.

Models live here, below every service, so that the layers can only import downward:
access rules (app.acl), the event feed (app.events) and the file services all read the
same documents without importing each other.
"""

from __future__ import annotations

from collections import Counter

from beanie import init_beanie
from pymongo import AsyncMongoClient
from pymongo.monitoring import (
    CommandFailedEvent,
    CommandListener,
    CommandStartedEvent,
    CommandSucceededEvent,
)

from app.core.ratelimit import RateCounter
from app.db.accounts import ApiToken, BrowserSession, User
from app.db.archives import ZipTicket
from app.db.dav import DavLock, DavProperties, DavUpload
from app.db.events import Event, EventCounter
from app.db.files import (
    ChunkMapPage,
    FileNode,
    FileVersion,
    MaintenanceState,
    StoredChunk,
    UploadSession,
)
from app.db.sharing import Share, SharedWithMe, ShareLink
from app.db.thumbnails import Thumbnail
from app.settings import Settings

DOCUMENT_MODELS = [
    User,
    BrowserSession,
    ApiToken,
    FileNode,
    FileVersion,
    ChunkMapPage,
    StoredChunk,
    UploadSession,
    MaintenanceState,
    Event,
    EventCounter,
    Share,
    SharedWithMe,
    ShareLink,
    RateCounter,
    DavLock,
    DavProperties,
    DavUpload,
    ZipTicket,
    Thumbnail,
]


class CommandCounter(CommandListener):
    """Counts the database round trips this process makes, by command (for `/metrics`)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def started(self, event: CommandStartedEvent) -> None:
        self.counts[event.command_name] += 1

    def succeeded(self, event: CommandSucceededEvent) -> None:
        return None

    def failed(self, event: CommandFailedEvent) -> None:
        return None


COMMANDS = CommandCounter()


async def connect(settings: Settings) -> AsyncMongoClient:
    client: AsyncMongoClient = AsyncMongoClient(
        settings.mongo_url,
        serverSelectionTimeoutMS=5000,
        tz_aware=True,
        event_listeners=[COMMANDS],
    )
    await init_beanie(database=client[settings.db_name], document_models=DOCUMENT_MODELS)
    return client
