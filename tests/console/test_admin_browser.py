"""The administrators' console end to end, in Debian's Chromium driven by Playwright,
against a real `istmo up` (nats-server, relay, sequencer, API) started as a user would.

The demo administrator signs in with `istmo console login`, suspends an agency with the
keyboard alone (confirmation page, CSRF-checked form), and the suspension takes effect:
the agency's SDK can no longer connect to publish, and another agency's bulletin is
denied to it by guard.agency-suspended. Reinstated, it publishes again. A broken
candidate policy is named; a candidate loaded from a file is validated and simulated
(who would lose access), then adopted after confirmation, and the relay applies it.
If /usr/bin/chromium is missing, every test here is skipped with a reason saying plainly
that the browser tests did not run.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import sqlite3
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cedarpy
import httpx
import pytest

from broker.config import default_policy_dir
from clients.sdk import IstmoClient, PublishResult
from schemas.errors import BusUnavailable
from schemas.labels import Labels
from tests.console.browser import api_url, chromium_missing, console_link
from tests.console.conftest import NO_MILITARY
from tests.stackproc import UpProcess

pytestmark = pytest.mark.skipif(chromium_missing() is not None, reason=str(chromium_missing()))

TO_HN = Labels.model_validate_json(
    json.dumps(
        {
            "topic": "border-incident",
            "classification": "RESTRICTED",
            "tlp": "AMBER",
            "rel_to": ["HN"],
        }
    )
)


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpProcess]:
    proc = UpProcess(tmp_path_factory.mktemp("admin-browser") / "istmo").start()
    try:
        yield proc
    finally:
        proc.stop()


def sign_in_admin(page: Any, up: UpProcess) -> None:
    page.goto(console_link(up, "admin"))
    assert page.url == api_url(up) + "/console/"
    assert "admin" in page.locator("header .who").inner_text()


def sdk_publish(up: UpProcess, who: str, labels: Labels = TO_HN) -> PublishResult:
    """Publish through the SDK in a thread of its own (Playwright's sync API owns this
    one's event loop)."""

    async def run() -> PublishResult:
        client = await IstmoClient.connect(up.data_dir / "keys" / f"{who}.json", up.nats_url)
        try:
            return await client.publish(title="t", text="b", labels=labels)
        finally:
            await client.close()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, run()).result(timeout=60)


def denied(result: PublishResult) -> dict[str, tuple[str, ...]]:
    return dict(result.denied)


def test_suspend_takes_effect_on_publish_then_reinstate(page: Any, up: UpProcess) -> None:
    before = sdk_publish(up, "gt-police")
    assert "hn-police" in before.routed
    sign_in_admin(page, up)
    page.get_by_role("link", name="Administration").first.click()
    page.click("#to-agencies")
    page.select_option("#f-place", "HN")
    page.click("#show")
    page.wait_for_url(re.compile(r"place=HN"))
    assert page.locator("table.agencies tbody tr").count() == 4
    page.locator("#row-hn-police a").first.click()
    page.wait_for_url(re.compile(r"/console/admin/agencies/hn-police$"))
    assert page.locator("#status").inner_text() == "active"
    assert page.locator("table.keys").inner_text().count("Ed25519") >= 2

    # With the keyboard alone: the action, the confirmation's note, Enter to submit.
    page.focus("#do-suspend")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/hn-police/suspend$"))
    assert "It can neither publish nor receive" in page.locator("#explain").inner_text()
    page.keyboard.type("console test: compromised workstation")  # the note has focus
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"done=suspend"))
    assert "hn-police is suspended" in page.locator("#done").inner_text()
    assert "applied=0" not in page.url  # the running stack confirmed it
    assert page.locator("#status").inner_text() == "suspended"

    # It takes effect: the agency's own SDK is refused by nats-server...
    with pytest.raises(BusUnavailable, match="refused hn-police's credentials"):
        sdk_publish(up, "hn-police")
    # ... and it is no longer a recipient: the policy denies it, naming the guard.
    during = sdk_publish(up, "gt-police")
    assert "hn-police" not in during.routed
    assert denied(during)["hn-police"] == ("guard.agency-suspended",)

    page.click("#do-reinstate")
    page.wait_for_url(re.compile(r"/hn-police/reinstate$"))
    page.click("#confirm")
    page.wait_for_url(re.compile(r"done=reinstate"))
    assert page.locator("#status").inner_text() == "active"
    again = sdk_publish(up, "hn-police", TO_HN.model_copy(update={"rel_to": ("GT",)}))
    assert again.state == "accepted"
    assert page.errors == []  # no CSP violation, no script error

    # Both changes are in the audit log under the administrator's id.
    with sqlite3.connect(up.data_dir / "istmo.db", timeout=60) as db:
        rows = db.execute(
            "SELECT type, actor FROM audit_event WHERE subject = 'hn-police' AND type IN "
            "('agency.suspended', 'agency.reinstated') ORDER BY seq"
        ).fetchall()
    assert rows == [("agency.suspended", "admin"), ("agency.reinstated", "admin")]


