"""HMAC-signed, short-lived URLs for chunk PUT/GET against the local blob store.

A signature binds the operation, owner, chunk hash, size, expiry, (for reads) the owner's
URL epoch and (for delta writes) the base chunk: a URL for one chunk can never be used to
write or read another, nor after it expires, nor (reads) after the owner took access away
and the epoch moved on, nor (delta writes) to build from a chunk the register did not offer.
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
    delta_base: str | None = None,
) -> str:
    exp = int(time.time()) + ttl
    params: dict[str, str | int] = {"size": size, "exp": exp, "e": epoch}
    if delta_base is not None:
        params["base"] = delta_base
    params["sig"] = _mac(key, _op(op, delta_base), owner, sha256, size, exp, epoch)
    return f"{base_url.rstrip('/')}/api/blob/{owner}/{sha256}?{urlencode(params)}"


def verify_blob_signature(
    key: str,
    op: str,
    owner: str,
    sha256: str,
    size: int,
    exp: int,
    sig: str,
    epoch: int = 0,
    delta_base: str | None = None,
) -> bool:
    if exp < time.time():
        return False
    mac = _mac(key, _op(op, delta_base), owner, sha256, size, exp, epoch)
    return hmac.compare_digest(mac, sig)


def _op(op: str, delta_base: str | None) -> str:
    """A delta write is its own operation, bound to its base."""
    return op if delta_base is None else f"{op}-delta:{delta_base}"
