"""HTTP helpers with no knowledge of Coffer: where a request comes from, what its body is."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from app.core.errors import RangeNotSatisfiable

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Route option for handlers anyone may call: the API's guard lets them through.
PUBLIC = {"public": True}


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


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # inclusive

    @property
    def length(self) -> int:
        return self.end - self.start + 1


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The single byte range a `Range` header asks for; None for the whole file.

    Multi-range and malformed headers are ignored (answered with the whole file), which
    RFC 9110 allows; an unsatisfiable range raises 416.
    """
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first, _, last = header[6:].strip().partition("-")
    try:
        if first == "":
            n = int(last)
            if n <= 0:
                raise ValueError
            start, end = max(0, size - n), size - 1
        else:
            start = int(first)
            end = int(last) if last else max(start, size - 1)
            if start < 0 or end < start:
                raise ValueError
    except ValueError:
        return None
    if start >= size:
        raise RangeNotSatisfiable(
            f"range starts beyond the file's {size} bytes",
            headers={"Content-Range": f"bytes */{size}"},
        )
    return ByteRange(start, min(end, size - 1))


def content_disposition(name: str, disposition: str = "attachment") -> str:
    """RFC 6266: an ASCII fallback name plus the exact UTF-8 name."""
    fallback = name.encode("ascii", "replace").decode().replace('"', "_").replace("?", "_")
    return f"{disposition}; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"
