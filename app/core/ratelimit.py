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
from pymongo import ASCENDING, IndexModel

from app.core.clock import now
from app.core.counters import incremented


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
    """Seconds until an attempt may go ahead (0: this one, now): `current` attempts in this
    window (this one included), `previous` in the window before, `elapsed` seconds into
    this one, at most `limit` over the last `window` seconds.

    The previous window counts for the part of it still inside the sliding window,
    `previous * (1 - elapsed / window)`. A refused attempt stays counted, so the wait is
    the one the *retry* needs (its own attempt included): a client that waits what it
    is told gets in on its next try, and one that keeps trying keeps waiting.
    """
    if previous * (1 - elapsed / window) + current <= limit:
        return 0
    retry = current + 1
    if retry <= limit:
        # The retry fits once the previous window has faded enough, if it does so before
        # this window ends: previous * (1 - t / window) + retry <= limit.
        fade_until = window * (1 - (limit - retry) / previous)
        if fade_until < window:
            return max(1, math.ceil(fade_until - elapsed))
    # Not in this window: in the next, this one's attempts fade as the previous window's,
    # with the retry the only one counted: current * (1 - t / window) + 1 <= limit.
    fade_next = window * (1 - (limit - 1) / current) if current > limit - 1 else 0.0
    return max(1, math.ceil(window - elapsed + fade_next))


async def take_attempt(scope: str, key: str, limit: int, window_seconds: int) -> Attempt:
    """Count one attempt for `key`; refused (`wait` > 0, still counted) when over the limit."""
    t = time.time()
    bucket = int(t // window_seconds)
    elapsed = t - bucket * window_seconds
    coll = RateCounter.get_pymongo_collection()
    counter = await incremented(coll, f"{scope}:{key}:{bucket}", "attempts")
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
