"""The browser app as a Dropbox user expects it: search, selection and bulk actions,
keyboard use, leaving a share, the storage meter, the activity panel, phone width, dark.

Each test does what a person would do in Chromium against a real stack; files are put in
place through the API (with the person's own session) where the upload itself is not what
the test is about.
"""

from __future__ import annotations

import hashlib
import io
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import Page, expect

from bench.batch import entry
from e2e.conftest import Person
from e2e.test_browser import row, shot
from tests.conftest import manifest


def put_files(person: Person, files: dict[str, bytes], **where: str) -> None:
    """Small files committed in one batch request (the way the browser's folder upload does).
    `where`: parent_id (then the keys are names in that folder, not paths)."""
    batch = []
    for path, data in files.items():
        one = {**entry(path, data), **manifest(data, max(1, len(data)))}  # inline: one chunk
        if where:
            one = {**{k: v for k, v in one.items() if k != "path"}, **where, "name": path}
        batch.append(one)
    results = person.api("POST", "/api/batch/upload", {"files": batch})["results"]
    assert all(r["status"] == "committed" for r in results), results


def file_id(person: Person, path: str) -> str:
    folder, _, name = path.rpartition("/")
    listed = person.api("GET", f"/api/file?path={folder or '/'}")
    return next(i["id"] for i in listed["items"] if i["name"] == name)


def goto_files(page: Page, path: str = "/") -> None:
    page.goto(f"/files?path={path}")
    expect(page.locator("#listing")).to_have_attribute("data-path", path)


def test_search_finds_a_file_another_user_shares_live_and_as_you_type(
    people: Callable[..., Person],
) -> None:
    alice, bob = people().register(), people().register()
    put_files(alice, {"/Notes/Résumé 2026.txt": b"cv", "/Notes/shopping.txt": b"milk"})
    page = alice.page
    # The header's box works without script: Enter goes to the results page.
    page.get_by_label("Search files and folders").fill("resume")
    page.get_by_label("Search files and folders").press("Enter")
    page.wait_for_url("**/search?q=resume")
    results = page.locator("#listing tbody tr.item")
    expect(results).to_have_count(1)
    expect(results.first).to_contain_text("Résumé 2026.txt")
    expect(results.first.locator("td.folder")).to_have_text("/Notes")
    # Typing on the results page updates them (no Enter needed).
    box = page.get_by_label("Names containing")
    box.fill("quarterly")
    expect(page.locator("#listing h1")).to_have_text("Results for “quarterly”")
    expect(page.get_by_text("Nothing is named like that.")).to_be_visible()
    # Bob shares a folder with Alice and adds a matching file: her open results show it.
    folder = bob.api("POST", "/api/folder", {"path": "/Finance"})
    bob.api(
        "POST", f"/api/file/{folder['id']}/share", {"username": alice.username, "role": "viewer"}
    )
    put_files(bob, {"/Finance/Quarterly report.pdf": b"q"})
    hit = page.locator("#listing tbody tr.item", has_text="Quarterly report.pdf")
    expect(hit).to_be_visible(timeout=15_000)
    expect(hit).to_contain_text(f"shared by {bob.username}")
    expect(hit.locator("td.folder")).to_have_text("/Finance")
    shot(page, "search")
    hit.locator("td.folder a").click()
    expect(row(page, "Quarterly report.pdf")).to_be_visible()


