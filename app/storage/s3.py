"""Chunks in an S3 bucket through aioboto3, uploaded and downloaded by presigned URLs.

A presigned PUT never names a stored chunk's key. Clients PUT into a staging key of their
own upload (`incoming/<owner>/<upload>/<sha256>`), with the length and the SHA-256 signed
into the URL (`Content-Length`, `x-amz-checksum-sha256`: AWS S3 refuses other bytes); the
server then hashes the staged object itself (servers that do not enforce the checksum
exist) and only then copies it to `chunks/<owner>/<sha256>`. So nobody, not even an editor
of a shared folder, can overwrite a chunk someone else's files use with other bytes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import aioboto3
from botocore.config import Config
from botocore.exceptions import ClientError

from app.settings import Settings
from app.storage.base import UploadTarget, chunk_key, staging_key, staging_prefix


class S3BlobStore:
    verifies_on_write = False

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.bucket = settings.s3_bucket
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None

    async def start(self) -> None:
        session = aioboto3.Session(
            aws_access_key_id=self.settings.aws_access_key_id or None,
            aws_secret_access_key=self.settings.aws_secret_access_key or None,
            region_name=self.settings.aws_region,
        )
        self._client = await self._stack.enter_async_context(
            session.client(
                "s3",
                endpoint_url=self.settings.s3_endpoint_url or None,
                config=Config(
                    signature_version="s3v4",
                    s3={"addressing_style": "path"},
                    max_pool_connections=32,
                ),
            )
        )

    async def ensure_bucket(self) -> None:
        try:
            await self._client.head_bucket(Bucket=self.bucket)
        except ClientError:
            await self._client.create_bucket(Bucket=self.bucket)

    async def upload_url(
        self, base_url: str, owner: str, sha256: str, size: int, upload_id: str
    ) -> UploadTarget:
        checksum = base64.b64encode(bytes.fromhex(sha256)).decode()
        url = await self._client.generate_presigned_url(
            "put_object",
            Params={
                "Bucket": self.bucket,
                "Key": staging_key(owner, upload_id, sha256),
                "ContentLength": size,
                "ChecksumSHA256": checksum,
            },
            ExpiresIn=self.settings.url_ttl_seconds,
        )
        return UploadTarget(url, {"x-amz-checksum-sha256": checksum})

    async def download_url(
        self, base_url: str, owner: str, sha256: str, size: int, epoch: int
    ) -> str:
        # A presigned GET cannot be revoked: its short life is the only limit.
        return await self._client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": chunk_key(owner, sha256)},
            ExpiresIn=self.settings.download_url_ttl_seconds,
        )

    async def accept_upload(self, owner: str, sha256: str, size: int, upload_id: str) -> str:
        staged = staging_key(owner, upload_id, sha256)
        hasher = hashlib.sha256()
        length = 0
        try:
            async for piece in self._read_key(staged):
                length += len(piece)
                if length > size:
                    break
                await asyncio.to_thread(hasher.update, piece)
        except FileNotFoundError:
            return "missing"
        if length != size or hasher.hexdigest() != sha256:
            await self._client.delete_object(Bucket=self.bucket, Key=staged)
            return "corrupt"
        await self._client.copy_object(
            Bucket=self.bucket,
            Key=chunk_key(owner, sha256),
            CopySource={"Bucket": self.bucket, "Key": staged},
        )
        await self._client.delete_object(Bucket=self.bucket, Key=staged)
        return "stored"

    async def discard_upload(self, owner: str, upload_id: str) -> None:
        paginator = self._client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(
            Bucket=self.bucket, Prefix=staging_prefix(owner, upload_id)
        ):
            for obj in page.get("Contents", []):
                await self._client.delete_object(Bucket=self.bucket, Key=obj["Key"])

    async def stat(self, owner: str, sha256: str) -> int | None:
        try:
            head = await self._client.head_object(Bucket=self.bucket, Key=chunk_key(owner, sha256))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return int(head["ContentLength"])

    async def put_many(self, owner: str, chunks: dict[str, bytes]) -> None:
        sem = asyncio.Semaphore(16)

        async def one(sha: str, data: bytes) -> None:
            async with sem:
                await self._client.put_object(
                    Bucket=self.bucket,
                    Key=chunk_key(owner, sha),
                    Body=data,
                    ChecksumSHA256=base64.b64encode(bytes.fromhex(sha)).decode(),
                )

        await asyncio.gather(*(one(sha, data) for sha, data in chunks.items()))

    def read(self, owner: str, sha256: str) -> AsyncIterator[bytes]:
        return self._read_key(chunk_key(owner, sha256))

    async def _read_key(self, key: str) -> AsyncIterator[bytes]:
        try:
            obj = await self._client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                raise FileNotFoundError(key) from exc
            raise
        body = obj["Body"]
        try:
            async for piece in body.iter_chunks(1024 * 1024):
                yield piece
        finally:
            body.close()

    async def read_all(self, owner: str, sha256: str) -> bytes:
        buf = bytearray()
        async for piece in self.read(owner, sha256):
            buf += piece
        return bytes(buf)

    async def delete(self, owner: str, sha256: str) -> None:
        await self._client.delete_object(Bucket=self.bucket, Key=chunk_key(owner, sha256))

    async def list_chunks(self, owner: str) -> AsyncIterator[tuple[str, int]]:
        paginator = self._client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=f"chunks/{owner}/"):
            for obj in page.get("Contents", []):
                yield obj["Key"].rsplit("/", 1)[-1], int(obj["LastModified"].timestamp() * 1000)

    async def check(self) -> None:
        await self._client.head_bucket(Bucket=self.bucket)

    async def close(self) -> None:
        await self._stack.aclose()
