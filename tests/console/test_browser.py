"""The console end to end, in Debian's Chromium driven by Playwright, against a real
`istmo up` (nats-server, relay, sequencer, API) started as a user would.

An auditor signs in with `istmo console login`, filters the log, opens an entry and sees
the browser verify it (SubtleCrypto SHA-256 and Ed25519 against the signed tree head);
after an attacker rewrites that entry in the SQLite file, the same page shows the loud
failure and the log flags the row. The page switches to Spanish. The development login
is offered under `istmo up`. If /usr/bin/chromium is missing, every test here is skipped
with a reason saying plainly that the browser tests did not run.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.console.browser import (
    VIEWPORT,
    api_url,
    chromium_missing,
    console_link,
    publish,
    receive,
    substitute_head_root,
    tamper_entry,
    wait_sequenced,
)
from tests.stackproc import UpProcess

pytestmark = pytest.mark.skipif(chromium_missing() is not None, reason=str(chromium_missing()))


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpProcess]:
    proc = UpProcess(tmp_path_factory.mktemp("browser") / "istmo").start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def bulletin(up: UpProcess) -> str:
    bid = publish(up, "gt-police", "drug-trafficking")
    assert [b["id"] for b in receive(up, "rc-drugs")] == [bid]
    # accepted, decided (routed to several, denied to several: ADR 8), received by rc-drugs
    wait_sequenced(up, bid, types=3)
    return bid


def sign_in(page, up: UpProcess) -> None:  # type: ignore[no-untyped-def]
    page.goto(console_link(up, "auditor"))
    assert page.url == api_url(up) + "/console/"  # the code is gone from the address
    assert "auditor" in page.locator("header .who").inner_text()


def test_auditor_filters_opens_and_verifies(page, up: UpProcess, bulletin: str) -> None:  # type: ignore[no-untyped-def]
    sign_in(page, up)
    page.get_by_role("link", name="Audit log").first.click()
    page.select_option("#f-type", "bulletin.decided")
    page.click("#apply")
    page.wait_for_url(re.compile(r"type=bulletin\.decided"))
    types = page.locator("table.log tbody td:nth-child(3)").all_inner_texts()
    assert types
    assert set(types) == {"recipients decided"}  # the type in words; its code in the title
    # Narrow to one agency with the keyboard alone: focus, choose, submit.
    page.select_option("#f-agency", "jm-police")
    page.focus("#apply")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"agency=jm-police"))
    rows = page.locator("table.log tbody tr")
    assert rows.count() >= 1
    assert "jm-police" in rows.first.inner_text()
    # Open the entry: the browser checks it against the signed tree head.
    rows.first.locator("a").first.click()
    verdict = page.locator("#verdict")
    page.wait_for_selector("#verdict[data-result]")
    assert verdict.get_attribute("data-result") == "verified", page.locator("#steps").inner_text()
    assert "VERIFIED" in verdict.inner_text()
    assert page.locator("#steps li.ok").count() == 5
    assert page.errors == []  # no CSP violation, no script error


def test_flow_of_the_bulletin(page, up: UpProcess, bulletin: str) -> None:  # type: ignore[no-untyped-def]
    sign_in(page, up)
    page.goto(f"{api_url(up)}/console/flow?bulletin={bulletin}")
    table = page.locator("#candidates").inner_text()
    assert "rc-drugs" in table
    assert "jm-police" in table
    assert "permitted" in table
    assert "denied" in table
    assert page.locator("ol.flow").inner_text().count("gt-police") >= 1


def test_spanish_switch(page, up: UpProcess, bulletin: str) -> None:  # type: ignore[no-untyped-def]
    sign_in(page, up)
    page.goto(f"{api_url(up)}/console/log")
    page.click("#lang-es")
    page.wait_for_url(re.compile(r"/console/log"))
    assert page.locator("html").get_attribute("lang") == "es"
    assert page.locator("h1").inner_text() == "Registro de auditoría"
    assert page.get_by_role("button", name="Aplicar filtros").is_visible()
    page.goto(f"{api_url(up)}/console/integrity")
    assert page.locator("h1").inner_text() == "Integridad"


def test_dev_login_under_istmo_up(page, up: UpProcess) -> None:  # type: ignore[no-untyped-def]
    page.goto(f"{api_url(up)}/console/")
    page.click("#dev-auditor")
    page.wait_for_url(re.compile(r"/console/$"))
    assert "auditor" in page.locator("header .who").inner_text()
    page.click("header form button")  # sign out (a CSRF-checked POST)
    page.wait_for_url(re.compile(r"out=1"))
    assert page.locator("#dev-auditor").is_visible()


def test_keyboard_and_laptop_screen(page, up: UpProcess, bulletin: str) -> None:  # type: ignore[no-untyped-def]
    sign_in(page, up)
    base = api_url(up)
    for path in ("/console/log", "/console/integrity", "/console/charts",
                 f"/console/flow?bulletin={bulletin}", "/console/log/0"):  # fmt: skip
        page.goto(base + path)
        # Readable at 1366x768: nothing wider than the window.
        assert page.evaluate("document.documentElement.scrollWidth") <= VIEWPORT["width"], path
        # Every field has a label; every control is a real button or link.
        unlabelled = page.evaluate(
            "[...document.querySelectorAll('input:not([type=hidden]), select')]"
            ".filter(e => e.labels.length === 0).map(e => e.name)"
        )
        assert unlabelled == [], path
        assert page.locator("[onclick], div[role=button], span[role=button]").count() == 0
    # The first Tab lands on the skip link, which shows itself and jumps to the content.
    page.goto(base + "/console/log")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip"
    box = page.locator("a.skip").bounding_box()
    assert box is not None
    assert box["x"] >= 0
    assert box["y"] >= 0
    page.keyboard.press("Enter")
    assert page.evaluate("location.hash") == "#main"
    # Focus is visible: the focused control gets an outline.
    page.focus("#apply")
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline not in ("", "none")


def test_no_request_leaves_the_broker(page, up: UpProcess, bulletin: str) -> None:  # type: ignore[no-untyped-def]
    hosts: set[str] = set()
    page.on("request", lambda req: hosts.add(req.url.split("/")[2]))
    violations: list[str] = []
    page.on(
        "console", lambda m: violations.append(m.text) if "Content Security" in m.text else None
    )
    sign_in(page, up)
    base = api_url(up)
    pages = ["/console/log", "/console/log/1", "/console/integrity", "/console/charts"]
    pages += [f"/console/flow?bulletin={bulletin}", "/console/integrity?old=1&new=2"]
    for path in pages:
        page.goto(base + path)
        page.wait_for_load_state("networkidle")
    assert hosts == {base.split("/")[2]}
    assert violations == []
    assert page.errors == []


def test_tampered_entry_is_flagged(page, up: UpProcess, bulletin: str) -> None:  # type: ignore[no-untyped-def]
    # Runs last in this module: it leaves the log altered.
    sign_in(page, up)
    page.goto(f"{api_url(up)}/console/log?type=bulletin.accepted")
    link = page.locator("table.log tbody tr a").first
    index = int(link.inner_text())
    link.click()
    page.wait_for_selector("#verdict[data-result]")
    assert page.locator("#verdict").get_attribute("data-result") == "verified"

    tamper_entry(up, index)

    page.reload()
    page.wait_for_selector("#verdict[data-result]")
    verdict = page.locator("#verdict")
    assert verdict.get_attribute("data-result") == "failed"
    assert "VERIFICATION FAILED" in verdict.inner_text()
    assert verdict.get_attribute("role") == "alert"
    assert page.locator("#steps li.bad").count() >= 1
    # The log page flags the row too (its bytes no longer match the outbox row).
    page.goto(f"{api_url(up)}/console/log?type=bulletin.accepted")
    row = page.locator("table.log tbody tr", has=page.locator(f'a[href="/console/log/{index}"]'))
    assert "ALTERED" in row.inner_text()
    assert "altered" in (row.get_attribute("class") or "")
    # And the full verification names it.
    page.goto(f"{api_url(up)}/console/integrity")
    page.click("#run-verify")
    page.wait_for_url(re.compile(r"/console/integrity$"))
    result = page.locator("#verification .verdict")
    assert result.get_attribute("data-result") == "failed"
    assert f"entry {index}" in result.inner_text()
    # The consistency check, in the browser too: honest heads pass ...
    page.goto(f"{api_url(up)}/console/integrity")
    sizes = [
        int(t) for t in page.locator("section:last-of-type tbody td:first-child").all_inner_texts()
    ]
    new, old = sizes[0], sizes[-1]
    page.fill("#old", str(old))
    page.fill("#new", str(new))
    page.click("#check-consistency")
    page.wait_for_selector("#consistency-browser[data-result]")
    assert page.locator("#consistency").get_attribute("data-result") == "consistent"
    assert page.locator("#consistency-browser").get_attribute("data-result") == "verified"
    assert (
        "Ed25519 signatures of both tree heads" in page.locator("#consistency-steps").inner_text()
    )
    # ... and a substituted old head (its root changed, its signature kept) fails both.
    substitute_head_root(up, old)
    page.reload()
    page.wait_for_selector("#consistency-browser[data-result]")
    assert page.locator("#consistency").get_attribute("data-result") == "inconsistent"
    assert page.locator("#consistency-browser").get_attribute("data-result") == "failed"
    assert "signature" in page.locator("#consistency-steps").inner_text()


def test_screenshot_helper_writes_pngs(page, up: UpProcess, bulletin: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sign_in(page, up)
    page.goto(f"{api_url(up)}/console/charts")
    out = tmp_path / "charts.png"
    page.screenshot(path=str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
