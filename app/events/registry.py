"""Where domains plug into the event feed, so that the feed itself knows no domain.

At start-up (app/wiring.py) each domain registers the collections whose documents carry an
outbox (files, ACL grants), with a hook to run before their changes fan out, and the one
function that says which events a recipient gets for a change (sharing's view rules).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from beanie import Document

from app.db.events import Event
from app.db.outbox import EVENT_FIELDS, Change

# The events (delivery id, fields) one recipient gets for a change.
Deliveries = Callable[[Change, str], list[tuple[str, dict[str, Any]]]]
# Of a page of a recipient's events about to be shown, the ones they may still see.
Gate = Callable[[str, list[Event]], Awaitable[list[Event]]]


async def show_all(recipient: str, events: list[Event]) -> list[Event]:
    return events


def owner_only(change: Change, recipient: str) -> list[tuple[str, dict[str, Any]]]:
    """Deliveries when no domain registered any: the owner sees the change as made."""
    if recipient != change["owner_id"]:
        return []
    return [(change["id"], {k: change.get(k) for k in EVENT_FIELDS})]


@dataclass(frozen=True)
class OutboxSource:
    """A collection whose documents carry an outbox (`outbox`, `outbox_pending`)."""

    name: str
    model: type[Document]
    # The `_id` of a document from its string form (ObjectId or plain string ids).
    doc_id: Callable[[str], Any] = str
    # Run before the change fans out to anyone but the owner (e.g. derive a view).
    before_fanout: Callable[[str], Awaitable[None]] | None = None
    # Always fan out in the worker (its hook must run before recipients hear of it).
    via_worker: bool = False


@dataclass
class EventRegistry:
    sources: dict[str, OutboxSource] = field(default_factory=dict)
    deliveries: Deliveries = owner_only
    # Run on every page read from a feed (sharing hides events of revoked shares).
    gate: Gate = show_all

    def add_source(self, source: OutboxSource) -> None:
        self.sources[source.name] = source

    def source_of(self, doc: Document) -> OutboxSource:
        for source in self.sources.values():
            if isinstance(doc, source.model):
                return source
        raise LookupError(f"no outbox source registered for {type(doc).__name__}")