def test_shift_click_three_files_and_download_them_as_a_zip(
    people: Callable[..., Person], tmp_path: Path
) -> None:
    alice = people().register()
    files = {f"/Batch/file-{n}.bin": bytes([n]) * (1000 + n) for n in range(5)}
    put_files(alice, files)
    page = alice.page
    goto_files(page, "/Batch")
    row(page, "file-1.bin").get_by_label("Select file-1.bin").click()
    row(page, "file-3.bin").get_by_label("Select file-3.bin").click(modifiers=["Shift"])
    expect(page.locator("#selection-count")).to_have_text("3 selected")
    expect(page.locator("tr.item.selected")).to_have_count(3)
    shot(page, "selection")
    with page.expect_download() as info:
        page.get_by_role("button", name="Download zip").click()
    saved = tmp_path / "picked.zip"
    info.value.save_as(saved)
    with zipfile.ZipFile(saved) as archive:
        got = {name: hashlib.sha256(archive.read(name)).hexdigest() for name in archive.namelist()}
    want = {
        f"file-{n}.bin": hashlib.sha256(files[f"/Batch/file-{n}.bin"]).hexdigest()
        for n in (1, 2, 3)
    }
    assert got == want
    # Select all, then delete them all: gone from the listing, and Undo brings them back.
    page.get_by_label("Select all").click()
    expect(page.locator("#selection-count")).to_have_text("5 selected")
    page.locator("#selection-bar").get_by_role("button", name="Delete").click()
    expect(page.locator("tr.item")).to_have_count(0, timeout=15_000)  # a request per item
    page.locator(".toast").get_by_role("button", name="Undo").click()
    expect(page.locator("tr.item")).to_have_count(5, timeout=15_000)


def test_move_and_share_a_selection(people: Callable[..., Person]) -> None:
    alice, bob = people().register(), people().register()
    put_files(alice, {"/a.txt": b"a", "/b.txt": b"b", "/c.txt": b"c"})
    alice.api("POST", "/api/folder", {"path": "/Inbox"})
    page = alice.page
    goto_files(page)
    row(page, "a.txt").get_by_label("Select a.txt").click()
    row(page, "b.txt").get_by_label("Select b.txt").click()
    page.locator("#selection-bar").get_by_role("button", name="Share").click()
    dialog = page.locator("#bulk-share-dialog")
    dialog.get_by_label("Username").fill(bob.username)
    dialog.get_by_role("button", name="Share", exact=True).click()
    expect(dialog).to_be_hidden()
    # Access is granted at once; "Shared with me" is derived by the worker, moments later.
    deadline = time.monotonic() + 30
    while True:
        shared = sorted(i["name"] for i in bob.api("GET", "/api/shared")["items"])
        if shared == ["a.txt", "b.txt"] or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert shared == ["a.txt", "b.txt"]
    page.once("dialog", lambda d: d.accept("/Inbox"))
    page.locator("#selection-bar").get_by_role("button", name="Move").click()
    # One move request per item, one after the other: b.txt leaves the listing last.
    expect(row(page, "a.txt")).to_have_count(0)
    expect(row(page, "b.txt")).to_have_count(0, timeout=15_000)
    expect(row(page, "c.txt")).to_be_visible()
    inbox = alice.api("GET", "/api/file?path=/Inbox")["items"]
    assert sorted(i["name"] for i in inbox) == ["a.txt", "b.txt"]


def test_the_listing_works_from_the_keyboard(people: Callable[..., Person]) -> None:
    alice = people().register()
    put_files(alice, {"/Docs/one.txt": b"1", "/Docs/two.txt": b"2", "/top.txt": b"t"})
    page = alice.page
    goto_files(page)
    # Tab reaches the first row; arrows move; Enter opens a folder; Backspace goes up.
    page.locator("tr.item").first.focus()
    expect(page.locator("tr.item").first).to_be_focused()
    page.keyboard.press("ArrowDown")
    expect(row(page, "top.txt")).to_be_focused()
    page.keyboard.press("ArrowUp")
    page.keyboard.press("Enter")
    expect(page.locator("#listing")).to_have_attribute("data-path", "/Docs")
    page.keyboard.press("Backspace")
    expect(page.locator("#listing")).to_have_attribute("data-path", "/")
    # F2 renames the current row.
    goto_files(page, "/Docs")
    page.locator("tr.item").first.focus()
    page.once("dialog", lambda d: d.accept("uno.txt"))
    page.keyboard.press("F2")
    expect(row(page, "uno.txt")).to_be_visible()
    # Delete trashes with an Undo toast.
    row(page, "two.txt").focus()
    page.keyboard.press("Delete")
    expect(row(page, "two.txt")).to_have_count(0)
    expect(page.locator(".toast")).to_contain_text("Moved two.txt to the trash")
    page.locator(".toast").get_by_role("button", name="Undo").click()
    expect(row(page, "two.txt")).to_be_visible()
    # A live refresh (another device adds a file) keeps the focused row focused and does
    # not redraw rows whose data did not change.
    row(page, "two.txt").focus()
    kept = row(page, "uno.txt").element_handle()
    put_files(alice, {"/Docs/three.txt": b"3"})
    expect(row(page, "three.txt")).to_be_visible()
    expect(row(page, "two.txt")).to_be_focused()
    assert page.evaluate("(tr) => tr.isConnected", kept)  # the same DOM node: not redrawn
    # After ticking a checkbox, the listing's keys still work (Delete trashes the ticked).
    row(page, "three.txt").get_by_label("Select three.txt").click()
    page.keyboard.press("Delete")
    expect(row(page, "three.txt")).to_have_count(0)
    # Ctrl+A selects everything listed; "/" jumps to search.
    page.locator("tr.item").first.focus()
    page.keyboard.press("Control+a")
    expect(page.locator("#selection-count")).to_have_text("2 selected")
    page.keyboard.press("/")
    expect(page.get_by_label("Search files and folders")).to_be_focused()


