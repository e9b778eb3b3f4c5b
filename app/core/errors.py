"""One error hierarchy for the whole app, turned into JSON HTTP answers in one place.

Services raise `CofferError` subclasses; `exception_handlers` maps them (and Litestar's own
HTTP and validation errors) to `{"error": {"code", "message", ...}}` with the right status.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.types import Send
from pymongo.errors import ConnectionFailure

from app.core.crypto import PasswordHashingBusy

log = logging.getLogger("coffer")


class CofferError(Exception):
    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.extra = extra


class BadRequest(CofferError):
    status_code = 400
    code = "bad_request"


class Unauthorized(CofferError):
    status_code = 401
    code = "unauthorized"


class Forbidden(CofferError):
    status_code = 403
    code = "forbidden"


class NotFound(CofferError):
    status_code = 404
    code = "not_found"


class Conflict(CofferError):
    status_code = 409
    code = "conflict"


class PayloadTooLarge(CofferError):
    status_code = 413
    code = "too_large"


class UnsupportedMediaType(CofferError):
    status_code = 415
    code = "unsupported_media_type"


class RangeNotSatisfiable(CofferError):
    status_code = 416
    code = "range_not_satisfiable"


class TooManyRequests(CofferError):
    status_code = 429
    code = "too_many_requests"


class Locked(CofferError):
    """A WebDAV lock held by someone else protects the item."""

    status_code = 423
    code = "locked"


class InsufficientStorage(CofferError):
    status_code = 507
    code = "insufficient_storage"


class CorruptData(CofferError):
    """Stored bytes no longer match their hash: refuse to serve them."""

    status_code = 502
    code = "corrupt_data"


class ServiceUnavailable(CofferError):
    status_code = 503
    code = "unavailable"


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}}


async def send_error(
    send: Send, status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> None:
    """The JSON error answer, sent from plain ASGI code (middleware, mounted apps) that
    runs outside Litestar's exception handling."""
    body = json.dumps(error_body(code, message)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *((k.lower().encode(), v.encode()) for k, v in (headers or {}).items()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _coffer_error(_: Request, exc: CofferError) -> Response:
    headers = exc.extra.pop("headers", None)
    return Response(
        error_body(exc.code, exc.message, **exc.extra),
        status_code=exc.status_code,
        media_type=MediaType.JSON,
        headers=headers,
    )


def _validation_error(_: Request, exc: ValidationException) -> Response:
    return Response(
        error_body("invalid_request", str(exc.detail), details=exc.extra or []),
        status_code=400,
        media_type=MediaType.JSON,
    )


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
}


def _http_error(_: Request, exc: HTTPException) -> Response:
    status = exc.status_code
    if status >= 500:
        log.exception("server error", exc_info=exc)
    code = _HTTP_CODES.get(status, "error" if status >= 500 else "bad_request")
    return Response(
        error_body(code, str(exc.detail)),
        status_code=status,
        media_type=MediaType.JSON,
        headers=exc.headers,
    )


def _unexpected(_: Request, exc: Exception) -> Response:
    log.exception("unhandled error", exc_info=exc)
    return Response(
        error_body("internal_error", "internal server error"),
        status_code=500,
        media_type=MediaType.JSON,
    )


def _database_down(_: Request, exc: ConnectionFailure) -> Response:
    # MongoDB unreachable (server selection timed out, connection dropped): the request
    # may be retried; say so instead of a 500.
    log.warning("database unavailable: %s", exc)
    return Response(
        error_body("database_unavailable", "the database cannot be reached; try again shortly"),
        status_code=503,
        media_type=MediaType.JSON,
        headers={"Retry-After": "5"},
    )


def _busy(_: Request, exc: PasswordHashingBusy) -> Response:
    return Response(
        error_body("busy", "too many sign-ins at once; try again in a moment"),
        status_code=503,
        media_type=MediaType.JSON,
        headers={"Retry-After": "1"},
    )


exception_handlers: dict[type[Exception] | int, Any] = {
    CofferError: _coffer_error,
    PasswordHashingBusy: _busy,
    ConnectionFailure: _database_down,
    ValidationException: _validation_error,
    HTTPException: _http_error,
    Exception: _unexpected,
}
