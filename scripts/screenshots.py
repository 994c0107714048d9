#!/usr/bin/env python3
"""Screenshots of the web console's main auditor and administrator pages, for docs/ and
the README.

Starts `istmo up` in a temporary directory on free ports, publishes and receives a few
bulletins through the real `istmo` command, signs in as the demo auditor (and the demo
administrator) with `istmo console login`, and saves 1366x768 PNGs under docs/img/ (or
--out): console-*.png for the auditor's pages, admin-*.png for the administrator's
(``--pages admin`` for those alone). Uses Debian's Chromium (/usr/bin/chromium, or
$ISTMO_CHROMIUM) through Playwright; never downloads a browser.

    .venv/bin/python scripts/screenshots.py [--out docs/img] [--pages all|auditor|admin]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.console.browser import (  # noqa: E402  # after the path is set
    CHROMIUM,
    VIEWPORT,
    api_url,
    chromium_missing,
    console_link,
    publish,
    receive,
    wait_sequenced,
)
from tests.stackproc import UpProcess, run_cli  # noqa: E402

BULLETINS = (  # originator, topic, releasable to, classification, TLP, title
    ("gt-police", "drug-trafficking", "SICA", "RESTRICTED", "AMBER", "Go-fast boats sighted"),
    ("hn-police", "organized-crime", "SICA", "RESTRICTED", "AMBER", "Gang financing network"),
    ("sv-police", "human-trafficking", "SICA", "RESTRICTED", "GREEN", "Smuggling route change"),
    ("jm-police", "arms-trafficking", "CARICOM", "RESTRICTED", "AMBER", "Arms shipment seized"),
    ("gt-police", "border-incident", "GT,HN", "CONFIDENTIAL", "RED", "Border post incident"),
    ("hn-police", "drug-trafficking", "SICA", "RESTRICTED", "AMBER", "Airstrip in Mosquitia"),
    ("tt-police", "migration", "CARICOM", "UNCLASSIFIED", "GREEN", "Arrivals by sea"),
    ("gt-police", "drug-trafficking", "SICA", "RESTRICTED", "AMBER", "Semi-submersible"),
)
RECEIVERS = ("rc-drugs", "hn-police", "sv-police", "jm-police")


# Administrator pages: a candidate that keeps SICA bulletins from military agencies.
NO_MILITARY = """
@id("sica.no-military")
@reason("SICA bulletins go to no military agency")
forbid (principal, action == Istmo::Action::"receive", resource)
when
{
  principal.sector == "military" &&
  resource.releasableTo.contains(Istmo::Jurisdiction::"SICA")
};
"""


def shoot_admin(browser: Any, up: UpProcess, out: Path) -> list[Path]:
    """The administrator's pages (admin-*.png), signed in as the demo administrator."""
    import cedarpy

    saved: list[Path] = []
    base = api_url(up)
    run_cli(
        "admin", "agency", "add", "pa-customs", "--name", "Panamá: customs", "--state", "PA",
        "--sector", "police", "--clearance", "RESTRICTED", "--topic", "drug-trafficking",
        data_dir=up.data_dir,
    )  # fmt: skip
    run_cli("admin", "suspend", "sv-military", "--note", "audit", data_dir=up.data_dir)
    page = browser.new_context(viewport=VIEWPORT, locale="en-US").new_page()

    def save(name: str) -> None:
        path = out / f"admin-{name}.png"
        page.screenshot(path=str(path))
        saved.append(path)

    page.goto(console_link(up, "admin"))
    page.goto(f"{base}/console/admin/")
    save("home")
    page.goto(f"{base}/console/admin/agencies")
    save("agencies")
    page.goto(f"{base}/console/admin/agencies/gt-police")
    save("agency")
    page.goto(f"{base}/console/admin/agencies/gt-police/suspend")
    save("confirm")
    page.goto(f"{base}/console/admin/agencies/pa-customs/token")
    page.click("#confirm")
    page.wait_for_selector("#token")
    save("token")
    page.goto(f"{base}/console/admin/policy")
    save("policy")
    page.goto(f"{base}/console/admin/policy/candidate")
    text = page.locator("#candidate").input_value()
    head, sica = text.split("// ---- overrides/sica.cedar\n")
    sica, sep, rest = sica.partition("// ---- ")
    candidate = cedarpy.format_policies(sica + NO_MILITARY)
    page.fill("#candidate", f"{head}// ---- overrides/sica.cedar\n{candidate}{sep}{rest}")
    page.locator("#candidate").evaluate("t => { t.scrollTop = t.scrollHeight; }")
    save("candidate")
    page.click("#check")
    page.wait_for_selector("#verdict")
    save("check")
    page.goto(f"{base}/console/lang/es?next=/console/admin/agencies/gt-police")
    save("agency-es")
    page.context.close()
    return saved


def shoot(out: Path, pages: str = "all") -> list[Path]:
    from playwright.sync_api import sync_playwright

    saved: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="istmo-shots-") as tmp:
        up = UpProcess(Path(tmp) / "istmo").start()
        try:
            ids = []
            for who, topic, rel, cls, tlp, title in BULLETINS:
                try:
                    ids.append(
                        publish(
                            up, who, topic, rel_to=rel, classification=cls, tlp=tlp, title=title
                        )
                    )
                except RuntimeError as exc:  # e.g. no agency follows that topic there
                    print(f"screenshots: skipped {who} {topic}: {exc}", file=sys.stderr)
            for who in RECEIVERS:
                receive(up, who, count=10, timeout=3)
            wait_sequenced(up, ids[0], types=3)
            wait_sequenced(up, ids[-1], types=3)
            base = api_url(up)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=str(CHROMIUM))
                ctx = browser.new_context(viewport=VIEWPORT, locale="en-US")
                page = ctx.new_page()

                def save(name: str, *, full: bool = False) -> None:
                    path = out / f"console-{name}.png"
                    page.screenshot(path=str(path), full_page=full)
                    saved.append(path)

                if pages == "admin":
                    saved += shoot_admin(browser, up, out)
                    browser.close()
                    return saved
                page.goto(f"{base}/console/")
                save("signin")
                page.goto(console_link(up, "auditor"))
                page.goto(f"{base}/console/log?decision=denied")
                save("log")
                page.goto(f"{base}/console/log?type=bulletin.accepted")
                page.locator("table.log tbody tr a").first.click()
                page.wait_for_selector("#verdict[data-result]")
                save("entry")
                page.goto(f"{base}/console/integrity")
                page.click("#run-verify")
                page.wait_for_selector("#verification .verdict")
                page.click("#check-consistency")
                page.wait_for_selector("#consistency")
                save("integrity")
                page.goto(f"{base}/console/charts")
                save("charts", full=True)
                page.goto(f"{base}/console/flow?bulletin={ids[0]}")
                save("flow")
                page.click("#lang-es")
                page.goto(f"{base}/console/log")
                save("log-es")
                if pages == "all":
                    saved += shoot_admin(browser, up, out)
                browser.close()
        finally:
            up.stop()
    return saved


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    parser.add_argument("--pages", choices=("all", "auditor", "admin"), default="all")
    args = parser.parse_args()
    why = chromium_missing()
    if why is not None:
        print(f"screenshots: {why}", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    for path in shoot(args.out, args.pages):
        print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