def test_a_recipient_leaves_a_share_and_the_owner_keeps_it(people: Callable[..., Person]) -> None:
    alice, bob = people().register(), people().register()
    folder = alice.api("POST", "/api/folder", {"path": "/Project"})
    put_files(alice, {"/Project/plan.txt": b"plan"})
    alice.api(
        "POST", f"/api/file/{folder['id']}/share", {"username": bob.username, "role": "viewer"}
    )
    deadline = time.monotonic() + 30  # "Shared with me" is derived by the worker
    while not bob.api("GET", "/api/shared")["items"]:
        assert time.monotonic() < deadline, "the share never reached Shared with me"
        time.sleep(0.05)
    page = bob.page
    page.goto("/shared")
    expect(row(page, "Project")).to_be_visible()
    page.once("dialog", lambda d: d.accept())
    row(page, "Project").get_by_role("button", name="Leave Project").click()
    expect(page.get_by_text("Nothing has been shared with you yet.")).to_be_visible()
    assert [i["name"] for i in alice.api("GET", "/api/file?path=/Project")["items"]] == ["plan.txt"]
    assert alice.api("GET", f"/api/file/{folder['id']}/share")["items"] == []


def test_storage_meter_and_activity_follow_changes_live(people: Callable[..., Person]) -> None:
    alice, bob = people().register(), people().register()
    folder = alice.api("POST", "/api/folder", {"path": "/Team"})
    alice.api(
        "POST", f"/api/file/{folder['id']}/share", {"username": bob.username, "role": "editor"}
    )
    page = alice.page
    goto_files(page, "/Team")
    expect(page.locator("#storage")).to_contain_text("0 B used")
    page.locator("#activity summary").click()
    expect(page.locator("#activity")).to_contain_text("No changes here yet.")
    put_files(alice, {"/Team/big.bin": b"x" * 250_000})
    expect(page.locator("#storage")).to_contain_text("250.0 KB used", timeout=15_000)
    item = page.locator("#activity li").first
    expect(item).to_contain_text(f"{alice.username} added big.bin")
    # Bob adds a file to the shared folder: it counts against Alice's storage and her open
    # activity panel names him.
    put_files(bob, {"bob.bin": b"y" * 50_000}, parent_id=folder["id"])
    expect(page.locator("#activity li").first).to_contain_text(
        f"{bob.username} added bob.bin", timeout=15_000
    )
    expect(page.locator("#storage")).to_contain_text("300.0 KB used")
    shot(page, "activity")


def no_sideways_scroll(page: Page) -> None:
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= page.viewport_size["width"], width  # type: ignore[index]


