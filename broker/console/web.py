"""What every console page shares: the console's state, rendering, the signed-in user as a
dependency, scope and CSRF checks, refusals as pages, cookies and security headers.

A page is a FastAPI route on a router from ``broker.console``; it takes
``who: Session = page("audit:read")`` (or ``"admin"``), reads with ``console_of(request)``
and answers ``render(request, "name.html", {...})``. A state-changing form is a POST whose
handler first calls ``await checked_form(request, who)``: the form's fields, after the
CSRF token was compared in constant time (a mismatch is a 403 page and an audit entry).

Every refusal (no session, wrong scope, bad CSRF token, a holder no longer active) is a
page naming the reason, and the 403s are ``auth.refused`` audit events, as in the API.
``ConsoleHeaders`` sits outside the API's guard and gives ``/console`` pages their own
content security policy: ``default-src 'self'``, no inline script or style, no other host.

Left to others: the sign-in routes (``broker.console.auth``), the pages themselves.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from fastapi import Depends, Request
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from broker.api.context import ApiState
from broker.api.guard import host_name, peer_of
from broker.audit import events
from broker.console.i18n import LANG_COOKIE, LANGS, negotiate, translator
from broker.console.sessions import LinkStore, Session, SessionStore, csrf_ok
from broker.directory.admins import AdminRow
from schemas.audit import AuditEvent

__all__ = [
    "CONSOLE_CSP",
    "PREFIX",
    "SESSION_COOKIE",
    "ConsoleHeaders",
    "ConsolePage",
    "ConsoleState",
    "Session",
    "checked_form",
    "console_of",
    "page",
    "render",
    "session_of",
]

PREFIX = "/console"
SESSION_COOKIE = "istmo_console"
PRE_COOKIE = "istmo_console_pre"  # double-submit token for forms shown before sign-in
CONSOLE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "console"
TEMPLATES = DATA_DIR / "templates"
STATIC = DATA_DIR / "static"
MAX_FORM_FIELDS = 32


@dataclass
class ConsoleState:
    """The console's services: the API's state, the session and link stores, templates."""

    api: ApiState
    dev_login: bool
    sessions: SessionStore = field(init=False)  # in the registry's database
    links: LinkStore = field(init=False)
    # What the last full verification found (integrity page); None before the first run.
    last_verification: dict[str, Any] | None = None
    env: Environment = field(init=False)

    def __post_init__(self) -> None:
        self.sessions = SessionStore(self.api.registry)
        self.links = LinkStore(self.api.registry)
        self.env = Environment(
            loader=FileSystemLoader(str(TEMPLATES)),
            autoescape=select_autoescape(default=True, default_for_string=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters["utc"] = utc_time

    def record(self, *events: AuditEvent) -> None:
        """Write audit events (AuditStoreError if the store refuses)."""
        self.api.registry.record([], list(events))

    def active(self, who: str, kind: str) -> bool:
        """Whether the identity is still active (a suspension ends its console at once)."""
        registry = self.api.registry
        if kind == "admin":
            with registry.session() as s:
                admin = s.get(AdminRow, who)
            return admin is not None and admin.status == "active"
        agency = registry.agency(who)
        return agency is not None and agency.status == "active"


def console_of(request: Request) -> ConsoleState:
    state: ConsoleState = request.app.state.console
    return state


def utc_time(ms: int | None) -> str:
    """Epoch milliseconds as ``YYYY-MM-DD HH:MM:SS`` UTC."""
    if ms is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000))


# ---------------------------------------------------------------------- refusals
class ConsolePage(Exception):
    """Answer with a message page (or a redirect) instead of the route's own page.

    Args:
        status: HTTP status.
        key: the catalog key of the message; ``values`` fill it.
        audit: record an ``auth.refused`` event with this reason code.
        who: the identity refused, for the audit entry.
        redirect: send the browser here instead (303).
    """

    def __init__(
        self,
        status: int,
        key: str,
        *,
        audit: str | None = None,
        who: str | None = None,
        redirect: str | None = None,
        **values: Any,
    ) -> None:
        super().__init__(key)
        self.status = status
        self.key = key
        self.audit = audit
        self.who = who
        self.redirect = redirect
        self.values = values


def on_console_page(request: Request, exc: ConsolePage) -> Response:
    """The exception handler of ``ConsolePage`` (registered by ``mount_console``)."""
    console = console_of(request)
    if exc.audit:
        route = getattr(request.scope.get("route"), "path", None) or "<unmatched>"
        source = peer_of(request.scope)
        event = events.console_refused(
            "auth.refused",
            exc.who,
            method=request.method,
            route=route,
            reason=exc.audit,
            status=exc.status,
            peer=source,
            at=console.api.clock.now_ms(),
        )
        # Rate-limited and aggregated per client address, as the API's refusals are.
        wait = console.api.refused(request.scope, event)
        if wait is not None:
            exc = ConsolePage(429, "error.rate", seconds=wait)
    if exc.redirect is not None:
        return RedirectResponse(exc.redirect, status_code=303)
    _ = translator(lang_of(request))
    values = {"who": exc.who or "?", **exc.values}
    if "hint" in values:  # the hint is a key too: "type: not an event type", in words
        values["hint"] = _(str(values["hint"]), **values)
    return render(
        request,
        "message.html",
        {
            "title_key": "refused.title" if exc.status in (401, 403) else "error.title",
            "message": _(exc.key, **values),
        },
        status=exc.status,
    )


# ---------------------------------------------------------------------- sessions
def session_of(request: Request) -> Session | None:
    """The request's live session, or None (no cookie, unknown, expired, holder inactive)."""
    console = console_of(request)
    sid = request.cookies.get(SESSION_COOKIE)
    session = console.sessions.get(sid)
    if session is None:
        return None
    if not console.active(session.who, session.kind):
        console.sessions.end_all(session.who)
        raise ConsolePage(
            403,
            "refused.expired",
            audit="client_inactive",
            who=session.who,
            redirect=None,
        )
    return session


