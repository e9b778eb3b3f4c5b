"""Recording changes and delivering them to every recipient's feed, exactly once, in order.

The outbox without transactions (DESIGN.md "Events, sync and push"):
1. The write that changes a file document also stores the change in that document
   (`outbox`, `outbox_pending=True`): one atomic single-document write.
2. Right after, the owner's own event is appended inline (lowest latency for the owner's
   other devices) and a fan-out job is queued for everyone else.
3. The job appends the event for every recipient and clears the marker. Appends are
   idempotent (unique recipient + change id), so any step may run twice.
4. Anything a crash, a dead worker or a dead Redis leaves marked is fanned out by the
   periodic sweeper, or by the next writer of the same document, which must flush the
   previous change before replacing it: so changes of one file reach feeds in order.

Reading: seqs are taken from a counter before the event is inserted, so seq N+1 can be
visible before N. A reader returns only the contiguous run after its cursor; a hole that
persists (its writer died) is filled with a HOLE placeholder, after which the late writer,
if alive, finds its seq taken and takes a new one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from bson import ObjectId
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from app.core.query import match
from app.events.hub import Hub
from app.events.models import HOLE, Event, EventCounter
from app.files.models import FileNode
from app.files.paths import relative_path
from app.sharing.derived import derive_shared_with_me
from app.sharing.models import Share

log = logging.getLogger("coffer.events")
HOLE_GRACE_SECONDS = 2.0
# A change with at most this many recipients besides the owner is fanned out by the
# writer itself; more go to the worker.
INLINE_FANOUT = 8
OUTBOX_SOURCES: dict[str, type[FileNode] | type[Share]] = {"files": FileNode, "acl": Share}


def outbox_id(source: str, doc_id: str) -> Any:
    """The `_id` of an outbox document: files have ObjectIds, ACL grants string ids."""
    return ObjectId(doc_id) if source == "files" else doc_id


def outbox_source(doc: FileNode | Share) -> str:
    return "files" if isinstance(doc, FileNode) else "acl"


EVENT_TYPES = (
    "file.created",
    "file.updated",
    "file.moved",
    "file.deleted",
    "file.restored",
    "share.added",
    "share.removed",
)


def now() -> datetime:
    return datetime.now(UTC)


def make_change(
    type_: str,
    node: FileNode,
    actor: str,
    *,
    old_path: str | None = None,
    audience: list[dict[str, Any]] | None = None,
    **over: Any,
) -> dict[str, Any]:
    """The change record stored in a document's outbox (a node's state after the write).

    `audience` lists the recipients besides the owner and how each sees the node (see
    app/sharing/access.py `audience_for`); it is fixed when the change is made.
    """
    assert type_ in EVENT_TYPES
    change = {
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
    change.update(over)
    return change


def epoch_ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


def event_out(event: Event) -> dict[str, Any]:
    out: dict[str, Any] = {
        "seq": event.seq,
        "type": event.type,
        "file_id": event.file_id,
        "path": event.path,
        "kind": event.kind,
        "version": event.version,
        "size": event.size,
        "content_hash": event.content_hash,
        "actor": event.actor,
        "at": event.at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
    }
    for optional in ("old_path", "owner", "role", "username"):
        value = getattr(event, optional)
        if value is not None:
            out[optional] = value
    return out


EVENT_FIELDS = (
    "type",
    "file_id",
    "owner_id",
    "path",
    "old_path",
    "kind",
    "version",
    "size",
    "content_hash",
    "actor",
    "at",
    "owner",
    "role",
    "username",
)


def recipients_for(change: dict[str, Any]) -> list[str]:
    """Who sees this change: the owner, and everyone the writer found with access."""
    return [change["owner_id"], *(e["id"] for e in change.get("audience", []))]


def deliveries(change: dict[str, Any], recipient: str) -> list[tuple[str, dict[str, Any]]]:
    """The events (delivery id, fields) that one recipient gets for a change.

    The owner sees the change as made. A share recipient sees paths relative to their
    shared root; a move into their view is a creation for them, a move out a deletion;
    trashing a folder above their root deletes their root for them.
    """
    base = {k: change.get(k) for k in EVENT_FIELDS}
    if recipient == change["owner_id"]:
        return [(change["id"], base)]
    entry = next((e for e in change.get("audience", []) if e["id"] == recipient), None)
    if entry is None:
        return []
    out = []
    new, old = entry.get("new"), entry.get("old")
    if new and (old or change.get("old_path") is None):
        fields = {**base, "path": relative_path(change["path"], *new)}
        if old:
            fields["old_path"] = relative_path(change["old_path"], *old)
        out.append((change["id"], fields))
    elif new:
        path = relative_path(change["path"], *new)
        out.append((change["id"], {**base, "type": "file.created", "path": path, "old_path": None}))
    elif old:
        path = relative_path(change["old_path"], *old)
        out.append((change["id"], {**base, "type": "file.deleted", "path": path, "old_path": None}))
    for root_id, root_name, kind in entry.get("roots", []):
        out.append(
            (
                f"{change['id']}:{root_id}",
                {
                    **base,
                    "file_id": root_id,
                    "path": "/" + root_name,
                    "old_path": None,
                    "kind": kind,
                    "version": None,
                    "size": None,
                    "content_hash": None,
                },
            )
        )
    return out


async def append_event(
    recipient: str, delivery_id: str, fields: dict[str, Any], *, fresh: bool = False
) -> int | None:
    """Append one event to a recipient's feed; its seq, or None if it was already there.

    `fresh`: the caller is the writer delivering its own change for the first time, so
    the duplicate check is skipped (one query less on the hot path); in the rare race
    with the sweeper the unique index still refuses the copy, at the cost of a seq hole.
    """
    if not fresh and await Event.find_one(match(recipient_id=recipient, change_id=delivery_id)):
        return None
    counters = EventCounter.get_pymongo_collection()
    while True:
        counter = await counters.find_one_and_update(
            {"_id": recipient},
            {"$inc": {"seq": 1}},
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )
        seq = counter["seq"]
        try:
            await Event(
                recipient_id=recipient,
                seq=seq,
                change_id=delivery_id,
                at_ms=epoch_ms(fields["at"]),
                **fields,
            ).insert()
            return seq
        except DuplicateKeyError:
            if await Event.find_one(match(recipient_id=recipient, change_id=delivery_id)):
                return None  # a concurrent fan-out delivered it
            # A reader filled our seq as a hole while we were slow: take the next one.
            continue


class ChangeFeed:
    """What writers call after a durable change, and what readers read."""

    def __init__(self, hub: Hub, enqueue: Any = None) -> None:
        self.hub = hub
        self._inflight: dict[
            tuple[str, int, int], asyncio.Future[tuple[list[Event], int, bool]]
        ] = {}
        # async (source, doc_id, change_id) -> bool; queues the fan-out job.
        self.enqueue = enqueue
        # Fan-outs this process runs after answering the writer, by "<source>:<doc id>":
        # the change id and the task, which answers whether it delivered everything.
        self._background: dict[str, tuple[str, asyncio.Task[bool]]] = {}

    async def changed(self, source: str, doc_id: str, change: dict[str, Any]) -> None:
        """Called right after the write that stored `change` in a document's outbox.

        `source` names the collection holding that outbox ("files" or "acl").
        """
        delivered = await self._deliver(change["owner_id"], change, fresh=True)
        if delivered:
            await self.hub.notify(change["owner_id"])
        # Share changes go through the worker, which derives "Shared with me" before the
        # recipient hears of it; so do file changes with a large audience. A small
        # audience is served inline: the lowest latency for the other users' devices.
        to_worker = source == "acl" or len(change.get("audience", [])) > INLINE_FANOUT
        if to_worker and self.enqueue is not None:
            try:
                if await self.enqueue(source, doc_id, change["id"]):
                    return
            except Exception as exc:  # Redis down: fall through and do it here
                log.warning("could not queue fan-out of %s: %s", change["id"], exc)
        # The rest happens after the writer's answer: the owner's devices already know,
        # and a crash before the marker is cleared leaves the change to the sweeper.
        key = f"{source}:{doc_id}"
        task = asyncio.create_task(self._flush_later(source, doc_id, change))
        self._background[key] = (change["id"], task)
        task.add_done_callback(
            lambda done: (
                self._background.pop(key, None)
                if self._background.get(key, (None, None))[1] is done
                else None
            )
        )

    async def _flush_later(self, source: str, doc_id: str, change: dict[str, Any]) -> bool:
        try:
            await self.flush(source, doc_id, change, first_time=True)
            return True
        except Exception as exc:  # the sweeper retries whatever is still marked
            log.warning("fan-out of %s failed, left to the sweeper: %s", change["id"], exc)
            return False

    async def _deliver(
        self, recipient: str, change: dict[str, Any], *, fresh: bool = False
    ) -> bool:
        added = False
        for delivery_id, fields in deliveries(change, recipient):
            if await append_event(recipient, delivery_id, fields, fresh=fresh) is not None:
                added = True
        return added

    async def flush(
        self, source: str, doc_id: str, change: dict[str, Any], *, first_time: bool = False
    ) -> None:
        """Deliver `change` to every recipient, then clear the marker (idempotent).

        `first_time`: called right after `changed` delivered the owner's event, so the
        owner is skipped.
        """
        if source == "acl":
            await derive_shared_with_me(doc_id)
        for recipient in recipients_for(change):
            if first_time and recipient == change["owner_id"]:
                continue
            if await self._deliver(recipient, change):
                await self.hub.notify(recipient)
        await (
            OUTBOX_SOURCES[source]
            .get_pymongo_collection()
            .update_one(
                {"_id": outbox_id(source, doc_id), "outbox.id": change["id"]},
                {"$set": {"outbox_pending": False}},
            )
        )

    async def flush_node(self, node: FileNode | Share) -> None:
        """Before replacing a document's outbox, make sure the change in it was delivered."""
        if not (node.outbox_pending and node.outbox):
            return
        source = outbox_source(node)
        change_id, running = self._background.get(f"{source}:{node.id}", (None, None))
        # This process is still delivering it: wait, and if that delivered this very
        # change, the caller's copy of the marker is merely stale.
        if running is not None:
            delivered = await asyncio.shield(running)
            if delivered and change_id == node.outbox["id"]:
                return
        await self.flush(source, str(node.id), node.outbox)

    async def sweep(self, older_than: float = 2.0) -> int:
        """Fan out every change left marked longer than `older_than` seconds."""
        threshold = now() - timedelta(seconds=older_than)
        count = 0
        for model in OUTBOX_SOURCES.values():
            async for doc in model.find(
                match({"outbox.at": {"$lt": threshold}}, outbox_pending=True)
            ):
                await self.flush_node(doc)
                count += 1
        return count

    # ------------------------------------------------------------- reading

    async def latest(self, recipient: str) -> int:
        counter = await EventCounter.get(recipient)
        return counter.seq if counter else 0

    async def cursor_at(self, recipient: str, since: datetime) -> int:
        first = (
            await Event.find(match(recipient_id=recipient, at_ms={"$gt": epoch_ms(since)}))
            .sort("+seq")
            .limit(1)
            .to_list()
        )
        return first[0].seq - 1 if first else await self.latest(recipient)

    async def read(self, recipient: str, cursor: int, limit: int) -> tuple[list[Event], int, bool]:
        """Events after `cursor`, contiguous, oldest first: (events, new cursor, has_more).

        Identical reads in flight at once share one query: a change wakes every device of
        a recipient on this instance, and they all sit at the same cursor.
        """
        key = (recipient, cursor, limit)
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._read(recipient, cursor, limit))
            self._inflight[key] = task
            task.add_done_callback(lambda _: self._inflight.pop(key, None))
        return await asyncio.shield(task)

    async def _read(self, recipient: str, cursor: int, limit: int) -> tuple[list[Event], int, bool]:
        waited_since: float | None = None
        while True:
            docs = (
                await Event.find(match(recipient_id=recipient, seq={"$gt": cursor}))
                .sort("+seq")
                .limit(limit + 1)
                .to_list()
            )
            run: list[Event] = []
            expected = cursor + 1
            for doc in docs[:limit]:
                if doc.seq != expected:
                    break
                run.append(doc)
                expected += 1
            gap = len(run) < min(len(docs), limit)
            if run or not gap:
                new_cursor = run[-1].seq if run else cursor
                visible = [e for e in run if e.type != HOLE]
                return visible, new_cursor, gap or len(docs) > limit
            # The very next seq is missing while later ones exist: its writer is between
            # taking the seq and inserting. Give it a moment, then fill the hole.
            if waited_since is None:
                waited_since = time.monotonic()
            if time.monotonic() - waited_since > HOLE_GRACE_SECONDS:
                await self._fill_hole(recipient, expected)
            else:
                await asyncio.sleep(0.01)

    async def _fill_hole(self, recipient: str, seq: int) -> None:
        try:
            await Event(
                recipient_id=recipient, seq=seq, change_id=f"hole:{seq}", type=HOLE, at=now()
            ).insert()
            log.warning(
                "filled event seq hole %d for %s (a writer died mid-append)", seq, recipient
            )
        except DuplicateKeyError:
            pass  # the writer made it after all
