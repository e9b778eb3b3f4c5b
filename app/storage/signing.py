"""HMAC-signed, short-lived URLs for chunk PUT/GET against the local blob store.

A signature binds the operation, owner, chunk hash, size, expiry and (for reads) the
owner's URL epoch: a URL for one chunk can never be used to write or read another, nor
after it expires, nor (reads) after the owner took access away and the epoch moved on.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import urlencode


def _mac(key: str, op: str, owner: str, sha256: str, size: int, exp: int, epoch: int) -> str:
    msg = f"{op}\n{owner}\n{sha256}\n{size}\n{exp}\n{epoch}".encode()
    return hmac.new(key.encode(), msg, hashlib.sha256).hexdigest()


def signed_blob_url(
    base_url: str,
    key: str,
    op: str,
    owner: str,
    sha256: str,
    size: int,
    ttl: int,
    epoch: int = 0,
) -> str:
    exp = int(time.time()) + ttl
    params = {
        "size": size,
        "exp": exp,
        "e": epoch,
        "sig": _mac(key, op, owner, sha256, size, exp, epoch),
    }
    return f"{base_url.rstrip('/')}/api/blob/{owner}/{sha256}?{urlencode(params)}"


def verify_blob_signature(
    key: str, op: str, owner: str, sha256: str, size: int, exp: int, sig: str, epoch: int = 0
) -> bool:
    if exp < time.time():
        return False
    return hmac.compare_digest(_mac(key, op, owner, sha256, size, exp, epoch), sig)
