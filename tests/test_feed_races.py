"""Races between deliveries of one change leave readers nothing to wait for.

Found on the replica set (issue 17): overlapping outbox sweeps delivered the same changes
again and again; each loser took a seq it then left empty, and a reader waits 2 s before
filling such a hole, so one batch of 100 files cost a reading device minutes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from bson import ObjectId

from app.db import connect
from app.db.events import HOLE, Event, EventCounter
from app.db.outbox import EVENT_FIELDS
from app.events.feed import ChangeFeed, append_event, append_events
from app.events.hub import Hub
from app.events.registry import EventRegistry
from app.settings import Settings
from tests.stack import Stack


@pytest.fixture(scope="module")
async def db(stack: Stack) -> AsyncIterator[None]:
    client = await connect(Settings(mongodb_url=stack.env["MONGODB_URL"]))
    yield
    await client.close()


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
