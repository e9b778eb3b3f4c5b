"""Fixed-window failure counters in MongoDB, shared by every web instance.

Used for password guessing (public link passwords, logins): `blocked` before checking a
secret, `failed` after a wrong one. Windows are whole epoch-second buckets, since
nx-27017 compares datetimes only to the second anyway.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from app.sharing.models import RateCounter


def _window(window_seconds: int) -> tuple[int, int]:
    now = int(time.time())
    bucket = now // window_seconds
    return bucket, (bucket + 1) * window_seconds - now


async def blocked(scope: str, key: str, limit: int, window_seconds: int) -> int:
    """Seconds until `key` may try again, or 0 if it may try now."""
    bucket, remaining = _window(window_seconds)
    counter = await RateCounter.get(f"{scope}:{key}:{bucket}")
    return remaining if counter is not None and counter.failures >= limit else 0


async def failed(scope: str, key: str, window_seconds: int) -> None:
    bucket, remaining = _window(window_seconds)
    await RateCounter.get_pymongo_collection().update_one(
        {"_id": f"{scope}:{key}:{bucket}"},
        {
            "$inc": {"failures": 1},
            "$setOnInsert": {
                "expires_at": datetime.now(UTC) + timedelta(seconds=remaining + window_seconds)
            },
        },
        upsert=True,
    )
