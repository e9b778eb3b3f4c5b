"""Suite-wide pytest hooks (apply to tests/ and e2e/).

Byte-content comparisons are summarised (lengths, first differing offset, SHA-256) instead of
pytest's full diff: a failed download check would otherwise print megabytes of escaped bytes and
push the name of the failing test out of what CI keeps of the log.
"""

from __future__ import annotations

import hashlib

_SHORT = 64


def _describe(label: str, value: bytes) -> str:
    digest = hashlib.sha256(value).hexdigest()[:16]
    return f"{label}: {len(value)} bytes, sha256 {digest}…"


def pytest_assertrepr_compare(op: str, left: object, right: object) -> list[str] | None:
    binary = bytes | bytearray
    if op != "==" or not isinstance(left, binary) or not isinstance(right, binary):
        return None
    if len(left) <= _SHORT and len(right) <= _SHORT:
        return None
    left, right = bytes(left), bytes(right)
    first_diff = next(
        (i for i, (a, b) in enumerate(zip(left, right, strict=False)) if a != b),
        min(len(left), len(right)),
    )
    return [
        f"byte contents differ (first difference at offset {first_diff})",
        _describe("left", left),
        _describe("right", right),
    ]
