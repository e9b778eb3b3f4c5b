"""The database: every MongoDB document model (one module per domain) and the connection.

Models live here, below every service, so that the layers can only import downward:
access rules (app.acl), the event feed (app.events) and the file services all read the
same documents without importing each other.
"""

from __future__ import annotations

from beanie import init_beanie
from pymongo import AsyncMongoClient

from app.core.ratelimit import RateCounter
from app.db.accounts import ApiToken, BrowserSession, User
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
]


async def connect(settings: Settings) -> AsyncMongoClient:
    client: AsyncMongoClient = AsyncMongoClient(
        settings.mongo_url, serverSelectionTimeoutMS=5000, tz_aware=True
    )
    await init_beanie(database=client[settings.db_name], document_models=DOCUMENT_MODELS)
    return client
