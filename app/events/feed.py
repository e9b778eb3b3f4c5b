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
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from pymongo import UpdateOne
from pymongo.errors import BulkWriteError, ConnectionFailure, DuplicateKeyError

from app import protocol
from app.core.clock import epoch_ms, iso, now
from app.core.counters import incremented
from app.core.failpoints import failpoint
from app.core.query import match
from app.db.events import HOLE, Event, EventCounter
from app.db.outbox import EVENT_FIELDS, Change
from app.events.changes import recipients_for
from app.events.hub import Hub
from app.events.registry import EventRegistry

log = logging.getLogger("coffer.events")
# Queues a fan-out job: (source, doc_id, change_id) -> whether it was queued.
Enqueue = Callable[[str, str, str], Awaitable[bool]]


def event_out(event: Event) -> protocol.Event:
    """An event as clients receive it."""
    return protocol.Event(
        seq=event.seq,
        type=event.type,
        file_id=event.file_id,
        path=event.path,
        kind=event.kind,
        version=event.version,
        size=event.size,
        content_hash=event.content_hash,
        actor=event.actor,
        at=iso(event.at),
        old_path=event.old_path,
        owner=event.owner,
        role=event.role,
        username=event.username,
        upload_id=event.upload_id,
    )


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
        seq = (await incremented(counters, recipient, "seq"))["seq"]
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
                # A concurrent fan-out delivered it. Fill the seq we took now rather than
                # leave readers to wait out a hole (overlapping sweeps made hundreds).
                await fill_seq(recipient, seq)
                return None
            # A reader filled our seq as a hole while we were slow: take the next one.
            continue


async def fill_seq(recipient: str, seq: int) -> bool:
    """Put a HOLE at `seq`, a seq its taker will never use; False if it is taken."""
    try:
        await Event(
            recipient_id=recipient, seq=seq, change_id=f"hole:{seq}", type=HOLE, at=now()
        ).insert()
    except DuplicateKeyError:
        return False
    return True


async def append_events(recipient: str, deliveries: list[tuple[str, dict[str, Any]]]) -> int:
    """Append many first-time deliveries to one recipient's feed in two writes: one `$inc`
    takes a run of seqs, one insert adds the events (for a batch of changes). A copy the
    unique (recipient, delivery) index refuses (a race with the sweeper) has its seq filled
    with a HOLE at once; an event whose seq a reader already filled as a hole (this writer
    was slow) is appended again with a new seq. Returns how many were added."""
    if not deliveries:
        return 0
    counters = EventCounter.get_pymongo_collection()
    counter = await incremented(counters, recipient, "seq", len(deliveries))
    first = counter["seq"] - len(deliveries) + 1
    # Plain documents (a batch appends thousands: no model to build per event).
    docs = [
        {
            "recipient_id": recipient,
            "seq": first + i,
            "change_id": delivery_id,
            "at_ms": epoch_ms(fields["at"]),
            **{k: fields.get(k) for k in EVENT_FIELDS},
            "via": fields.get("via"),
        }
        for i, (delivery_id, fields) in enumerate(deliveries)
    ]
    try:
        await Event.get_pymongo_collection().insert_many(docs, ordered=False)
    except BulkWriteError as exc:
        failed = [e["index"] for e in exc.details.get("writeErrors", [])]
        added = len(docs) - len(failed)
        for i in failed:
            delivery_id, fields = deliveries[i]
            if await Event.find_one(match(recipient_id=recipient, change_id=delivery_id)):
                await fill_seq(recipient, first + i)
            elif await append_event(recipient, delivery_id, fields) is not None:
                added += 1
        return added
    return len(docs)


