"""Which files are images that get a thumbnail, decided by name alone.

Listings and the thumbnail API must agree without opening the file, so the rule is the
file's extension (what the browser and the media type go by). The decoder still checks the
bytes: a `.jpg` that is not a JPEG gets no thumbnail (app/files/imaging.py restricts Pillow
to the formats named here).
"""

from __future__ import annotations

# extension -> the Pillow format that must decode it
IMAGE_FORMATS: dict[str, str] = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".jpe": "JPEG",
    ".jfif": "JPEG",
    ".png": "PNG",
    ".gif": "GIF",
    ".webp": "WEBP",
    ".avif": "AVIF",
    ".heic": "HEIF",
    ".heif": "HEIF",
}
DECODABLE = sorted(set(IMAGE_FORMATS.values()))


def image_format(name: str) -> str | None:
    """The Pillow format a file of this name should be, or None for a non-image."""
    dot = name.rfind(".")
    return IMAGE_FORMATS.get(name[dot:].lower()) if dot > 0 else None


def thumbnail_possible(kind: str, name: str, size: int) -> bool:
    """Whether the thumbnail API may ever have a picture of this node (a listing hint: the
    decoder may still find the bytes broken, or the file over the size limit)."""
    return kind == "file" and size > 0 and image_format(name) is not None
