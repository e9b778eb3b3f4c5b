"""What every file service works with: settings, the blob store and the change feed."""

from __future__ import annotations

from dataclasses import dataclass

from app.events.feed import ChangeFeed
from app.settings import Settings
from app.storage.base import BlobStore


@dataclass(frozen=True)
class FilesContext:
    settings: Settings
    store: BlobStore
    feed: ChangeFeed
