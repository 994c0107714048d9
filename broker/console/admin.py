"""The administrators' pages (scope ``admin``): agencies and their keys, their lifecycle,
enrolment tokens, and the policy set (in force, a candidate checked and simulated, then
adopted).

Every change is two steps: a GET shows what will happen and a form (the session's CSRF
token, a note for the audit log); its POST does it through ``broker.console.admin_data``,
that is through the same functions as ``istmo admin`` and the HTTP API, with the
administrator as the audit event's actor, and then has the running stack apply it as the
HTTP API does (``apply_directory_change``: nats-server reloaded, not restarted). Anyone
without the ``admin`` scope gets a refusal page and an ``auth.refused`` audit entry
(``page("admin")``); a bad form or candidate gets a page naming the problem and a
``request.rejected`` entry, and changes nothing.

An enrolment token appears in one response only (``Cache-Control: no-store``); it is never
logged, stored (only its digest is, by ``broker.directory.enrolment``) or put in an address.

Left to others: sessions, CSRF, layout and sign-in (``broker.console.web``,
``broker.console.auth``); the rules of each change (``broker.directory.lifecycle``,
``broker.directory.enrolment``, ``broker.directory.policy_sets``).
"""

from __future__ import annotations

import asyncio
import logging
import re
import tempfile
from pathlib import Path as FsPath
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.responses import RedirectResponse, Response

from broker.api.admin import write_candidate
from broker.api.context import ApiProblem
from broker.api.enrol import apply_directory_change
from broker.audit import events
from broker.console.admin_data import (
    ACTIONS,
    Action,
    agency_groups,
    agency_view,
    change_status,
    issue_enrolment_token,
    revoke_key,
)
from broker.console.admin_highlight import highlight_lines
from broker.console.admin_policy_data import (
    MAX_CANDIDATE_CHARS,
    CandidateError,
    active_files,
    bundle_text,
    check_candidate,
    parse_bundle_text,
    simulate_candidate,
)
from broker.console.sessions import Session, csrf_ok
from broker.console.web import (
    PREFIX,
    ConsolePage,
    ConsoleState,
    checked_form,
    form_fields,
    page,
    render,
)
from broker.directory.enrolment import DEFAULT_TOKEN_TTL_S
from broker.policy.engine import PolicyLoadError
from schemas.directory import SECTORS
from schemas.errors import AuditStoreError, ConfigError
from schemas.ids import AGENCY_ID_PATTERN

__all__ = ["admin_router"]

log = logging.getLogger("istmo.console")

ADMIN = "admin"
BASE = f"{PREFIX}/admin"
STATUSES = ("active", "suspended", "revoked")
TTLS = {"hour": 3600, "day": DEFAULT_TOKEN_TTL_S, "week": 7 * 24 * 3600}
MAX_SHOWN_CHANGES = 200
DEFAULT_SIMULATED = 100
_AGENCY = re.compile(AGENCY_ID_PATTERN)
_PLACE = re.compile(r"^[A-Z]{2,16}$")
_VERSION = re.compile(r"^[0-9a-f]{16}$")
_KID = re.compile(r"^sig-[0-9a-f]{32}$")
_PROBLEM_AT = re.compile(r"^([a-z0-9./-]{1,64}?)(?::(\d{1,6}))?:")
_SCHEMA = "schema.cedarschema"

Admin = Annotated[Session, page(ADMIN)]
Opt = Annotated[str | None, Query(max_length=40)]


def _agency_id(text: str) -> str:
    if len(text) > 32 or _AGENCY.fullmatch(text) is None:
        raise ConsolePage(404, "admin.unknown_agency")
    return text


def _kid(text: str) -> str:
    if len(text) > 40 or _KID.fullmatch(text) is None:
        raise ConsolePage(404, "error.not_found", what=text[:40])
    return text


def _action(text: str) -> Action | None:
    """A lifecycle action, or None for ``token``; anything else is a 404."""
    if text == "token":
        return None
    for action in ACTIONS:
        if action == text:
            return action
    raise ConsolePage(404, "error.not_found", what=text[:16])


