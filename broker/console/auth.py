"""Signing in to the console: session links, the development login, signing out, the
language switch and the home page.

1. ``POST /console/session-link`` (a bearer token from ``/v1/token``, scope ``audit:read``
   or ``admin``; what ``istmo console login`` calls) answers a one-time link, valid for
   ``LINK_LIFETIME_S``; only the SHA-256 of its code is kept. The link starts with the
   broker's public URL (``ApiState.base_url``), never with the request's ``Host``.
2. ``GET /console/login?code=...`` spends the code, starts a session (``console.login``
   audit event) and sends the browser to the console without the code in the address.
3. ``/console/dev-login`` exists only when the app was built with ``console_dev_login``
   (``istmo up`` does that, nothing else): it lists the active auditors and
   administrators and signs in as one, a form protected by a double-submit token.
4. ``POST /console/logout`` (CSRF-checked) ends the session (``console.logout``).

Left to others: sessions and links themselves (``broker.console.sessions``).
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Security
from sqlmodel import select
from starlette.responses import JSONResponse, RedirectResponse, Response

from broker.api.context import ApiProblem, caller
from broker.api.oauth import ADMIN_SCOPES, AUDITOR_SCOPES, Caller
from broker.audit import events
from broker.console.i18n import LANG_COOKIE, LANGS
from broker.console.sessions import LINK_LIFETIME_S, MAX_SECRET_CHARS, Session, new_secret
from broker.console.web import (
    PRE_COOKIE,
    PREFIX,
    SESSION_COOKIE,
    ConsolePage,
    ConsoleState,
    checked_form,
    form_fields,
    local_path,
    page,
    render,
    session_of,
    set_cookie,
)
from broker.directory.admins import AdminRow

__all__ = ["CONSOLE_SCOPES", "auth_router"]

CONSOLE_SCOPES = ("audit:read", "admin")  # who has anything to see in the console


def _start_session(
    request: Request,
    console: ConsoleState,
    who: str,
    kind: str,
    scopes: frozenset[str],
    via: str,
) -> Response:
    sid, _session = console.sessions.create(who, kind, scopes, via)
    console.record(
        events.console_login(
            who,
            where=PREFIX,
            via=via,
            scopes=sorted(scopes),
            peer=request.client.host if request.client else None,
            at=console.api.clock.now_ms(),
        )
    )
    response = RedirectResponse(f"{PREFIX}/", status_code=303)
    set_cookie(response, request, SESSION_COOKIE, sid)
    response.delete_cookie(PRE_COOKIE, path=PREFIX)
    return response


def _dev_identities(console: ConsoleState) -> list[dict[str, str]]:
    """Active auditors (agencies of the auditor sector) and administrators."""
    registry = console.api.registry
    found = [
        {"id": a.id, "name": a.name, "kind": "agency", "role": "audit:read"}
        for a in registry.agencies()
        if a.sector == "auditor" and a.status == "active"
    ]
    with registry.session() as s:
        admins = s.exec(select(AdminRow).where(AdminRow.status == "active").limit(50)).all()
    found += [{"id": a.id, "name": a.name, "kind": "admin", "role": "admin"} for a in admins]
    return found[:50]


def auth_router(console: ConsoleState) -> APIRouter:
    router = APIRouter(prefix=PREFIX, include_in_schema=False)

    @router.post("/session-link")
    def session_link(who: Annotated[Caller, Security(caller, scopes=[])]) -> JSONResponse:
        """A one-time console sign-in link for the token's holder (60 s, single use)."""
        scopes = frozenset(s for s in who.scopes if s in CONSOLE_SCOPES)
        if not scopes:
            raise ApiProblem(
                403,
                "insufficient_scope",
                "the console is for auditors (audit:read) and administrators (admin)",
                client=who.id,
            )
        code = console.links.issue(who.id, who.kind, scopes)
        base = console.api.base_url
        return JSONResponse(
            {"url": f"{base}{PREFIX}/login?code={code}", "expires_in": LINK_LIFETIME_S},
            headers={"Cache-Control": "no-store"},
        )

    @router.get("/login")
    def login(
        request: Request,
        code: Annotated[str | None, Query(max_length=MAX_SECRET_CHARS)] = None,
    ) -> Response:
        try:
            who, kind, scopes = console.links.redeem(code)
        except LookupError as exc:
            raise ConsolePage(400, "signin.link_bad", audit="link_invalid") from exc
        if not console.active(who, kind):
            raise ConsolePage(403, "refused.expired", audit="client_inactive", who=who)
        return _start_session(request, console, who, kind, scopes, "link")

    @router.get("/")
    def home(request: Request) -> Response:
        session = session_of(request)
        if session is None:
            return _signin_page(request, console)
        return render(request, "home.html", {}, session=session)

    @router.post("/logout")
    async def logout(request: Request, who: Annotated[Session, page(None)]) -> Response:
        await checked_form(request, who)
        console.sessions.end(request.cookies.get(SESSION_COOKIE))
        console.record(events.console_logout(who.who, where=PREFIX, at=console.api.clock.now_ms()))
        response = RedirectResponse(f"{PREFIX}/?out=1", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path=PREFIX)
        return response

    @router.get("/lang/{code}")
    def switch_language(
        request: Request,
        code: str,
        next_: Annotated[str | None, Query(alias="next", max_length=2000)] = None,
    ) -> Response:
        if code not in LANGS:
            raise ConsolePage(404, "error.not_found", what=code[:8])
        response = RedirectResponse(local_path(next_), status_code=303)
        set_cookie(response, request, LANG_COOKIE, code, max_age=365 * 24 * 3600)
        return response

    if console.dev_login:
        _add_dev_login(router, console)
    return router


def _signin_page(request: Request, console: ConsoleState) -> Response:
    context: dict[str, Any] = {
        "signed_out": request.query_params.get("out") == "1",
        "base_url": console.api.base_url,
    }
    pre = None
    if console.dev_login:
        pre = request.cookies.get(PRE_COOKIE)
        if not pre or len(pre) > MAX_SECRET_CHARS:
            pre = new_secret()
        context["identities"] = _dev_identities(console)
        context["pre"] = pre
    response = render(request, "signin.html", context)
    if pre is not None:
        set_cookie(response, request, PRE_COOKIE, pre, max_age=3600)
    return response


def _add_dev_login(router: APIRouter, console: ConsoleState) -> None:
    @router.get("/dev-login")
    def dev_login_page(request: Request) -> Response:
        return _signin_page(request, console)

    @router.post("/dev-login")
    async def dev_login(request: Request) -> Response:
        fields = await form_fields(request)
        cookie, sent = request.cookies.get(PRE_COOKIE) or "", fields.get("pre") or ""
        # 1. Double submit: the form's token equals the cookie's (constant time).
        if (
            not cookie
            or len(sent) > MAX_SECRET_CHARS
            or not hmac.compare_digest(cookie.encode(), sent.encode("utf-8", "replace"))
        ):
            raise ConsolePage(403, "refused.csrf", audit="csrf_mismatch")
        # 2. One of the identities the page offers: an active auditor or administrator.
        wanted = fields.get("who", "")[:32]
        match = [i for i in _dev_identities(console) if i["id"] == wanted]
        if not match:
            raise ConsolePage(
                403,
                "refused.scope",
                audit="dev_login_refused",
                who=wanted,
                scope="audit:read | admin",
            )
        identity = match[0]
        scopes = ADMIN_SCOPES if identity["kind"] == "admin" else AUDITOR_SCOPES
        return _start_session(request, console, wanted, identity["kind"], scopes, "dev")
