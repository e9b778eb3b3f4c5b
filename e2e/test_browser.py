"""What people do in the browser, end to end: Chromium against a real stack.

Files are made inside the page from a seed (xorshift), so the page and the test agree on
the bytes without shipping megabytes over the Playwright channel; the page's own Web
Crypto SHA-256 of them is compared with that of the downloaded file.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from playwright.sync_api import Page, WebSocketRoute, expect

from e2e.conftest import SCREENSHOTS, Person

MIB = 1024 * 1024
MAKE_FILE = """async ([name, size, seed]) => {
  const bytes = new Uint8Array(size);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < size; i++) { x ^= x << 13; x ^= x >>> 17; x ^= x << 5; bytes[i] = x & 255; }
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  window.__sha256 = Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
  const dt = new DataTransfer();
  dt.items.add(new File([bytes], name));
  return dt;
}"""


def drop_file(page: Page, name: str, size: int, seed: int) -> str:
    """Drop a generated file onto the page like a desktop drag would; its SHA-256."""
    transfer = page.evaluate_handle(MAKE_FILE, [name, size, seed])
    page.dispatch_event("#listing", "drop", {"dataTransfer": transfer})
    return page.evaluate("window.__sha256")


def upload_row(page: Page, name: str):  # type: ignore[no-untyped-def]
    return page.locator("#uploads .upload").filter(has_text=name).first


def row(page: Page, name: str):  # type: ignore[no-untyped-def]
    return page.locator("tr.item", has=page.locator("td.name", has_text=name))


def shot(page: Page, name: str) -> None:
    if os.environ.get("COFFER_SCREENSHOTS"):
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def create_folder(page: Page, name: str) -> None:
    page.get_by_label("New folder name").fill(name)
    page.get_by_role("button", name="Create folder").click()
    expect(row(page, name)).to_be_visible()


def open_folder(page: Page, name: str) -> None:
    row(page, name).get_by_role("link", name=name, exact=True).click()
    expect(page.locator("#listing")).to_have_attribute("data-path", f"/{name}")


def test_register_drag_a_20mib_file_into_a_folder_and_download_it(
    people: Callable[..., Person], tmp_path: Path
) -> None:
    alice = people(viewport={"width": 1200, "height": 800}).register()
    bob = people().register()
    expect(bob.page.get_by_text(bob.username)).to_be_visible()
    page = alice.page
    shot(page, "files-empty")
    create_folder(page, "Photos")
    open_folder(page, "Photos")
    digest = drop_file(page, "holiday.raw", 20 * MIB, 7)
    upload = upload_row(page, "holiday.raw")
    expect(upload.locator("progress")).to_have_attribute("value", "100", timeout=30_000)
    expect(upload.locator(".status")).to_have_text("done", timeout=30_000)
    expect(row(page, "holiday.raw").locator("td.size")).to_have_text("21.0 MB", timeout=15_000)
    shot(page, "files-uploaded")
    with page.expect_download() as info:
        row(page, "holiday.raw").get_by_role("link", name="Download holiday.raw").click()
    saved = tmp_path / "holiday.raw"
    info.value.save_as(saved)
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == digest
    # Logging out ends the session: the file list now asks to log in.
    page.get_by_role("button", name="Log out").click()
    page.wait_for_url("**/login")
    page.goto("/files")
    expect(page).to_have_url("/login?next=/files")


def test_sharing_shows_up_live_and_changes_follow_without_reload(
    people: Callable[..., Person],
) -> None:
    alice, bob = people().register(), people().register()
    a, b = alice.page, bob.page
    b.goto("/shared")
    expect(b.get_by_text("Nothing has been shared with you yet.")).to_be_visible()
    create_folder(a, "Team")
    row(a, "Team").get_by_role("button", name="Share Team").click()
    dialog = a.locator("#share-dialog")
    dialog.get_by_label("Username").fill(bob.username)
    dialog.get_by_label("Role").select_option("viewer")
    dialog.get_by_role("button", name="Share", exact=True).click()
    expect(dialog.locator("#share-list")).to_contain_text(bob.username)
    shot(a, "share-dialog")
    expect(a.locator(".toast")).to_have_count(0)  # the sharer is not told of their own share
    dialog.get_by_role("button", name="Close").click()

    # Bob's open page shows the share without a reload, with a toast (the worker derives
    # the share first: it runs at a lower priority, so the wait is generous).
    # The toast first: it shows for 6 s, from the event, before the listing is fetched.
    expect(b.locator(".toast")).to_contain_text(
        f"{alice.username} shared Team with you", timeout=30_000
    )
    expect(row(b, "Team")).to_be_visible(timeout=15_000)
    shot(b, "shared-with-me")
    row(b, "Team").get_by_role("link", name="Team", exact=True).click()
    expect(b.get_by_text("This folder is empty")).to_be_visible()

    open_folder(a, "Team")
    drop_file(a, "minutes.txt", 2048, 3)
    expect(upload_row(a, "minutes.txt").locator(".status")).to_have_text("done")
    started = time.monotonic()
    expect(row(b, "minutes.txt")).to_be_visible(timeout=10_000)
    print(f"new row on the other user's page after {time.monotonic() - started:.2f}s")
    # Rows update in place: a keyboard user's focus and the untouched row's DOM node
    # survive the next live change.
    b.get_by_role("link", name="Download minutes.txt").focus()
    b.evaluate("document.activeElement.closest('tr').dataset.marked = 'still me'")
    drop_file(a, "agenda.txt", 1024, 5)
    expect(row(b, "agenda.txt")).to_be_visible(timeout=10_000)
    assert b.evaluate("document.activeElement.getAttribute('aria-label')") == (
        "Download minutes.txt"
    )
    expect(row(b, "minutes.txt")).to_have_attribute("data-marked", "still me")
    a.on("dialog", lambda d: d.accept())
    row(a, "minutes.txt").get_by_role("button", name="Delete minutes.txt").click()
    expect(row(b, "minutes.txt")).to_have_count(0, timeout=10_000)


def test_public_link_with_password_then_revoked(
    people: Callable[..., Person],
    browser,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    alice = people().register()
    a = alice.page
    digest = drop_file(a, "archive.zip", 300_000, 11)
    expect(upload_row(a, "archive.zip").locator(".status")).to_have_text("done")
    row(a, "archive.zip").get_by_role("button", name="Share archive.zip").click()
    dialog = a.locator("#share-dialog")
    dialog.get_by_label("Password (optional)").fill("open sesame")
    dialog.get_by_label("Expires (optional)").fill("2031-01-01T12:00")
    dialog.get_by_role("button", name="Create link").click()
    link = dialog.locator("#link-list a.url").first
    expect(link).to_be_visible()
    expect(dialog.locator("#link-list")).to_contain_text("password")
    url = link.get_attribute("href")
    assert url and "/s/" in url

    anonymous = people()
    anon = anonymous.page
    anon.goto(url)
    anon.get_by_label("Password").fill("wrong guess")
    anon.get_by_role("button", name="Open").click()
    expect(anon.get_by_role("alert")).to_be_visible()
    anon.get_by_label("Password").fill("open sesame")
    anon.get_by_role("button", name="Open").click()
    shot(anon, "public-link")
    with anon.expect_download() as info:
        anon.get_by_role("link", name="Download").click()
    saved = tmp_path / "archive.zip"
    info.value.save_as(saved)
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == digest

    dialog.locator("#link-list").get_by_role("button", name="Revoke").click()
    expect(dialog.locator("#link-list a.url")).to_have_count(0)
    anon.reload()
    expect(anon.get_by_role("heading", name="Link revoked")).to_be_visible()


def test_an_interrupted_upload_resumes_sending_only_missing_chunks(
    people: Callable[..., Person],
) -> None:
    alice = people().register()
    page = alice.page
    sent: list[str] = []

    held: list = []
    cut = False

    def first_two_only(route):  # type: ignore[no-untyped-def]
        if len(sent) < 2 and not cut:
            sent.append(route.request.url)
            route.continue_()
        elif cut:
            route.abort()
        else:
            held.append(route)  # stalled, as on a dying connection

    page.route("**/api/blob/**", first_two_only)
    stored: list[str] = []
    page.on("requestfinished", lambda r: stored.append(r.url) if r.method == "PUT" else None)
    drop_file(page, "video.mov", 20 * MIB, 5)  # 5 chunks of 4 MiB
    expect(upload_row(page, "video.mov").locator(".status")).to_contain_text(
        "8.4 MB of 21.0 MB", timeout=30_000
    )
    deadline = time.monotonic() + 10
    while len(stored) < 2 and time.monotonic() < deadline:
        page.wait_for_timeout(20)  # the two chunks let through reach the server
    assert len(stored) == 2
    cut = True  # the connection drops, then the tab is closed: three chunks never sent
    for route in held:
        route.abort()
    page.close()

    page = alice.context.new_page()
    page.goto("/files")
    puts: list[str] = []
    page.on("request", lambda r: puts.append(r.url) if r.method == "PUT" else None)
    digest = drop_file(page, "video.mov", 20 * MIB, 5)
    expect(upload_row(page, "video.mov").locator(".status")).to_have_text("done", timeout=30_000)
    assert len(sent) == 2 and len(puts) == 3  # only the three chunks never stored
    file_id = row(page, "video.mov").get_attribute("data-id")
    body = alice.context.request.get(f"/api/file/{file_id}/content").body()
    assert hashlib.sha256(body).hexdigest() == digest


def test_live_updates_fall_back_to_long_poll_when_websockets_are_blocked(
    people: Callable[..., Person],
) -> None:
    alice = people().register()
    watcher = alice.context.new_page()

    def refuse(ws: WebSocketRoute) -> None:
        ws.close()

    watcher.route_web_socket("**/api/ws**", refuse)
    watcher.goto("/files")
    expect(watcher.locator("body")).to_have_attribute("data-feed", "poll", timeout=10_000)
    digest_page = alice.page
    drop_file(digest_page, "from-another-tab.txt", 1000, 9)
    expect(row(watcher, "from-another-tab.txt")).to_be_visible(timeout=10_000)
    digest_page.on("dialog", lambda d: d.accept())
    row(digest_page, "from-another-tab.txt").get_by_role(
        "button", name="Delete from-another-tab.txt"
    ).click()
    expect(row(watcher, "from-another-tab.txt")).to_have_count(0, timeout=10_000)


def test_restore_an_earlier_version_and_a_deleted_file(
    people: Callable[..., Person], tmp_path: Path
) -> None:
    alice = people().register()
    page = alice.page
    page.on("dialog", lambda d: d.accept())
    first = drop_file(page, "draft.txt", 5000, 21)
    expect(upload_row(page, "draft.txt").locator(".status")).to_have_text("done")
    drop_file(page, "draft.txt", 6000, 22)  # a second version
    expect(upload_row(page, "draft.txt").locator(".status").first).to_have_text("done")
    expect(row(page, "draft.txt").locator("td.size")).to_have_text("6.0 KB")

    row(page, "draft.txt").get_by_role("button", name="Versions of draft.txt").click()
    dialog = page.locator("#versions-dialog")
    expect(dialog.locator("tbody tr")).to_have_count(2)
    dialog.get_by_role("button", name="Restore version 1").click()
    expect(row(page, "draft.txt").locator("td.size")).to_have_text("5.0 KB")
    file_id = row(page, "draft.txt").get_attribute("data-id")
    body = alice.context.request.get(f"/api/file/{file_id}/content").body()
    assert hashlib.sha256(body).hexdigest() == first

    row(page, "draft.txt").get_by_role("button", name="Delete draft.txt").click()
    expect(row(page, "draft.txt")).to_have_count(0)
    page.get_by_role("link", name="Trash").click()
    expect(row(page, "draft.txt")).to_be_visible()
    shot(page, "trash")
    row(page, "draft.txt").get_by_role("button", name="Restore draft.txt").click()
    expect(page.get_by_text("The trash is empty.")).to_be_visible()
    page.get_by_role("link", name="All files").click()
    expect(row(page, "draft.txt").locator("td.size")).to_have_text("5.0 KB")


def test_the_pages_scripts_run_without_csp_violations_or_errors(
    people: Callable[..., Person],
) -> None:
    """The ES modules load under the strict CSP and using the files page logs no error."""
    alice = people().register()
    page = alice.page
    problems: list[str] = []
    page.on(
        "console",
        lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None,
    )
    page.on("pageerror", lambda e: problems.append(f"pageerror: {e}"))
    page.add_init_script(
        "document.addEventListener('securitypolicyviolation', (e) => console.error("
        "`CSP violation: ${e.violatedDirective} ${e.blockedURI}`));"
    )
    page.goto("/files")
    expect(page.locator("body")).to_have_attribute("data-feed", "socket")  # main.js ran
    create_folder(page, "Docs")
    drop_file(page, "notes.txt", 3000, 4)
    expect(upload_row(page, "notes.txt").locator(".status")).to_have_text("done")
    row(page, "notes.txt").get_by_role("button", name="Versions of notes.txt").click()
    versions = page.locator("#versions-dialog")
    expect(versions.locator("tbody tr")).to_have_count(1)
    expect(versions.get_by_role("link", name="Download version 1")).to_be_visible()
    versions.get_by_role("button", name="Close").click()
    row(page, "notes.txt").get_by_role("button", name="Share notes.txt").click()
    dialog = page.locator("#share-dialog")
    dialog.get_by_role("button", name="Create link").click()
    expect(dialog.locator("#link-list a.url")).to_have_count(1)
    dialog.get_by_role("button", name="Close").click()
    for other in ("/trash", "/shared", "/devices"):
        page.goto(other)
        expect(page.locator("main")).to_be_visible()
    page.goto("/files")
    expect(page.locator("body")).to_have_attribute("data-feed", "socket")
    assert problems == []


def test_a_folder_of_many_small_files_uploads_in_batches_with_one_progress_row(
    people: Callable[..., Person], tmp_path: Path
) -> None:
    """Bob, an editor of Alice's shared folder, uploads a folder of 400 small files in 4
    subfolders and one larger file: the small ones go up in one batch request behind one
    progress row, the large one the chunked way; Alice's open page shows the new folder
    live and every byte arrives."""
    alice, bob = people().register(), people().register()
    a, b = alice.page, bob.page
    create_folder(a, "Team")
    team = alice.api("GET", "/api/file?path=/")["items"][0]
    alice.api("POST", f"/api/file/{team['id']}/share", {"username": bob.username, "role": "editor"})
    source = tmp_path / "Drop"
    expected: dict[str, bytes] = {}
    for i in range(400):
        rel = f"part{i % 4}/note{i:03}.txt"
        data = os.urandom(1 + (i * 37) % 8000)
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        (source / rel).write_bytes(data)
        expected[rel] = data
    big = os.urandom(1536 * 1024)  # over the inline limit: chunked
    (source / "video.bin").write_bytes(big)
    expected["video.bin"] = big
    open_folder(a, "Team")

    b.goto("/shared")
    row(b, "Team").get_by_role("link", name="Team", exact=True).click()
    expect(b.get_by_text("This folder is empty")).to_be_visible()
    posts: list[str] = []
    b.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    b.locator("#folder-picker").set_input_files(source)
    batch = upload_row(b, "400 files")
    expect(batch.locator(".status")).to_have_text("400 files done", timeout=30_000)
    expect(upload_row(b, "video.bin").locator(".status")).to_have_text("done", timeout=30_000)
    assert sum("/api/batch/upload" in url for url in posts) == 1
    assert sum(url.endswith("/api/file") for url in posts) == 1  # only the large file
    expect(row(a, "Drop")).to_be_visible(timeout=10_000)  # live on Alice's open page

    got: dict[str, bytes] = {}
    cursor = None
    while True:
        page = alice.api(
            "GET", "/api/tree?path=/Team/Drop" + (f"&cursor={cursor}" if cursor else "")
        )
        for item in page["items"]:
            if item["kind"] == "file":
                rel = item["path"].removeprefix("/Team/Drop/")
                resp = alice.context.request.get(f"/api/file/{item['id']}/content")
                assert resp.ok
                got[rel] = resp.body()
        cursor = page["cursor"]
        if cursor is None:
            break
    assert got == expected


def test_a_file_put_over_webdav_appears_in_the_open_listing(
    people: Callable[..., Person],
) -> None:
    """A Finder or rclone upload (a WebDAV PUT) shows up in the browser without a reload,
    and leaves it when deleted over WebDAV."""
    alice = people().register()
    page = alice.page
    expect(page.locator("#listing")).to_be_visible()
    with httpx.Client(
        base_url=f"{alice.base_url}/dav", auth=(alice.username, alice.password), timeout=30
    ) as dav:
        assert dav.put("/from-finder.txt", content=b"dropped in Finder").status_code == 201
        expect(row(page, "from-finder.txt")).to_be_visible(timeout=10_000)
        expect(row(page, "from-finder.txt").locator("td.size")).to_have_text("17 B")
        assert dav.delete("/from-finder.txt").status_code == 204
        expect(row(page, "from-finder.txt")).to_have_count(0, timeout=10_000)
