"""`coffer sync DIR` without `--once`: keep syncing until stopped.

A local change (client/watcher.py) or a remote event (client/feed.py) starts a pass;
passes never overlap and changes that arrive during one start another. Changed files the
watcher named get a targeted pass (no tree walk, no remote listing); folders, renames the
targeted pass cannot settle, remote changes that need it, and a rescan every
`RESCAN_SECONDS` (a safety net for events the watcher may drop) get a full one.
"""

from __future__ import annotations

import asyncio
import signal

import httpx

from app.protocol import Event
from client.errors import ClientError
from client.feed import FeedFollower
from client.sync import Syncer
from client.watcher import Watcher

# Local changes: (changed files, renames in order, new folders, deleted folders); None: a
# full pass.
Changes = tuple[set[str], list[tuple[str, str]], set[str], set[str]] | None


class LiveSync:
    """Schedules the passes of one Syncer: watcher and feed wake it, it runs them."""

    RESCAN_SECONDS = 600
    RETRY_SKIPPED_SECONDS = 30
    SETTLE_SECONDS = 0.02  # let a burst of events settle before a pass
    SETTLE_DELETES_SECONDS = 0.1

    def __init__(self, syncer: Syncer) -> None:
        self.syncer = syncer
        self.wake = asyncio.Event()
        self.stop = asyncio.Event()
        self.passed = asyncio.Event()  # set after each pass
        self.dirty: set[str] = set()  # files the watcher saw change since the last pass
        self.moves: list[tuple[str, str]] = []  # files it saw renamed, in order
        self.new_folders: set[str] = set()  # folders it saw appear
        self.gone_folders: set[str] = set()  # folders it saw deleted
        self.full_needed = False
        self.feed = FeedFollower(syncer.api, syncer.state, self.handle, syncer.log)

    def local_change(self, rel: str | None) -> None:
        """A file changed (rel), or something only a full pass handles (None)."""
        if rel is None:
            self.full_needed = True
        else:
            self.dirty.add(rel)
        self.wake.set()

    def local_move(self, src: str, dest: str) -> None:
        self.moves.append((src, dest))
        self.wake.set()

    def local_folder(self, rel: str) -> None:
        """A new folder: a targeted pass over it (and all that is in it)."""
        self.new_folders.add(rel)
        self.wake.set()

    def local_folder_gone(self, rel: str) -> None:
        """A deleted folder: a targeted pass over what the server has there."""
        self.gone_folders.add(rel)
        self.wake.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        watcher = Watcher(
            self.syncer.root,
            self.local_change,
            self.local_move,
            self.local_folder,
            self.local_folder_gone,
        )
        watcher.start()
        try:
            # The first full pass starts once the watcher is up, so no change slips
            # between them. Its errors end the command (exit codes 3 and 4).
            await self.syncer.reconcile()
        except BaseException:
            watcher.stop()
            raise
        self.dirty.clear()  # the pass saw these
        self.moves.clear()
        self.new_folders.clear()
        self.gone_folders.clear()
        self.full_needed = False
        self.wake.clear()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop.set)
        feed = asyncio.create_task(self.feed.follow())
        try:
            while not self.stop.is_set():
                waiter = asyncio.create_task(self.wake.wait())
                stopper = asyncio.create_task(self.stop.wait())
                done, _ = await asyncio.wait(
                    {waiter, stopper},
                    timeout=self.RESCAN_SECONDS,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                waiter.cancel()
                stopper.cancel()
                if self.stop.is_set():
                    break
                if not done:
                    self.full_needed = True  # the periodic rescan
                await asyncio.sleep(self.SETTLE_SECONDS)
                if self.gone_folders:
                    # A tree being deleted: let it finish, to trash it whole at once.
                    await asyncio.sleep(self.SETTLE_DELETES_SECONDS)
                self.wake.clear()
                self.passed.clear()
                dirty, self.dirty = self.dirty, set()
                moves, self.moves = self.moves, []
                folders, self.new_folders = self.new_folders, set()
                gone, self.gone_folders = self.gone_folders, set()
                full = self.full_needed
                self.full_needed = False
                if not (full or dirty or moves or folders or gone):
                    self.passed.set()
                    continue  # woken for what a pass already covered
                skipped = len(self.syncer.report.skipped)
                await self.pass_with_retry(None if full else (dirty, moves, folders, gone))
                self.passed.set()
                if len(self.syncer.report.skipped) > skipped:
                    # Files skipped for a full disk or permissions: try again in a while.
                    loop.call_later(self.RETRY_SKIPPED_SECONDS, self.local_change, None)
        finally:
            feed.cancel()
            await self.syncer.prefetch.close()
            await watcher.close()

    async def pass_with_retry(self, changes: Changes) -> None:
        """A targeted pass over the changed and renamed files (None: a full pass), falling
        back to a full pass when it cannot decide alone or fails; retried with backoff
        while unreachable."""
        delay = 0.5
        while not self.stop.is_set():
            try:
                if changes is not None and await self._targeted(*changes):
                    return
                changes = None
                await self.syncer.reconcile()
                return
            except (httpx.HTTPError, ClientError) as exc:
                if changes is not None:
                    changes = None  # whatever went wrong, the full pass re-examines it all
                    continue
                if isinstance(exc, ClientError) and not exc.retryable:
                    self.syncer.log(f"sync error: {exc}")
                    return
                self.syncer.log(f"server unreachable ({exc}); retrying in {delay:.0f}s")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30)

    async def _targeted(
        self, dirty: set[str], moves: list[tuple[str, str]], folders: set[str], gone: set[str]
    ) -> bool:
        """New and deleted folders first (each a pass over its subtree: a deleted synced
        folder goes to the server's trash whole), then the files the watcher named outside
        them. False: only a full pass can settle it."""
        if gone and not await self.syncer.sync_folders(gone, deleted=True):
            return False
        if folders and not await self.syncer.sync_folders(folders):
            return False
        covered = folders | gone
        outside = {rel for rel in dirty if not any(rel.startswith(f + "/") for f in covered)}
        return await self.syncer.sync_paths(outside, moves)

    async def handle(self, events: list[Event], cursor: str) -> None:
        """Events from the feed: applied directly when simple, otherwise by a full pass;
        the stored cursor moves on only after either."""
        relevant = [
            e
            for e in events
            if self.syncer.rel_of(e.path or "") is not None
            or self.syncer.rel_of(e.old_path or "") is not None
        ]
        if relevant and not await self.syncer.apply_events(relevant):
            # Move the cursor on only after a pass that began after these events.
            self.passed.clear()
            self.local_change(None)
            await self.passed.wait()
        self.syncer.state.set_meta("cursor", cursor)
