"""wsgidav is synchronous and runs in a2wsgi's thread pool; Coffer's services are async
and live on the web server's event loop. A call from a wsgidav thread runs the coroutine
on that loop and waits for it (the thread blocks, the loop does not)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopBridge:
    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self.loop is None:
            coro.close()
            raise RuntimeError("the WebDAV bridge is not bound to the server's event loop")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()


# The WSGI environ of the request a wsgidav thread is serving (each request runs in one
# thread), for the wsgidav hooks that are not given it.
CURRENT = threading.local()
