"""Browser tests: Debian's chromium driven by Playwright against a real running stack."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from tests.conftest import unique_name
from tests.stack import Stack

CHROMIUM = os.environ.get("COFFER_CHROMIUM", "/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"


@pytest.fixture(scope="session")
def ui_stack() -> Iterator[Stack]:
    with tempfile.TemporaryDirectory(prefix="coffer-e2e-") as tmp:
        stack = Stack(Path(tmp)).start_all()
        try:
            yield stack
        finally:
            stack.stop_all()


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        browser.close()


class Person:
    """A user with their own browser context (cookies), registered through the UI."""

    def __init__(self, browser: Browser, base_url: str, **context_options: object) -> None:
        self.username = unique_name("web")
        self.password = "correct horse"
        self.base_url = base_url
        self.context: BrowserContext = browser.new_context(
            base_url=base_url, accept_downloads=True, **context_options
        )
        self.page: Page = self.context.new_page()

    def register(self) -> Person:
        page = self.page
        page.goto("/register")
        page.get_by_label("Username").fill(self.username)
        page.get_by_label("Password (at least 8 characters)").fill(self.password)
        page.get_by_label("Password again").fill(self.password)
        page.get_by_role("button", name="Register").click()
        page.wait_for_url("**/files")
        return self

    def api(self, method: str, url: str, data: object | None = None) -> dict:
        """A JSON API call with this person's session (as the page's own script does)."""
        csrf = next(c["value"] for c in self.context.cookies() if c["name"] == "coffer_csrf")
        resp = self.context.request.fetch(
            url, method=method, data=data, headers={"X-CSRF-Token": csrf}
        )
        assert resp.ok, resp.text()
        return resp.json() if resp.status != 204 else {}

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def people(browser: Browser, ui_stack: Stack) -> Iterator[list[Person]]:
    made: list[Person] = []

    def make(**options: object) -> Person:
        person = Person(browser, ui_stack.url(), **options)
        made.append(person)
        return person

    yield make  # type: ignore[misc]
    for person in made:
        person.close()