def test_an_auditor_cannot_administer(page: Any, up: UpProcess) -> None:
    page.goto(console_link(up, "auditor"))
    assert page.locator("header nav").inner_text().count("Administration") == 0
    response = page.goto(f"{api_url(up)}/console/admin/agencies/hn-police/suspend")
    assert response.status == 403
    assert "needs the scope admin" in page.locator("main").inner_text()


def test_validate_simulate_and_adopt_a_candidate(page: Any, up: UpProcess, tmp_path: Path) -> None:
    # A SICA bulletin to simulate against: the military agencies receive it today.
    sica = Labels.model_validate_json(
        json.dumps(
            {
                "topic": "border-incident",
                "classification": "RESTRICTED",
                "tlp": "AMBER",
                "rel_to": ["SICA"],
            }
        )
    )
    today = sdk_publish(up, "gt-police", sica)
    military = sorted(a for a in today.routed if a.endswith("-military"))
    assert military
    sign_in_admin(page, up)
    base = api_url(up)
    page.goto(f"{base}/console/admin/policy")
    active = page.locator("#version").inner_text()
    assert page.locator("pre.cedar .cd-kw").count() > 20
    assert page.locator("pre.cedar .cd-ann").count() > 10

    # A broken candidate: the problem is named, nothing is adopted.
    page.click("#to-candidate")
    page.wait_for_url(re.compile(r"/policy/candidate$"))
    page.fill("#candidate", "// ---- base.cedar\npermit (;\n")
    page.click("#check")
    page.wait_for_url(re.compile(r"/policy/check$"))
    assert "Not valid" in page.locator("#verdict").inner_text()
    assert page.locator("#problems li").first.inner_text().startswith("base.cedar")
    assert page.locator("#adopt").count() == 0

    # A candidate loaded from files: the override gains a guard against military agencies.
    files = tmp_path / "candidate"
    shutil.copytree(default_policy_dir(), files)
    override = files / "overrides" / "sica.cedar"
    override.write_text(cedarpy.format_policies(override.read_text() + "\n" + NO_MILITARY))
    page.goto(f"{base}/console/admin/policy/candidate")
    page.set_input_files("#files", [str(files / "base.cedar"), str(override)])
    page.wait_for_function(
        "document.getElementById('candidate').value.includes('sica.test-no-military')"
    )
    assert page.locator("#files-status").inner_text() == "base.cedar, overrides/sica.cedar"
    page.fill("#last", "20")
    page.click("#check")
    page.wait_for_url(re.compile(r"/policy/check$"))
    verdict = page.locator("#verdict").inner_text()
    version = re.search(r"version ([0-9a-f]{16})", verdict)
    assert version, verdict
    assert version.group(1) != active
    assert page.locator("#changed").inner_text() == "overrides/sica.cedar"
    losers = page.locator("#sim-agencies tbody tr").all_inner_texts()
    assert {row.split()[0] for row in losers} >= set(military)
    assert all("+" not in row for row in losers)  # nobody gains access

    # Adopt, after a confirmation step; the relay applies it at once.
    page.click("#adopt")
    page.wait_for_url(re.compile(r"/policy/confirm$"))
    assert f"Adopt {version.group(1)}" in page.locator("#confirm").inner_text()
    page.click("#confirm")
    page.wait_for_url(re.compile(r"adopted="))
    assert page.locator("#version").inner_text() == version.group(1)
    assert version.group(1) in page.locator("#adopted").inner_text()
    after = sdk_publish(up, "gt-police", sica)
    assert not [a for a in after.routed if a.endswith("-military")]
    assert denied(after)[military[0]] == ("sica.test-no-military",)
    assert httpx.get(f"{base}/v1/policy").json()["policy_version"] == version.group(1)
    assert page.errors == []


def test_spanish(page: Any, up: UpProcess) -> None:
    sign_in_admin(page, up)
    page.goto(f"{api_url(up)}/console/admin/agencies?place=GT")
    page.click("#lang-es")
    page.wait_for_url(re.compile(r"/console/admin/agencies\?place=GT"))
    assert page.locator("h1").inner_text() == "Agencias"
    assert page.get_by_role("button", name="Mostrar").is_visible()
    page.goto(f"{api_url(up)}/console/admin/policy")
    assert page.locator("h1").inner_text() == "Política vigente"
