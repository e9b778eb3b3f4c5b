"""Attempt counters in MongoDB, shared by every web instance: throttles for guessing secrets.

An attempt is counted *before* the secret is checked, with one atomic `$inc`, and refused
when it is over the limit. Counting only failures after the fact let a burst of concurrent
guesses all pass the "blocked?" check before any failure was recorded (40 guesses at once
against a limit of 10 were all verified). A correct secret gives its attempt back, so
people who type their password right are never locked out by their own logins.

Windows are fixed epoch-second buckets (nx-27017 compares datetimes only to the second).
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta

from beanie import Document
from pymongo import ASCENDING, IndexModel, ReturnDocument

from app.core.clock import now


class RateCounter(Document):
    """Attempts per key in one fixed window; the `_id` names scope, key and window."""

    id: str  # "<scope>:<key>:<window number>"
    attempts: int = 0
    expires_at: datetime | None = None  # set once, right after the counter is created

    class Settings:
        name = "rate_limits"
        indexes = [IndexModel([("expires_at", ASCENDING)])]


def _bucket(window_seconds: int) -> tuple[int, int]:
    t = int(time.time())
    bucket = t // window_seconds
    return bucket, (bucket + 1) * window_seconds - t


async def take_attempt(scope: str, key: str, limit: int, window_seconds: int) -> int:
    """Count one attempt for `key`. Returns 0 when it may go ahead, else the seconds until
    the window ends (the attempt is refused, and stays counted)."""
    bucket, remaining = _bucket(window_seconds)
    coll = RateCounter.get_pymongo_collection()
    counter = await coll.find_one_and_update(
        {"_id": f"{scope}:{key}:{bucket}"},
        {"$inc": {"attempts": 1}},
        upsert=True,
        return_document=ReturnDocument.AFTER,
    )
    if counter.get("expires_at") is None:
        # A separate write: nx-27017's find_one_and_update upsert drops $setOnInsert.
        await coll.update_one(
            {"_id": counter["_id"], "expires_at": None},
            {"$set": {"expires_at": now() + timedelta(seconds=remaining + window_seconds)}},
        )
    return remaining if counter["attempts"] > limit else 0


async def give_back(scope: str, key: str, window_seconds: int) -> None:
    """The attempt succeeded: it no longer counts against the key."""
    bucket, _ = _bucket(window_seconds)
    await RateCounter.get_pymongo_collection().update_one(
        {"_id": f"{scope}:{key}:{bucket}", "attempts": {"$gt": 0}}, {"$inc": {"attempts": -1}}
    )


async def forget_expired() -> int:
    """Drop counters of windows long past (the worker, hourly)."""
    result = await RateCounter.get_pymongo_collection().delete_many({"expires_at": {"$lt": now()}})
    return result.deleted_count
