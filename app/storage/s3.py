"""Chunks in an S3 bucket through aioboto3, uploaded and downloaded by presigned URLs.

A presigned PUT never names a stored chunk's key. Clients PUT into a staging key of their
own upload (`incoming/<owner>/<upload>/<sha256>`), with the length and the SHA-256 signed
into the URL (`Content-Length`, `x-amz-checksum-sha256`); only once the staged bytes are
known to be right are they copied to `chunks/<owner>/<sha256>`. So nobody, not even an
editor of a shared folder, can overwrite a chunk someone else's files use with other bytes.

Who checks the staged bytes depends on the server. AWS S3 and SeaweedFS refuse a PUT whose
body does not match the signed checksum and report the checksum they stored: then a HEAD
(length and stored SHA-256) is enough. Others (moto) take any bytes: then the server reads
the staged object back and hashes it, a full read of every chunk. Which one a bucket is,
`COFFER_S3_VERIFIES_CHECKSUMS` says, or ("auto") a probe at start finds out: a PUT of wrong
bytes under a scratch key must be refused, a PUT of the right ones taken and its checksum
reported. Even then a staged object whose checksum the server does not report is read back.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aioboto3
import httpx
from botocore.config import Config
from botocore.exceptions import ClientError

from app.settings import Settings
from app.storage.base import UploadTarget, chunk_key, staging_key, staging_prefix

log = logging.getLogger("coffer.storage.s3")

# Scratch keys of the checksum probe: no chunk, staging or listing prefix covers them.
PROBE_PREFIX = "coffer-probe/"
# What the probe found, per (endpoint, bucket), for the life of the process.
_probed: dict[tuple[str, str], bool] = {}


def _checksum(sha256: str) -> str:
    """The hex SHA-256 as S3 writes it in `x-amz-checksum-sha256` (base64)."""
    return base64.b64encode(bytes.fromhex(sha256)).decode()


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


_ABSENT = ("404", "NoSuchKey", "NotFound")


class S3BlobStore:
    verifies_on_write = False
    accepts_deltas = False  # clients PUT straight into the bucket: nothing to rebuild with

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.bucket = settings.s3_bucket
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None
        # True once the server is known to refuse bytes that do not match the signed
        # checksum (`learn_checksums`): staged chunks are then not read back.
        self.verifies_checksums = False

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

    async def learn_checksums(self) -> None:
        """Settle `verifies_checksums`: the setting, else the probe (once per process)."""
        forced = self.settings.s3_verifies_checksums
        if forced != "auto":
            self.verifies_checksums = forced == "true"
            return
        where = (self.settings.s3_endpoint_url, self.bucket)
        if where not in _probed:
            _probed[where] = await self._probe_checksums()
            log.info(
                "S3 bucket %s %s signed checksums: staged chunks are %s",
                self.bucket,
                "enforces" if _probed[where] else "does not enforce",
                "trusted by their stored checksum" if _probed[where] else "read back and hashed",
            )
        self.verifies_checksums = _probed[where]

    async def _probe_checksums(self) -> bool:
        """PUT wrong bytes, then the right ones, to a presigned URL made like a client's:
        True only if the wrong ones were refused and left nothing, and the right ones were
        taken with their checksum reported back. Any doubt (an error) means False."""
        key = f"{PROBE_PREFIX}{uuid.uuid4().hex}"
        data, wrong = os.urandom(64), os.urandom(64)
        checksum = base64.b64encode(hashlib.sha256(data).digest()).decode()
        url = await self._presigned_put(key, len(data), checksum, ttl=300)
        headers = {"x-amz-checksum-sha256": checksum}
        try:
            async with httpx.AsyncClient(timeout=30) as http:
                wrong_put = await http.put(url, content=wrong, headers=headers)
                left = await self._head(key)
                right_put = await http.put(url, content=data, headers=headers)
            head = await self._head(key) if right_put.is_success else None
        except (httpx.HTTPError, ClientError) as exc:
            log.warning("S3 checksum probe failed (%s): staged chunks will be read back", exc)
            return False
        finally:
            with contextlib.suppress(httpx.HTTPError, ClientError):
                await self._client.delete_object(Bucket=self.bucket, Key=key)
        if wrong_put.is_server_error or not right_put.is_success:
            log.warning(
                "S3 checksum probe inconclusive (wrong bytes: HTTP %s, right bytes: HTTP %s): "
                "staged chunks will be read back",
                wrong_put.status_code,
                right_put.status_code,
            )
        return (
            wrong_put.is_client_error
            and left is None
            and head is not None
            and head.get("ChecksumSHA256") == checksum
        )

    async def _presigned_put(self, key: str, size: int, checksum: str, ttl: int) -> str:
        return await self._client.generate_presigned_url(
            "put_object",
            Params={
                "Bucket": self.bucket,
                "Key": key,
                "ContentLength": size,
                "ChecksumSHA256": checksum,
            },
            ExpiresIn=ttl,
        )

    async def _head(self, key: str) -> dict[str, Any] | None:
        """The object's HEAD with its stored checksum, or None when it is absent."""
        try:
            return await self._client.head_object(
                Bucket=self.bucket, Key=key, ChecksumMode="ENABLED"
            )
        except ClientError as exc:
            if _code(exc) in _ABSENT:
                return None
            raise

    async def upload_url(
        self,
        base_url: str,
        owner: str,
        sha256: str,
        size: int,
        upload_id: str,
        delta_base: str | None = None,
    ) -> UploadTarget:
        if delta_base is not None:
            raise ValueError("S3 takes chunks as they are, not deltas")
        checksum = _checksum(sha256)
        url = await self._presigned_put(
            staging_key(owner, upload_id, sha256), size, checksum, self.settings.url_ttl_seconds
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
        etag: str | None = None
        if self.verifies_checksums:
            # The server refused any other bytes under this key's URL, and says which
            # checksum it verified: its word is the hash, without reading the chunk.
            head = await self._head(staged)
            if head is None:
                return "missing"
            reported = head.get("ChecksumSHA256")
            if int(head["ContentLength"]) != size or reported not in (None, _checksum(sha256)):
                await self._client.delete_object(Bucket=self.bucket, Key=staged)
                return "corrupt"
            if reported is not None:
                etag = head["ETag"]
        if etag is None:
            # Bytes nobody verified: hash them here (a full read of the chunk).
            verdict, etag = await self._hash_staged(staged, sha256, size)
            if verdict != "stored":
                return verdict
        try:
            # Only the object checked above: a PUT that replaced it since is not copied.
            await self._client.copy_object(
                Bucket=self.bucket,
                Key=chunk_key(owner, sha256),
                CopySource={"Bucket": self.bucket, "Key": staged},
                CopySourceIfMatch=etag,
            )
        except ClientError as exc:
            if _code(exc) in _ABSENT:
                return "missing"  # taken meanwhile by a concurrent commit of this upload
            if _code(exc) not in ("PreconditionFailed", "412"):
                raise
            await self._client.delete_object(Bucket=self.bucket, Key=staged)
            return "corrupt"
        await self._client.delete_object(Bucket=self.bucket, Key=staged)
        return "stored"

    async def _hash_staged(self, staged: str, sha256: str, size: int) -> tuple[str, str]:
        """Read the staged object and hash it: ('stored', its ETag) when the bytes are the
        chunk's; else 'missing', or 'corrupt' after deleting it."""
        hasher = hashlib.sha256()
        length = 0
        try:
            obj = await self._get(staged)
        except FileNotFoundError:
            return "missing", ""
        body = obj["Body"]
        try:
            async for piece in body.iter_chunks(1024 * 1024):
                length += len(piece)
                if length > size:
                    break
                await asyncio.to_thread(hasher.update, piece)
        finally:
            body.close()
        if length != size or hasher.hexdigest() != sha256:
            await self._client.delete_object(Bucket=self.bucket, Key=staged)
            return "corrupt", ""
        return "stored", obj["ETag"]

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
            if _code(exc) in _ABSENT:
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
                    ChecksumSHA256=_checksum(sha),
                )

        await asyncio.gather(*(one(sha, data) for sha, data in chunks.items()))

    def read(self, owner: str, sha256: str) -> AsyncIterator[bytes]:
        return self._read_key(chunk_key(owner, sha256))

    async def _get(self, key: str) -> dict[str, Any]:
        try:
            return await self._client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _code(exc) in _ABSENT:
                raise FileNotFoundError(key) from exc
            raise

    async def _read_key(self, key: str) -> AsyncIterator[bytes]:
        body = (await self._get(key))["Body"]
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

    async def read_checked(self, owner: str, sha256: str) -> tuple[bytes, bool]:
        return await self.read_all(owner, sha256), False  # read back over the network

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
