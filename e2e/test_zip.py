"""Zip downloads in the browser: a folder row's "Zip" action downloads the folder as a
zip whose members are byte for byte the files the page uploaded."""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import Page, expect

from e2e.conftest import Person
from e2e.test_browser import MIB, create_folder, drop_file, row, upload_row


def open_folder(page: Page, name: str) -> None:
    row(page, name).get_by_role("link", name=name, exact=True).click()
    expect(page.locator("#listing")).to_have_attribute("data-path", f"/{name}")


def test_a_folder_row_downloads_as_a_zip(people: Callable[..., Person], tmp_path: Path) -> None:
    alice = people(viewport={"width": 1200, "height": 800}).register()
    page = alice.page
    create_folder(page, "Album")
    open_folder(page, "Album")
    create_folder(page, "Empty")
    digests = {}
    for name, size, seed in (("one.bin", 3 * MIB, 11), ("twö.txt", 200_000, 12)):
        digests[f"Album/{name}"] = drop_file(page, name, size, seed)
        expect(upload_row(page, name).locator(".status")).to_have_text("done", timeout=30_000)
        expect(row(page, name)).to_be_visible()

    page.goto("/files")
    album = row(page, "Album")
    menu = album.get_by_role("button", name="Actions for Album")
    if menu.is_visible():  # narrow screens and the grid keep row actions in a menu
        menu.click()
    with page.expect_download() as info:
        album.get_by_role("link", name="Download Album as zip").click()
    download = info.value
    assert download.suggested_filename == "Album.zip"
    saved = tmp_path / "Album.zip"
    download.save_as(saved)
    with zipfile.ZipFile(saved) as archive:
        assert archive.testzip() is None
        members = {
            i.filename: hashlib.sha256(archive.read(i)).hexdigest()
            for i in archive.infolist()
            if not i.is_dir()
        }
        folders = {i.filename for i in archive.infolist() if i.is_dir()}
    assert members == digests
    assert folders == {"Album/", "Album/Empty/"}
