"""HTTP helpers with no knowledge of Coffer: where a request comes from, what its body is."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def cross_site(headers: Mapping[str, str]) -> bool:
    """Whether a browser sent this request from another site.

    Browsers say so in `Sec-Fetch-Site`; older ones send `Origin` on cross-site POSTs.
    Non-browser clients (the sync client, curl) send neither and are not cross-site.
    `Origin: null` is what Chromium sends from our own no-referrer pages.
    """
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site is not None:
        return fetch_site not in ("same-origin", "none")
    origin = headers.get("origin")
    return bool(origin) and origin != "null" and urlsplit(origin).netloc != headers.get("host")


def has_body(headers: Mapping[str, str]) -> bool:
    length = headers.get("content-length")
    if length is not None:
        return length.strip() not in ("", "0")
    return "transfer-encoding" in headers


def media_type(headers: Mapping[str, str]) -> str:
    return headers.get("content-type", "").split(";", 1)[0].strip().lower()
