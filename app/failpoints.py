"""Failpoints: named steps where a fault test can make the server pause, then kill it there.

`COFFER_FAILPOINTS="commit.after_head=10"` makes `await failpoint("commit.after_head")` sleep
10 seconds; kill -9 during that sleep reproduces a crash at exactly that step, which a timed
kill hits only by luck. Unset in production, where a failpoint is one dictionary lookup.
"""

from __future__ import annotations

import asyncio
from functools import lru_cache

from app.settings import get_settings


@lru_cache(maxsize=1)
def _pauses() -> dict[str, float]:
    pauses: dict[str, float] = {}
    for item in get_settings().failpoints.split(","):
        name, _, seconds = item.partition("=")
        if name.strip():
            pauses[name.strip()] = float(seconds or 0)
    return pauses


async def failpoint(name: str) -> None:
    pause = _pauses().get(name)
    if pause:
        await asyncio.sleep(pause)
