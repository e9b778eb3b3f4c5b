"""File requests in the browser: the owner asks for files, an anonymous visitor sends one."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import expect

from e2e.conftest import Person
from e2e.test_browser import create_folder, drop_file, row, shot, upload_row


def test_an_anonymous_visitor_sends_a_file_and_the_owners_open_folder_shows_it(
    people: Callable[..., Person], tmp_path: Path
) -> None:
    alice = people().register()
    a = alice.page
    create_folder(a, "Inbox")
    row(a, "Inbox").get_by_role("button", name="Share Inbox").click()
    dialog = a.locator("#share-dialog")
    dialog.get_by_label("Upload-only (file request)").check()
    dialog.get_by_label("Max file size (MB, optional)").fill("5")
    dialog.get_by_role("button", name="Create link").click()
    expect(dialog.locator("#link-list")).to_contain_text("upload-only")
    expect(dialog.locator("#link-list")).to_contain_text("max 5.0 MB per file")
    url = dialog.locator("#link-list a.url").first.get_attribute("href")
    assert url and "/s/" in url
    dialog.get_by_role("button", name="Close").click()
    row(a, "Inbox").get_by_role("link", name="Inbox", exact=True).click()  # not its "Zip"
    expect(a.locator("#listing")).to_have_attribute("data-path", "/Inbox")
    drop_file(a, "private-notes.txt", 2000, 3)
    expect(upload_row(a, "private-notes.txt").locator(".status")).to_have_text("done")

    visitor = people()  # a context of its own: no session, no cookies
    v = visitor.page
    problems: list[str] = []
    v.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    v.on("pageerror", lambda e: problems.append(str(e)))
    v.goto(url)
    expect(v.get_by_role("heading", name="Send files to “Inbox”")).to_be_visible()
    expect(v.locator("main")).not_to_contain_text("private-notes")
    # Files chosen before the name wait for it.
    data = os.urandom(1_500_000)
    v.locator("#request-picker").set_input_files(
        files=[{"name": "invoice.pdf", "mimeType": "application/pdf", "buffer": data}]
    )
    expect(v.get_by_role("alert")).to_contain_text("Type your name first")
    sent = v.locator("#uploads .upload").filter(has_text="invoice.pdf")
    expect(sent.locator(".status")).to_have_text("waiting")
    v.get_by_label("Your name").fill("Carol from accounting")
    v.get_by_role("button", name="Send files").click()
    expect(sent.locator(".status")).to_have_text("received")
    expect(sent.get_by_role("button", name="Cancel")).to_have_count(0)
    # Over the link's 5 MB: refused on the page, nothing sent.
    v.locator("#request-picker").set_input_files(
        files=[
            {
                "name": "huge.bin",
                "mimeType": "application/octet-stream",
                "buffer": b"\0" * 5_000_001,
            }
        ]
    )
    refused = v.locator("#uploads .upload").filter(has_text="huge.bin")
    expect(refused.locator(".status")).to_contain_text("too large")
    shot(v, "file-request")
    assert problems == []

    # The owner's open folder shows the new file without a reload, with the same bytes.
    expect(row(a, "invoice.pdf")).to_be_visible()
    expect(row(a, "huge.bin")).to_have_count(0)
    with a.expect_download() as info:
        row(a, "invoice.pdf").get_by_role("link", name="Download invoice.pdf").click()
    saved = tmp_path / "invoice.pdf"
    info.value.save_as(saved)
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
    # Its history says who sent it.
    row(a, "invoice.pdf").get_by_role("button", name="Versions of invoice.pdf").click()
    expect(a.locator("#versions-dialog tbody")).to_contain_text(
        "file request: Carol from accounting"
    )
