"""All configuration, read from the environment in one place.

Every knob an operator may turn is here, with the environment variable that sets it.
`COFFER_*` for Coffer's own settings; `MONGODB_URL`, `REDIS_URL`, `S3_*` and `AWS_*` keep
the names those ecosystems use.
"""

from __future__ import annotations

import secrets
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COFFER_", extra="ignore")

    data_dir: Path = Path("./data")
    host: str = "127.0.0.1"
    port: int = Field(8000, validation_alias=AliasChoices("PORT", "COFFER_PORT"))
    # Base URL that signed blob URLs point at. Empty: derived from each request's own URL.
    public_url: str = ""
    # HMAC key for signed blob URLs. Every web instance must share it; the launcher keeps
    # one in the data dir when none is given.
    secret_key: str = ""

    mongodb_url: str = Field("", validation_alias=AliasChoices("MONGODB_URL", "COFFER_MONGODB_URL"))
    db_name: str = "coffer"
    redis_url: str = Field("", validation_alias=AliasChoices("REDIS_URL", "COFFER_REDIS_URL"))

    blob_store: Literal["local", "s3"] = "local"
    s3_endpoint_url: str = Field("", validation_alias=AliasChoices("S3_ENDPOINT_URL"))
    s3_bucket: str = Field("coffer", validation_alias=AliasChoices("S3_BUCKET"))
    aws_access_key_id: str = Field("", validation_alias=AliasChoices("AWS_ACCESS_KEY_ID"))
    aws_secret_access_key: str = Field("", validation_alias=AliasChoices("AWS_SECRET_ACCESS_KEY"))
    aws_region: str = Field("us-east-1", validation_alias=AliasChoices("AWS_REGION"))
    # Whether the S3 server refuses a PUT whose bytes do not match the SHA-256 signed into
    # its URL (AWS S3 and SeaweedFS do, moto does not). If it does, a commit trusts the
    # checksum the server stored instead of reading every chunk back to hash it. "auto":
    # find out at start with a PUT of wrong bytes under a scratch key.
    s3_verifies_checksums: Literal["auto", "true", "false"] = "auto"
    # fsync every stored chunk before acknowledging it (local store): durability over speed.
    fsync: bool = True

    # Signed URL lifetime. Long enough for one 16 MiB chunk on a slow link; a client that
    # is too slow simply asks again (re-POSTing the file returns fresh URLs).
    url_ttl_seconds: int = 3600
    # Chunk *read* URLs live only minutes: a leaked one is soon useless, and revoking a
    # share or purging a file also ends the ones already handed out (see url_epoch).
    download_url_ttl_seconds: int = 300
    upload_session_ttl_seconds: int = 7 * 24 * 3600
    session_ttl_seconds: int = 30 * 24 * 3600
    # A device token unused for this many days stops working (0: never).
    token_idle_days: int = 90
    cookie_secure: bool = False
    # How long old versions and trashed items are kept (days); the last
    # `keep_min_versions` versions of a file are kept regardless.
    version_retention_days: int = 30
    trash_retention_days: int = 30
    keep_min_versions: int = 10
    # Scrub: re-hash every stored chunk, at most this many bytes per second, in runs of at
    # most `scrub_run_seconds` every 10 minutes, resuming where the last run stopped.
    scrub_bytes_per_second: int = 32 * MIB
    scrub_run_seconds: int = 540
    # Garbage collection deletes a chunk no version references only if no upload has
    # PUT it or been told to skip it for this long (the dedup race window).
    gc_grace_seconds: int = 24 * 3600
    # A collector that dies holds its lease this long; a live one renews it every batch.
    gc_lease_seconds: float = 60
    # A quota claim (bytes charged before a commit point) still open after this long was
    # left by a process that died mid-commit: the worker settles it (app/files/accounting.py).
    claim_settle_seconds: float = 60
    # Default per-user quota in bytes; 0 means unlimited.
    default_quota_bytes: int = 0
    # Password guessing: attempts per address and username (logins), or per address (link
    # passwords), in one window; a right password gives its attempt back.
    login_attempts: int = 10
    login_window_seconds: int = 15 * 60
    link_password_attempts: int = 5
    link_password_window_seconds: int = 15 * 60
    # File requests (upload-only links): files one address may send through one link per
    # window, counted before the body is read (the uploader's page waits and retries).
    file_request_uploads: int = 60
    file_request_window_seconds: int = 60
    # Bytes one file-request link may take in all (0: no limit but the owner's quota).
    file_request_total_bytes: int = 10 * 1024**3
    # argon2 runs on its own threads so a flood of logins cannot stall transfers; past
    # `workers + queue` callers at once, logins are refused with 503 + Retry-After.
    password_hash_workers: int = 2
    # How much the worker lowers its CPU priority (added to its Unix nice value, which stops
    # at 19): its jobs (hash verification, thumbnails, scrub, GC, the outbox sweep) yield to
    # request serving on a shared machine. Measured:
    # a 256 MiB file's verification (0.5-1 CPU-second) landing during the next transfer
    # slowed it by a fifth at nice 0.
    worker_nice: int = Field(default=5, ge=0, le=19)
    password_hash_queue: int = 16
    # Admission control (app/core/admission.py): HTTP requests one web instance works on
    # at once (0: no limit), and how long one more may wait for a place before 503.
    max_inflight_requests: int = 256
    inflight_wait_seconds: float = 10.0
    # Tests only: "name=seconds,..." makes the server pause at those failpoints
    # (see app/failpoints.py) so a fault test can kill it at an exact step.
    failpoints: str = ""
    # Serve /metrics (database round trips by command), for benchmarks and operators.
    metrics: bool = False

    # The batch API: files per request, the largest file that may carry its bytes inline
    # (committed in the same request), and the inline bytes one request may carry.
    # Files whose chunks are not the 4 MiB blocks and that are at most this big have their
    # content hash computed from the stored bytes at commit; bigger ones in the worker.
    verify_hash_at_commit_max: int = 64 * MIB
    # Uploads at least this big are announced when they begin (upload.started), so other
    # devices can fetch their chunks while they arrive.
    stream_min_bytes: int = 8 * MIB
    batch_max_files: int = 1000
    batch_inline_max_bytes: int = 1 * MIB
    batch_inline_total_bytes: int = 16 * MIB

    min_chunk_size: int = 64 * KIB
    max_chunk_size: int = 16 * MIB
    # At most this many bytes of delta bases read per upload register (an edit touches a
    # few chunks; a client naming a base for every chunk gets deltas for the first ones).
    delta_base_budget: int = 64 * MIB
    max_chunks: int = 16384
    max_file_size: int = 64 * GIB

    # Events: a WebSocket sends a heartbeat (and re-checks its credential) after this many
    # idle seconds; waiting readers re-check the feed this often with and without Redis;
    # a seq hole older than this is filled; changes with at most `inline_fanout` recipients
    # besides the owner are fanned out by the web process, larger ones by the worker; the
    # worker sweeps outboxes left marked longer than `sweep_after_seconds`.
    heartbeat_seconds: float = 25.0
    poll_with_redis_seconds: float = 10.0
    poll_without_redis_seconds: float = 0.5
    hole_grace_seconds: float = 2.0
    inline_fanout: int = 8
    sweep_after_seconds: float = 2.0

    arq_poll_delay: float = 0.01

    # Thumbnails (app/files/thumbnails.py): images larger than this many bytes or pixels get
    # none; the decoding child process may use at most `thumbnail_memory_bytes` of address
    # space and `thumbnail_timeout_seconds` per image; the worker makes at most
    # `thumbnail_jobs` at once (one decodes while the next one's bytes are fetched).
    thumbnail_max_bytes: int = 64 * MIB
    thumbnail_max_pixels: int = 100_000_000
    thumbnail_memory_bytes: int = 1 * GIB
    thumbnail_timeout_seconds: float = 60.0
    thumbnail_jobs: int = 2

    @property
    def mongo_url(self) -> str:
        return self.mongodb_url or "mongodb://127.0.0.1:27017/?directConnection=true"

    @property
    def redis(self) -> str:
        return self.redis_url or "redis://127.0.0.1:6379/0"

    def resolved_secret_key(self) -> str:
        """The configured key, else one kept in the data dir (created on first use)."""
        if self.secret_key:
            return self.secret_key
        key_file = self.data_dir / "secret_key"
        if not key_file.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            tmp = key_file.with_suffix(".tmp")
            tmp.write_text(secrets.token_hex(32))
            tmp.chmod(0o600)
            tmp.replace(key_file)
        return key_file.read_text().strip()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
