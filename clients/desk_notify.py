"""Notifications to the agency's own systems when the desk receives an urgent bulletin
(issue 18, ADR 29).

When the desk's sync keeps a new bulletin of a precedence the agency chose (FLASH and
IMMEDIATE by default), every active analyst whose notification settings admit it gets
one notice built for them alone: a signed webhook POST to the agency's endpoint and, if
the analyst gave an address, an e-mail through the agency's SMTP server. Settings are
per analyst (``NotifyPrefs``): an address, a classification ceiling and the topics they
follow. An analyst with no settings is notified of nothing, and a bulletin above an
analyst's ceiling or outside their topics never reaches them, not even its id.

A notice carries only what the archive keeps in clear (id, originator, topic, labels,
times) and a link to the desk, unless the agency opts in to the title
(``content = "title"``) or the text too (``"text"``): whatever leaves the desk lands in
mail stores and logs the desk does not control.

Webhooks are signed as Standard Webhooks specify (standardwebhooks.com): headers
``webhook-id`` (the same for every attempt of one notice: the receiver drops
duplicates), ``webhook-timestamp`` (the attempt's time: the receiver refuses old ones)
and ``webhook-signature`` = ``v1,`` base64 HMAC-SHA256 under the shared secret
(``whsec_...``) over ``id.timestamp.body``; ``verify_webhook`` is a receiver's check.

Sending never holds up the sync: ``Notifier.offer`` queues and returns; one task sends,
retrying a failure with exponential backoff, and records every outcome in the desk's
access log (the analyst, ``notify-webhook``/``notify-email``/``notify-failed``, the
bulletin id: never content, never the address).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import ipaddress
import json
import re
import secrets
import smtplib
import ssl
import stat
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import httpx

from clients.desk_people import DeskPeople, check_name, open_desk_tables
from clients.results import ReceivedBulletin, iso_time
from schemas.errors import ConfigError
from schemas.labels import TOPICS, Classification, Labels, Precedence

__all__ = [
    "CONTENT_LEVELS",
    "Notifier",
    "NotifyConfig",
    "NotifyPrefs",
    "Preference",
    "SmtpConfig",
    "WebhookConfig",
    "admits",
    "backoff",
    "check_email",
    "email_of",
    "load_notify_config",
    "notice_for",
    "parse_notify_config",
    "sign_webhook",
    "verify_webhook",
]

Content = Literal["metadata", "title", "text"]
CONTENT_LEVELS: Final[tuple[str, ...]] = ("metadata", "title", "text")
MAX_CONFIG_BYTES = 65536
MAX_QUEUE = 1000
MAX_BACKOFF = 300.0
TOLERANCE = 300  # seconds a receiver accepts a webhook's timestamp either side
_EMAIL = re.compile(r"^[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(\.[A-Za-z0-9-]{1,63})+$")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS desk_notify (
    analyst TEXT PRIMARY KEY,
    email TEXT,
    ceiling TEXT NOT NULL,
    topics TEXT NOT NULL
);
"""


# ---------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class WebhookConfig:
    url: str
    secret: bytes = field(repr=False)
    timeout: float = 10.0


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int
    sender: str
    starttls: bool = True
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout: float = 10.0


@dataclass(frozen=True)
class NotifyConfig:
    """What the agency set in its notification file (``parse_notify_config``)."""

    precedences: tuple[str, ...] = ("FLASH", "IMMEDIATE")
    content: Content = "metadata"
    desk_url: str | None = None
    attempts: int = 5
    backoff: float = 2.0
    webhook: WebhookConfig | None = None
    smtp: SmtpConfig | None = None


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _keys(table: Mapping[str, Any], where: str, allowed: set[str]) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(
            f"the notification file's [{where}] has no setting {unknown[0][:40]!r}",
            hint=f"[{where}] takes {', '.join(sorted(allowed))}",
        )


def _get(table: Mapping[str, Any], key: str, kind: type, where: str, default: Any = None) -> Any:
    value = table.get(key, default)
    if value is None:
        return None
    if kind is float and type(value) is int:
        value = float(value)
    if type(value) is not kind:  # a bool is not an int here
        raise ConfigError(f"[{where}] {key} must be a {kind.__name__}")
    return value


