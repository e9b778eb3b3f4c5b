"""Counters kept one per document, incremented atomically and created on first use (feed
sequence numbers, throttles)."""

from __future__ import annotations

from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

# Attempts at one increment before giving up (each lost race means the counter now exists).
_TRIES = 5


async def incremented(
    coll: AsyncCollection[Any], key: str, field: str, by: int = 1
) -> dict[str, Any]:
    """The counter document `key` after `$inc` of `field` by `by` (created if absent).

    Two first increments at once both try to create it. MongoDB may refuse the loser with
    a duplicate key error (nothing applied); a MongoDB-protocol server (SecantusDB, on the
    replica-set pass) was seen answering it with no document at all. Either way the
    document exists by then, and the increment is made again: at worst a sequence number
    is skipped, which feed readers treat as a hole.
    """
    for _ in range(_TRIES):
        try:
            doc = await coll.find_one_and_update(
                {"_id": key},
                {"$inc": {field: by}},
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
        except DuplicateKeyError:
            doc = None
        if doc is not None:
            return doc
    raise RuntimeError(f"counter {key!r} could not be incremented")
