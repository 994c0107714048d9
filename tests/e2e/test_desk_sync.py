"""`istmo desk` against `istmo up`: "Sync now" receives a FLASH bulletin into the archive
through the SDK (a receipt goes to its originator), the analyst reads it, prints it (the
signature's key id on every page) and downloads its file through the SDK's checked save
path; the analyst whose ceiling admits it is notified by signed webhook and e-mail, the
one whose ceiling does not is told nothing; and no plaintext lands on the desk's disk.
Restarted with a background sync, the desk receives a bulletin published after it started
without anyone pressing "Sync now"."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pypdf
import pytest
from aiosmtpd.controller import Controller

from clients.archive import Archive
from clients.archive_keys import ArchiveSecret
from clients.desk_commands import people_of
from clients.desk_notify import NotifyPrefs, Preference, verify_webhook
from schemas.labels import Classification
from tests.stackproc import ISTMO, UpProcess, free_port, interrupt, publish_args, run_cli
from tests.waiting import eventually_sync
from tests.webhooks import SECRET, Posts, webhook_receiver

# Tens of seconds of stack start-up: run among the first files (tests/conftest.py).
pytestmark = pytest.mark.slow

TITLE = "CANARY-title-5e1d Go-fast boat sighted"
BODY = "CANARY-body-90ab Two go-fast boats left Puerto Barrios at 03:10."
PW = "analyst password two"


@pytest.fixture
def up(tmp_path: Path):
    proc = UpProcess(tmp_path / "istmo").start()
    yield proc
    assert proc.stop() == 0, proc.output


class _Mail:
    def __init__(self) -> None:
        self.got: list[tuple[list[str], bytes]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.got.append((list(envelope.rcpt_tos), bytes(envelope.content)))
        return "250 OK"


@pytest.fixture
def receivers(tmp_path: Path) -> Iterator[tuple[Path, _Mail, Posts]]:
    """The agency's own systems on loopback: an SMTP server and a webhook endpoint; the
    desk's notification file pointing at them."""
    mail, smtp_port = _Mail(), free_port()
    ctl = Controller(mail, hostname="127.0.0.1", port=smtp_port)
    smtp = (
        f'[smtp]\nhost = "127.0.0.1"\nport = {smtp_port}\nsender = "desk@sv-police.test"\n'
        "starttls = false\n"
    )
    ctl.start()
    try:
        with webhook_receiver(tmp_path, smtp) as (conf, posts):
            yield conf, mail, posts
    finally:
        ctl.stop()


