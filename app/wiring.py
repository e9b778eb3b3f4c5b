"""Putting the parts together, once, for the web app and the worker alike.

The event feed knows no domain: here the file tree and the ACL register the collections
whose documents carry an outbox, sharing registers who sees which events, and the file
and sharing services are built over the same settings, store and feed.
"""

from __future__ import annotations

from dataclasses import dataclass

from bson import ObjectId

from app.acl.audience import deliveries, through_live_shares
from app.acl.derived import derive_shared_with_me
from app.core.crypto import PasswordHashing
from app.db.files import FileNode
from app.db.sharing import Share
from app.events.feed import ChangeFeed, Enqueue
from app.events.hub import Hub
from app.events.registry import EventRegistry, OutboxSource
from app.files.batch import BatchService
from app.files.context import FilesContext
from app.files.history import HistoryService
from app.files.reads import ReadService
from app.files.search import SearchService
from app.files.tree import FILES, TreeService
from app.files.uploads import UploadService
from app.settings import Settings
from app.sharing.links import LinkService
from app.sharing.service import ACL, SharingService
from app.storage.base import BlobStore


def event_registry() -> EventRegistry:
    registry = EventRegistry(deliveries=deliveries, gate=through_live_shares)
    registry.add_source(OutboxSource(FILES, FileNode, doc_id=ObjectId))
    # Share changes go through the worker, which derives "Shared with me" before the
    # recipient hears of it (a client reacting to share.added then finds the item).
    registry.add_source(
        OutboxSource(ACL, Share, before_fanout=derive_shared_with_me, via_worker=True)
    )
    return registry


def hub_for(settings: Settings) -> Hub:
    return Hub(
        settings.redis,
        poll_with_redis=settings.poll_with_redis_seconds,
        poll_without_redis=settings.poll_without_redis_seconds,
    )


def feed_for(settings: Settings, hub: Hub, enqueue: Enqueue | None = None) -> ChangeFeed:
    return ChangeFeed(
        hub,
        event_registry(),
        enqueue,
        inline_fanout=settings.inline_fanout,
        hole_grace_seconds=settings.hole_grace_seconds,
    )


@dataclass(frozen=True)
class Services:
    tree: TreeService
    uploads: UploadService
    reads: ReadService
    history: HistoryService
    batch: BatchService
    sharing: SharingService
    links: LinkService
    search: SearchService


def services_for(
    settings: Settings, store: BlobStore, feed: ChangeFeed, passwords: PasswordHashing
) -> Services:
    ctx = FilesContext(settings, store, feed)
    tree = TreeService(ctx)
    uploads = UploadService(ctx, tree)
    return Services(
        tree=tree,
        uploads=uploads,
        reads=ReadService(ctx),
        history=HistoryService(ctx, tree, uploads),
        batch=BatchService(ctx, tree, uploads),
        sharing=SharingService(feed),
        links=LinkService(settings, passwords),
        search=SearchService(),
    )
