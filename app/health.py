"""Liveness and readiness probes, and (when `COFFER_METRICS` is on) counters."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from app.core.errors import NotFound
from app.core.http import PUBLIC
from app.db import COMMANDS
from app.settings import Settings
from app.storage.base import BlobStore


@get("/healthz", opt=PUBLIC, include_in_schema=False)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get("/readyz", opt=PUBLIC, include_in_schema=False)
async def readyz(request: Request, store: BlobStore) -> Response[dict[str, object]]:
    checks: dict[str, str] = {}
    try:
        await request.app.state.mongo.admin.command("ping")
        checks["mongodb"] = "ok"
    except Exception as exc:  # any failure means "not ready", reported, not raised
        checks["mongodb"] = f"error: {type(exc).__name__}"
    try:
        await store.check()
        checks["blob_store"] = "ok"
    except Exception as exc:
        checks["blob_store"] = f"error: {type(exc).__name__}"
    ready = all(v == "ok" for v in checks.values())
    return Response({"ready": ready, "checks": checks}, status_code=200 if ready else 503)


@get("/metrics", opt=PUBLIC, include_in_schema=False)
async def metrics(settings: Settings) -> dict[str, object]:
    """Database round trips by command since start (benchmarks read it). Off unless
    COFFER_METRICS is set: activity counts are nobody's business by default."""
    if not settings.metrics:
        raise NotFound("metrics are off (COFFER_METRICS)")
    return {"mongo_commands": dict(COMMANDS.counts), "request_body_bytes": WIRE.received}


class WireCounter:
    """Request body bytes this process received, as they came over the wire (compressed
    bodies count compressed): what clients really sent, for benchmarks."""

    def __init__(self) -> None:
        self.received = 0

    def middleware(self, app: ASGIApp) -> ASGIApp:
        async def counted(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return

            async def counting() -> Message:
                message: Any = await receive()
                if message["type"] == "http.request":
                    self.received += len(message.get("body", b""))
                return message

            await app(scope, counting, send)

        return counted


WIRE = WireCounter()
