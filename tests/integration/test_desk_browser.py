"""The desk in Debian's Chromium driven by Playwright, against the real `istmo desk`: an
analyst signs in with the keyboard, searches, reads a bulletin and flags it; no page
breaks its content security policy or asks another host, and each page passes axe-core
with no violation, besides checks of our own (a language, one h1, a main landmark, every
control labelled, a skip link that works, visible focus).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.console.browser import CHROMIUM, VIEWPORT, axe_violations, chromium_missing
from tests.integration.test_desk_http import PW, Desk, bulletin, desk  # noqa: F401 -- fixture

pytestmark = [
    pytest.mark.skipif(chromium_missing() is not None, reason=str(chromium_missing())),
    pytest.mark.slow,
]  # slow: run first (tests/conftest.py)

_UNLABELLED = """() => [...document.querySelectorAll('input:not([type=hidden]), select')]
  .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label'))
  .map(el => el.name)"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM))
        try:
            yield b
        finally:
            b.close()


def _accessible(page: Any) -> None:
    assert page.evaluate("document.documentElement.lang") == "en"
    assert page.locator("h1").count() == 1
    assert page.locator("main#main").count() == 1
    assert page.evaluate(_UNLABELLED) == []
    assert axe_violations(page) == []


def test_analyst_signs_in_searches_reads_and_flags(browser: Any, desk: Desk) -> None:  # noqa: F811
    context = browser.new_context(viewport=VIEWPORT, locale="en-US")
    page = context.new_page()
    hosts: set[str] = set()
    problems: list[str] = []
    page.on("request", lambda req: hosts.add(req.url.split("/")[2]))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    try:
        page.goto(desk.url + "/")
        assert page.url.endswith("/login")
        _accessible(page)
        # The keyboard alone: the skip link first, then the name field.
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.className") == "skip"
        page.keyboard.press("Enter")
        assert page.evaluate("location.hash") == "#main"
        page.fill("#name", "ana")
        page.fill("#password", PW)
        page.keyboard.press("Enter")
        page.wait_for_url(desk.url + "/")
        _accessible(page)
        page.fill("#f-q", "barrios")
        page.keyboard.press("Enter")
        page.wait_for_url("**/?q=barrios**")
        assert "1 bulletin" in page.locator("#count").inner_text()
        page.click("text=Go-fast boat sighted")
        page.wait_for_url(f"**/b/{bulletin(1).id}")
        _accessible(page)
        assert "RESTRICTED · TLP:AMBER" in page.locator("#banner").inner_text()
        page.click("button:has-text('Set starred')")
        page.wait_for_selector("button:has-text('Clear starred')")
        page.focus("button:has-text('Clear starred')")
        outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
        assert outline not in ("", "none")
        page.goto(desk.url + "/log")
        _accessible(page)
        assert "flag" in page.locator("table").inner_text()
        assert hosts == {desk.url.split("/")[2]}
        assert problems == []
    finally:
        context.close()
