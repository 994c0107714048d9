"""Compose, answer, ask, release and acknowledge at the desk (ADR 27).

``add_compose_routes`` adds to ``clients.desk_web``'s application:

- ``GET/POST /compose`` (a new bulletin), ``/ask`` (a request for information with a
  deadline) and ``/b/{id}/answer`` (a reply): the label pickers, files attached; a valid
  form becomes a draft, sealed in the archive (``clients.desk_drafts``), never sent at once.
- ``GET /drafts`` and ``/drafts/{id}``: the drafts waiting, and one with its files (name,
  size and type: never rendered) and the policy's preview: which agencies may receive it
  and why the others may not (the broker's ``explain``, through the SDK).
- ``POST /b/{id}/ack``: a drafter or releaser tells the originator a person read it and
  acted on it (a signed reply to the originator alone, flagged in its sealed content: no
  words of the analyst's, so no draft); ``GET /acks`` lists the acknowledgements this
  agency received: which of its bulletins, by whom, when.
- ``POST /drafts/{id}/release``: a releaser who did not write it sends it through the SDK
  (four-eyes); ``/drafts/{id}/discard``: its author or a releaser drops it.

Readers do none of it (403, recorded). Every POST carries the session's CSRF token; a
compose form is read into memory up to ``MAX_BODY_BYTES`` (refused from its
Content-Length before reading when larger) and checked field by field against its closed
set, errors shown beside the fields with nothing kept or sent. Each compose, answer, ask,
release (and a failed one), discard and acknowledgement goes in the access log, with a
draft or bulletin id only.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response

from clients.archive import ArchiveFilter
from clients.attachments import Attachment
from clients.desk_drafts import (
    MAX_BODY_BYTES,
    MAX_FILE_BYTES,
    MAX_FILES,
    MAX_TEXT,
    DeskDrafts,
    DraftContent,
    DraftFile,
    FormErrors,
    Why,
    check_compose,
    parse_multipart,
    sent_labels,
)
from clients.desk_web import (
    DeskSession,
    DeskState,
    _bulletin_id,
    _checked_form,
    _csrf_ok,
    _Page,
    _render,
    _signed_in,
    _state,
)
from clients.results import ReceivedBulletin
from schemas.envelope import MAX_TITLE_CHARS
from schemas.errors import IstmoError
from schemas.labels import TOPICS, Classification, Handling, Precedence, Tlp
from schemas.rfi import DEFAULT_DUE_S

__all__ = ["add_compose_routes"]

WRITERS = ("drafter", "releaser")
ACKS_LOOKED_AT = 1000


def _drafts(state: DeskState) -> DeskDrafts:
    if state.drafts is None:  # DeskState makes it
        raise RuntimeError("the desk has no drafts store")
    return state.drafts


def _writer(request: Request) -> DeskSession:
    """A signed-in drafter or releaser; a reader is refused (and it is recorded)."""
    who = _signed_in(request)
    if who.role not in WRITERS:
        _state(request).people.record(who.analyst, "request-refused", None)
        raise _Page(403, "refused.role")
    return who


async def _compose_form(
    request: Request, who: DeskSession
) -> tuple[list[tuple[str, str]], list[DraftFile]]:
    """The compose form's fields and files, bounded, once its CSRF token matched."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise _Page(413, "error.bad_input", what=_too_large())
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise _Page(413, "error.bad_input", what=_too_large())
    ctype = request.headers.get("content-type", "")
    try:
        if ctype.startswith("multipart/form-data"):
            fields, files = parse_multipart(bytes(body), ctype)
        else:
            fields, files = parse_qsl(bytes(body).decode(), max_num_fields=48), []
    except (UnicodeDecodeError, ValueError) as exc:
        raise _Page(400, "error.bad_input", what=str(exc)) from exc
    if not _csrf_ok(who.csrf, dict(fields).get("csrf")):
        _state(request).people.record(who.analyst, "request-refused", None)
        raise _Page(403, "refused.csrf")
    return fields, files


def _too_large() -> str:
    return f"the form is too large: at most {MAX_FILES} files of {MAX_FILE_BYTES >> 20} MiB"


def _choices() -> dict[str, Any]:
    return {
        "topics": TOPICS,
        "classifications": [c.value for c in Classification],
        "tlps": [t.value for t in Tlp],
        "precedences": [p.value for p in Precedence],
        "handlings": [h.value for h in Handling],
        "due_hours": {p.value: DEFAULT_DUE_S[p] / 3600 for p in Precedence},
        "max_title": MAX_TITLE_CHARS,
        "max_text": MAX_TEXT,
        "max_files": MAX_FILES,
        "max_mib": MAX_FILE_BYTES >> 20,
    }