def test_phone_width_has_no_sideways_scrolling_and_actions_in_a_menu(
    people: Callable[..., Person],
) -> None:
    alice = people(viewport={"width": 390, "height": 844}, is_mobile=True).register()
    put_files(
        alice,
        {
            "/A rather long folder name for a phone/" + f"document number {n}.pdf": b"%PDF"
            for n in range(3)
        },
    )
    put_files(alice, {"/notes-with-a-long-name-2026-11-30.txt": b"n"})
    page = alice.page
    for url in (
        "/files",
        "/files?path=/A rather long folder name for a phone",
        "/shared",
        "/trash",
        "/devices",
        "/search?q=doc",
    ):
        page.goto(url)
        no_sideways_scroll(page)
    goto_files(page)
    target = row(page, "notes-with-a-long-name-2026-11-30.txt")
    expect(
        target.get_by_role("button", name="Rename notes-with-a-long-name-2026-11-30.txt")
    ).to_be_hidden()
    target.get_by_role("button", name="Actions for notes-with-a-long-name-2026-11-30.txt").click()
    rename = target.get_by_role("button", name="Rename notes-with-a-long-name-2026-11-30.txt")
    expect(rename).to_be_visible()
    shot(page, "phone-menu")
    page.once("dialog", lambda d: d.accept("short.txt"))
    rename.click()
    expect(row(page, "short.txt")).to_be_visible()
    no_sideways_scroll(page)


def test_dark_theme_follows_the_system_setting(people: Callable[..., Person]) -> None:
    dark = people(color_scheme="dark").register()
    light = people(color_scheme="light").register()
    background = "getComputedStyle(document.body).backgroundColor"
    dark_bg, light_bg = dark.page.evaluate(background), light.page.evaluate(background)
    assert dark_bg != light_bg
    # Dark: every colour channel of the page background is low.
    channels = [int(c) for c in dark_bg.removeprefix("rgb(").rstrip(")").split(",")]
    assert max(channels) < 60, dark_bg


def png(colour: tuple[int, int, int], size: tuple[int, int] = (640, 480)) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="PNG")
    return out.getvalue()


def test_grid_view_shows_thumbnails_is_remembered_and_pages_through_images(
    people: Callable[..., Person],
) -> None:
    alice = people(viewport={"width": 1200, "height": 800}).register()
    put_files(
        alice,
        {
            "/Photos/red.png": png((200, 0, 0)),
            "/Photos/green.png": png((0, 160, 0)),
            "/Photos/notes.txt": b"not an image",
        },
    )
    page = alice.page
    goto_files(page, "/Photos")
    page.get_by_role("button", name="Grid").click()
    expect(page.locator("table.files.grid")).to_be_visible()
    thumbs = page.locator("img.thumb")
    expect(thumbs).to_have_count(2)
    # Made by the worker on first request: the page retries until each has decoded.
    for n in range(2):
        expect(thumbs.nth(n)).to_have_js_property("complete", True, timeout=30_000)
        page.wait_for_function(
            "(img) => img.naturalWidth > 0", arg=thumbs.nth(n).element_handle(), timeout=30_000
        )
    assert page.evaluate("document.querySelector('img.thumb').naturalWidth") == 256
    shot(page, "grid")
    # Remembered for the user: another browser of Alice's opens in grid view too.
    page.reload()
    expect(page.locator("table.files.grid")).to_be_visible()
    expect(page.get_by_role("button", name="Grid")).to_have_attribute("aria-pressed", "true")
    # The lightbox pages through the folder's images (not the text file), by button and key.
    row(page, "green.png").locator("img.thumb").click()
    box = page.locator("#lightbox")
    expect(box).to_be_visible()
    expect(box.locator("#lightbox-title")).to_have_text("green.png")
    expect(box.locator("#lightbox-position")).to_have_text("1 of 2")
    box.get_by_role("button", name="Next").click()
    expect(box.locator("#lightbox-title")).to_have_text("red.png")
    page.keyboard.press("ArrowRight")
    expect(box.locator("#lightbox-title")).to_have_text("green.png")
    page.wait_for_function("() => document.getElementById('lightbox-image').naturalWidth === 640")
    box.get_by_role("button", name="Close").click()
    expect(box).to_be_hidden()
    page.get_by_role("button", name="List").click()
    expect(page.locator("table.files.list")).to_be_visible()