def _secret_file(path: str, what: str, base: Path) -> str:
    """The first line of a file readable by its owner only (relative to the config's)."""
    p = Path(path) if Path(path).is_absolute() else base / path
    try:
        mode = p.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"{what} {p} is readable by others", hint=f"chmod 600 {p}")
        with p.open(encoding="utf-8") as f:
            return f.readline(4096).strip()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {p}: {exc.strerror}") from exc


def webhook_secret(text: str) -> bytes:
    """The key of a Standard Webhooks secret ``whsec_<base64>`` (24 to 64 bytes)."""
    try:
        key = base64.b64decode(text.removeprefix("whsec_"), validate=True)
    except ValueError as exc:
        raise ConfigError(
            "the webhook secret is not whsec_ and base64",
            hint="make one: echo whsec_$(head -c 32 /dev/urandom | base64)",
        ) from exc
    if not 24 <= len(key) <= 64:
        raise ConfigError("the webhook secret must be 24 to 64 bytes", hint="use 32 random bytes")
    return key


def parse_notify_config(text: str, *, base: Path = Path()) -> NotifyConfig:
    """The notification settings in ``text`` (TOML); files it names are read relative to
    ``base``. Every setting is checked; an unknown one is refused.

    Raises:
        ConfigError: what is wrong, and how to put it right.
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"the notification file is not TOML: {exc}") from exc
    _keys(doc, "top level", {"notify", "webhook", "smtp"})
    top = doc.get("notify", {})
    _keys(top, "notify", {"precedences", "content", "desk_url", "attempts", "backoff"})
    precedences = top.get("precedences", ["FLASH", "IMMEDIATE"])
    known = [p.value for p in Precedence]
    if not isinstance(precedences, list) or not all(p in known for p in precedences):
        raise ConfigError("[notify] precedences is a list of " + ", ".join(known))
    content = top.get("content", "metadata")
    if content not in CONTENT_LEVELS:
        raise ConfigError(
            f"[notify] content is one of {', '.join(CONTENT_LEVELS)}",
            hint="metadata (the default) sends no title and no text",
        )
    desk_url = _get(top, "desk_url", str, "notify")
    if desk_url is not None and urlsplit(desk_url).scheme not in ("http", "https"):
        raise ConfigError("[notify] desk_url is an http(s):// URL")
    attempts = _get(top, "attempts", int, "notify", 5)
    backoff_s = _get(top, "backoff", float, "notify", 2.0)
    if not 1 <= attempts <= 20 or not 0 < backoff_s <= MAX_BACKOFF:
        raise ConfigError(f"[notify] attempts is 1 to 20 and backoff 0 to {MAX_BACKOFF} s")
    webhook = smtp = None
    if "webhook" in doc:
        w = doc["webhook"]
        _keys(w, "webhook", {"url", "secret_file", "timeout"})
        url = _get(w, "url", str, "webhook")
        parts = urlsplit(url or "")
        if parts.scheme != "https" and not (
            parts.scheme == "http" and _loopback(parts.hostname or "")
        ):
            raise ConfigError(
                "[webhook] url must be https:// (http:// only to loopback)",
                hint="the notice and its signature must not cross a network in clear",
            )
        if not w.get("secret_file"):
            raise ConfigError("[webhook] needs secret_file", hint="a file holding whsec_...")
        key = webhook_secret(_secret_file(str(w["secret_file"]), "the webhook secret", base))
        webhook = WebhookConfig(str(url), key, _get(w, "timeout", float, "webhook", 10.0))
    if "smtp" in doc:
        s = doc["smtp"]
        _keys(
            s,
            "smtp",
            {"host", "port", "sender", "starttls", "username", "password_file", "timeout"},
        )
        host = _get(s, "host", str, "smtp")
        sender = _get(s, "sender", str, "smtp")
        if not host or not sender:
            raise ConfigError("[smtp] needs host and sender", hint='sender = "desk@agency.example"')
        check_email(sender)
        starttls = _get(s, "starttls", bool, "smtp", True)
        if not starttls and not _loopback(host):
            raise ConfigError(
                "[smtp] starttls = false is only for a server on loopback",
                hint="the agency's mail server must be reached over TLS",
            )
        port = _get(s, "port", int, "smtp", 587)
        if not 0 < port < 65536:
            raise ConfigError("[smtp] port is 1 to 65535")
        password = None
        if s.get("password_file"):
            password = _secret_file(str(s["password_file"]), "the SMTP password", base)
        smtp = SmtpConfig(
            host, port, sender, starttls, _get(s, "username", str, "smtp"), password,
            _get(s, "timeout", float, "smtp", 10.0),
        )  # fmt: skip
    if webhook is None and smtp is None:
        raise ConfigError("the notification file sets neither [webhook] nor [smtp]")
    return NotifyConfig(tuple(precedences), content, desk_url, attempts, backoff_s, webhook, smtp)


def load_notify_config(path: Path) -> NotifyConfig:
    """``parse_notify_config`` of the file at ``path`` (at most 64 KiB).

    Raises:
        ConfigError: unreadable, too large, or a bad setting.
    """
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read the notification file {path}: {exc.strerror}") from exc
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"the notification file {path} is over 64 KiB")
    try:
        text = raw.decode()
    except UnicodeDecodeError as exc:
        raise ConfigError(f"the notification file {path} is not UTF-8") from exc
    return parse_notify_config(text, base=path.parent)


# ---------------------------------------------------------------------- pure rules
def check_email(address: str) -> str:
    """``address`` if it is a plain e-mail address (no name, no line breaks).

    Raises:
        ConfigError: it is not.
    """
    if len(address) > 254 or not _EMAIL.fullmatch(address):
        raise ConfigError(
            f"{address[:60]!r} is not an e-mail address", hint="e.g. ana.perez@agency.example"
        )
    return address


@dataclass(frozen=True)
class Preference:
    """An analyst's notification settings: where, and the most they may be told of."""

    analyst: str
    email: str | None
    ceiling: Classification
    topics: tuple[str, ...] = ()  # none: every topic


