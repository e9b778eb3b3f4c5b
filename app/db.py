"""MongoDB connection and Beanie initialisation."""

from __future__ import annotations

from beanie import init_beanie
from pymongo import AsyncMongoClient

from app.auth.models import ApiToken, BrowserSession, User
from app.core.ratelimit import RateCounter
from app.events.models import Event, EventCounter
from app.files.models import (
    ChunkMapPage,
    FileNode,
    FileVersion,
    MaintenanceState,
    StoredChunk,
    UploadSession,
)
from app.settings import Settings
from app.sharing.models import Share, SharedWithMe, ShareLink

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