def page(scope: str | None) -> Any:
    """``who: Session = page("audit:read")``: a signed-in user with ``scope`` (any signed-in
    user for None). No session: to the sign-in page. Wrong scope: a 403 page, audited."""

    def dependency(request: Request) -> Session:
        session = session_of(request)
        if session is None:
            raise ConsolePage(401, "refused.expired", redirect=f"{PREFIX}/")
        if scope is not None and scope not in session.scopes:
            raise ConsolePage(
                403,
                "refused.scope",
                audit="insufficient_scope",
                who=session.who,
                scope=scope,
            )
        return session

    return Depends(dependency)


async def form_fields(request: Request, *, max_value: int | None = 10_000) -> dict[str, str]:
    """A urlencoded form body (bounded by the guard), one value per field, each cut at
    ``max_value`` characters (None: whole, as for a policy candidate's text)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise ConsolePage(400, "error.form_type")
    body = await request.body()
    try:
        pairs = parse_qsl(
            body.decode("utf-8"), keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise ConsolePage(400, "error.form_invalid") from exc
    fields: dict[str, str] = {}
    for key, value in pairs:
        fields.setdefault(key[:64], value[:max_value])
    return fields


async def checked_form(request: Request, who: Session) -> dict[str, str]:
    """The fields of a state-changing form, once its CSRF token matched the session's.

    Raises:
        ConsolePage: 403 (audited) for a missing or wrong token, or a body that is not a
            urlencoded form.
    """
    try:
        fields = await form_fields(request)
    except ConsolePage:
        fields = {}  # no form at all carries no token either
    if not csrf_ok(who.csrf, fields.get("csrf")):
        raise ConsolePage(403, "refused.csrf", audit="csrf_mismatch", who=who.who)
    return fields


def is_https(request: Request) -> bool:
    """True when the browser reached the console over https: the request's own scheme
    (from a trusted proxy's ``X-Forwarded-Proto``), or a request for the host of an https
    public URL (``ISTMO_PUBLIC_URL``), which only the TLS proxy forwards, even when the
    proxy does not say so."""
    if request.url.scheme == "https":
        return True
    state: ApiState = request.app.state.istmo
    base = urlsplit(state.base_url)
    return base.scheme == "https" and host_name(request.scope) == base.hostname


def set_cookie(
    response: Response, request: Request, name: str, value: str, *, max_age: int | None = None
) -> None:
    """An HTTP-only, SameSite=Strict cookie for ``/console``, Secure over https."""
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=PREFIX,
        httponly=True,
        samesite="strict",
        secure=is_https(request),
    )


# ---------------------------------------------------------------------- rendering
def lang_of(request: Request) -> str:
    return negotiate(request.cookies.get(LANG_COOKIE), request.headers.get("accept-language"))


def local_path(text: str | None, default: str = f"{PREFIX}/") -> str:
    """``text`` if it is a path inside the console (no open redirect), else ``default``."""
    if (
        not text
        or len(text) > 2000
        or not text.startswith(PREFIX + "/")
        or "//" in text
        or "\\" in text
        or any(ord(c) < 0x20 for c in text)
    ):
        return default
    return text


def render(
    request: Request,
    template: str,
    context: dict[str, Any] | None = None,
    *,
    status: int = 200,
    session: Session | None = None,
) -> HTMLResponse:
    """Render ``template`` with the layout's context: ``_`` (translate), ``lang``,
    ``session``, ``csrf``, ``path`` (for the language switch) and ``dev_login``."""
    console = console_of(request)
    lang = lang_of(request)
    if session is None:
        try:
            session = session_of(request)
        except ConsolePage:
            session = None
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    ctx: dict[str, Any] = {
        "_": translator(lang),
        "lang": lang,
        "langs": LANGS,
        "session": session,
        "csrf": session.csrf if session else "",
        "here": local_path(here),
        "prefix": PREFIX,
        "dev_login": console.dev_login,
    }
    ctx.update(context or {})
    html = console.env.get_template(template).render(ctx)
    return HTMLResponse(html, status_code=status)


# ---------------------------------------------------------------------- headers
class ConsoleHeaders:
    """Outside the API's guard: ``/console`` pages get the console's CSP instead of the
    API's ``default-src 'none'`` (which forbids the console's own stylesheet and forms).
    Every other header the guard sets stays; other paths pass untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "") if scope["type"] == "http" else ""
        if path != PREFIX and not path.startswith(PREFIX + "/"):
            await self.app(scope, receive, send)
            return

        async def send_with_csp(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (k, v)
                    for k, v in message.get("headers", [])
                    if k.lower() != b"content-security-policy"
                ]
                headers.append((b"content-security-policy", CONSOLE_CSP.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_csp)


def translate_for(request: Request) -> Callable[..., str]:
    return translator(lang_of(request))
