"""The database: every MongoDB document model (one module per domain) and the connection.

Models live here, below every service, so that the layers can only import downward:
access rules (app.acl), the event feed (app.events) and the file services all read the
same documents without importing each other.
"""

from __future__ import annotations

from collections import Counter

from beanie import init_beanie
from pymongo import AsyncMongoClient
from pymongo.errors import OperationFailure
from pymongo.monitoring import (
    CommandFailedEvent,
    CommandListener,
    CommandStartedEvent,
    CommandSucceededEvent,
)

from app.core.query import use_explicit_eq
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
from app.db.trace import listeners as trace_listeners
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
        # COFFER_TRACE_QUERIES (tests only) adds a recorder of every query's shape.
        event_listeners=[COMMANDS, *trace_listeners()],
    )
    await init_beanie(database=client[settings.db_name], document_models=DOCUMENT_MODELS)
    use_explicit_eq(await is_nx_27017(client))
    return client


async def is_nx_27017(client: AsyncMongoClient) -> bool:
    """Whether the server is the embedded nx-27017, whose index use needs `$eq` filters
    (app/core/query.py). It names itself in serverStatus; a server that refuses the
    command (MongoDB without the clusterMonitor role) is not nx-27017."""
    try:
        status = await client.admin.command("serverStatus")
    except OperationFailure:
        return False
    return status.get("process") == "nx_27017"
