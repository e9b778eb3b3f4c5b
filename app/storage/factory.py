"""Build the blob store the settings ask for."""

from __future__ import annotations

from app.settings import Settings
from app.storage.base import BlobStore
from app.storage.local import LocalBlobStore
from app.storage.s3 import S3BlobStore


async def open_store(settings: Settings) -> BlobStore:
    if settings.blob_store == "s3":
        store = S3BlobStore(settings)
        await store.start()
        await store.ensure_bucket()
        await store.learn_checksums()
        return store
    return LocalBlobStore(
        settings.data_dir / "blobs",
        settings.resolved_secret_key(),
        settings.url_ttl_seconds,
        settings.download_url_ttl_seconds,
        fsync=settings.fsync,
    )
