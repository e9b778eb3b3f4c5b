"""Attempt counters in MongoDB, shared by every web instance: throttles for guessing secrets.

An attempt is counted *before* the secret is checked, with one atomic `$inc`, and refused
when it is over the limit. Counting only failures after the fact let a burst of concurrent
guesses all pass the "blocked?" check before any failure was recorded (40 guesses at once
against a limit of 10 were all verified). A correct secret gives its attempt back, so
people who type their password right are never locked out by their own logins.

Counters are kept per fixed epoch-second window (nx-27017 compares datetimes only to the
second), but the limit applies to a sliding window: the previous window's count, weighted by
how much of it still overlaps the last `window_seconds`, plus the current one. With fixed
windows alone a burst just before a boundary was forgotten a second later (the next window
opened at zero: twice the limit in two seconds, and a CI run saw a locked-out login succeed).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Attempt:
    """One counted attempt: `wait` seconds until it would be allowed (0: go ahead), and the
    counter it was counted in (a right secret gives it back there, even if a new window has
    opened meanwhile)."""

    wait: int
    counter_id: str


def sliding_wait(previous: int, current: int, elapsed: float, window: float, limit: int) -> int:
    """Seconds until `current` attempts in this window (this one included), with `previous`
    in the window before, fit under `limit` over the last `window` seconds; 0 if they do now.

    The previous window counts for the part of it still inside the sliding window,
    `previous * (1 - elapsed / window)`. Refused attempts stay counted, so a caller who
    keeps trying keeps waiting.
    """
    if previous * (1 - elapsed / window) + current <= limit:
        return 0
    if current <= limit:
        # Wait for the previous window to fade: previous * (1 - t / window) <= limit - current.
        fade_until = window * (1 - (limit - current) / previous)
        return max(1, math.ceil(fade_until - elapsed))
    # This window alone is over: it must end, then fade as the previous one.
    return math.ceil(window - elapsed) + max(1, math.ceil(window * (1 - limit / current)))


async def take_attempt(scope: str, key: str, limit: int, window_seconds: int) -> Attempt:
    """Count one attempt for `key`; refused (`wait` > 0, still counted) when over the limit."""
    t = time.time()
    bucket = int(t // window_seconds)
    elapsed = t - bucket * window_seconds
    coll = RateCounter.get_pymongo_collection()
    counter = await coll.find_one_and_update(
        {"_id": f"{scope}:{key}:{bucket}"},
        {"$inc": {"attempts": 1}},
        upsert=True,
        return_document=ReturnDocument.AFTER,
    )
    if counter.get("expires_at") is None:
        # A separate write: nx-27017's find_one_and_update upsert drops $setOnInsert.
        # Kept through the next window, which reads it as its previous one.
        await coll.update_one(
            {"_id": counter["_id"], "expires_at": None},
            {"$set": {"expires_at": now() + timedelta(seconds=2 * window_seconds - elapsed)}},
        )
    previous = 0
    if counter["attempts"] <= limit:  # over the limit on its own: no need to look back
        before = await coll.find_one({"_id": f"{scope}:{key}:{bucket - 1}"}, {"attempts": 1})
        previous = before["attempts"] if before else 0
    wait = sliding_wait(previous, counter["attempts"], elapsed, window_seconds, limit)
    return Attempt(wait=wait, counter_id=counter["_id"])


async def give_back(attempt: Attempt) -> None:
    """The attempt succeeded: it no longer counts against the key."""
    await RateCounter.get_pymongo_collection().update_one(
        {"_id": attempt.counter_id, "attempts": {"$gt": 0}}, {"$inc": {"attempts": -1}}
    )


async def forget_expired() -> int:
    """Drop counters of windows long past (the worker, hourly)."""
    result = await RateCounter.get_pymongo_collection().delete_many({"expires_at": {"$lt": now()}})
    return result.deleted_count
