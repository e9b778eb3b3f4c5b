"""The client's own exception types, so callers can tell what went wrong without parsing text.

Everything the client raises on purpose is a `ClientError`: either the server's answer to a
request (`ApiError`) or a condition the client found itself (a file that changed while it
was being sent, a download that does not match its manifest, a path that cannot be
addressed yet). `retryable` tells the live sync whether trying again later (with backoff)
can help, as it can for a server that is down or a damaged transfer, but not for a refusal.
The CLI maps these to its exit codes (client/cli.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class ClientError(Exception):
    """Base of every error the client raises on purpose."""

    retryable: bool = False


class ApiError(ClientError):
    """The server answered a request with an error (HTTP status >= 400)."""

    def __init__(self, status: int, code: str, message: str, body: dict[str, Any]) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.body = body
        # Server trouble or load shedding may pass; a refusal (4xx) will not.
        self.retryable = status >= 500 or status == 429

    @classmethod
    def from_answer(cls, status: int, raw: bytes) -> ApiError:
        """The error an answer with this status and body stands for: the server's
        `{"error": {"code", "message"}}`, or the body's text when it is not that."""
        try:
            body = json.loads(raw)
            err = body.get("error", {}) if isinstance(body, dict) else {}
        except ValueError:
            body, err = {}, {}
        text = raw.decode("utf-8", "replace")
        return cls(status, err.get("code", "error"), err.get("message", text), body)


class LocalFileChanged(ClientError):
    """A local file's bytes changed while it was being uploaded: what was read no longer
    matches the chunk hashes registered for it. The next pass sends the new bytes."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"{path} changed while uploading")
        self.path = path


class DownloadCorrupt(ClientError):
    """Downloaded bytes do not match the file's manifest (a chunk's SHA-256, or the
    content hash over the chunk list). Nothing is left under the file's real name."""

    retryable = True


class DownloadIncomplete(DownloadCorrupt):
    """The server's answer ended before every chunk of the manifest arrived."""


class RemoteChanged(ClientError):
    """The server's file changed while it was being downloaded (a newer version became
    the head): the download is abandoned and the next pass fetches the new one."""


class ParentNotSynced(ClientError):
    """A path in a folder shared with us cannot be addressed yet: such a tree is named by
    folder ids, and its parent folder has no known id (it is not synced yet)."""


class UploadIncomplete(ClientError):
    """The server kept asking for chunks again after they were sent (garbage collection
    raced the upload every time): the upload is abandoned for now."""