def _csrf(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, html[:300]
    return m.group(1)


def _start_desk(args: list[str], scratch: Path) -> tuple[subprocess.Popen[str], int]:
    """`istmo desk ARGS` on a free loopback port, once it listens."""
    port = free_port()
    proc = subprocess.Popen(
        [ISTMO, "desk", *args, "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "TMPDIR": str(scratch)},
    )  # fmt: skip

    def listening() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"istmo desk exited: {proc.communicate()}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    try:
        eventually_sync(listening, what="the desk to listen")
    except BaseException:
        interrupt(proc)
        raise
    return proc, port


def _sign_in(c: httpx.Client) -> None:
    form = c.get("/login")
    r = c.post("/login", data={"csrf": _csrf(form.text), "name": "ana", "password": PW})
    assert r.status_code == 303


def test_sync_now_read_and_download(
    up: UpProcess,
    tmp_path: Path,
    receivers: tuple[Path, _Mail, list[tuple[dict[str, str], bytes]]],
) -> None:
    conf, mail, posts = receivers
    d = up.data_dir
    attached = tmp_path / "CANARY-name-77c2.txt"
    attached.write_text("ledger CANARY-file-31aa\n")
    pub = run_cli(
        "publish", "--as", "gt-police", *publish_args(TITLE, BODY), "--attach", str(attached),
        "--precedence", "FLASH",
        data_dir=d,
    )  # fmt: skip
    assert pub.returncode == 0, pub.stderr
    bid = pub.stdout.strip()
    (tmp_path / "pass").write_text("the desk's passphrase\n")
    (tmp_path / "pw").write_text(PW + "\n")
    secret = ["--as", "sv-police", "--passphrase-file", str(tmp_path / "pass")]
    added = run_cli(
        "desk", "user", "add", "ana", *secret, "--password-file", str(tmp_path / "pw"), data_dir=d
    )
    assert added.returncode == 0, added.stderr
    told = run_cli(
        "desk", "user", "notify", "ana", *secret, "--email", "ana@sv-police.test",
        "--ceiling", "RESTRICTED", data_dir=d,
    )  # fmt: skip
    assert told.returncode == 0, told.stderr
    assert "up to RESTRICTED, topics all, e-mail ana@sv-police.test" in told.stdout
    # A second analyst, cleared only for UNCLASSIFIED notices (set in-process: faster).
    with Archive.open(
        d / "keys" / "sv-police.archive.sqlite",
        "sv-police",
        lambda: ArchiveSecret("passphrase", b"the desk's passphrase"),
        create=False,
    ) as archive:
        people, prefs = people_of(archive), NotifyPrefs(archive.path)
        people.add("bob", "reader", PW)
        prefs.set(Preference("bob", "bob@sv-police.test", Classification.UNCLASSIFIED))
        people.close()
        prefs.close()
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    # No background sync here: "Sync now" must be the one that receives.
    proc, port = _start_desk(
        [*secret, "--data-dir", str(d), "--notify-config", str(conf), "--sync-every", "0"], scratch
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
            _sign_in(c)
            inbox = c.get("/")
            assert 'id="auto-sync"' not in inbox.text
            assert "0 bulletins" in inbox.text
            r = c.post("/sync", data={"csrf": _csrf(inbox.text)}, follow_redirects=True)
            assert r.status_code == 200, r.text
            assert "Received 1 new bulletin." in r.text
            assert TITLE in r.text
            read = c.get(f"/b/{bid}")
            assert BODY in read.text
            assert "RESTRICTED · TLP:AMBER" in read.text
            pdf = c.get(f"/b/{bid}/print")
            assert pdf.status_code == 200
            for page in pypdf.PdfReader(io.BytesIO(pdf.content)).pages:
                text = page.extract_text()
                assert text.count("TLP:AMBER") == 2
                assert re.search(r"originator gt-police, key sig-[0-9a-f]{32}, signed", text)
            got = c.get(f"/b/{bid}/file/0")
            assert got.status_code == 200, got.text
            assert got.content == attached.read_bytes()
            assert got.headers["content-type"] == "application/octet-stream"
            assert "attachment;" in got.headers["content-disposition"]
            eventually_sync(lambda: len(posts) == 1 and len(mail.got) == 1, what="ana's notices")
    finally:
        out, err = interrupt(proc)
    assert "CANARY" not in out + err
    # ana was told, by signed webhook and e-mail, without the title or text; bob never.
    headers, body = posts[0]
    assert verify_webhook(base64.b64decode(SECRET[6:]), headers, body, now=int(time.time()))
    notice = json.loads(body)["data"]
    assert (notice["analyst"], notice["bulletin"]["id"]) == ("ana", bid)
    assert notice["bulletin"]["precedence"] == "FLASH"
    assert mail.got[0][0] == ["ana@sv-police.test"]
    assert b"CANARY" not in body
    assert b"CANARY" not in mail.got[0][1]
    receipts = run_cli("receipts", "--as", "gt-police", bid, "--json", data_dir=d)
    got_at = {r["agency"]: r["received_at"] for r in json.loads(receipts.stdout)["recipients"]}
    assert got_at["sv-police"] is not None
    log = run_cli("desk", "log", "show", *secret, "--analyst", "ana", data_dir=d)
    actions = [line.split()[4] for line in log.stdout.splitlines()]
    assert [a for a in actions if not a.startswith("notify-")][:4] == [
        "download",
        "print",
        "open",
        "sync",
    ]
    assert sorted(a for a in actions if a.startswith("notify-")) == [
        "notify-email",
        "notify-webhook",
    ]
    everyone = run_cli("desk", "log", "show", *secret, data_dir=d).stdout
    assert "bob" not in [line.split()[3] for line in everyone.splitlines()]  # told nothing
    # Nothing readable on the desk's disk: the archive and its WAL, the temp files gone.
    needles = [b"CANARY", b"Puerto Barrios", b"go-fast", PW.encode()]
    files = list((d / "keys").glob("sv-police.archive.sqlite*"))
    hits = [f"{f.name}: {n!r}" for f in files for n in needles if n in f.read_bytes()]
    assert hits == []
    assert list(scratch.iterdir()) == []  # the downloaded copy was removed after serving it

    # Restarted with a background sync every 5 s: a bulletin published after the desk
    # started shows in the inbox without anyone pressing "Sync now".
    proc, port = _start_desk([*secret, "--data-dir", str(d), "--sync-every", "5"], scratch)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
            _sign_in(c)
            assert "Background sync every 5 s." in c.get("/").text
            later = run_cli(
                "publish", "--as", "gt-police", *publish_args("Second sighting", "Again."),
                data_dir=d,
            )  # fmt: skip
            assert later.returncode == 0, later.stderr
            eventually_sync(
                lambda: "Second sighting" in c.get("/").text,
                what="the background sync to receive the new bulletin",
                interval=0.5,
                timeout=60,
            )
            # Recorded once that sync ends (it waits a few seconds for more).
            auto = eventually_sync(
                lambda: [
                    line.split()
                    for line in run_cli(
                        "desk", "log", "show", *secret, data_dir=d
                    ).stdout.splitlines()
                    if "sync-auto" in line
                ],
                what="the background sync in the desk's log",
                interval=0.5,
            )
    finally:
        out, err = interrupt(proc)
    assert "background sync failed" not in err, err
    assert "summary not sent" not in err, err  # the access log's summary (ADR 31)
    assert len(auto) == 1
    assert auto[0][3] == "-"  # by no analyst, on no bulletin
