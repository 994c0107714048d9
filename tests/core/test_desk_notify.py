"""The desk's notifications (clients.desk_notify): the rules as table tests, and one run
of the notifier against a real SMTP server (aiosmtpd) and a real HTTP receiver on
loopback, with two analysts of different ceilings: the one below a bulletin's
classification is told nothing of it, not even its id (OpenCTI's digest once was)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from clients.archive import Archive
from clients.archive_keys import ArchiveSecret
from clients.desk_notify import (
    Notifier,
    NotifyConfig,
    NotifyPrefs,
    Preference,
    SmtpConfig,
    WebhookConfig,
    admits,
    backoff,
    check_email,
    email_of,
    notice_for,
    parse_notify_config,
    sign_webhook,
    verify_webhook,
    webhook_body,
)
from clients.desk_people import DeskPeople
from clients.results import ReceivedBulletin
from schemas.errors import ConfigError
from schemas.labels import Classification, Labels, Precedence, Tlp
from tests.stackproc import free_port
from tests.waiting import eventually

TITLE = "CANARY-title Go-fast boat at Puerto Barrios"
BODY = "CANARY-body two boats at 03:10"
KEY = b"k" * 32


def received(
    n: int = 1,
    cls: Classification = Classification.RESTRICTED,
    precedence: Precedence = Precedence.FLASH,
    topic: str = "drug-trafficking",
) -> ReceivedBulletin:
    return ReceivedBulletin(
        id=f"00000000-0000-4000-8000-{n:012d}",
        originator="gt-police",
        labels=Labels(
            topic=topic,  # type: ignore[arg-type]  # one of TOPICS
            classification=cls,
            tlp=Tlp.AMBER,
            rel_to=("SICA",),
            precedence=precedence,
        ),
        title=TITLE,
        body=BODY,
        created_at=1_800_000_000,
        received_at=1_800_000_100,
        caveats=(),
    )


R, C, U = Classification.RESTRICTED, Classification.CONFIDENTIAL, Classification.UNCLASSIFIED


@pytest.mark.parametrize(
    ("ceiling", "topics", "cls", "topic", "told"),
    [
        (R, (), R, "drug-trafficking", True),
        (C, (), R, "drug-trafficking", True),
        (U, (), R, "drug-trafficking", False),  # above the ceiling
        (R, ("early-warning",), R, "drug-trafficking", False),  # a topic not followed
        (R, ("early-warning", "drug-trafficking"), R, "drug-trafficking", True),
        (Classification.SECRET, (), Classification.SECRET, "early-warning", True),
    ],
)
def test_admits(
    ceiling: Classification, topics: tuple[str, ...], cls: Classification, topic: str, told: bool
) -> None:
    p = Preference("ana", None, ceiling, topics)
    assert admits(p, received(cls=cls, topic=topic).labels) is told


@pytest.mark.parametrize(("attempt", "want"), [(1, 2.0), (2, 4.0), (3, 8.0), (20, 300.0)])
def test_backoff_doubles_up_to_a_cap(attempt: int, want: float) -> None:
    assert backoff(attempt, 2.0) == want


@pytest.mark.parametrize(
    ("content", "has_title", "has_text"),
    [("metadata", False, False), ("title", True, False), ("text", True, True)],
)
def test_notice_carries_the_text_only_if_the_agency_opts_in(
    content: str, has_title: bool, has_text: bool
) -> None:
    cfg = NotifyConfig(content=content, desk_url="https://desk.agency.example/")  # type: ignore[arg-type]
    n = notice_for("ana", received(), cfg)
    assert n["bulletin"]["link"] == f"https://desk.agency.example/b/{received().id}"
    assert ("title" in n["bulletin"]) is has_title
    assert ("text" in n["bulletin"]) is has_text
    mail = email_of(n, to="ana@agency.test", sender="desk@agency.test", now=1_800_000_200)
    raw = mail.as_bytes()
    assert (b"CANARY-title" in raw) is has_title
    assert (b"CANARY-body" in raw) is has_text
    assert mail["Subject"].startswith("[FLASH] RESTRICTED TLP:AMBER bulletin from gt-police")


def test_standard_webhooks_vector_and_replay_window() -> None:
    # The example of the Standard Webhooks specification's reference libraries.
    import base64

    key = base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    body = b'{"test": 2432232314}'
    sig = sign_webhook(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
    assert sig == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    h = {"webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek", "webhook-timestamp": "1614265330"}
    h["webhook-signature"] = "v1,bm90IGl0 " + sig
    assert verify_webhook(key, h, body, now=1614265330 + 10)
    assert not verify_webhook(key, h, body, now=1614265330 + 301)  # too old: a replay
    assert not verify_webhook(key, h, body + b" ", now=1614265330)
    assert not verify_webhook(b"x" * 32, h, body, now=1614265330)


SECRET_LINE = "whsec_" + "a2V5IGtleSBrZXkga2V5IGtleSBrZXkga2V5IGtleQ=="


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('[webhook]\nurl = "http://hooks.agency.example/x"\nsecret_file = "s"', "https://"),
        (
            '[smtp]\nhost = "smtp.agency.example"\nsender = "d@a.example"\nstarttls = false',
            "loopback",
        ),
        (
            '[notify]\ncontent = "everything"\n[smtp]\nhost = "127.0.0.1"\nsender = "d@a.example"',
            "content",
        ),
        ('[notify]\nprecedences = ["URGENT"]', "precedences"),
        ('[notify]\nattempts = 0\n[smtp]\nhost = "127.0.0.1"\nsender = "d@a.example"', "attempts"),
        ('[smtp]\nhost = "127.0.0.1"\nsender = "d@a.example"\nrelay = "x"', "no setting 'relay'"),
        ('[smtp]\nhost = "127.0.0.1"\nsender = "d@a.example"\nport = "25"', "port must be a int"),
        ('[smtp]\nhost = "127.0.0.1"\nsender = "Desk <d@a.example>"', "not an e-mail address"),
        ("[notify]", "neither [webhook] nor [smtp]"),
        ("[notify", "not TOML"),
    ],
)
def test_bad_config_refused(tmp_path: Path, text: str, error: str) -> None:
    (tmp_path / "s").write_text(SECRET_LINE + "\n")
    (tmp_path / "s").chmod(0o600)
    with pytest.raises(ConfigError, match=error.replace("[", r"\[").replace("]", r"\]")):
        parse_notify_config(text, base=tmp_path)


def test_good_config_and_secret_file_mode(tmp_path: Path) -> None:
    (tmp_path / "s").write_text(SECRET_LINE + "\n")
    (tmp_path / "s").chmod(0o640)
    text = (
        '[notify]\ncontent = "title"\nbackoff = 1\n'
        '[webhook]\nurl = "https://hooks.agency.example/istmo"\nsecret_file = "s"\n'
        '[smtp]\nhost = "smtp.agency.example"\nsender = "desk@agency.example"\n'
    )
    with pytest.raises(ConfigError, match="readable by others"):
        parse_notify_config(text, base=tmp_path)
    (tmp_path / "s").chmod(0o600)
    cfg = parse_notify_config(text, base=tmp_path)
    assert cfg.precedences == ("FLASH", "IMMEDIATE")
    assert cfg.content == "title"
    assert cfg.backoff == 1.0
    assert cfg.webhook is not None
    assert cfg.webhook.secret == b"key key key key key key key key"
    assert cfg.smtp is not None
    assert cfg.smtp.port == 587
    assert cfg.smtp.starttls


@pytest.mark.parametrize(
    "bad", ["ana", "ana@", "ana@agency", "a b@agency.example", "ana@agency.example\r\nBcc: x@y.z"]
)
def test_check_email_refuses(bad: str) -> None:
    with pytest.raises(ConfigError):
        check_email(bad)


# ---------------------------------------------------------------------- one real run
class _Sink:
    def __init__(self) -> None:
        self.mail: list[tuple[list[str], bytes]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.mail.append((list(envelope.rcpt_tos), bytes(envelope.content)))
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[_Sink, int]]:
    sink = _Sink()
    port = free_port()
    ctl = Controller(sink, hostname="127.0.0.1", port=port)
    ctl.start()
    try:
        yield sink, port
    finally:
        ctl.stop()


@pytest.fixture
def hook() -> Iterator[tuple[list[tuple[dict[str, str], bytes]], int]]:
    got: list[tuple[dict[str, str], bytes]] = []
    calls = [0]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            calls[0] += 1
            if calls[0] == 1:  # the first attempt fails: the notifier retries
                self.send_response(503)
            else:
                got.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield got, server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


async def test_two_analysts_two_ceilings(
    tmp_path: Path,
    smtp: tuple[_Sink, int],
    hook: tuple[list[tuple[dict[str, str], bytes]], int],
) -> None:
    sink, smtp_port = smtp
    posts, hook_port = hook
    cfg = NotifyConfig(
        desk_url="http://127.0.0.1:8470/",
        backoff=0.05,
        webhook=WebhookConfig(f"http://127.0.0.1:{hook_port}/istmo", KEY),
        smtp=SmtpConfig("127.0.0.1", smtp_port, "desk@agency.test", starttls=False),
    )
    with Archive.open(
        tmp_path / "a.sqlite", "sv-police", lambda: ArchiveSecret("passphrase", b"p" * 16)
    ) as archive:
        people = DeskPeople(archive.path, archive.subkey("desk-log"))
        prefs = NotifyPrefs(archive.path)
        for name in ("ana", "bob", "cid"):
            people.add(name, "reader", "a long enough password")
        prefs.set(Preference("ana", "ana@agency.test", Classification.RESTRICTED))
        prefs.set(Preference("bob", "bob@agency.test", Classification.UNCLASSIFIED))
        # cid has no settings: told nothing
        notifier = Notifier(cfg, prefs, people)
        try:
            secret = received(1)  # RESTRICTED, FLASH
            routine = received(2, precedence=Precedence.ROUTINE)
            open_one = received(3, cls=Classification.UNCLASSIFIED, precedence=Precedence.IMMEDIATE)
            assert notifier.offer(secret) == 2  # ana's webhook and e-mail; nothing for bob
            assert notifier.offer(routine) == 0
            assert notifier.offer(open_one) == 4  # both
            await eventually(lambda: notifier.idle() and len(sink.mail) == 3, what="sends")
            await eventually(lambda: len(posts) == 3, what="the webhook's three")
        finally:
            await notifier.close()
        log = people.entries(limit=50)
        people.close()
        prefs.close()
    # E-mail: ana both, bob only the unclassified one; never the title or text.
    to = sorted((rcpt[0], message_from_bytes(raw)["Subject"]) for rcpt, raw in sink.mail)
    assert [t for t, _s in to] == ["ana@agency.test", "ana@agency.test", "bob@agency.test"]
    for _rcpt, raw in sink.mail:
        assert b"CANARY" not in raw
    bob_mail = [raw for rcpt, raw in sink.mail if rcpt == ["bob@agency.test"]]
    assert secret.id.encode() not in bob_mail[0]
    # Webhook: signed, fresh, one notice per analyst, bob's never about the RESTRICTED one.
    seen: dict[str, list[str]] = {}
    for headers, body in posts:
        assert verify_webhook(KEY, headers, body, now=int(headers["webhook-timestamp"]))
        doc = json.loads(body)
        assert doc["type"] == "bulletin.received"
        assert b"CANARY" not in body
        seen.setdefault(doc["data"]["analyst"], []).append(doc["data"]["bulletin"]["id"])
    assert sorted(seen["ana"]) == [secret.id, open_one.id]
    assert seen["bob"] == [open_one.id]
    assert "cid" not in seen
    # The desk's log: every send, by analyst and bulletin id; nothing for bob's RESTRICTED.
    sends = sorted((who, action, bid) for _s, _at, who, action, bid in log if "notify" in action)
    assert sends == sorted(
        [
            ("ana", "notify-webhook", secret.id),
            ("ana", "notify-email", secret.id),
            ("ana", "notify-webhook", open_one.id),
            ("ana", "notify-email", open_one.id),
            ("bob", "notify-webhook", open_one.id),
            ("bob", "notify-email", open_one.id),
        ]
    )


def test_webhook_body_is_standard_webhooks_shaped() -> None:
    doc = json.loads(webhook_body({"analyst": "ana"}, 1_800_000_000))
    assert doc == {
        "type": "bulletin.received",
        "timestamp": "2027-01-15T08:00:00Z",
        "data": {"analyst": "ana"},
    }


async def test_a_receiver_that_stays_down_is_given_up_on(tmp_path: Path) -> None:
    cfg = NotifyConfig(
        attempts=2,
        backoff=0.05,
        webhook=WebhookConfig(f"http://127.0.0.1:{free_port()}/nobody", KEY, timeout=2),
    )
    with Archive.open(
        tmp_path / "a.sqlite", "sv-police", lambda: ArchiveSecret("passphrase", b"p" * 16)
    ) as archive:
        people = DeskPeople(archive.path, archive.subkey("desk-log"))
        prefs = NotifyPrefs(archive.path)
        people.add("ana", "reader", "a long enough password")
        prefs.set(Preference("ana", None, Classification.SECRET))
        notifier = Notifier(cfg, prefs, people)
        try:
            assert notifier.offer(received(1)) == 1  # no address: the webhook only
            await eventually(notifier.idle, what="the two attempts")
        finally:
            await notifier.close()
        log = [(who, action, bid) for _s, _at, who, action, bid in people.entries()]
        people.close()
        prefs.close()
    assert log[0] == ("ana", "notify-failed", received(1).id)
