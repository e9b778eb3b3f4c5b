"""The blob store interface the file service is written against."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable


@runtime_checkable
class BlobStore(Protocol):
    # True when the store itself hashes bytes on write (so a stored chunk is verified).
    verifies_on_write: bool

    async def upload_url(self, base_url: str, owner: str, sha256: str, size: int) -> str:
        """A short-lived URL the client PUTs exactly these bytes to."""
        ...

    async def download_url(self, base_url: str, owner: str, sha256: str, size: int) -> str:
        """A short-lived URL the client GETs the chunk from."""
        ...

    async def stat(self, owner: str, sha256: str) -> int | None:
        """Stored size of the chunk, or None when absent."""
        ...

    def read(self, owner: str, sha256: str) -> AsyncIterator[bytes]:
        """Stream the whole stored chunk."""
        ...

    async def read_all(self, owner: str, sha256: str) -> bytes:
        """The whole stored chunk (chunks are at most 16 MiB)."""
        ...

    async def delete(self, owner: str, sha256: str) -> None: ...

    def list_chunks(self, owner: str) -> AsyncIterator[tuple[str, int]]:
        """(sha256, last-modified epoch ms) of every blob stored for the owner."""
        ...

    async def check(self) -> None:
        """Raise when the store cannot be reached (readiness probe)."""
        ...

    async def close(self) -> None: ...


def chunk_key(owner: str, sha256: str) -> str:
    return f"chunks/{owner}/{sha256[:2]}/{sha256}"
