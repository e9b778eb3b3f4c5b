"""The blob store interface the file service is written against."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class UploadTarget:
    """Where a client PUTs one chunk, and the headers it must send with it (the store
    may have signed them into the URL: a checksum, say)."""

    url: str
    headers: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class BlobStore(Protocol):
    # True when the store itself hashes bytes on write (so a stored chunk is verified).
    # Otherwise clients PUT into a staging key of their upload, and `accept_upload` checks
    # the bytes before they are copied into place: no client ever writes a stored chunk.
    verifies_on_write: bool
    # True when its chunk PUT URLs can take a delta body against a stored chunk
    # (app/protocol/delta.py): the server rebuilds the chunk, so only Coffer's own store.
    accepts_deltas: bool

    async def upload_url(
        self,
        base_url: str,
        owner: str,
        sha256: str,
        size: int,
        upload_id: str,
        delta_base: str | None = None,
    ) -> UploadTarget:
        """A short-lived URL the client PUTs exactly these bytes to; with `delta_base`
        (only where `accepts_deltas`), a delta against that stored chunk instead."""
        ...

    async def download_url(
        self, base_url: str, owner: str, sha256: str, size: int, epoch: int
    ) -> str:
        """A short-lived URL the client GETs the chunk from; `epoch` is the owner's URL
        epoch (a store that can check it refuses URLs of an older epoch)."""
        ...

    async def accept_upload(self, owner: str, sha256: str, size: int, upload_id: str) -> str:
        """Verify a chunk the upload staged and move it into place: 'stored', or
        'corrupt' / 'missing' (then nothing was moved and the staged copy is gone)."""
        ...

    async def discard_upload(self, owner: str, upload_id: str) -> None:
        """Forget whatever an upload staged and never had accepted."""
        ...

    async def put_many(self, owner: str, chunks: dict[str, bytes]) -> None:
        """Store chunks the server already holds and has verified (a batch's small inline
        files), durably, all at once."""
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

    async def read_checked(self, owner: str, sha256: str) -> tuple[bytes, bool]:
        """The whole stored chunk, and True if the store can vouch for its bytes without
        them being hashed again (it wrote and hashed them moments ago, and nothing has
        touched them since)."""
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


def staging_prefix(owner: str, upload_id: str) -> str:
    return f"incoming/{owner}/{upload_id}/"


def staging_key(owner: str, upload_id: str, sha256: str) -> str:
    return staging_prefix(owner, upload_id) + sha256
