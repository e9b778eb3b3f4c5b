"""Zip tickets: a selection of items to download as one zip, for a few minutes.

A browser can download a large stream only by navigating to a GET URL, and ten thousand
ids do not fit in a URL: `POST /api/zip` stores the selection here and answers a short URL
naming the ticket (app/files/archive.py). Only the ticket's SHA-256 is stored, like every
other token, and the ticket is bound to the user who made it.
"""

from __future__ import annotations

from beanie import Document
from pymongo import ASCENDING, IndexModel

from app.core.clock import Instant


class ZipTicket(Document):
    id: str  # type: ignore[assignment]  # SHA-256 (hex) of the ticket in the URL
    user_id: str
    ids: list[str]  # the selected file and folder ids, in the order given
    name: str  # the archive's file name, ".zip" included
    created_at: Instant
    # When the URL stops working; compared in Python (the embedded server compares
    # datetimes by whole seconds, which is precise enough here anyway).
    expires_at: Instant

    class Settings:
        name = "zip_tickets"
        indexes = [IndexModel([("user_id", ASCENDING), ("expires_at", ASCENDING)])]
