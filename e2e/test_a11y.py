"""Accessibility: axe-core on every page and dialog, at desktop and phone width, light and
dark: no serious or critical violation anywhere (contrast is checked in both themes).

With COFFER_SCREENSHOTS=1 the same walk saves the screenshots in docs/screenshots/.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from playwright.sync_api import Page, expect

from e2e.axe import axe_script
from e2e.conftest import SCREENSHOTS, Person
from e2e.test_app import goto_files, png, put_files
from e2e.test_browser import row

VARIANTS = {
    "desktop-light": {"viewport": {"width": 1280, "height": 800}, "color_scheme": "light"},
    "desktop-dark": {"viewport": {"width": 1280, "height": 800}, "color_scheme": "dark"},
    "phone-light": {
        "viewport": {"width": 390, "height": 844},
        "color_scheme": "light",
        "is_mobile": True,
    },
    "phone-dark": {
        "viewport": {"width": 390, "height": 844},
        "color_scheme": "dark",
        "is_mobile": True,
    },
}
BLOCKING = ("serious", "critical")
# What docs/screenshots/ shows (every state is audited; these are also photographed).
PHOTOGRAPHED = {"login", "files", "grid", "lightbox", "search", "share-dialog", "row-menu"}
PHOTOGRAPHED |= {"files-selection-activity", "public-link", "file-request"}


class Audit:
    def __init__(self, page: Page, variant: str) -> None:
        self.page, self.variant = page, variant
        self.problems: list[str] = []
        self.script = axe_script().read_text()

    def check(self, name: str) -> None:
        """Run axe on what the page shows now; note serious/critical violations."""
        page = self.page
        page.wait_for_load_state("networkidle")
        if not page.evaluate("typeof window.axe !== 'undefined'"):
            # evaluate, not a <script> tag: the page's CSP (rightly) refuses inline script.
            page.evaluate(self.script)
        found = page.evaluate(
            """async () => {
                const r = await axe.run(document, {
                    runOnly: {type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a",
                                                    "wcag21aa", "best-practice"]},
                    resultTypes: ["violations"],
                });
                return r.violations.map((v) => ({id: v.id, impact: v.impact,
                    nodes: v.nodes.slice(0, 3).map((n) => n.target.join(" "))}));
            }"""
        )
        for v in found:
            if v["impact"] in BLOCKING:
                self.problems.append(
                    f"{self.variant} {name}: {v['id']} ({v['impact']}) {v['nodes']}"
                )
        if os.environ.get("COFFER_SCREENSHOTS") and name in PHOTOGRAPHED:
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS / f"{name}-{self.variant}.png"), full_page=False)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_page_and_dialog_passes_axe(people: Callable[..., Person], variant: str) -> None:
    options = VARIANTS[variant]
    visitor = people(**options)
    audit = Audit(visitor.page, variant)
    visitor.page.goto("/login")
    audit.check("login")

    alice, bob = people(**options).register(), people().register()
    put_files(
        alice,
        {
            "/Holiday/beach.png": png((30, 120, 200)),
            "/Holiday/sunset.png": png((220, 120, 40)),
            "/Holiday/itinerary.txt": b"day 1: arrive",
            "/Reports/quarterly report.pdf": b"%PDF-1.4",
            "/budget.txt": b"numbers",
            "/old draft.txt": b"draft",
        },
    )
    put_files(bob, {"/From Bob/team notes.txt": b"notes"})
    theirs = bob.api("GET", "/api/file?path=/")["items"][0]
    bob.api(
        "POST", f"/api/file/{theirs['id']}/share", {"username": alice.username, "role": "editor"}
    )
    mine = {i["name"]: i for i in alice.api("GET", "/api/file?path=/")["items"]}
    alice.api("DELETE", f"/api/file/{mine['old draft.txt']['id']}")
    link = alice.api("POST", f"/api/file/{mine['Holiday']['id']}/links", {})
    request = alice.api("POST", f"/api/file/{mine['Reports']['id']}/links", {"upload_only": True})

    audit = Audit(alice.page, variant)
    page = alice.page
    goto_files(page)
    audit.check("files")
    row(page, "budget.txt").get_by_label("Select budget.txt").click()
    row(page, "Reports").get_by_label("Select Reports").click()
    expect(page.locator("#selection-count")).to_have_text("2 selected")
    page.locator("#activity summary").click()
    expect(page.locator("#activity li").first).to_be_visible()
    audit.check("files-selection-activity")
    if options.get("is_mobile"):
        row(page, "budget.txt").get_by_role("button", name="Actions for budget.txt").click()
        expect(
            row(page, "budget.txt").get_by_role("button", name="Rename budget.txt")
        ).to_be_visible()
        audit.check("row-menu")
        page.keyboard.press("Escape")
    share_button = row(page, "Holiday").get_by_role("button", name="Share Holiday")
    if options.get("is_mobile"):
        row(page, "Holiday").get_by_role("button", name="Actions for Holiday").click()
    share_button.click()
    expect(page.locator("#share-dialog #link-list a.url")).to_have_count(1)
    audit.check("share-dialog")
    page.locator("#share-dialog").get_by_role("button", name="Close").click()

    goto_files(page, "/Holiday")
    versions = row(page, "itinerary.txt").get_by_role("button", name="Versions of itinerary.txt")
    if options.get("is_mobile"):
        row(page, "itinerary.txt").get_by_role("button", name="Actions for itinerary.txt").click()
    versions.click()
    expect(page.locator("#versions-dialog tbody tr")).to_have_count(1)
    audit.check("versions-dialog")
    page.locator("#versions-dialog").get_by_role("button", name="Close").click()
    page.get_by_role("button", name="Grid").click()
    expect(page.locator("table.files.grid")).to_be_visible()
    for n in range(2):
        page.wait_for_function(
            "(img) => img.naturalWidth > 0",
            arg=page.locator("img.thumb").nth(n).element_handle(),
            timeout=30_000,
        )
    audit.check("grid")
    page.locator("img.thumb").first.click()
    expect(page.locator("#lightbox")).to_be_visible()
    page.wait_for_function("() => document.getElementById('lightbox-image').naturalWidth > 0")
    audit.check("lightbox")
    page.locator("#lightbox").get_by_role("button", name="Close").click()
    page.get_by_role("button", name="List").click()
    expect(page.locator("table.files.list")).to_be_visible()

    page.goto("/search?q=report")
    expect(page.locator("#listing tbody tr.item")).to_have_count(2)
    audit.check("search")
    page.goto("/shared")
    expect(row(page, "From Bob")).to_be_visible(timeout=15_000)
    audit.check("shared")
    page.goto("/trash")
    expect(row(page, "old draft.txt")).to_be_visible()
    audit.check("trash")
    page.goto("/devices")
    audit.check("devices")

    anonymous = people(**options)
    public = Audit(anonymous.page, variant)
    anonymous.page.goto(link["url"])
    expect(anonymous.page.get_by_text("itinerary.txt")).to_be_visible()
    public.check("public-link")
    anonymous.page.goto(request["url"])
    expect(anonymous.page.get_by_label("Your name")).to_be_visible()
    public.check("file-request")

    assert audit.problems + public.problems == []
