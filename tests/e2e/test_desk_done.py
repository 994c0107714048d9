"""Issue 18's "Done when", in Debian's Chromium through Playwright: `istmo up` and two desks
(rc-drugs and gt-police, each syncing in the background) run from the README's commands.
An analyst of rc-drugs signs in, finds a bulletin from last week by a word of its text,
drafts an answer; a releaser releases it; gt-police's desk shows the answer in the
bulletin's thread; a FLASH bulletin triggers rc-drugs' signed webhook; the PDF carries the
banners on every page; every desk page visited passes axe-core with no violation; and the
canary is never on either desk's disk in clear, nor in the broker's stores.

"Last week": the SDK stamps a bulletin's creation time itself (a publisher cannot backdate
it), so rc-drugs receives the bulletin with `istmo inbox sync` and the test puts it back
into the archive dated seven days earlier (created and received), resealed with the
archive's key, before the desk starts.

Set ISTMO_SCREENSHOTS=docs/img to save the desk's screenshots (desk-*.png) on the way.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pypdf
import pytest

from clients.archive import Archive, archive_path
from clients.archive_keys import ArchiveSecret
from clients.desk_commands import people_of
from clients.desk_notify import NotifyPrefs, Preference, verify_webhook
from schemas.labels import Classification
from tests.console.browser import CHROMIUM, VIEWPORT, axe_violations, chromium_missing
from tests.e2e.test_desk_sync import _start_desk
from tests.stackproc import UpProcess, interrupt, publish_args, run_cli
from tests.waiting import eventually_sync
from tests.webhooks import SECRET, Posts, webhook_receiver

pytestmark = [
    pytest.mark.skipif(chromium_missing() is not None, reason=str(chromium_missing())),
    pytest.mark.slow,
]  # slow: run first (tests/conftest.py)

WEEK = 7 * 86400
WORD = "estuary"  # in the text only, not the title
TITLE = "Go-fast boat hidden overnight"
# The canaries: phrases no other test uses, sealed everywhere but in the browser.
BODY = f"A go-fast boat hid in the Punta Manabique {WORD} until 04:00."
ANSWER = "Our patrol saw it leave northwards at 04:20, towards Omoa."
FLASH = "Armed crew aboard the Sea Heron: keep clear."
PW = "a long analyst password"
SHOTS = os.environ.get("ISTMO_SCREENSHOTS")


@pytest.fixture
def webhook(tmp_path: Path) -> Iterator[tuple[Path, Posts]]:
    """rc-drugs' own system on loopback: a webhook endpoint; the desk's notify file."""
    with webhook_receiver(tmp_path) as got:
        yield got


class _Pages:
    """Each desk page visited: axe-core run on it, its violations gathered; a screenshot
    saved when ISTMO_SCREENSHOTS names a folder."""

    def __init__(self) -> None:
        self.violations: list[str] = []
        self.checked: list[str] = []

    def check(self, page: Any, shot: str | None = None, *, scroll: str | None = None) -> None:
        self.violations += [f"{page.url}: {v}" for v in axe_violations(page)]
        self.checked.append(page.url)
        if shot and SHOTS:
            if scroll:  # that element at the top of the picture
                page.evaluate(
                    "s => scrollTo(0, document.querySelector(s).getBoundingClientRect().top"
                    " + scrollY - 16)",
                    scroll,
                )
            page.screenshot(path=str(Path(SHOTS) / f"desk-{shot}.png"))


def _sign_in(page: Any, url: str, name: str, pages: _Pages) -> None:
    page.goto(url + "/login")
    pages.check(page)
    page.fill("#name", name)
    page.fill("#password", PW)
    page.keyboard.press("Enter")
    page.wait_for_url(url + "/")


def _backdate(store: Path, agency: str, secret: ArchiveSecret, bid: str) -> int:
    """Put bulletin ``bid`` back into the archive as received seven days earlier."""
    with Archive.open(store, agency, lambda: secret, create=False) as archive:
        got = archive.get(bid)
        assert got is not None
    with sqlite3.connect(store) as db:
        db.execute("DELETE FROM bulletins WHERE id = ?", (bid,))
    old = dataclasses.replace(
        got.bulletin,
        created_at=got.bulletin.created_at - WEEK,
        received_at=got.bulletin.received_at - WEEK,
    )
    with Archive.open(store, agency, lambda: secret, create=False) as archive:
        assert archive.add(old) is not None
    return old.created_at


def _people(store: Path, agency: str, secret: ArchiveSecret, who: dict[str, str]) -> None:
    with Archive.open(store, agency, lambda: secret) as archive:
        people = people_of(archive)
        for name, role in who.items():
            people.add(name, role, PW)
        if agency == "rc-drugs":
            prefs = NotifyPrefs(archive.path)
            prefs.set(Preference("ana", None, Classification.RESTRICTED))
            prefs.close()
        people.close()


def test_done_when(
    tmp_path: Path, webhook: tuple[Path, list[tuple[dict[str, str], bytes]]]
) -> None:
    conf, posts = webhook
    up = UpProcess(tmp_path / "istmo").start()
    d = up.data_dir
    desks: list[subprocess.Popen[str]] = []
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    try:
        pub = run_cli("publish", "--as", "gt-police", *publish_args(TITLE, BODY), data_dir=d)
        assert pub.returncode == 0, pub.stderr
        bid = pub.stdout.strip()
        secrets: dict[str, list[str]] = {}
        for agency in ("rc-drugs", "gt-police"):
            (tmp_path / f"{agency}.pass").write_text(f"{agency}'s desk passphrase\n")
            secrets[agency] = [
                "--as",
                agency,
                "--passphrase-file",
                str(tmp_path / f"{agency}.pass"),
            ]
        got = run_cli("inbox", "sync", *secrets["rc-drugs"], "--count", "1", "--timeout", "30",
                      data_dir=d)  # fmt: skip
        assert got.returncode == 0, got.stderr
        rc_store = archive_path(d / "keys" / "rc-drugs.json")
        gt_store = archive_path(d / "keys" / "gt-police.json")
        rc_secret = ArchiveSecret("passphrase", b"rc-drugs's desk passphrase")
        gt_secret = ArchiveSecret("passphrase", b"gt-police's desk passphrase")
        created = _backdate(rc_store, "rc-drugs", rc_secret, bid)
        _people(rc_store, "rc-drugs", rc_secret, {"ana": "drafter", "rita": "releaser"})
        _people(gt_store, "gt-police", gt_secret, {"gus": "reader"})
        rc_proc, rc_port = _start_desk(
            [*secrets["rc-drugs"], "--data-dir", str(d), "--sync-every", "5",
             "--notify-config", str(conf)],
            scratch,
        )  # fmt: skip
        desks.append(rc_proc)
        gt_proc, gt_port = _start_desk(
            [*secrets["gt-police"], "--data-dir", str(d), "--sync-every", "5"], scratch
        )
        desks.append(gt_proc)
        rc, gt = f"http://127.0.0.1:{rc_port}", f"http://127.0.0.1:{gt_port}"
        # A FLASH bulletin, published once rc-drugs' desk runs: its background sync
        # receives it and the webhook tells ana.
        flash = run_cli(
            "publish", "--as", "gt-police", *publish_args("Armed crew at sea", FLASH),
            "--precedence", "FLASH", data_dir=d,
        )  # fmt: skip
        assert flash.returncode == 0, flash.stderr
        flash_id = flash.stdout.strip()
        sent = _browse(rc, gt, bid, created, flash_id)
        eventually_sync(lambda: posts, what="the FLASH bulletin's webhook", timeout=60)
    finally:
        outputs = [interrupt(p) for p in desks]
        assert up.stop() == 0, up.output
    # The webhook: signed, for ana, naming the FLASH bulletin, without its text.
    headers, body = posts[0]
    assert verify_webhook(base64.b64decode(SECRET[6:]), headers, body, now=int(time.time()))
    notice = json.loads(body)["data"]
    assert (notice["analyst"], notice["bulletin"]["id"]) == ("ana", flash_id)
    assert notice["bulletin"]["precedence"] == "FLASH"
    assert sent
    needles = [WORD.encode(), b"Manabique", b"northwards", b"Omoa", b"Sea Heron", b"Armed crew",
               TITLE.encode(), PW.encode()]  # fmt: skip
    assert [n for n in needles if n in body] == []
    # The canary: nowhere in clear on the desks' disk (archives, their WAL, temp files) nor
    # in the broker's stores (its database, JetStream's files), nor in any output.
    hits = [
        f"{path}: {n!r}"
        for path in [*d.rglob("*"), *scratch.rglob("*")]
        if path.is_file()
        for n in needles
        if n in path.read_bytes()
    ]
    assert list((d / "keys").glob("*.archive.sqlite"))  # both desks' archives were scanned
    said = "".join(out + err for out, err in outputs) + up.output
    hits += [f"output: {n!r}" for n in needles if n.decode() in said]
    assert hits == []
    assert list(scratch.iterdir()) == []


def _browse(rc: str, gt: str, bid: str, created: int, flash_id: str) -> str:
    """The analysts' part, in the browser; the id of the answer sent."""
    from playwright.sync_api import sync_playwright

    pages = _Pages()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM))
        try:
            # Two desks on one host name: cookies are per host, not port; one context each.
            rc_ctx = browser.new_context(viewport=VIEWPORT, locale="en-US")
            page = rc_ctx.new_page()
            problems: list[str] = []
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            _sign_in(page, rc, "ana", pages)
            # The FLASH arrives by the background sync, nobody pressing "Sync now".
            eventually_sync(
                lambda: (page.reload(), flash_id in page.content())[1],
                what="the FLASH bulletin on rc-drugs' desk",
                timeout=60,
                interval=1,
            )
            pages.check(page, "inbox")
            # Last week's bulletin, found by a word of its text.
            page.fill("#f-q", WORD)
            page.keyboard.press("Enter")
            page.wait_for_url(f"**/?q={WORD}**")
            assert "1 bulletin" in page.locator("#count").inner_text()
            row = page.locator("tbody tr").inner_text()
            assert datetime.fromtimestamp(created, UTC).strftime("%Y-%m-%d") in row
            assert created < time.time() - WEEK + 3600
            pages.check(page)
            page.click(f"text={TITLE}")
            page.wait_for_url(f"**/b/{bid}")
            assert "RESTRICTED · TLP:AMBER" in page.locator("#banner").inner_text()
            pages.check(page, "bulletin")
            # The printout: both banners on every page.
            pdf = page.request.get(f"{rc}/b/{bid}/print")
            assert pdf.status == 200
            for sheet in pypdf.PdfReader(io.BytesIO(pdf.body())).pages:
                text = sheet.extract_text()
                assert text.count("TLP:AMBER") == 2
                assert text.count("RESTRICTED") >= 2
            # ana drafts the answer; she may not release it.
            page.click("#answer")
            page.wait_for_url(f"**/b/{bid}/answer")
            page.fill("#c-text", ANSWER)
            pages.check(page, "compose")
            page.click("form.compose button[type=submit]")
            page.wait_for_url("**/drafts/**")
            draft = page.url
            assert page.locator("#release").count() == 0
            pages.check(page)
            page.click("form[action='/logout'] button")
            page.wait_for_url("**/login?out=1")
            # rita, a releaser, sees the policy's preview and releases it.
            _sign_in(page, rc, "rita", pages)
            page.goto(rc + "/drafts")
            pages.check(page)
            page.click(f"a[href='{draft.removeprefix(rc)}']")
            page.wait_for_url(draft)
            assert "gt-police" in page.locator("#preview").inner_text()
            pages.check(page, "draft", scroll="#body")
            page.click("#release")
            page.wait_for_selector("#sent")
            sent = page.locator("#sent").inner_text()
            pages.check(page)
            assert problems == []
            # gt-police's desk: the answer arrives in the bulletin's thread by itself.
            gt_page = browser.new_context(viewport=VIEWPORT, locale="en-US").new_page()
            _sign_in(gt_page, gt, "gus", pages)
            eventually_sync(
                lambda: (gt_page.reload(), sent in gt_page.content())[1],
                what="the answer on gt-police's desk",
                timeout=60,
                interval=1,
            )
            pages.check(gt_page)
            gt_page.click(f"a[href='/b/{sent}']")
            gt_page.wait_for_url(f"**/b/{sent}")
            assert ANSWER in gt_page.locator("#body").inner_text()
            assert gt_page.locator(f"a[href='/b/{bid}']").count() == 1  # it answers bid
            pages.check(gt_page)
        finally:
            browser.close()
    assert pages.violations == [], pages.violations
    assert len(pages.checked) >= 12
    return sent
