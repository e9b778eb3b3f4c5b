"""The zip download API (app/files/archive.py streams the archives).

- `GET /api/file/{id}/zip`: a folder with everything below it, or a single file, as
  `<name>.zip`; for the owner and anyone it is shared with (viewer or editor), else 404.
- `POST /api/zip` `{"ids": [...], "name": "optional.zip"}` -> 201
  `{"url": "/api/zip/<ticket>", "expires_at", "name", "count"}`: a selection (up to 10,000
  ids, from any folders and shares; each must be readable, else 404 naming none) kept for
  ten minutes, because a browser downloads a large stream only by navigating to a GET URL
  and a long id list does not fit in one.
- `GET /api/zip/{ticket}`: that selection's zip, for the user who made the ticket only
  (anyone else: 404; after ten minutes: 410). Items no longer readable by then are left
  out and named in COFFER-ERRORS.txt.
"""

from __future__ import annotations

import msgspec
from litestar import get, post
from litestar.response import Stream

from app.core.clock import iso
from app.files.archive import (
    archive_file_name,
    caller_may_read,
    create_ticket,
    open_ticket,
    ticket_url,
    zip_response,
    zip_stream,
)
from app.files.scope import Caller, open_node
from app.storage.base import BlobStore


class ZipRequest(msgspec.Struct):
    ids: list[str]
    name: str | None = None


class ZipTicketOut(msgspec.Struct):
    url: str  # GET it (same user) within ten minutes: the browser navigates there
    expires_at: str
    name: str  # the archive's file name
    count: int  # items selected


@get("/api/file/{file_id:str}/zip", tags=["files"])
async def zip_item(file_id: str, caller: Caller, store: BlobStore) -> Stream:
    """A folder (recursively) or a file, as a zip streamed while it is made."""
    _, node = await open_node(caller, file_id)
    body = zip_stream(store, [node], allowed=caller_may_read(caller))
    return zip_response(archive_file_name(None, [node]), body)


@post("/api/zip", status_code=201, tags=["files"])
async def zip_selection(data: ZipRequest, caller: Caller) -> ZipTicketOut:
    """Keep a selection for ten minutes; its zip is at the answer's `url`."""
    ticket, expires, name = await create_ticket(caller, data.ids, data.name)
    return ZipTicketOut(
        url=ticket_url(ticket), expires_at=iso(expires), name=name, count=len(set(data.ids))
    )


@get("/api/zip/{ticket:str}", tags=["files"])
async def zip_download(ticket: str, caller: Caller, store: BlobStore) -> Stream:
    name, nodes, notes = await open_ticket(caller, ticket)
    return zip_response(name, zip_stream(store, nodes, notes, caller_may_read(caller)))


ZIP_ROUTES = [zip_item, zip_selection, zip_download]
