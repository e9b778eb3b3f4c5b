"""Races between deliveries of one change leave readers nothing to wait for.

Found on the replica set (issue 17): overlapping outbox sweeps delivered the same changes
again and again; each loser took a seq it then left empty, and a reader waits 2 s before
filling such a hole, so one batch of 100 files cost a reading device minutes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from beanie import Document, init_beanie
from bson import ObjectId
from pymongo import AsyncMongoClient

from app.db.events import HOLE, Event, EventCounter
from app.db.outbox import EVENT_FIELDS
from app.events.feed import ChangeFeed, append_event, append_events
from app.events.hub import Hub
from app.events.registry import EventRegistry, OutboxSource
from tests.stack import Stack


def fields(path: str) -> dict:
    change = {
        "type": "file.created",
        "file_id": str(ObjectId()),
        "owner_id": "x",
        "path": path,
        "kind": "file",
        "version": 1,
        "size": 1,
        "actor": "test",
        "at": datetime.now(UTC),
    }
    return {k: change.get(k) for k in EVENT_FIELDS}


async def timed_read(recipient: str, cursor: int) -> tuple[list[Event], float]:
    feed = ChangeFeed(Hub(None), EventRegistry(), hole_grace_seconds=2.0)
    t = time.monotonic()
    events, _, _ = await feed.read(recipient, cursor, 100)
    return events, time.monotonic() - t


async def test_the_loser_of_a_delivery_race_fills_its_seq_at_once(db: None) -> None:
    recipient, delivery = str(ObjectId()), str(ObjectId())
    # The feed exists already: two first increments of a counter at once may skip a seq on
    # the replica-set pass's server (app/core/counters.py), which is not this race.
    await EventCounter.get_pymongo_collection().insert_one({"_id": recipient, "seq": 0})
    # The writer and the sweeper deliver the same change at the same moment.
    results = await asyncio.gather(
        *(append_event(recipient, delivery, fields("/a"), fresh=True) for _ in range(2))
    )
    assert results.count(None) == 1, "exactly one delivery wins"
    stored = await Event.find({"recipient_id": recipient}).sort("+seq").to_list()
    assert [e.seq for e in stored] == [1, 2]
    assert sorted(e.type for e in stored) == sorted(["file.created", HOLE])
    events, seconds = await timed_read(recipient, 0)
    assert [e.change_id for e in events] == [delivery]
    assert seconds < 1, "a reader waited out a hole the loser left"


async def test_a_batch_event_whose_seq_a_reader_filled_is_appended_again(db: None) -> None:
    recipient = str(ObjectId())
    await append_event(recipient, "first", fields("/first"))
    # A reader gave up on seq 2 (its writer looked dead) and filled it, just before a slow
    # batch that had taken seqs 2 and 3 inserted its events.
    await Event(
        recipient_id=recipient, seq=2, change_id="hole:2", type=HOLE, at=datetime.now(UTC)
    ).insert()
    counter = await EventCounter.get(recipient)
    assert counter is not None and counter.seq == 1
    added = await append_events(recipient, [("b1", fields("/b1")), ("b2", fields("/b2"))])
    assert added == 2
    events, seconds = await timed_read(recipient, 0)
    assert [e.path for e in events] == ["/first", "/b2", "/b1"]
    assert seconds < 1


class OutboxProbe(Document):
    """A collection of its own with an outbox, so the test's sweeps touch nothing else."""

    id: str
    outbox: dict | None = None
    outbox_pending: bool = False

    class Settings:
        name = "test_outbox_probe"


@pytest.fixture
async def probe(db: None, stack: Stack) -> AsyncIterator[str]:
    """An owner id whose outbox documents live in the probe collection (removed after)."""
    client = AsyncMongoClient(stack.env["MONGODB_URL"], tz_aware=True)
    await init_beanie(database=client["coffer"], document_models=[OutboxProbe])
    owner = str(ObjectId())
    try:
        yield owner
    finally:
        await OutboxProbe.find({"_id": {"$regex": f"^{owner}"}}).delete()
        await client.close()


async def left_marked(owner: str, names: list[str], **change: object) -> None:
    """Documents whose writer stored a change a minute ago and never delivered it."""
    at = datetime.now(UTC) - timedelta(minutes=1)
    for name in names:
        outbox = {**fields(f"/{name}"), "id": f"{owner}-{name}", "owner_id": owner, "at": at}
        outbox.update(change if name == "poison" else {})
        await OutboxProbe(id=f"{owner}-{name}", outbox=outbox, outbox_pending=True).insert()


async def still_marked(owner: str) -> list[str]:
    pending = OutboxProbe.find({"_id": {"$regex": f"^{owner}"}, "outbox_pending": True})
    return [p.id for p in await pending.to_list()]


@pytest.mark.parametrize("hook", [True, False], ids=["one by one", "in bulk"])
async def test_a_change_that_cannot_be_delivered_does_not_hold_back_the_others(
    probe: str, hook: bool
) -> None:
    """The sweeper delivers every change it can, whatever one of them does: a sweep that
    ended at its first failing document left every change after it undelivered for as
    long as that one kept failing. Sources with a hook go one by one; others in bulk,
    falling back to one by one when the bulk write fails."""
    owner = probe
    names = ["poison", "good-1", "good-2"]
    # The poison: its hook fails, or (in bulk) its change names a recipient list that
    # cannot be read.
    await left_marked(owner, names, **({} if hook else {"audience": "not a list"}))

    async def before_fanout(doc_id: str) -> None:
        if doc_id.endswith("poison"):
            raise RuntimeError("this one cannot be delivered now")

    registry = EventRegistry()
    registry.add_source(
        OutboxSource("probe", OutboxProbe, before_fanout=before_fanout if hook else None)
    )
    assert await ChangeFeed(Hub(None), registry).sweep(older_than=0) == 2
    delivered = await Event.find({"recipient_id": owner}).to_list()
    assert sorted(e.path for e in delivered) == ["/good-1", "/good-2"]
    assert await still_marked(owner) == [f"{owner}-poison"]


async def test_a_bulk_sweep_of_changes_already_delivered_takes_no_seq(probe: str) -> None:
    """A slow writer delivered its changes but had not cleared the markers yet: the
    sweeper finds them delivered (one read), clears the markers and appends nothing."""
    owner = probe
    names = [f"f{i}" for i in range(50)]
    await left_marked(owner, names)
    registry = EventRegistry()
    registry.add_source(OutboxSource("probe", OutboxProbe))
    # The writer delivered the first 40.
    for name in names[:40]:
        await append_event(owner, f"{owner}-{name}", fields(f"/{name}"))
    assert await ChangeFeed(Hub(None), registry).sweep(older_than=0, batch=16) == 50
    delivered = await Event.find({"recipient_id": owner}).sort("+seq").to_list()
    assert [e.seq for e in delivered] == list(range(1, 51)), "no seq wasted, no hole"
    assert sorted(e.change_id for e in delivered) == sorted(f"{owner}-{n}" for n in names)
    assert await still_marked(owner) == []
    # A second sweep finds nothing left.
    assert await ChangeFeed(Hub(None), registry).sweep(older_than=0) == 0
