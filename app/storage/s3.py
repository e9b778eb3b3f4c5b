"""Chunks in an S3 bucket through aioboto3, uploaded and downloaded by presigned URLs.

S3 does not check our SHA-256 on a presigned PUT, so chunks land unverified: the file
service hashes them (streaming) before a version that uses them is committed.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aioboto3
from botocore.config import Config
from botocore.exceptions import ClientError

from app.settings import Settings
from app.storage.base import chunk_key


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

    async def upload_url(self, base_url: str, owner: str, sha256: str, size: int) -> str:
        return await self._client.generate_presigned_url(
            "put_object",
            Params={"Bucket": self.bucket, "Key": chunk_key(owner, sha256)},
            ExpiresIn=self.settings.url_ttl_seconds,
        )

    async def download_url(self, base_url: str, owner: str, sha256: str, size: int) -> str:
        return await self._client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": chunk_key(owner, sha256)},
            ExpiresIn=self.settings.url_ttl_seconds,
        )

    async def stat(self, owner: str, sha256: str) -> int | None:
        try:
            head = await self._client.head_object(Bucket=self.bucket, Key=chunk_key(owner, sha256))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return int(head["ContentLength"])

    async def read(self, owner: str, sha256: str) -> AsyncIterator[bytes]:
        try:
            obj = await self._client.get_object(Bucket=self.bucket, Key=chunk_key(owner, sha256))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                raise FileNotFoundError(chunk_key(owner, sha256)) from exc
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