def admits(p: Preference, labels: Labels) -> bool:
    """Whether a bulletin with ``labels`` may be notified to ``p``'s analyst: at or below
    their classification ceiling and on a topic they follow."""
    if labels.classification.level > p.ceiling.level:
        return False
    return not p.topics or labels.topic in p.topics


def backoff(attempt: int, base: float) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1, 2, ...): doubling, capped."""
    return float(min(base * 2 ** (attempt - 1), MAX_BACKOFF))


def notice_for(analyst: str, b: ReceivedBulletin, config: NotifyConfig) -> dict[str, Any]:
    """The notice ``analyst`` gets about ``b`` (the webhook's JSON ``data``): the clear
    labels and times, a link, and the title or text only if the agency opted in."""
    lab = b.labels
    about: dict[str, Any] = {
        "id": b.id,
        "originator": b.originator,
        "topic": lab.topic,
        "classification": lab.classification.value,
        "tlp": lab.tlp.value,
        "precedence": lab.precedence.value,
        "created_at": iso_time(b.created_at),
        "received_at": iso_time(b.received_at),
        "expires_at": iso_time(b.expires_at),
        "in_reply_to": b.in_reply_to,
        "link": None if config.desk_url is None else config.desk_url.rstrip("/") + f"/b/{b.id}",
    }
    if config.content in ("title", "text"):
        about["title"] = b.title
    if config.content == "text":
        about["text"] = b.body
    return {"analyst": analyst, "bulletin": about}


def webhook_body(notice: dict[str, Any], now: int) -> bytes:
    """The POST's body: Standard Webhooks' ``{type, timestamp, data}``."""
    doc = {"type": "bulletin.received", "timestamp": iso_time(now), "data": notice}
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


def sign_webhook(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header: ``v1,`` and the base64 HMAC-SHA256."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def verify_webhook(
    key: bytes, headers: Mapping[str, str], body: bytes, *, now: int, tolerance: int = TOLERANCE
) -> bool:
    """A receiver's check: the signature is one of ours and the timestamp is fresh
    (within ``tolerance`` seconds). The receiver also drops an id seen before."""
    msg_id, ts = headers.get("webhook-id", ""), headers.get("webhook-timestamp", "")
    if not msg_id or not ts.isdigit() or abs(now - int(ts)) > tolerance:
        return False
    want = sign_webhook(key, msg_id, int(ts), body).encode()
    return any(
        hmac.compare_digest(want, given.encode())
        for given in headers.get("webhook-signature", "").split(" ")
    )


def email_of(notice: dict[str, Any], *, to: str, sender: str, now: int) -> EmailMessage:
    """The e-mail an analyst gets: the notice's fields, one a line; the subject names
    the precedence and markings (and the title only if the notice carries it)."""
    b = notice["bulletin"]
    marks = f"{b['classification']} TLP:{b['tlp']}"
    subject = f"[{b['precedence']}] {marks} bulletin from {b['originator']} on {b['topic']}"
    if "title" in b:
        subject += f": {b['title']}"
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = " ".join(subject.split())[:200]  # no line breaks into the header
    msg["Date"] = format_datetime(datetime.fromtimestamp(now, UTC))
    msg["Message-ID"] = make_msgid(domain=sender.rsplit("@", 1)[1])
    msg["Auto-Submitted"] = "auto-generated"
    lines = [f"{marks} · {b['precedence']}", ""]
    for k in ("id", "originator", "topic", "created_at", "received_at", "expires_at", "link"):
        if b.get(k):
            lines.append(f"{k.replace('_', ' ')}: {b[k]}")
    if "title" in b:
        lines += ["", f"title: {b['title']}"]
    if "text" in b:
        lines += ["", b["text"]]
    lines += ["", f"Handle as {marks}. Read it on the desk."]
    msg.set_content("\n".join(lines))
    return msg


# ---------------------------------------------------------------------- the settings
class NotifyPrefs:
    """The analysts' notification settings in the archive file (its own connection).

    The address and the ceiling are in clear, like the analysts' names and roles."""

    def __init__(self, path: Path) -> None:
        self._db = open_desk_tables(path, _SCHEMA)

    def close(self) -> None:
        self._db.close()

    def set(self, p: Preference) -> None:
        """Keep ``p`` (replacing the analyst's settings).

        Raises:
            ConfigError: a bad name, address or topic.
        """
        check_name(p.analyst)
        if p.email is not None:
            check_email(p.email)
        for t in p.topics:
            if t not in TOPICS:
                raise ConfigError(f"no topic {t[:40]!r}", hint=f"topics are {', '.join(TOPICS)}")
        self._db.execute(
            "INSERT OR REPLACE INTO desk_notify (analyst, email, ceiling, topics)"
            " VALUES (?, ?, ?, ?)",
            (p.analyst, p.email, p.ceiling.value, json.dumps(list(p.topics))),
        )

    def clear(self, analyst: str) -> bool:
        cur = self._db.execute("DELETE FROM desk_notify WHERE analyst = ?", (analyst,))
        return cur.rowcount == 1

    def all(self) -> list[Preference]:
        rows = self._db.execute(
            "SELECT analyst, email, ceiling, topics FROM desk_notify ORDER BY analyst"
        )
        return [Preference(r[0], r[1], Classification(r[2]), tuple(json.loads(r[3]))) for r in rows]


# ---------------------------------------------------------------------- sending
@dataclass(frozen=True)
class _Job:
    kind: Literal["webhook", "email"]
    analyst: str
    bulletin_id: str
    notice: dict[str, Any]
    msg_id: str
    to: str | None = None
    attempt: int = 1


def _smtp_send(cfg: SmtpConfig, msg: EmailMessage) -> None:
    with smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout) as s:
        if cfg.starttls:
            s.starttls(context=ssl.create_default_context())
        if cfg.username is not None and cfg.password is not None:
            s.login(cfg.username, cfg.password)
        s.send_message(msg)


