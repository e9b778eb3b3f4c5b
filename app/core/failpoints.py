"""Failpoints: named steps where a fault test can make a process pause, then kill it there.

`COFFER_FAILPOINTS="commit.after_head=10"` makes `await failpoint("commit.after_head")` sleep
10 seconds; kill -9 during that sleep reproduces a crash at exactly that step, which a timed
kill hits only by luck. The web app and the worker call `configure` with that setting at
start-up; unset (production), a failpoint is one dictionary lookup.
"""

from __future__ import annotations

import asyncio

_pauses: dict[str, float] = {}


def configure(spec: str) -> None:
    """Set the pauses from "name=seconds,name=seconds" (empty: none)."""
    _pauses.clear()
    for item in spec.split(","):
        name, _, seconds = item.partition("=")
        if name.strip():
            _pauses[name.strip()] = float(seconds or 0)


async def failpoint(name: str) -> None:
    pause = _pauses.get(name)
    if pause:
        await asyncio.sleep(pause)
