"""Watching the synced folder for local changes (watchdog), reported to the event loop.

The observer runs in its own thread; each event is handed to the loop as a changed file
(its relative path), a renamed file (both paths), a new or a deleted folder (its relative
path: a targeted pass over that folder), or "something only a full pass handles" (None):
folders moved, and anything moved out of sight. The client's own `.coffer/` (its state,
and downloads renamed into place from `.coffer/tmp/`) is not reported.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

# Events that change nothing on disk.
_IGNORED_TYPES = ("opened", "closed_no_write")


class _Handler(FileSystemEventHandler):
    def __init__(
        self,
        root: Path,
        loop: asyncio.AbstractEventLoop,
        changed: Callable[[str | None], None],
        moved: Callable[[str, str], None],
        folder: Callable[[str], None],
        folder_gone: Callable[[str], None],
    ) -> None:
        self.root = root
        self.state_dir = str(root / ".coffer")
        self.loop = loop
        self.changed = changed
        self.moved = moved
        self.folder = folder
        self.folder_gone = folder_gone

    def rel_of(self, path: str) -> str:
        return os.path.relpath(path, self.root).replace(os.sep, "/")

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in _IGNORED_TYPES:
            return
        src = str(event.src_path)
        if src.startswith(self.state_dir):
            return  # our own state, and downloads renamed into place from .coffer/tmp
        if event.is_directory and event.event_type == "modified":
            return  # an entry inside changed: that entry has its own event
        call = self.loop.call_soon_threadsafe
        if event.is_directory and event.event_type == "created":
            call(self.folder, self.rel_of(src))
        elif event.is_directory and event.event_type == "deleted":
            call(self.folder_gone, self.rel_of(src))
        elif event.is_directory or (
            event.event_type == "moved" and str(event.dest_path).startswith(self.state_dir)
        ):
            call(self.changed, None)  # folders: the full pass
        elif event.event_type == "moved":
            call(self.moved, self.rel_of(src), self.rel_of(str(event.dest_path)))
        else:
            call(self.changed, self.rel_of(src))


class Watcher:
    """Reports changes under `root` to `changed(rel | None)`, `moved(src, dest)`,
    `folder(rel)` (a new folder) and `folder_gone(rel)` (a deleted one), all called on the
    event loop that started it."""

    def __init__(
        self,
        root: Path,
        changed: Callable[[str | None], None],
        moved: Callable[[str, str], None],
        folder: Callable[[str], None],
        folder_gone: Callable[[str], None],
    ) -> None:
        self.root = root
        self.changed = changed
        self.moved = moved
        self.folder = folder
        self.folder_gone = folder_gone
        self.observer = Observer()

    def start(self) -> None:
        handler = _Handler(
            self.root,
            asyncio.get_running_loop(),
            self.changed,
            self.moved,
            self.folder,
            self.folder_gone,
        )
        self.observer.schedule(handler, str(self.root), recursive=True)
        self.observer.start()

    def stop(self) -> None:
        """Stop watching (the thread ends soon after; `close` waits for it)."""
        self.observer.stop()

    async def close(self) -> None:
        self.observer.stop()
        await asyncio.to_thread(self.observer.join)
