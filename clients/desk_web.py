"""The analyst's desk: a web application on the agency's archive (ADR 25).

Every request passes, in order: (1) the Host header is one the desk was told it is
reached by (else 421: a DNS-rebinding page cannot reach it); (2) every page but sign-in
needs a session of an active analyst (else a redirect to sign-in, or a 403 page if the
account was disabled since); (3) every POST carries the session's CSRF token in its form,
compared in constant time (sign-in's form a double-submit token), a mismatch recorded in
the access log; (4) inputs are bounded
and checked (a bad filter is a 400 page saying what to give). Every response gets the
security headers: a strict content security policy (``default-src 'self'``, no inline
script or style, no other host), no framing, no referrer, no caching. The session cookie
is HttpOnly and SameSite=Strict, and Secure when the desk is reached over HTTPS.

Sessions live in memory: a restart signs everyone out. They end after ``idle`` seconds
without a request or ``absolute`` seconds after sign-in, whichever comes first. What an
analyst opens, flags or downloads is recorded by ``clients.desk_people`` (ids, never
content). Receiving (sync) and attachments go through the SDK, behind ``BrokerLink``
(``clients.desk_commands`` makes the real one); the desk runs without one (read-only on
what the archive holds). With one and ``sync_every``, the application's lifespan runs a
background sync on its event loop (``auto_sync``), one lock keeping it apart from "Sync
now". Serving it (uvicorn) is ``clients.desk_commands``'s job.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import re
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl, quote, urlencode

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.background import BackgroundTask
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from clients.archive import FLAGS, Archive, ArchiveEntry, ArchiveFilter
from clients.attachments import Attachment
from clients.desk_drafts import DeskDrafts, DraftContent
from clients.desk_people import LOCK_SECONDS, MAX_FAILURES, DeskPeople
from clients.desk_print import document_of, render_pdf
from clients.desk_strings import LANG_COOKIE, LANGS, negotiate, translator
from clients.desk_summary import summary_due
from clients.results import Preview, PublishResult, ReceivedBulletin, shown_time
from schemas.errors import ConfigError, IstmoError
from schemas.labels import TOPICS, Classification, Labels, Precedence, Tlp

__all__ = [
    "CSP",
    "SESSION_COOKIE",
    "AutoSync",
    "BrokerLink",
    "DeskSession",
    "DeskState",
    "auto_sync",
    "desk_app",
    "sync_once",
]

SESSION_COOKIE = "istmo_desk"
PRE_COOKIE = "istmo_desk_pre"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
DATA_DIR = Path(__file__).resolve().parent / "data" / "desk"
MAX_FORM_BYTES = 8192
MAX_QUERY_CHARS = 2000
PAGE = 100
SYNC_LIMIT = 60.0  # seconds one sync may take, manual or background, before it is given up
MAX_BACKOFF = 600.0  # the longest wait between failed background syncs
_BULLETIN_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_STATIC = {"desk.css": "text/css", "favicon.svg": "image/svg+xml"}
_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]


class BrokerLink(Protocol):
    """What the desk asks of the broker, through the SDK."""

    async def sync(self, archive: Archive) -> int:
        """Receive what is waiting into ``archive``; how many new bulletins."""

    async def save(self, bulletin: ReceivedBulletin, directory: Path) -> list[Path]:
        """Fetch ``bulletin``'s attachments into ``directory``, checked (the SDK's path)."""

    async def preview(self, labels: Labels) -> Preview:
        """Who the policy lets receive a bulletin with ``labels``, and why not the others."""

    async def send(self, content: DraftContent, files: Sequence[Attachment]) -> PublishResult:
        """Publish, answer or ask, as ``content.kind`` says, with ``files`` (ADR 27)."""

    async def acknowledge(self, bulletin_id: str) -> PublishResult:
        """Tell ``bulletin_id``'s originator a person read it and acted on it (ADR 27)."""

    async def summarise(self, people: DeskPeople) -> int:
        """Send the broker the access log's summaries not sent yet (ADR 31); how many."""


@dataclass
class DeskSession:
    analyst: str
    role: str
    csrf: str
    started: float
    seen: float


@dataclass
class AutoSync:
    """The background sync's last outcome, shown on the inbox (no content: counts, times
    and the error's kind)."""

    every: float = 0.0
    last_ok: float | None = None
    failures: int = 0
    error: str | None = None
    next_at: float | None = None


