"""Helpers for driving the console in Debian's Chromium with Playwright, against a real
`istmo up`: the browser (never downloaded), bulletins published and received through the
real `istmo` command, and a sign-in link from `istmo console login`.

Shared by tests/console/test_browser.py and scripts/screenshots.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

from broker.audit import merkle
from schemas.canonical import canonical_json
from tests.stackproc import UpProcess, run_cli
from tests.tamper import attack
from tests.waiting import eventually_sync

CHROMIUM = Path(os.environ.get("ISTMO_CHROMIUM", "/usr/bin/chromium"))
_AXE_RUN = """() => axe.run(document, {resultTypes: ['violations']}).then(r =>
  r.violations.map(v => v.id + ': ' + v.nodes.map(n => n.target.join(' ')).join(', ')))"""
VIEWPORT = {"width": 1366, "height": 768}


def chromium_missing() -> str | None:
    """Why the browser tests cannot run, or None when they can."""
    if not CHROMIUM.exists():
        return f"browser tests did NOT run: no Chromium at {CHROMIUM} (apt install chromium)"
    try:
        import playwright.sync_api  # noqa: F401  # only checking it is there
    except ImportError:
        return "browser tests did NOT run: the playwright package is not installed"
    return None


def axe_violations(page: Any) -> list[str]:
    """axe-core's violations on ``page`` (``rule: the elements``), none if it passes.

    axe-core comes with the axe-playwright-python package (its axe.min.js, MPL-2.0),
    evaluated in the page through the DevTools protocol: a page's content security policy
    does not stop it, and the page's own scripts are not changed."""
    import axe_playwright_python

    script = Path(axe_playwright_python.__file__).parent / "axe.min.js"
    page.evaluate(script.read_text())
    found: list[str] = page.evaluate(_AXE_RUN)
    return found


def publish(
    up: UpProcess,
    who: str,
    topic: str,
    *,
    rel_to: str = "SICA",
    classification: str = "RESTRICTED",
    tlp: str = "AMBER",
    title: str = "Console test bulletin",
) -> str:
    """Publish through `istmo publish`; returns the bulletin id."""
    r = run_cli(
        "publish", "--as", who, "--topic", topic, "--classification", classification,
        "--tlp", tlp, "--rel-to", rel_to, "--title", title,
        "--body", "Body text the console never sees.", data_dir=up.data_dir,
    )  # fmt: skip
    if r.returncode != 0:
        raise RuntimeError(f"publish failed: {r.stderr}")
    return r.stdout.strip()


def receive(up: UpProcess, who: str, count: int = 1, timeout: int = 10) -> list[dict[str, Any]]:
    r = run_cli(
        "receive", "--as", who, "--count", str(count), "--timeout", str(timeout), "--json",
        data_dir=up.data_dir,
    )  # fmt: skip
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def api_url(up: UpProcess) -> str:
    return f"http://127.0.0.1:{up.ports['api']}"


def console_link(up: UpProcess, who: str = "auditor") -> str:
    """A one-time sign-in link from `istmo console login --no-open`."""
    r = run_cli("console", "login", "--as", who, "--no-open", data_dir=up.data_dir)
    if r.returncode != 0:
        raise RuntimeError(f"istmo console login failed: {r.stderr}")
    return r.stdout.strip()


def wait_sequenced(up: UpProcess, bulletin_id: str, types: int, timeout: float = 60) -> None:
    """Wait until the log holds ``types`` entries of the bulletin under a signed head."""
    db = up.data_dir / "istmo.db"

    def entries_and_head() -> tuple[int, int, int | None]:
        with sqlite3.connect(db, timeout=60) as conn:
            n = conn.execute(
                "SELECT COUNT(*) FROM log_entry e JOIN audit_event a ON a.seq = e.event_seq "
                "WHERE a.bulletin_id = ?",
                (bulletin_id,),
            ).fetchone()[0]
            size = conn.execute("SELECT MAX(tree_size) FROM tree_head").fetchone()[0] or 0
            last = conn.execute('SELECT MAX("index") FROM log_entry').fetchone()[0]
        return n, size, last

    eventually_sync(
        entries_and_head,
        until=lambda got: got[0] >= types and got[2] is not None and got[1] > got[2],
        what=f"{types} events of {bulletin_id} under a signed tree head",
        timeout=timeout,
        interval=0.2,
    )


def tamper_entry(up: UpProcess, index: int) -> None:
    """As an attacker with the database: drop the append-only triggers and rewrite entry
    ``index``'s subject, with a matching leaf hash (the outbox row and the Merkle nodes
    are left alone)."""

    def change(conn: sqlite3.Connection) -> None:
        (leaf,) = conn.execute('SELECT leaf FROM log_entry WHERE "index" = ?', (index,)).fetchone()
        doc = json.loads(leaf)
        doc["subject"] = "xx-nobody"
        new = canonical_json(doc)
        conn.execute(
            'UPDATE log_entry SET leaf = ?, leaf_hash = ? WHERE "index" = ?',
            (new, merkle.leaf_hash(new), index),
        )

    attack(up.data_dir / "istmo.db", change)


def substitute_head_root(up: UpProcess, tree_size: int) -> None:
    """As an attacker with the database: put another root in the stored tree head document
    of ``tree_size`` (its signature, which the attacker cannot redo, left as it was)."""

    def change(conn: sqlite3.Connection) -> None:
        (raw,) = conn.execute(
            "SELECT raw FROM tree_head WHERE tree_size = ?", (tree_size,)
        ).fetchone()
        doc = json.loads(raw)
        doc["head"]["root_hash"] = base64.b64encode(hashlib.sha256(b"forged").digest()).decode()
        conn.execute(
            "UPDATE tree_head SET raw = ? WHERE tree_size = ?",
            (canonical_json(doc), tree_size),
        )

    attack(up.data_dir / "istmo.db", change)
