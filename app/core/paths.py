"""Validation and normalisation of user paths ("/Photos/2024/a.jpg").

Paths are user data: they never touch the server's filesystem. They are NFC-normalised
(macOS hands out NFD), `/`-separated, absolute, and compared case-insensitively
(`path_key`), preserving case for display, as Dropbox does.
"""

from __future__ import annotations

import unicodedata

from app.core.errors import BadRequest

MAX_NAME_BYTES = 255
MAX_PATH_CHARS = 4096
MAX_DEPTH = 64
_FORBIDDEN = set("\\") | {chr(c) for c in range(32)} | {"\x7f"}


def normalize_path(raw: object) -> str:
    """A canonical absolute path for `raw`, or a 400 explaining what is wrong with it."""
    if not isinstance(raw, str) or not raw:
        raise BadRequest("path is required", code="invalid_path")
    if len(raw) > MAX_PATH_CHARS:
        raise BadRequest(f"path is longer than {MAX_PATH_CHARS} characters", code="invalid_path")
    if not raw.startswith("/"):
        raise BadRequest("path must be absolute (start with /)", code="invalid_path")
    parts = [p for p in unicodedata.normalize("NFC", raw).split("/") if p]
    if not parts:
        return "/"
    if len(parts) > MAX_DEPTH:
        raise BadRequest(f"path is deeper than {MAX_DEPTH} levels", code="invalid_path")
    for part in parts:
        validate_name(part)
    return "/" + "/".join(parts)


def validate_name(name: str) -> str:
    if name in (".", ".."):
        raise BadRequest("path segments '.' and '..' are not allowed", code="invalid_path")
    if any(ch in _FORBIDDEN for ch in name):
        raise BadRequest(
            "names may not contain NUL, control characters or backslashes", code="invalid_path"
        )
    if len(name.encode()) > MAX_NAME_BYTES:
        raise BadRequest(f"a name is longer than {MAX_NAME_BYTES} bytes", code="invalid_path")
    return name


def path_key(path: str) -> str:
    return path.casefold()


def search_key(text: str) -> str:
    """A name (or a query) as search compares it: accents dropped, case folded.

    NFKD splits "é" into "e" plus a combining accent, which is dropped; casefold() then
    folds case more thoroughly than lower() ("Straße" matches "strasse").
    """
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()


def split(path: str) -> tuple[str, str]:
    """("/a/b", "c") for "/a/b/c"; ("/", "c") for "/c"."""
    parent, _, name = path.rpartition("/")
    return parent or "/", name


def ancestors(path: str) -> list[str]:
    """Every folder above `path`, outermost first: "/a/b/c" -> ["/a", "/a/b"]."""
    parts = path.strip("/").split("/")[:-1]
    return ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


def subtree_range(key: str) -> dict[str, str]:
    """A query on path_key matching everything strictly below folder `key`.

    "0" is the character right after "/", so ["/a/", "/a0") holds exactly "/a/...".
    """
    return {"$gt": key + "/", "$lt": key + "0"}


def join(parent: str, relative: str) -> str:
    """`relative` (one name or "a/b") under the folder `parent`, validated like any path."""
    return normalize_path(parent.rstrip("/") + "/" + relative.lstrip("/"))


def relative_path(owner_path: str, root_path: str, root_name: str) -> str:
    """How a share recipient sees `owner_path`: under "/<root name>" instead of `root_path`."""
    return "/" + root_name + owner_path[len(root_path) :]


def within(path: str, root: str) -> bool:
    """Whether `path` is `root` or below it (case-insensitively, like every lookup)."""
    key, root_key = path_key(path), path_key(root)
    return key == root_key or root_key == "/" or key.startswith(root_key + "/")