def _values_of(c: DraftContent | None, pairs: list[tuple[str, str]] | None) -> dict[str, Any]:
    """What the form shows in its fields: a draft's labels, or what was typed."""
    if pairs is not None:
        shown: dict[str, Any] = {k: v for k, v in pairs if k != "handling"}
        shown["handling"] = [v for k, v in pairs if k == "handling"]
        return shown
    if c is None:
        return {"precedence": "ROUTINE", "handling": []}
    lab = c.labels
    return {
        "title": c.title,
        "text": c.text,
        "topic": lab.topic,
        "classification": lab.classification.value,
        "tlp": lab.tlp.value,
        "precedence": lab.precedence.value,
        "rel_to": ", ".join(lab.rel_to),
        "handling": [h.value for h in lab.handling],
        "handling_note": lab.handling_note or "",
        "named": ", ".join(lab.named),
    }


def add_compose_routes(app: FastAPI) -> None:
    """Add compose, ask, answer, the drafts, release and acknowledge to the desk."""
    state: DeskState = app.state.desk
    drafts = _drafts(state)
    state.env.globals["compose_on"] = True
    state.env.globals["desk_agency"] = state.archive.agency

    def form_page(
        request: Request,
        who: DeskSession,
        kind: str,
        action: str,
        *,
        values: dict[str, Any],
        errors: dict[str, Why] | None = None,
        answers: ReceivedBulletin | None = None,
        status: int = 200,
    ) -> Response:
        return _render(
            request,
            "compose.html",
            {
                "kind": kind,
                "action": action,
                "v": values,
                "errors": errors or {},
                "answers": answers,
                "csrf": who.csrf,
                **_choices(),
            },
            who=who,
            status=status,
        )

    def original(bid: str) -> ReceivedBulletin:
        got = state.archive.get(_bulletin_id(bid))
        if got is None:
            raise _Page(404, "error.not_found", what=bid)
        return got.bulletin

    def reply_values(b: ReceivedBulletin) -> dict[str, Any]:
        named = set(b.labels.named)
        if b.originator != state.archive.agency:
            named.add(b.originator)
        labels = b.labels.model_copy(update={"named": tuple(sorted(named))})
        title = f"Re: {b.title}"[:MAX_TITLE_CHARS]
        return _values_of(DraftContent("reply", title, "", labels), None)

    async def keep(
        request: Request, kind: str, action: str, *, answers: ReceivedBulletin | None = None
    ) -> Response:
        who = _writer(request)
        pairs, files = await _compose_form(request, who)
        try:
            content = check_compose(
                pairs,
                kind=kind,
                now=int(time.time()),
                in_reply_to=None if answers is None else answers.id,
            )
        except FormErrors as exc:
            return form_page(
                request,
                who,
                kind,
                action,
                values=_values_of(None, pairs),
                errors=exc.errors,
                answers=answers,
                status=400,
            )
        did = drafts.save(content, files, author=who.analyst)
        log_action = {"bulletin": "compose", "reply": "answer", "rfi": "ask"}[kind]
        state.people.record(who.analyst, log_action, did)  # type: ignore[arg-type]  # one of three
        return RedirectResponse(f"/drafts/{did}", status_code=303)

    @app.get("/compose")
    async def compose_form(request: Request) -> Response:
        who = _writer(request)
        return form_page(request, who, "bulletin", "/compose", values=_values_of(None, None))

    @app.post("/compose")
    async def compose(request: Request) -> Response:
        return await keep(request, "bulletin", "/compose")

    @app.get("/ask")
    async def ask_form(request: Request) -> Response:
        who = _writer(request)
        return form_page(request, who, "rfi", "/ask", values=_values_of(None, None))

    @app.post("/ask")
    async def ask(request: Request) -> Response:
        return await keep(request, "rfi", "/ask")

    @app.get("/b/{bid}/answer")
    async def answer_form(request: Request, bid: str) -> Response:
        who = _writer(request)
        b = original(bid)
        return form_page(
            request, who, "reply", f"/b/{b.id}/answer", values=reply_values(b), answers=b
        )

    @app.post("/b/{bid}/answer")
    async def answer(request: Request, bid: str) -> Response:
        _writer(request)
        b = original(bid)
        return await keep(request, "reply", f"/b/{b.id}/answer", answers=b)

    # ------------------------------------------------------------------ drafts
    def seen_draft(request: Request, who: DeskSession, did: str) -> Any:
        d = drafts.get(_bulletin_id(did))
        if d is None or (who.role != "releaser" and d.author != who.analyst):
            raise _Page(404, "error.no_draft", what=did)
        return d

    @app.get("/drafts")
    async def draft_list(request: Request) -> Response:
        who = _writer(request)
        mine = None if who.role == "releaser" else who.analyst
        return _render(
            request,
            "drafts.html",
            {"drafts": drafts.listed(author=mine), "csrf": who.csrf},
            who=who,
        )

    @app.get("/drafts/{did}")
    async def draft_page(request: Request, did: str) -> Response:
        who = _writer(request)
        d = seen_draft(request, who, did)
        content = drafts.content(d.id) if d.state != "discarded" else None
        preview, problem, problem_what = None, None, ""
        if content is not None and d.state == "draft":
            if state.link is None:
                problem = "inbox.sync_off"
            else:
                try:
                    preview = await state.link.preview(sent_labels(content))
                except IstmoError as exc:
                    problem, problem_what = "error.broker", str(exc)
        files = drafts.files(d.id) if d.state == "draft" else []
        return _render(
            request,
            "draft.html",
            {
                "d": d,
                "c": content,
                "lab": None if content is None else sent_labels(content),
                "files": files,
                "preview": preview,
                "problem": problem,
                "problem_what": problem_what,
                "may_release": who.role == "releaser" and who.analyst != d.author,
                "csrf": who.csrf,
            },
            who=who,
        )

    @app.post("/drafts/{did}/release")
    async def release(request: Request, did: str) -> Response:
        who = _writer(request)
        d = seen_draft(request, who, did)
        await _checked_form(request, who)
        if who.role != "releaser":
            state.people.record(who.analyst, "request-refused", d.id)
            raise _Page(403, "refused.releaser")
        if d.author == who.analyst:
            state.people.record(who.analyst, "request-refused", d.id)
            raise _Page(403, "refused.four_eyes")
        if state.link is None:
            raise _Page(409, "inbox.sync_off")
        if not drafts.claim(d.id, who.analyst):
            raise _Page(409, "error.not_a_draft", what=d.id)
        folder = Path(tempfile.mkdtemp(prefix="istmo-desk-"))
        try:
            content = drafts.content(d.id)
            files = []
            for i, f in enumerate(drafts.files(d.id)):
                # A private copy for the SDK to read, removed as soon as it is sent.
                path = folder / str(i)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as out:
                    out.write(f.data)
                files.append(Attachment(path, f.name, f.media_type))
            result = await state.link.send(content, files)
        except BaseException as exc:
            drafts.unclaim(d.id)
            state.people.record(who.analyst, "release-failed", d.id)
            if isinstance(exc, IstmoError):
                raise _Page(502, "error.send_failed", what=str(exc)) from exc
            raise
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        drafts.released(d.id, result.bulletin_id)
        state.people.record(who.analyst, "release", result.bulletin_id)
        return RedirectResponse(f"/drafts/{d.id}", status_code=303)

    @app.post("/drafts/{did}/discard")
    async def discard(request: Request, did: str) -> Response:
        who = _writer(request)
        d = seen_draft(request, who, did)
        await _checked_form(request, who)
        if not drafts.discard(d.id, who.analyst):
            raise _Page(409, "error.not_a_draft", what=d.id)
        state.people.record(who.analyst, "discard", d.id)
        return RedirectResponse("/drafts", status_code=303)

    # ------------------------------------------------------------------ acknowledge
    @app.get("/acks")
    async def acks(request: Request) -> Response:
        who = _signed_in(request)  # every role reads who acknowledged
        return _render(request, "acks.html", {"acks": _acks(state), "csrf": who.csrf}, who=who)

    @app.post("/b/{bid}/ack")
    async def acknowledge(request: Request, bid: str) -> Response:
        who = _writer(request)
        b = original(bid)
        await _checked_form(request, who)
        if state.link is None:
            raise _Page(409, "inbox.sync_off")
        if b.originator == state.archive.agency:
            raise _Page(400, "error.own_bulletin")
        try:
            await state.link.acknowledge(b.id)
        except IstmoError as exc:
            raise _Page(502, "error.send_failed", what=str(exc)) from exc
        state.people.record(who.analyst, "acknowledge", b.id)
        return RedirectResponse(f"/b/{b.id}?acked=1", status_code=303)


def _acks(state: DeskState) -> list[tuple[str, str, int, str]]:
    """The acknowledgements the archive holds among its newest ``ACKS_LOOKED_AT`` replies,
    newest first: (bulletin acknowledged, by agency, when, the acknowledgement's id)."""
    found = []
    for e in state.archive.entries(ArchiveFilter(), limit=ACKS_LOOKED_AT):
        if e.in_reply_to is None:
            continue
        got = state.archive.get(e.id)
        if got is not None and got.bulletin.acknowledges:
            found.append((e.in_reply_to, e.originator, e.created_at, e.id))
    return found