class ChangeFeed:
    """What writers call after a durable change, and what readers read."""

    def __init__(
        self,
        hub: Hub,
        registry: EventRegistry,
        enqueue: Enqueue | None = None,
        *,
        inline_fanout: int = 8,
        hole_grace_seconds: float = 2.0,
    ) -> None:
        self.hub = hub
        self.registry = registry
        # A change with at most this many recipients besides the owner is fanned out by
        # the writer itself; more go to the worker.
        self.inline_fanout = inline_fanout
        self.hole_grace_seconds = hole_grace_seconds
        self._inflight: dict[
            tuple[str, int, int], asyncio.Future[tuple[list[Event], int, bool]]
        ] = {}
        # Queues the fan-out job: async (source, doc_id, change_id) -> queued?
        self.enqueue = enqueue
        # Fan-outs this process runs after answering the writer, by "<source>:<doc id>":
        # the change id and the task, which answers whether it delivered everything.
        self._background: dict[str, tuple[str, asyncio.Task[bool]]] = {}
        self._sweeping = False

    async def changed(self, source: str, doc_id: str, change: Change) -> None:
        """Called right after the write that stored `change` in a document's outbox.

        `source` names the registered collection holding that outbox.
        """
        delivered = await self._deliver(change["owner_id"], change, fresh=True)
        if delivered:
            await self.hub.notify(change["owner_id"])
        # Share changes go through the worker, which derives "Shared with me" before the
        # recipient hears of it; so do file changes with a large audience. A small
        # audience is served inline: the lowest latency for the other users' devices.
        to_worker = (
            self.registry.sources[source].via_worker
            or len(change.get("audience", [])) > self.inline_fanout
        )
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

    async def changed_many(self, source: str, changes: list[tuple[str, Change]]) -> None:
        """`changed` for a batch: (doc id, change) pairs just written, each in its own
        document's outbox. The owners' events go in now, a few writes per owner whatever
        the batch's size; everyone else's right after, in bulk too, then the markers."""
        if not changes:
            return
        by_owner: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        for _, change in changes:
            by_owner.setdefault(change["owner_id"], []).extend(
                self.registry.deliveries(change, change["owner_id"])
            )
        for owner, deliveries in by_owner.items():
            if await append_events(owner, deliveries):
                await self.hub.notify(owner)
        task = asyncio.create_task(self._flush_many_later(source, changes))
        for doc_id, change in changes:
            key = f"{source}:{doc_id}"
            self._background[key] = (change["id"], task)
        task.add_done_callback(lambda done: self._forget_background(source, changes, done))

    def _forget_background(
        self, source: str, changes: list[tuple[str, Change]], done: asyncio.Task[bool]
    ) -> None:
        for doc_id, _ in changes:
            key = f"{source}:{doc_id}"
            if self._background.get(key, (None, None))[1] is done:
                self._background.pop(key, None)

    async def _flush_many_later(self, source: str, changes: list[tuple[str, Change]]) -> bool:
        """Deliver a batch to everyone but the owners, in bulk, then clear the markers
        (only of documents whose outbox still holds this batch's change)."""
        try:
            per_recipient = self._deliveries_by_recipient(changes, owners=False)
            for recipient, deliveries in per_recipient.items():
                if await append_events(recipient, deliveries):
                    await self.hub.notify(recipient)
            await self._clear_markers(source, changes)
            return True
        except Exception as exc:  # the sweeper retries whatever is still marked
            log.warning(
                "fan-out of a batch of %d failed, left to the sweeper: %s", len(changes), exc
            )
            return False

    def _deliveries_by_recipient(
        self, changes: list[tuple[str, Change]], *, owners: bool
    ) -> dict[str, list[tuple[str, dict[str, Any]]]]:
        """The events each recipient gets for these changes, in order; the owners' too when
        `owners` (recipients_for lists the owner first)."""
        per_recipient: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        for _, change in changes:
            for recipient in recipients_for(change)[0 if owners else 1 :]:
                per_recipient.setdefault(recipient, []).extend(
                    self.registry.deliveries(change, recipient)
                )
        return per_recipient

    async def _clear_markers(self, source: str, changes: list[tuple[str, Change]]) -> None:
        """Clear the outbox markers of documents that still hold these changes."""
        registered = self.registry.sources[source]
        # One exact (document, change) pair per write, in bulk: `$in` of ids with `$in`
        # of change ids is a cross product that SecantusDB checks pair by pair (3.2 s
        # for 1,000 documents, 0.5 s this way; nx-27017 takes 0.09-0.1 s either way).
        clears = [
            UpdateOne(
                {"_id": registered.doc_id(doc_id), "outbox.id": change["id"]},
                {"$set": {"outbox_pending": False}},
            )
            for doc_id, change in changes
        ]
        for start in range(0, len(clears), 1000):
            await registered.model.get_pymongo_collection().bulk_write(
                clears[start : start + 1000], ordered=False
            )

    async def _redeliver_many(self, source: str, changes: list[tuple[str, Change]]) -> None:
        """The sweeper's bulk delivery: to every recipient (owners included: a crashed
        writer may not have reached them) whatever they do not have yet, found with one
        indexed read per recipient, appended in one write; then the markers. Changes
        whose writer is merely slow are mostly delivered already: then this costs a read
        per recipient and the clear, never a seq."""
        per_recipient = self._deliveries_by_recipient(changes, owners=True)
        for recipient, deliveries in per_recipient.items():
            ids = [delivery_id for delivery_id, _ in deliveries]
            have = {
                doc["change_id"]
                async for doc in Event.get_pymongo_collection().find(
                    {"recipient_id": recipient, "change_id": {"$in": ids}}, {"change_id": 1}
                )
            }
            missing = [d for d in deliveries if d[0] not in have]
            if missing and await append_events(recipient, missing):
                await self.hub.notify(recipient)
        await self._clear_markers(source, changes)

    async def _flush_later(self, source: str, doc_id: str, change: Change) -> bool:
        await failpoint("fanout.later")  # tests: a fan-out that lands late
        try:
            await self.flush(source, doc_id, change, first_time=True)
            return True
        except Exception as exc:  # the sweeper retries whatever is still marked
            log.warning("fan-out of %s failed, left to the sweeper: %s", change["id"], exc)
            return False

    async def announce(self, change: Change) -> None:
        """Deliver a hint (not a change of any document: no outbox behind it) to everyone
        it names, now. Best effort: a crash before it is out loses the hint, never state."""
        for recipient in recipients_for(change):
            if await append_events(recipient, self.registry.deliveries(change, recipient)):
                await self.hub.notify(recipient)

    async def _deliver(self, recipient: str, change: Change, *, fresh: bool = False) -> bool:
        added = False
        for delivery_id, fields in self.registry.deliveries(change, recipient):
            if await append_event(recipient, delivery_id, fields, fresh=fresh) is not None:
                added = True
        return added

    async def flush(
        self, source: str, doc_id: str, change: Change, *, first_time: bool = False
    ) -> None:
        """Deliver `change` to every recipient, then clear the marker (idempotent).

        `first_time`: called right after `changed` delivered the owner's event, so the
        owner is skipped.
        """
        registered = self.registry.sources[source]
        if registered.before_fanout is not None:
            await registered.before_fanout(doc_id)
        for recipient in recipients_for(change):
            if first_time and recipient == change["owner_id"]:
                continue
            if await self._deliver(recipient, change):
                await self.hub.notify(recipient)
        await registered.model.get_pymongo_collection().update_one(
            {"_id": registered.doc_id(doc_id), "outbox.id": change["id"]},
            {"$set": {"outbox_pending": False}},
        )

    async def flush_node(self, node: Any) -> None:
        """Before replacing a document's outbox, make sure the change in it was delivered."""
        if not (node.outbox_pending and node.outbox):
            return
        source = self.registry.source_of(node).name
        change_id, running = self._background.get(f"{source}:{node.id}", (None, None))
        # This process is still delivering it: wait, and if that delivered this very
        # change, the caller's copy of the marker is merely stale.
        if running is not None:
            delivered = await asyncio.shield(running)
            if delivered and change_id == node.outbox["id"]:
                return
        await self.flush(source, str(node.id), node.outbox)

    async def sweep(self, older_than: float = 2.0, batch: int = 1000) -> int:
        """Fan out every change left marked longer than `older_than` seconds.

        In bulk (`_redeliver_many`, `batch` documents at a time): when the database falls
        behind, a writer's own fan-out takes longer than `older_than`, and a sweep that
        redelivered each of those changes one by one (four writes each) made the database
        slower still; on a replica-set server filling 100,000 files, 33,000 changes were
        left marked and creates fell from 250 to 30 per second. Documents whose source has
        a hook (shares: "Shared with me" first) and changes this process is delivering
        right now go one by one, as before.

        One sweep at a time in a process: the worker starts one every 2 s, and sweeps that
        overlap deliver the same changes twice over (harmless, but wasted writes)."""
        if self._sweeping:
            return 0
        self._sweeping = True
        try:
            threshold = now() - timedelta(seconds=older_than)
            count = 0
            for source in self.registry.sources.values():
                pending: list[tuple[str, Change]] = []
                # Equality first, then the range: the (outbox_pending, outbox.at) index.
                async for doc in source.model.find(
                    match(outbox_pending=True, **{"outbox.at": {"$lt": threshold}})
                ):
                    if not doc.outbox:
                        continue
                    if source.before_fanout is None and (
                        f"{source.name}:{doc.id}" not in self._background
                    ):
                        pending.append((str(doc.id), doc.outbox))
                        if len(pending) >= batch:
                            count += await self._sweep_many(source.name, pending)
                            pending = []
                        continue
                    count += await self._sweep_one(doc.id, self.flush_node(doc))
                count += await self._sweep_many(source.name, pending)
            return count
        finally:
            self._sweeping = False

    async def _sweep_one(self, what: object, delivery: Awaitable[None]) -> int:
        """1 if `delivery` (of one change) went through, else 0. One change that cannot be
        delivered now (a write conflict, a server hiccup) must not hold back every change
        after it: the next sweep tries it again."""
        try:
            await delivery
            return 1
        except ConnectionFailure:
            raise  # the database is gone: so is the rest of this sweep
        except Exception as exc:
            log.warning("sweep: fan-out of %s failed: %s", what, exc)
            return 0

    async def _sweep_many(self, source: str, changes: list[tuple[str, Change]]) -> int:
        if not changes:
            return 0
        try:
            await self._redeliver_many(source, changes)
            return len(changes)
        except ConnectionFailure:
            raise
        except Exception as exc:  # one by one, so one bad change holds back no other
            log.warning("sweep: bulk fan-out of %d failed (%s); one by one", len(changes), exc)
            return sum(
                [
                    await self._sweep_one(doc_id, self.flush(source, doc_id, change))
                    for doc_id, change in changes
                ]
            )

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
                visible = await self.registry.gate(recipient, [e for e in run if e.type != HOLE])
                return visible, new_cursor, gap or len(docs) > limit
            # The very next seq is missing while later ones exist: its writer is between
            # taking the seq and inserting. Give it a moment, then fill the hole.
            if waited_since is None:
                waited_since = time.monotonic()
            if time.monotonic() - waited_since > self.hole_grace_seconds:
                await self._fill_hole(recipient, expected)
            else:
                await asyncio.sleep(0.01)

    async def _fill_hole(self, recipient: str, seq: int) -> None:
        if await fill_seq(recipient, seq):  # else the writer made it after all
            log.warning(
                "filled event seq hole %d for %s (a writer died mid-append)", seq, recipient
            )
