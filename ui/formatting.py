"""How things look on a page: sizes, dates, file badges, what can be previewed."""

from __future__ import annotations

import mimetypes
from datetime import UTC, datetime

import msgspec

from app.core import paths

PREVIEW_TYPES = ("image/", "text/", "application/pdf", "video/", "audio/")


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"


def storage_text(usage: int, quota: int | None) -> str:
    """The storage meter's words: "1.2 MB of 10.0 GB used", or "1.2 MB used" without a quota."""
    used = human_size(usage)
    return f"{used} of {human_size(quota)} used" if quota else f"{used} used"


def previewable(name: str) -> str | None:
    """The media type a browser can show inline, or None."""
    kind = mimetypes.guess_type(name)[0] or ""
    return kind if kind.startswith(PREVIEW_TYPES) else None


def icon_for(name: str, kind: str) -> tuple[str, str]:
    """A small text badge (and its colour class): DIR, or the kind of file."""
    if kind == "folder":
        return "DIR", "folder"
    media = mimetypes.guess_type(name)[0] or ""
    if media.startswith("image/"):
        return "IMG", "image"
    if media == "application/pdf":
        return "PDF", "pdf"
    ext = name.rpartition(".")[2] if "." in name else ""
    return (ext[:4].upper() or "FILE"), "file"


def row(item: msgspec.Struct, date_field: str = "modified_at") -> dict[str, object]:
    """What a listing row shows: the API's fields plus badge, human size and date."""
    fields = msgspec.structs.asdict(item)
    when = datetime.fromisoformat(str(fields[date_field]).replace("Z", "+00:00"))
    icon, icon_class = icon_for(fields["name"], fields["kind"])
    return {
        **fields,
        "icon": icon,
        "icon_class": icon_class,
        "human_size": "—" if fields["kind"] == "folder" else human_size(fields["size"]),
        "human_date": when.astimezone(UTC).strftime("%Y-%m-%d %H:%M"),
        "previewable": fields["kind"] == "file" and previewable(fields["name"]) is not None,
    }


def sort_rows(items: list[dict[str, object]], sort: str, order: str) -> list[dict[str, object]]:
    """Folders first, then files, each by name, size or date."""
    key = {
        "name": lambda i: str(i["name"]).casefold(),
        "size": lambda i: i["size"],
        "modified": lambda i: i["modified_at"],
    }[sort]
    ordered = sorted(items, key=key, reverse=order == "desc")  # type: ignore[arg-type]
    return [i for i in ordered if i["kind"] == "folder"] + [
        i for i in ordered if i["kind"] != "folder"
    ]


VERBS = {
    "file.created": "added",
    "file.updated": "changed",
    "file.moved": "moved",
    "file.deleted": "deleted",
    "file.restored": "restored",
    "share.added": "shared",
    "share.removed": "stopped sharing",
}


def describe(item: msgspec.Struct, folder: str) -> dict[str, str]:
    """An activity entry in words: who, did what, to which item (relative to the folder
    the panel is for), when. A move within the folder says where from."""
    fields = msgspec.structs.asdict(item)
    verb = VERBS.get(fields["type"], fields["type"])
    path, old = fields.get("path") or "", fields.get("old_path") or ""
    if verb == "moved" and old and paths.split(old)[0] == paths.split(path)[0]:
        verb = "renamed"

    def shown(p: str) -> str:
        return (
            p[len(folder) :].lstrip("/")
            if folder != "/" and paths.within(p, folder)
            else p.lstrip("/")
        )

    when = datetime.fromisoformat(str(fields["at"]).replace("Z", "+00:00"))
    return {
        "who": fields.get("actor") or "someone",
        "verb": verb,
        "name": shown(path) or paths.split(path)[1],
        "from": shown(old) if verb in ("moved", "renamed") and old else "",
        "when": when.astimezone(UTC).strftime("%Y-%m-%d %H:%M"),
    }


def crumbs(path: str) -> list[tuple[str, str]]:
    """The breadcrumb trail of a folder in the caller's own tree."""
    out = [("All files", "/")]
    for ancestor in [*paths.ancestors(path), path] if path != "/" else []:
        out.append((paths.split(ancestor)[1], ancestor))
    return out
