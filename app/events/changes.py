"""Making change records (the typed outbox record is app/db/outbox.py)."""

from __future__ import annotations

from typing import Any

from bson import ObjectId

from app.core.clock import now
from app.core.errors import BadRequest
from app.db.outbox import AudienceEntry, Change
from app.protocol import EVENT_TYPES


def make_change(
    type_: str,
    node: Any,
    actor: str,
    *,
    old_path: str | None = None,
    audience: list[AudienceEntry] | None = None,
    **over: Any,
) -> Change:
    """The change record for `node` (a file node's state after the write)."""
    if type_ not in EVENT_TYPES:
        raise BadRequest(f"unknown event type {type_}", code="invalid_event")
    change: Change = {
        "id": str(ObjectId()),
        "type": type_,
        "file_id": str(node.id),
        "owner_id": node.owner_id,
        "path": node.path,
        "old_path": old_path,
        "kind": node.kind,
        "version": node.version,
        "size": node.size,
        "content_hash": node.content_hash,
        "actor": actor,
        "at": now(),
        "audience": audience or [],
    }
    change.update(over)  # type: ignore[typeddict-item]
    return change


def recipients_for(change: Change) -> list[str]:
    """Who hears of this change: the owner, and everyone the writer found with access."""
    return [change["owner_id"], *(e["id"] for e in change.get("audience", []))]