class Notifier:
    """Builds each analyst's notices for a new bulletin and sends them in the background.

    Args:
        config: the agency's notification settings.
        prefs: the analysts' settings.
        people: the analysts (only active ones are notified) and the access log.
        clock: seconds since the epoch.
    """

    def __init__(
        self,
        config: NotifyConfig,
        prefs: NotifyPrefs,
        people: DeskPeople,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config, self.prefs, self.people, self.clock = config, prefs, people, clock
        self._queue: asyncio.Queue[_Job] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._retries: set[asyncio.Task[None]] = set()
        self._busy = 0
        self._client: httpx.AsyncClient | None = None

    def offer(self, b: ReceivedBulletin) -> int:
        """Queue ``b``'s notices (call it on the event loop once ``b`` is kept); how many.
        Returns at once: sending is the background task's."""
        if b.labels.precedence.value not in self.config.precedences:
            return 0
        jobs: list[_Job] = []
        for p in self.prefs.all():
            if not admits(p, b.labels) or not self.people.is_active(p.analyst):
                continue
            notice = notice_for(p.analyst, b, self.config)
            msg_id = "msg_" + secrets.token_hex(16)
            if self.config.webhook is not None:
                jobs.append(_Job("webhook", p.analyst, b.id, notice, msg_id))
            if self.config.smtp is not None and p.email:
                jobs.append(_Job("email", p.analyst, b.id, notice, msg_id, to=p.email))
        for job in jobs:
            self._enqueue(job)
        return len(jobs)

    def _enqueue(self, job: _Job) -> None:
        if self._queue is None:
            self._queue = asyncio.Queue()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._work(self._queue))
        if self._queue.qsize() >= MAX_QUEUE:
            self.people.record(job.analyst, "notify-failed", job.bulletin_id)
            return
        self._queue.put_nowait(job)

    async def _work(self, queue: asyncio.Queue[_Job]) -> None:
        while True:
            job = await queue.get()
            self._busy += 1
            try:
                await self._attempt(job)
            finally:
                self._busy -= 1
                queue.task_done()

    async def _attempt(self, job: _Job) -> None:
        try:
            await self._send(job)
        except Exception:  # any failure is retried; none ends the task
            if job.attempt >= self.config.attempts:
                self.people.record(job.analyst, "notify-failed", job.bulletin_id)
                return
            task = asyncio.get_running_loop().create_task(self._later(job))
            self._retries.add(task)
            task.add_done_callback(self._retries.discard)
            return
        action: Literal["notify-webhook", "notify-email"] = f"notify-{job.kind}"  # type: ignore[assignment]  # one of two
        self.people.record(job.analyst, action, job.bulletin_id)

    async def _later(self, job: _Job) -> None:
        await asyncio.sleep(backoff(job.attempt, self.config.backoff))
        self._enqueue(replace(job, attempt=job.attempt + 1))

    async def _send(self, job: _Job) -> None:
        now = int(self.clock())
        hook, smtp = self.config.webhook, self.config.smtp
        if job.kind == "webhook" and hook is not None:
            body = webhook_body(job.notice, now)
            if self._client is None:
                self._client = httpx.AsyncClient(timeout=hook.timeout, follow_redirects=False)
            r = await self._client.post(
                hook.url,
                content=body,
                headers={
                    "content-type": "application/json",
                    "webhook-id": job.msg_id,
                    "webhook-timestamp": str(now),
                    "webhook-signature": sign_webhook(hook.secret, job.msg_id, now, body),
                },
            )
            if not 200 <= r.status_code < 300:
                raise RuntimeError(f"the webhook answered {r.status_code}")
            return
        if job.kind == "email" and smtp is not None and job.to is not None:
            msg = email_of(job.notice, to=job.to, sender=smtp.sender, now=now)
            await asyncio.to_thread(_smtp_send, smtp, msg)
            return
        raise RuntimeError(f"no {job.kind} configured")

    def idle(self) -> bool:
        """Nothing queued, being sent or waiting to be retried."""
        queued = 0 if self._queue is None else self._queue.qsize()
        return queued == 0 and self._busy == 0 and not self._retries

    async def close(self) -> None:
        """Stop sending (what is queued is dropped) and close the HTTP client."""
        for task in [*self._retries, *([self._worker] if self._worker else [])]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._client is not None:
            await self._client.aclose()
