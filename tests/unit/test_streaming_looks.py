"""How a device following an upload looks at it (client/streaming.py `Prefetcher._poll`):
the first look learns the whole chunk list, page by page; later looks cover a window from
the first chunk neither written nor being fetched; a commit that cuts the first look short
leaves the list unknown (the manifest gives it) rather than half known."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

from client.api import CofferClient
from client.streaming import POLL_WINDOW, Prefetch, Prefetcher


class UploadPages:
    """GET /api/upload/{id} as the server answers it: a page of the chunk list, with a URL
    for the chunks stored so far; `commit_after` looks, the upload is committed."""

    def __init__(self, count: int, stored: set[int], commit_after: int | None = None) -> None:
        self.count, self.stored, self.commit_after = count, stored, commit_after
        self.asked: list[tuple[int, int]] = []

    async def request(self, method: str, path: str, params: dict[str, int]) -> dict[str, Any]:
        offset, limit = params["chunk_offset"], min(params["chunk_limit"], 1000)
        self.asked.append((offset, limit))
        committed = self.commit_after is not None and len(self.asked) > self.commit_after
        page: dict[str, Any] = {
            "state": "committed" if committed else "uploading",
            "chunk_count": self.count,
            "chunks": [],
        }
        if committed:
            return page
        end = min(offset + limit, self.count)
        page["chunks"] = [
            {
                "index": i,
                "sha256": f"{i:064x}",
                "size": 10,
                "url": f"u{i}" if i in self.stored else None,
            }
            for i in range(offset, end)
        ]
        page["next_chunk_offset"] = end if end < self.count else None
        return page


def look(
    pages: UploadPages, job: Prefetch, queued: set[int] | None = None
) -> tuple[list[tuple[int, str]], str]:
    prefetcher = Prefetcher(cast(CofferClient, pages), Path("/nonexistent"), lambda _: None)
    return asyncio.run(prefetcher._poll(job, queued or set()))


def new_job() -> Prefetch:
    return Prefetch("file", "upload", "hash", Path("/nonexistent/tmp"))


def test_the_first_look_learns_the_whole_list_page_by_page() -> None:
    pages = UploadPages(2500, stored={0, 1, 2, 1999})
    job = new_job()
    ready, state = look(pages, job)
    assert state == "uploading" and len(job.chunks) == 2500
    assert pages.asked == [(0, 1000), (1000, 1000), (2000, 1000)]
    assert ready == [(0, "u0"), (1, "u1"), (2, "u2"), (1999, "u1999")]


def test_later_looks_cover_a_window_from_the_first_chunk_not_yet_had_or_fetched() -> None:
    pages = UploadPages(2500, stored=set(range(0, 150)))
    job = new_job()
    look(pages, job)
    job.have.update(range(0, 40))  # written
    ready, _ = look(pages, job, queued=set(range(40, 100)))  # being fetched
    assert pages.asked[-1] == (100, POLL_WINDOW)  # one page, the window
    assert ready == [(i, f"u{i}") for i in range(100, 150)]  # of the window, those stored


def test_a_look_when_everything_is_had_or_fetched_still_learns_the_state() -> None:
    pages = UploadPages(10, stored=set(range(10)), commit_after=1)
    job = new_job()
    look(pages, job)
    ready, state = look(pages, job, queued=set(range(10)))
    assert pages.asked[-1] == (10, POLL_WINDOW) and ready == [] and state == "committed"


def test_a_commit_during_the_first_look_leaves_the_list_unknown_not_half_known() -> None:
    pages = UploadPages(2500, stored={0, 5}, commit_after=1)  # the second page: committed
    job = new_job()
    ready, state = look(pages, job)
    assert state == "committed" and job.chunks == []  # the manifest will give it
    assert ready == [(0, "u0"), (5, "u5")]
