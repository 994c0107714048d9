"""The desk's compose path against `istmo up` (ADR 27): sv-police's desk, in process
with the real SDK link, receives gt-police's bulletin; a reader may not compose; a bad
label is refused with a clear message and nothing is kept or sent; a drafter drafts an
answer with a file, a releaser (not the drafter) sees the policy's preview and releases
it; gt-police receives the answer in the bulletin's thread, with its file; the draft was
never in clear on the desk's disk, and the access log says who did what."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

from clients.archive import Archive, archive_path
from clients.archive_keys import ArchiveSecret
from clients.desk_commands import SdkLink, people_of
from clients.desk_compose import add_compose_routes
from clients.desk_web import DeskState, desk_app
from tests.stackproc import UpProcess, publish_args, run_cli

# Tens of seconds of stack start-up: run among the first files (tests/conftest.py).
pytestmark = pytest.mark.slow

TITLE = "Go-fast boat sighted"
ANSWER = "CANARY-answer-4c1e We saw it too, near La Union."
FILE = b"CANARY-file-8d02 track log\n"
PW = "analyst password three"
PASS = "the desk's passphrase"


def _csrf(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, html[:300]
    return m.group(1)


def _fields(csrf: str, **extra: str) -> dict[str, str]:
    return {
        "csrf": csrf,
        "title": f"Re: {TITLE}",
        "text": ANSWER,
        "topic": "drug-trafficking",
        "classification": "RESTRICTED",
        "tlp": "AMBER",
        "precedence": "ROUTINE",
        "rel_to": "SICA",
        "named": "gt-police",
        **extra,
    }


async def _sign_in(c: httpx.AsyncClient, name: str) -> str:
    form = await c.get("/login")
    r = await c.post("/login", data={"csrf": _csrf(form.text), "name": name, "password": PW})
    assert r.status_code == 303, r.text
    return _csrf((await c.get("/")).text)


@pytest.fixture
def up(tmp_path: Path):
    proc = UpProcess(tmp_path / "istmo").start()
    yield proc
    assert proc.stop() == 0, proc.output


async def test_draft_release_and_the_originator_gets_it_in_the_thread(
    up: UpProcess, tmp_path: Path
) -> None:
    d = up.data_dir
    pub = run_cli("publish", "--as", "gt-police", *publish_args(TITLE, "Body."), data_dir=d)
    assert pub.returncode == 0, pub.stderr
    bid = pub.stdout.strip()
    ks = d / "keys" / "sv-police.json"
    store = archive_path(ks)
    archive = Archive.open(store, "sv-police", lambda: ArchiveSecret("passphrase", PASS.encode()))
    people = people_of(archive)
    for name, role in (("rita", "reader"), ("ana", "drafter"), ("ben", "releaser")):
        people.add(name, role, PW)
    link = SdkLink(ks, lambda: up.nats_url, lambda: PASS)
    state = DeskState(archive, people, frozenset({"desk.test"}), link=link)
    app = desk_app(state, extend=(add_compose_routes,))

    def client() -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://desk.test")

    try:
        async with client() as rita:
            csrf = await _sign_in(rita, "rita")
            assert (await rita.get("/compose")).status_code == 403
            r = await rita.post(f"/b/{bid}/answer", data=_fields(csrf))
            assert r.status_code == 403
            assert "Readers do not compose" in r.text
        async with client() as ana:
            csrf = await _sign_in(ana, "ana")
            r = await ana.post("/sync", data={"csrf": csrf}, follow_redirects=True)
            assert "Received 1 new bulletin." in r.text
            page = await ana.get(f"/b/{bid}")
            assert f'href="/b/{bid}/answer"' in page.text
            form = await ana.get(f"/b/{bid}/answer")
            assert 'value="gt-police"' in form.text  # the originator named, as a reply's are
            # A bad label: refused beside its field, nothing kept, nothing sent.
            r = await ana.post(f"/b/{bid}/answer", data=_fields(csrf, tlp="PURPLE"))
            assert r.status_code == 400
            assert "choose a TLP level: one of CLEAR, GREEN, AMBER, AMBER+STRICT, RED" in r.text
            assert "nothing was saved or sent" in r.text
            assert state.drafts is not None
            assert state.drafts.listed() == []
            r = await ana.post(
                f"/b/{bid}/answer",
                data=_fields(csrf),
                files={"files": ("track.log", FILE, "text/plain")},
            )
            assert r.status_code == 303, r.text
            draft_url = r.headers["location"]
            draft = await ana.get(draft_url)
            assert "track.log (text/plain, 27 bytes)" in draft.text
            assert 'id="release"' not in draft.text  # a drafter does not release
            r = await ana.post(f"{draft_url}/release", data={"csrf": csrf})
            assert r.status_code == 403
        # The draft is sealed at rest: no word of it, nor its file, in the archive's files.
        on_disk = b"".join(p.read_bytes() for p in store.parent.glob(store.name + "*"))
        assert b"CANARY" not in on_disk
        async with client() as ben:
            csrf = await _sign_in(ben, "ben")
            listed = await ben.get("/drafts")
            assert draft_url in listed.text
            draft = await ben.get(draft_url)
            assert ANSWER in draft.text
            preview = draft.text[draft.text.index('id="preview"') :]
            assert re.search(r"<td>gt-police</td><td>yes</td>", preview), preview[:2000]
            r = await ben.post(f"{draft_url}/release", data={"csrf": csrf})
            assert r.status_code == 303, r.text
            done = await ben.get(draft_url)
            assert "Released and sent" in done.text
            sent = re.search(r'id="sent">([0-9a-f-]{36})<', done.text)
            assert sent, done.text
            again = await ben.post(f"{draft_url}/release", data={"csrf": csrf})
            assert again.status_code == 409  # released once
            # A person's acknowledgement, apart from the receipt sync sent.
            r = await ben.post(f"/b/{bid}/ack", data={"csrf": csrf}, follow_redirects=True)
            assert "Your acknowledgement went to gt-police" in r.text
        log = [(who, action) for _, _, who, action, _ in people.entries(limit=20)]
        assert ("ana", "answer") in log
        assert ("ben", "release") in log
        assert ("rita", "request-refused") in log
        assert ("ben", "acknowledge") in log
        assert people.verify().ok
    finally:
        assert state.drafts is not None
        state.drafts.close()
        people.close()
        archive.close()
    # gt-police receives the answer in its bulletin's thread, with the file.
    (tmp_path / "gt-pass").write_text("gt-police's archive passphrase\n")
    secret = ["--as", "gt-police", "--passphrase-file", str(tmp_path / "gt-pass")]
    got = run_cli("inbox", "sync", *secret, "--count", "2", "--timeout", "30", data_dir=d)
    assert got.returncode == 0, got.stderr
    shown = run_cli("inbox", "show", *secret, sent.group(1), "--json", data_dir=d)
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert (doc["originator"], doc["in_reply_to"], doc["thread"]) == ("sv-police", bid, bid)
    assert doc["body"] == ANSWER
    assert [a["name"] for a in doc["attachments"]] == ["track.log"]
    # gt-police's desk lists who acknowledged which of its bulletins.
    gt = Archive.open(
        archive_path(d / "keys" / "gt-police.json"),
        "gt-police",
        lambda: ArchiveSecret("passphrase", b"gt-police's archive passphrase"),
    )
    gt_people = people_of(gt)
    gt_people.add("ana", "reader", PW)
    gt_state = DeskState(gt, gt_people, frozenset({"desk.test"}))
    gt_app = desk_app(gt_state, extend=(add_compose_routes,))
    try:
        transport = httpx.ASGITransport(gt_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://desk.test") as c:
            await _sign_in(c, "ana")
            acks = (await c.get("/acks")).text
            row = re.search(
                rf'<td class="mono">{bid}</td><td><a href="/b/([0-9a-f-]+)">sv-police', acks
            )
            assert row, acks
            ack = await c.get(f"/b/{row.group(1)}")
            assert "a person at sv-police read the bulletin it answers" in ack.text
    finally:
        assert gt_state.drafts is not None
        gt_state.drafts.close()
        gt_people.close()
        gt.close()