@dataclass
class DeskState:
    """The desk's services and settings.

    Args:
        archive: the agency's archive, open.
        people: its analysts and access log.
        hosts: the Host header values the desk answers to (``host:port``).
        secure: the desk is reached over HTTPS (cookies get ``Secure``).
        link: the broker, for sync, attachments and sending; None: read-only on the
            archive.
        drafts: what analysts wrote and a releaser has yet to send (made on the archive's
            file when not given).
        idle, absolute: session limits in seconds.
        clock: seconds since the epoch (tests pass their own).
        sync_every: seconds between background syncs (0: only "Sync now"); they need
            ``link``.
    """

    archive: Archive
    people: DeskPeople
    hosts: frozenset[str]
    secure: bool = False
    link: BrokerLink | None = None
    idle: float = 30 * 60
    absolute: float = 8 * 3600
    clock: Callable[[], float] = time.time
    sessions: dict[bytes, DeskSession] = field(default_factory=dict)
    drafts: DeskDrafts | None = None
    sync_every: float = 0.0
    env: Environment = field(init=False)
    sync_lock: asyncio.Lock = field(init=False, default_factory=asyncio.Lock)
    auto: AutoSync = field(init=False, default_factory=AutoSync)

    def __post_init__(self) -> None:
        self.hosts = frozenset(h.lower() for h in self.hosts)
        if self.drafts is None:
            self.drafts = DeskDrafts(self.archive.path, self.archive.subkey("desk-drafts"))
        self.env = Environment(
            loader=FileSystemLoader(str(DATA_DIR / "templates")),
            autoescape=select_autoescape(default=True, default_for_string=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters["utc"] = lambda at: "" if at is None else shown_time(int(at))
        self.auto.every = self.sync_every if self.link is not None else 0.0

    def session_of(self, token: str | None) -> DeskSession | None:
        """The live session ``token`` names; an expired one is dropped."""
        if not token or len(token) > 100:
            return None
        key = hashlib.sha256(token.encode()).digest()
        s = self.sessions.get(key)
        if s is None:
            return None
        now = self.clock()
        if now - s.seen > self.idle or now - s.started > self.absolute:
            del self.sessions[key]
            return None
        s.seen = now
        return s

    def start(self, analyst: str, role: str) -> str:
        """A new session for ``analyst``; its token (the cookie's value)."""
        token = secrets.token_urlsafe(32)
        now = self.clock()
        key = hashlib.sha256(token.encode()).digest()
        self.sessions[key] = DeskSession(analyst, role, secrets.token_urlsafe(32), now, now)
        return token

    def end(self, token: str) -> None:
        self.sessions.pop(hashlib.sha256(token.encode()).digest(), None)

    def end_all(self, analyst: str) -> None:
        for key in [k for k, s in self.sessions.items() if s.analyst == analyst]:
            del self.sessions[key]


class _Page(Exception):
    """Answer with a message page (or a redirect) instead of the route's own page."""

    def __init__(
        self, status: int, key: str, *, redirect: str | None = None, **values: Any
    ) -> None:
        super().__init__(key)
        self.status, self.key, self.redirect, self.values = status, key, redirect, values


class _Guard:
    """Outermost: the Host check (1) and the security headers on every answer."""

    def __init__(self, app: ASGIApp, hosts: frozenset[str]) -> None:
        self.app, self.hosts = app, hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = ""
        for k, v in scope["headers"]:
            if k == b"host":
                host = v.decode("latin-1").lower()
        if host not in self.hosts:
            body = b"this desk does not answer to that host name\n"
            await send(
                {
                    "type": "http.response.start",
                    "status": 421,
                    "headers": [(b"content-type", b"text/plain"), *_HEADERS],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


def _state(request: Request) -> DeskState:
    state: DeskState = request.app.state.desk
    return state


def _render(
    request: Request,
    name: str,
    ctx: dict[str, Any],
    *,
    who: DeskSession | None = None,
    status: int = 200,
) -> HTMLResponse:
    state = _state(request)
    lang = _lang_of(request)
    _ = translator(lang)

    def n_(key: str, n: int, **values: Any) -> str:  # the older spelling of _(key, n=n)
        return _(key, n=n, **values)

    here = request.url.path
    back = here + (f"?{request.url.query}" if request.url.query else "")
    html = state.env.get_template(name).render(
        {
            "_": _,
            "n_": n_,
            "lang": lang,
            "langs": LANGS,
            "session": who,
            "here": here,
            "back": _local_path(back),
            "query": request.query_params,
            **ctx,
        }
    )
    return HTMLResponse(html, status_code=status)


def _lang_of(request: Request) -> str:
    """The cookie's language, else the browser's best, else English."""
    return negotiate(request.cookies.get(LANG_COOKIE), request.headers.get("accept-language"))


def _local_path(text: str | None) -> str:
    """``text`` if it is a path on this desk (no open redirect), else ``/``."""
    if (
        not text
        or len(text) > MAX_QUERY_CHARS
        or not text.startswith("/")
        or text.startswith("/lang/")
        or "//" in text
        or "\\" in text
        or any(ord(c) < 0x20 or ord(c) == 0x7F for c in text)
    ):
        return "/"
    return text


async def _form(request: Request) -> dict[str, str]:
    """The form's fields, bounded (a body over ``MAX_FORM_BYTES`` is refused)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise _Page(413, "error.form_large")
    try:
        pairs = parse_qsl(body.decode(), keep_blank_values=True, max_num_fields=32)
    except (UnicodeDecodeError, ValueError) as exc:
        raise _Page(400, "error.form_unreadable") from exc
    return dict(pairs)


def _csrf_ok(expected: str | None, given: str | None) -> bool:
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


def _signed_in(request: Request) -> DeskSession:
    """(2) The session of an active analyst, or a refusal."""
    state = _state(request)
    who = state.session_of(request.cookies.get(SESSION_COOKIE))
    if who is None:
        raise _Page(303, "refused.expired", redirect="/login")
    if not state.people.is_active(who.analyst):
        state.end_all(who.analyst)
        state.people.record(who.analyst, "request-refused", None)
        raise _Page(403, "refused.expired")
    return who


async def _checked_form(request: Request, who: DeskSession) -> dict[str, str]:
    """(3) The form's fields once its CSRF token matched the session's."""
    fields = await _form(request)
    if not _csrf_ok(who.csrf, fields.get("csrf")):
        _state(request).people.record(who.analyst, "request-refused", None)
        raise _Page(403, "refused.csrf")
    return fields


def _choice(value: str | None, allowed: list[str] | tuple[str, ...], what: str) -> str | None:
    if not value:
        return None
    if value not in allowed:
        raise _Page(400, "error.choice", field=what)
    return value


def _date(value: str | None, what: str) -> int | None:
    if not value:
        return None
    try:
        at = datetime.strptime(value[:10], "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError as exc:
        raise _Page(400, "error.date", field=what) from exc
    return int(at.timestamp())


def _seq(value: str | None) -> int | None:
    """A page's keyset (an archive row's number), checked."""
    if not value:
        return None
    if not value.isdigit() or len(value) > 15:
        raise _Page(400, "error.page")
    return int(value)


def _filter(q: dict[str, str]) -> ArchiveFilter:
    """(4) The list's filters from the query string, each checked."""
    originator = q.get("from") or None
    if originator is not None and len(originator) > 64:
        raise _Page(400, "error.agency_id")
    return ArchiveFilter(
        before_seq=_seq(q.get("before")),
        after_seq=_seq(q.get("after")),
        topic=_choice(q.get("topic"), TOPICS, "inbox.topic"),
        precedence=_choice(q.get("precedence"), [p.value for p in Precedence], "inbox.precedence"),
        classification=_choice(
            q.get("classification"), [c.value for c in Classification], "inbox.classification"
        ),
        tlp=_choice(q.get("tlp"), [t.value for t in Tlp], "inbox.tlp"),
        originator=originator,
        since=_date(q.get("since"), "inbox.since"),
        until=_date(q.get("until"), "inbox.until"),
        unread=q.get("unread") == "1",
        flag=_choice(q.get("flag"), FLAGS, "inbox.flag"),
    )


def _bulletin_id(value: str) -> str:
    if not _BULLETIN_ID.fullmatch(value):
        raise _Page(400, "error.bulletin_id")
    return value


def _titles(archive: Archive, entries: list[ArchiveEntry]) -> dict[str, str]:
    """Titles of the listed bulletins, opened (they are sealed at rest)."""
    titles = {}
    for e in entries:
        got = archive.get(e.id)
        if got is not None:
            titles[e.id] = got.bulletin.title
    return titles


async def sync_once(state: DeskState) -> int:
    """One sync, never beside another (the state's lock: a press of "Sync now" during a
    background sync waits for it), given up after ``SYNC_LIMIT`` seconds."""
    if state.link is None:
        raise _Page(409, "inbox.sync_off")
    async with state.sync_lock:
        return await asyncio.wait_for(state.link.sync(state.archive), SYNC_LIMIT)


def _backoff(every: float, failures: int) -> float:
    """The wait after ``failures`` failed syncs in a row: doubling, at most
    ``MAX_BACKOFF`` (never shorter than ``every``)."""
    return max(every, min(every * 2.0 ** min(failures, 16), MAX_BACKOFF))


async def auto_sync(state: DeskState) -> None:
    """Sync every ``state.sync_every`` seconds until cancelled. A failure is counted and
    shown on the inbox, and the next try waits longer (``_backoff``); nothing it raises
    stops the desk. A sync that received bulletins is recorded as ``sync-auto`` by the
    analyst ``-`` (one that received nothing is not: 2,880 empty entries a day would bury
    the log)."""
    every, auto = state.sync_every, state.auto
    if state.link is None or every <= 0:
        return
    while True:
        auto.next_at = state.clock() + _backoff(every, auto.failures)
        await asyncio.sleep(_backoff(every, auto.failures))
        try:
            n = await sync_once(state)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure: shown, retried later
            auto.failures += 1
            auto.error = "timeout" if isinstance(exc, TimeoutError) else _error_kind(exc)
            print(
                f"background sync failed ({auto.failures} in a row): {auto.error}",
                file=sys.stderr,
                flush=True,
            )
            continue
        auto.failures, auto.error, auto.last_ok = 0, None, state.clock()
        if n:
            with contextlib.suppress(Exception):  # a full disk must not stop the loop
                state.people.record("-", "sync-auto", None)
        await summarise_if_due(state)


async def summarise_if_due(state: DeskState) -> int:
    """After a background sync: send the access log's summary to the broker if one is due
    (``clients.desk_summary.summary_due``: a day since the last, or many entries waiting).
    A failure is printed and tried again after the next sync; it never stops the desk."""
    if state.link is None:
        return 0
    try:
        last_at = state.people.summarised()[2]
        if not summary_due(state.people.waiting(), last_at, int(state.clock())):
            return 0
        return await asyncio.wait_for(state.link.summarise(state.people), SYNC_LIMIT)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # the broker away or refusing: the next sync tries again
        print(f"desk log summary not sent: {_error_kind(exc)}", file=sys.stderr, flush=True)
        return 0


def _error_kind(exc: BaseException) -> str:
    """What went wrong, in a line that holds no content (an IstmoError's own message is
    written for people; anything else by its type's name)."""
    text = str(exc) if isinstance(exc, IstmoError) else type(exc).__name__
    return text.splitlines()[0][:200] if text else type(exc).__name__


def desk_app(state: DeskState, *, extend: Sequence[Callable[[FastAPI], None]] = ()) -> ASGIApp:
    """The desk as an ASGI application (the Host guard around a FastAPI app); ``extend``
    adds more routes (``clients.desk_compose.add_compose_routes``: compose and release)."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(auto_sync(state), name="desk-auto-sync")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.desk = state

    @app.exception_handler(_Page)
    async def page(request: Request, exc: _Page) -> Response:
        if exc.redirect is not None:
            return RedirectResponse(exc.redirect, status_code=303)
        title = "error.title" if exc.status < 403 or exc.status >= 404 else "refused.title"
        values = dict(exc.values)
        if "field" in values:  # a field is named by its label's key, shown in the page's words
            values["field"] = translator(_lang_of(request))(str(values["field"]))
        return _render(
            request,
            "message.html",
            {"title_key": title, "key": exc.key, "values": values},
            status=exc.status,
        )

    @app.exception_handler(IstmoError)
    async def fault(request: Request, exc: IstmoError) -> Response:
        return _render(
            request,
            "message.html",
            {"title_key": "error.title", "key": "error.broker", "values": {"what": str(exc)}},
            status=400 if isinstance(exc, ConfigError) else 502,
        )

    @app.get("/static/{name}")
    async def static(name: str) -> Response:
        media = _STATIC.get(name)
        if media is None:
            raise _Page(404, "error.no_file")
        return FileResponse(DATA_DIR / "static" / name, media_type=media)

    @app.get("/lang/{code}")
    async def switch_language(request: Request, code: str) -> Response:
        """Remember ``code`` in a cookie (a year) and go back to ``next`` on this desk."""
        if code not in LANGS:
            raise _Page(404, "error.no_file")
        resp = RedirectResponse(_local_path(request.query_params.get("next")), status_code=303)
        resp.set_cookie(
            LANG_COOKIE,
            code,
            max_age=365 * 24 * 3600,
            httponly=True,
            samesite="strict",
            secure=state.secure,
            path="/",
        )
        return resp

    # ------------------------------------------------------------------ sign-in
    def signin_page(request: Request, *, status: int = 200, **ctx: Any) -> Response:
        pre = secrets.token_urlsafe(32)
        resp = _render(request, "signin.html", {"pre": pre, **ctx}, status=status)
        resp.set_cookie(
            PRE_COOKIE, pre, httponly=True, samesite="strict", secure=state.secure, path="/"
        )
        return resp

    @app.get("/login")
    async def login_form(request: Request, out: int = 0) -> Response:
        return signin_page(request, out=bool(out))

    @app.post("/login")
    async def login(request: Request) -> Response:
        fields = await _form(request)
        if not _csrf_ok(request.cookies.get(PRE_COOKIE), fields.get("csrf")):
            state.people.record("?", "request-refused", None)
            raise _Page(403, "refused.csrf")
        name = fields.get("name", "")[:64]
        refused = state.people.authenticate(name, fields.get("password", ""))
        if refused is not None:
            # A name nobody has may be a password typed in the wrong box: not recorded.
            shown = "?" if refused == "unknown" else name
            state.people.record(shown, "sign-in-refused", None)
            return signin_page(
                request,
                status=401,
                refused=True,
                n=MAX_FAILURES,
                minutes=LOCK_SECONDS // 60,
            )
        analyst = state.people.analyst(name)
        if analyst is None:  # removed between the two reads
            raise _Page(303, "refused.expired", redirect="/login")
        token = state.start(analyst.name, analyst.role)
        state.people.record(analyst.name, "sign-in", None)
        resp = RedirectResponse("/", status_code=303)
        resp.set_cookie(
            SESSION_COOKIE,
            token,
            httponly=True,
            samesite="strict",
            secure=state.secure,
            path="/",
        )
        resp.delete_cookie(PRE_COOKIE, path="/")
        return resp

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        who = _signed_in(request)
        await _checked_form(request, who)
        state.end(request.cookies.get(SESSION_COOKIE, ""))
        state.people.record(who.analyst, "sign-out", None)
        resp = RedirectResponse("/login?out=1", status_code=303)
        resp.delete_cookie(SESSION_COOKIE, path="/")
        return resp

    # ------------------------------------------------------------------ reading
    @app.get("/")
    async def inbox(request: Request) -> Response:
        who = _signed_in(request)
        if len(str(request.url.query)) > MAX_QUERY_CHARS:
            raise _Page(400, "error.query_long")
        q = dict(request.query_params)
        where = _filter(q)
        words = q.get("q", "").strip()
        archive = state.archive
        # Keyset paging on the archive's row numbers: PAGE rows and one more, to know
        # whether another page lies beyond. ``after`` (newer) pages from the oldest end.
        newer_than = where.after_seq is not None and where.before_seq is None
        if words:
            entries = archive.search(words, where, limit=PAGE + 1, oldest=newer_than)
        else:
            entries = archive.entries(where, limit=PAGE + 1, oldest=newer_than)
        more = len(entries) > PAGE
        if more:
            entries = entries[1:] if newer_than else entries[:PAGE]
        kept = [(k, v) for k, v in q.items() if k not in ("before", "after", "synced") and v]
        newer = older = None
        if entries and ((newer_than and more) or where.before_seq is not None):
            newer = "/?" + urlencode([*kept, ("after", str(entries[0].seq))])
        if entries and ((not newer_than and more) or newer_than):
            older = "/?" + urlencode([*kept, ("before", str(entries[-1].seq))])
        synced = q.get("synced")
        return _render(
            request,
            "inbox.html",
            {
                "entries": entries,
                "titles": _titles(archive, entries),
                "q": q,
                "words": words,
                "topics": TOPICS,
                "precedences": [p.value for p in Precedence],
                "classifications": [c.value for c in Classification],
                "tlps": [t.value for t in Tlp],
                "flags": FLAGS,
                "csrf": who.csrf,
                "synced": int(synced) if synced and synced.isdigit() else None,
                "sync_on": state.link is not None,
                "auto": state.auto,
                "newer": newer,
                "older": older,
            },
            who=who,
        )

    @app.get("/b/{bid}")
    async def read(request: Request, bid: str) -> Response:
        who = _signed_in(request)
        bid = _bulletin_id(bid)
        got = state.archive.get(bid)
        if got is None:
            raise _Page(404, "error.not_found", what=bid)
        state.people.record(who.analyst, "open", bid)
        if not got.entry.read:
            state.archive.mark_read(bid)
        thread = []
        if got.entry.thread is not None:
            thread = [
                e
                for e in state.archive.entries(ArchiveFilter(thread=got.entry.thread), limit=PAGE)
                if e.id != bid
            ]
        return _render(
            request,
            "bulletin.html",
            {
                "b": got.bulletin,
                "e": got.entry,
                "reason": got.withdrawal_reason,
                "thread": list(reversed(thread)),
                "titles": _titles(state.archive, thread),
                "flags": FLAGS,
                "csrf": who.csrf,
                "files_on": state.link is not None,
            },
            who=who,
        )

    @app.post("/b/{bid}/mark")
    async def mark(request: Request, bid: str) -> Response:
        who = _signed_in(request)
        bid = _bulletin_id(bid)
        fields = await _checked_form(request, who)
        what, on = fields.get("what", ""), fields.get("on") == "1"
        archive = state.archive
        if what == "read":
            done = archive.mark_read(bid, on)
            action = "mark-read" if on else "mark-unread"
        elif what in FLAGS:
            done = archive.flag(bid, what, on)
            action = "flag" if on else "unflag"
        else:
            raise _Page(400, "error.mark")
        if not done:
            raise _Page(404, "error.not_found", what=bid)
        state.people.record(who.analyst, action, bid)  # type: ignore[arg-type]  # one of four
        back = "/" if action == "mark-unread" else f"/b/{bid}"
        return RedirectResponse(back, status_code=303)

    @app.get("/b/{bid}/file/{index}")
    async def download(request: Request, bid: str, index: int) -> Response:
        who = _signed_in(request)
        bid = _bulletin_id(bid)
        got = state.archive.get(bid)
        if got is None:
            raise _Page(404, "error.not_found", what=bid)
        if state.link is None:
            raise _Page(409, "inbox.sync_off")
        atts = [a for a in got.bulletin.attachments if a.index == index]
        if not atts:
            raise _Page(404, "error.no_attachment", id=bid, index=index)
        folder = Path(tempfile.mkdtemp(prefix="istmo-desk-"))
        try:
            one = _only_attachment(got.bulletin, index)
            saved = await state.link.save(one, folder)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        state.people.record(who.analyst, "download", bid)
        name = atts[0].name
        return FileResponse(
            saved[0],
            media_type="application/octet-stream",
            headers={"content-disposition": f"attachment; filename*=UTF-8''{quote(name)}"},
            background=BackgroundTask(shutil.rmtree, folder, ignore_errors=True),
        )

    @app.get("/b/{bid}/print")
    async def print_pdf(request: Request, bid: str) -> Response:
        who = _signed_in(request)
        bid = _bulletin_id(bid)
        doc = document_of(
            state.archive,
            bid,
            printed_by=who.analyst,
            now=int(state.clock()),
            lang=_lang_of(request),
        )
        if doc is None:
            raise _Page(404, "error.not_found", what=bid)
        # Laying out pages takes a second for a long text: off the event loop (the
        # archive was read above, on it).
        pdf = await asyncio.to_thread(render_pdf, doc)
        state.people.record(who.analyst, "print", bid)
        return Response(
            pdf,
            media_type="application/pdf",
            headers={"content-disposition": f'attachment; filename="bulletin-{bid}.pdf"'},
        )

    @app.post("/sync")
    async def sync(request: Request) -> Response:
        who = _signed_in(request)
        await _checked_form(request, who)
        try:
            n = await sync_once(state)
        except TimeoutError as exc:
            raise _Page(504, "inbox.sync_timeout", seconds=int(SYNC_LIMIT)) from exc
        state.people.record(who.analyst, "sync", None)
        return RedirectResponse(f"/?synced={n}", status_code=303)

    @app.get("/log")
    async def my_log(request: Request) -> Response:
        who = _signed_in(request)
        rows = state.people.entries(analyst=who.analyst, limit=200)
        return _render(request, "log.html", {"rows": rows, "csrf": who.csrf}, who=who)

    for add in extend:
        add(app)
    return _Guard(app, state.hosts)


def _only_attachment(b: ReceivedBulletin, index: int) -> ReceivedBulletin:
    """``b`` with only its attachment ``index`` (the SDK saves all it is given)."""
    return replace(b, attachments=tuple(a for a in b.attachments if a.index == index))