def admin_router(console: ConsoleState) -> APIRouter:
    """The administrators' pages under ``/console/admin``."""
    router = APIRouter(prefix=BASE, include_in_schema=False)
    api = console.api

    def reject(request: Request, who: Session, reason: str, message: str) -> None:
        """Record a refused form (bad input, a conflict) as ``request.rejected``."""
        route = getattr(request.scope.get("route"), "path", None) or request.url.path
        try:
            console.record(
                events.console_refused(
                    "request.rejected",
                    who.who,
                    method=request.method,
                    route=route,
                    reason=reason,
                    message=message,
                    at=api.clock.now_ms(),
                )
            )
        except AuditStoreError as exc:  # the refusal stands either way
            log.error("could not audit a refused console form: %s", exc)

    def view_or_404(agency: str) -> Any:
        view = agency_view(api.registry, agency)
        if view is None:
            raise ConsolePage(404, "admin.unknown_agency")
        return view

    # ------------------------------------------------------------------ overview
    @router.get("/")
    def index(request: Request, who: Admin) -> Response:
        groups = agency_groups(api.registry)
        counts = {s: 0 for s in STATUSES}
        unenrolled = 0
        for g in groups:
            for a in g.agencies:
                counts[a.status] = counts.get(a.status, 0) + 1
                unenrolled += 0 if a.enrolled else 1
        return render(
            request,
            "admin/index.html",
            {
                "counts": counts,
                "unenrolled": unenrolled,
                "policy_version": api.directory.bundle.version,
                "adopted": api.registry.active_policy(),
            },
            session=who,
        )

    # ------------------------------------------------------------------ agencies
    @router.get("/agencies")
    def agencies(
        request: Request,
        who: Admin,
        place: Opt = None,
        sector: Opt = None,
        status: Opt = None,
    ) -> Response:
        places = sorted(j.code for j in api.registry.jurisdictions())
        if place and place not in places:
            raise ConsolePage(400, "error.bad_field", field="place", hint="hint.place")
        if sector and sector not in SECTORS:
            raise ConsolePage(400, "error.bad_field", field="sector", hint="hint.sector")
        if status and status not in STATUSES:
            raise ConsolePage(400, "error.bad_field", field="status", hint="hint.status")
        groups = agency_groups(
            api.registry, place=place or None, sector=sector or None, status=status or None
        )
        return render(
            request,
            "admin/agencies.html",
            {
                "groups": groups,
                "shown": sum(len(g.agencies) for g in groups),
                "places": places,
                "sectors": SECTORS,
                "statuses": STATUSES,
                "params": {"place": place or "", "sector": sector or "", "status": status or ""},
            },
            session=who,
        )

    @router.get("/agencies/{agency}")
    def agency_page(
        request: Request,
        agency: str,
        who: Admin,
        done: Opt = None,
        applied: Opt = None,
        kid: Opt = None,
    ) -> Response:
        view = view_or_404(_agency_id(agency))
        revoked = kid if done == "key" and kid and _KID.fullmatch(kid) else None
        return render(
            request,
            "admin/agency.html",
            {
                "a": view,
                "done": done if done in ACTIONS else None,
                "revoked_kid": revoked,
                "not_applied": applied == "0",
                "actions": [a for a in ACTIONS if view.allows(a)],
            },
            session=who,
        )

    @router.get("/agencies/{agency}/{action}")
    def confirm_page(request: Request, agency: str, action: str, who: Admin) -> Response:
        view = view_or_404(_agency_id(agency))
        act = _action(action)
        name = act or "token"
        allowed = view.can_enrol if act is None else view.allows(act)
        return render(
            request,
            "admin/confirm.html",
            {"a": view, "action": name, "allowed": allowed, "ttls": list(TTLS)},
            session=who,
        )

    @router.post("/agencies/{agency}/{action}")
    async def act_on_agency(request: Request, agency: str, action: str, who: Admin) -> Response:
        fields = await checked_form(request, who)  # 1. CSRF first: 403 + audit if wrong
        agency_id = _agency_id(agency)
        act = _action(action)
        view_or_404(agency_id)
        if act is None:
            return await _issue_token(request, who, agency_id, fields.get("ttl", "day"))
        note = fields.get("note", "").strip()[:200]
        try:
            previous = await asyncio.to_thread(
                change_status, api.registry, agency_id, act, actor=who.who, note=note
            )
        except ConfigError as exc:
            reject(request, who, "conflict", str(exc))
            raise ConsolePage(409, "admin.conflict", what=str(exc)[:300]) from exc
        if act != "reinstate":
            console.sessions.end_all(agency_id)
        applied = await apply_directory_change(api)
        log.info("agency %s: %s -> %s by %s (console)", agency_id, previous, ACTIONS[act], who.who)
        suffix = "" if applied else "&applied=0"
        return RedirectResponse(f"{BASE}/agencies/{agency_id}?done={act}{suffix}", 303)

    @router.get("/agencies/{agency}/keys/{kid}/revoke")
    def confirm_key_page(request: Request, agency: str, kid: str, who: Admin) -> Response:
        view = view_or_404(_agency_id(agency))
        key = next((k for k in view.keys if k.kind == "signing" and k.kid == _kid(kid)), None)
        if key is None:
            raise ConsolePage(404, "error.not_found", what=kid)
        return render(
            request,
            "admin/key_confirm.html",
            {"a": view, "key": key, "others": view.active_signing - 1},
            session=who,
        )

    @router.post("/agencies/{agency}/keys/{kid}/revoke")
    async def revoke_key_now(request: Request, agency: str, kid: str, who: Admin) -> Response:
        await checked_form(request, who)  # 1. CSRF first: 403 + audit if wrong
        agency_id, key_id = _agency_id(agency), _kid(kid)
        try:
            await asyncio.to_thread(revoke_key, api.registry, agency_id, key_id, actor=who.who)
        except ConfigError as exc:  # no such key of that agency, or revoked already
            reject(request, who, "conflict", str(exc))
            raise ConsolePage(409, "admin.conflict", what=str(exc)[:300]) from exc
        applied = await apply_directory_change(api)
        log.info("agency %s: key %s revoked by %s (console)", agency_id, key_id, who.who)
        suffix = "" if applied else "&applied=0"
        return RedirectResponse(f"{BASE}/agencies/{agency_id}?done=key&kid={key_id}{suffix}", 303)

    async def _issue_token(request: Request, who: Session, agency_id: str, ttl: str) -> Response:
        if ttl not in TTLS:
            reject(request, who, "bad_attribute", "ttl: hour, day or week")
            raise ConsolePage(400, "error.bad_field", field="ttl", hint="hint.ttl")
        try:
            issued = await asyncio.to_thread(
                issue_enrolment_token,
                api.registry,
                api.directory,
                agency_id,
                actor=who.who,
                ttl_s=TTLS[ttl],
            )
        except ConfigError as exc:
            reject(request, who, exc.code or "conflict", str(exc))
            raise ConsolePage(409, "admin.conflict", what=str(exc)[:300]) from exc
        log.info("enrolment token issued for %s by %s (console)", agency_id, who.who)
        broker = api.base_url  # the public URL: where the agency will enrol from
        response = render(
            request,
            "admin/token.html",
            {"issued": issued, "broker": broker},
            session=who,
        )
        response.headers["Cache-Control"] = "no-store"
        response.headers["Pragma"] = "no-cache"
        return response

    # ------------------------------------------------------------------ policy
    @router.get("/policy")
    def policy_page(
        request: Request, who: Admin, adopted: Opt = None, previous: Opt = None
    ) -> Response:
        files = active_files(api.directory, api.registry)
        shown = [
            (name, highlight_lines(text))
            for name, text in sorted(files.items(), key=lambda kv: _file_order(kv[0]))
        ]
        just = adopted if adopted and _VERSION.fullmatch(adopted) else None
        before = previous if previous and _VERSION.fullmatch(previous) else "-"
        return render(
            request,
            "admin/policy.html",
            {
                "version": api.directory.bundle.version,
                "row": api.registry.active_policy(),
                "files": shown,
                "has_schema": _SCHEMA in files,
                "just_adopted": just,
                "previous": before,
            },
            session=who,
        )

    @router.get("/policy/candidate")
    def candidate_page(request: Request, who: Admin) -> Response:
        files = active_files(api.directory, api.registry)
        return render(
            request,
            "admin/candidate.html",
            {
                "text": bundle_text(files),
                "has_schema": _SCHEMA in files,
                "max_chars": MAX_CANDIDATE_CHARS,
                "max_last": api.limits.max_simulate_bulletins,
                "last": DEFAULT_SIMULATED,
            },
            session=who,
        )

    async def candidate_form(request: Request, who: Session) -> dict[str, str]:
        """A policy form's fields, CSRF-checked like ``checked_form`` but with the
        candidate's text whole (``checked_form`` cuts fields at 10,000 characters; the
        guard bounds the body)."""
        fields = await form_fields(request, max_value=None)
        if not csrf_ok(who.csrf, fields.get("csrf")):
            raise ConsolePage(403, "refused.csrf", audit="csrf_mismatch", who=who.who)
        try:
            api.limit(api.expensive_limiter, who.who, "expensive")
        except ApiProblem as exc:
            wait = exc.headers.get("Retry-After", "60")
            raise ConsolePage(429, "admin.rate_limited", wait=wait) from exc
        return fields

    def candidate_files(
        request: Request, who: Session, text: str, *, replace_all: bool
    ) -> dict[str, str]:
        active = active_files(api.directory, api.registry)
        try:
            return parse_bundle_text(text, active=active, replace_all=replace_all)
        except CandidateError as exc:
            reject(request, who, "bad_candidate", str(exc))
            raise ConsolePage(400, "admin.bad_candidate", what=str(exc)[:300]) from exc

    async def checked(request: Request, who: Session, files: dict[str, str]) -> Any:
        active = active_files(api.directory, api.registry)
        try:
            return await asyncio.to_thread(check_candidate, files, api.directory, active)
        except CandidateError as exc:
            reject(request, who, "bad_candidate", str(exc))
            raise ConsolePage(400, "admin.bad_candidate", what=str(exc)[:300]) from exc

    @router.post("/policy/check")
    async def check_policy(request: Request, who: Admin) -> Response:
        fields = await candidate_form(request, who)
        files = candidate_files(
            request, who, fields.get("candidate", ""), replace_all=fields.get("replace") == "1"
        )
        try:
            last = int(fields.get("last") or DEFAULT_SIMULATED)
        except ValueError:
            last = -1
        limit = api.limits.max_simulate_bulletins
        if not 1 <= last <= limit:
            reject(request, who, "bad_attribute", f"last: 1 to {limit}")
            raise ConsolePage(400, "error.bad_field", field="last", hint="hint.last", limit=limit)
        check = await checked(request, who, files)
        simulation = None
        if check.valid:
            simulation = await asyncio.to_thread(
                simulate_candidate, files, api.registry, api.directory, last=last
            )
        # An invalid candidate: its changed files, highlighted, each problem linked to its line.
        shown = (
            []
            if check.valid
            else [(n, highlight_lines(files[n])) for n in check.changed if n in files]
        )
        return render(
            request,
            "admin/check.html",
            {
                "check": check,
                "problems": [(p, _problem_anchor(p, files)) for p in check.problems],
                "shown": shown,
                "sim": simulation,
                "active": api.directory.bundle.version,
                "max_shown": MAX_SHOWN_CHANGES,
            },
            session=who,
        )

    async def the_checked_candidate(request: Request, who: Session) -> tuple[Any, dict[str, str]]:
        """The candidate of a confirm or adopt form, if it is still the version that was
        checked and still valid."""
        fields = await candidate_form(request, who)
        files = candidate_files(request, who, fields.get("candidate", ""), replace_all=True)
        check = await checked(request, who, files)
        expected = fields.get("version", "")
        if not check.valid or check.version != expected:
            reject(request, who, "candidate_changed", f"expected version {expected[:16]}")
            raise ConsolePage(409, "admin.adopt.changed", version=check.version or "-")
        return check, files

    @router.post("/policy/confirm")
    async def confirm_adoption(request: Request, who: Admin) -> Response:
        check, _files = await the_checked_candidate(request, who)
        return render(
            request,
            "admin/adopt.html",
            {"check": check, "active": api.directory.bundle.version},
            session=who,
        )

    @router.post("/policy/adopt")
    async def adopt_policy(request: Request, who: Admin) -> Response:
        _check, files = await the_checked_candidate(request, who)
        if api.adopt_policy is None:
            raise ConsolePage(503, "admin.adopt.unavailable")
        with tempfile.TemporaryDirectory(prefix="istmo-adopt-") as tmp:
            root = write_candidate(files, FsPath(tmp))
            try:
                previous, version = await api.adopt_policy(root, f"admin:{who.who}")
            except PolicyLoadError as exc:  # recorded as policy.rejected by the store
                problems = "; ".join(exc.problems)[:500]
                raise ConsolePage(422, "admin.adopt.invalid", problems=problems) from exc
        log.info("policy %s adopted by %s (console), was %s", version, who.who, previous)
        return RedirectResponse(f"{BASE}/policy?adopted={version}&previous={previous}", 303)

    return router


def _problem_anchor(problem: str, files: dict[str, str]) -> str | None:
    """The line a validation problem names (``base.cedar:12: ...``) as a page anchor."""
    m = _PROBLEM_AT.match(problem)
    if m is None or m.group(1) not in files:
        return None
    anchor = m.group(1).replace("/", "-").replace(".", "-")
    return f"{anchor}-L{m.group(2)}" if m.group(2) else anchor


def _file_order(name: str) -> tuple[int, str]:
    return (0 if name == _SCHEMA else 1 if name == "base.cedar" else 2, name)
