"""The auditor's pages (scope ``audit:read``): the log, one entry with its proof checked in
the browser, integrity (tree heads, full verification, consistency), pictures, and the
flow of one bulletin.

Every page that shows log content first records an ``audit.queried`` event (subject
``console.<page>``, the filter, the row count), as the API's audit endpoints do: no
access without an audit event. Reads go through ``broker.console.queries`` and
``broker.console.figures``.

Left to others: the log itself (``broker.audit.log``), the charts (``broker.console.charts``).
"""

from __future__ import annotations

import calendar
import json
import re
import time
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from starlette.responses import RedirectResponse, Response

from broker.api.context import ApiProblem
from broker.audit import events
from broker.console import figures, queries
from broker.console.sessions import Session
from broker.console.web import (
    PREFIX,
    ConsolePage,
    ConsoleState,
    checked_form,
    page,
    render,
    translate_for,
)
from schemas.audit import EVENT_TYPES
from schemas.ids import BULLETIN_ID_PATTERN
from schemas.labels import TOPICS

__all__ = ["auditor_router"]

AUDITOR = "audit:read"
PAGE_SIZE = 50
MAX_INDEX = 2**53 - 1
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2})?$")
_TOKEN = re.compile(r"^[a-z0-9-]{1,32}$")
DECISIONS = ("permitted", "denied")
CHART_DAYS = (7, 30, 90)
_STEP_KEYS = (  # the strings static/verify.js shows, in the page's language
    *(f"entry.step.{k}" for k in ("key", "sig", "origin", "leaf", "root", "fail")),
    *(f"integrity.browser.{k}" for k in ("sigs", "proof")),
)


def _when(text: str | None, field: str, *, end: bool = False) -> int | None:
    """``YYYY-MM-DD`` or ``YYYY-MM-DDTHH:MM`` (UTC) as epoch ms; the end of the day for a
    bare date when ``end``."""
    if not text:
        return None
    if not _DATE.fullmatch(text):
        raise ConsolePage(400, "error.bad_field", field=field, hint="hint.date")
    try:
        if "T" in text:
            parsed = time.strptime(text, "%Y-%m-%dT%H:%M")
            extra = 60_000 if end else 0
        else:
            parsed = time.strptime(text, "%Y-%m-%d")
            extra = 86_400_000 if end else 0
    except ValueError as exc:
        raise ConsolePage(400, "error.bad_field", field=field, hint="hint.not_date") from exc
    return calendar.timegm(parsed) * 1000 + extra


def _token(text: str | None, field: str) -> str | None:
    if not text:
        return None
    if not _TOKEN.fullmatch(text):
        raise ConsolePage(400, "error.bad_field", field=field, hint="hint.token")
    return text


def _state(text: str | None) -> str | None:
    """A state code as the directory spells it (``GT``)."""
    found = _token(text.lower() if text else None, "state")
    return found.upper() if found else None


Opt = Annotated[str | None, Query(max_length=40)]
Auditor = Annotated[Session, page(AUDITOR)]


def auditor_router(console: ConsoleState) -> APIRouter:
    router = APIRouter(prefix=PREFIX, include_in_schema=False)
    api = console.api

    def record(who: Session, what: str, query: dict[str, Any], rows: int) -> None:
        event = events.audit_queried(who.who, f"console.{what}", query, rows, at=api.clock.now_ms())
        console.record(event)

    # ------------------------------------------------------------------ the log
    @router.get("/log")
    def log_page(
        request: Request,
        who: Auditor,
        agency: Opt = None,
        state: Opt = None,
        sector: Opt = None,
        topic: Opt = None,
        type: Opt = None,
        decision: Opt = None,
        since: Opt = None,
        until: Opt = None,
        before: Annotated[int | None, Query(ge=0, le=MAX_INDEX)] = None,
        after: Annotated[int | None, Query(ge=-1, le=MAX_INDEX)] = None,
    ) -> Response:
        if type and type not in EVENT_TYPES:
            raise ConsolePage(400, "error.bad_field", field="type", hint="hint.event_type")
        if decision and decision not in DECISIONS:
            raise ConsolePage(400, "error.bad_field", field="decision", hint="hint.decision")
        if topic and topic not in TOPICS:
            raise ConsolePage(400, "error.bad_field", field="topic", hint="hint.topic")
        f = queries.LogFilter(
            agency=_token(agency, "agency"),
            state=_state(state),
            sector=_token(sector, "sector"),
            topic=topic or None,
            type=type or None,
            decision=decision or None,
            since_ms=_when(since, "since"),
            until_ms=_when(until, "until", end=True),
        )
        rows = queries.log_page(
            api.registry, api.directory, f, before=before, after=after, limit=PAGE_SIZE
        )
        record(who, "log", {**f.as_query(), "before": before, "after": after}, len(rows))
        params = {
            k: v
            for k, v in {
                "agency": agency,
                "state": state,
                "sector": sector,
                "topic": topic,
                "type": type,
                "decision": decision,
                "since": since,
                "until": until,
            }.items()
            if v
        }
        newest = rows[0]["index"] if rows else None
        oldest = rows[-1]["index"] if rows else None
        has_older = (
            bool(rows)
            and queries.log_page(api.registry, api.directory, f, before=oldest, after=None, limit=1)
            != []
        )
        has_newer = (
            bool(rows)
            and queries.log_page(api.registry, api.directory, f, before=None, after=newest, limit=1)
            != []
        )
        agencies = api.registry.agencies()
        return render(
            request,
            "log.html",
            {
                "rows": rows,
                "params": params,
                "older": oldest if has_older else None,
                "newer": newest if has_newer else None,
                "types": EVENT_TYPES,
                "topics": TOPICS,
                "decisions": DECISIONS,
                "states": sorted({a.state for a in agencies if a.state}),
                "sectors": sorted({a.sector for a in agencies}),
                "agencies": sorted(a.id for a in agencies),
            },
            session=who,
        )

    # ------------------------------------------------------------------ one entry
    @router.get("/log/{index}")
    def entry_page(
        request: Request,
        who: Auditor,
        index: Annotated[int, Path(ge=0, le=MAX_INDEX)],
    ) -> Response:
        _ = translate_for(request)
        found = queries.entry_with_proof(
            api.registry.url, index, broker_dir=api.registry.broker_dir
        )
        record(who, "entry", {"index": index}, 0 if found is None else 1)
        if found is None:
            raise ConsolePage(404, "error.no_entry")
        return render(
            request,
            "entry.html",
            {
                "e": found,
                "proof_json": json.dumps(found["check"], separators=(",", ":")),
                "labels_json": json.dumps({k: _(k) for k in _STEP_KEYS}),
            },
            session=who,
        )

    @router.get("/verify-entry")
    def entry_by_form(index: Annotated[int, Query(ge=0, le=MAX_INDEX)], who: Auditor) -> Response:
        return RedirectResponse(f"{PREFIX}/log/{index}", status_code=303)

    # ------------------------------------------------------------------ integrity
    @router.get("/integrity")
    def integrity_page(
        request: Request,
        who: Auditor,
        old: Annotated[int | None, Query(ge=0, le=MAX_INDEX)] = None,
        new: Annotated[int | None, Query(ge=0, le=MAX_INDEX)] = None,
    ) -> Response:
        _ = translate_for(request)
        heads = queries.tree_heads(api.registry.url, broker_dir=api.registry.broker_dir, limit=100)
        record(who, "integrity", {"heads": len(heads)}, len(heads))
        consistency = None
        if old is not None and new is not None:
            consistency = queries.check_consistency(
                api.registry.url, old, new, broker_dir=api.registry.broker_dir
            )
            record(who, "consistency", {"old": old, "new": new}, 1)
        return render(
            request,
            "integrity.html",
            {
                "heads": heads,
                "latest": heads[0] if heads else None,
                "last": console.last_verification,
                "consistency": consistency,
                "consistency_json": json.dumps(consistency["check"], separators=(",", ":"))
                if consistency and "check" in consistency
                else None,
                "labels_json": json.dumps({k: _(k) for k in _STEP_KEYS}),
                "old": old if old is not None else (heads[-1]["size"] if len(heads) > 1 else 0),
                "new": new if new is not None else (heads[0]["size"] if heads else 0),
                "log_key": queries.log_key_info(api.registry.broker_dir),
            },
            session=who,
        )

    @router.post("/integrity/verify")
    async def run_verification(request: Request, who: Auditor) -> Response:
        await checked_form(request, who)
        try:
            api.limit(api.expensive_limiter, who.who, "console_verify")
        except ApiProblem as exc:
            raise ConsolePage(429, "error.rate", seconds=exc.headers.get("Retry-After")) from exc
        result = queries.verify_log(
            api.registry.url, broker_dir=api.registry.broker_dir, at=api.clock.now_ms()
        )
        result["who"] = who.who
        console.last_verification = result
        record(who, "verify", {"ok": result["ok"]}, int(result.get("entries", 0)))
        return RedirectResponse(f"{PREFIX}/integrity", status_code=303)

    # ------------------------------------------------------------------ pictures
    @router.get("/charts")
    def charts_page(
        request: Request,
        who: Auditor,
        days: Annotated[int, Query(ge=1, le=366)] = 30,
    ) -> Response:
        from broker.console import charts

        now_ms = api.clock.now_ms()
        since = now_ms - days * 86_400_000
        stats = figures.chart_stats(api.registry, since, now_ms)
        record(who, "charts", {"days": days}, stats["events"])
        return render(
            request,
            "charts.html",
            {
                "days": days,
                "choices": CHART_DAYS,
                "stats": stats,
                "charts": charts.render_all(stats, translate_for(request)),
            },
            session=who,
        )

    # ------------------------------------------------------------------ flow
    @router.get("/flow")
    def flow_page(
        request: Request,
        who: Auditor,
        bulletin: Annotated[str | None, Query(max_length=36)] = None,
    ) -> Response:
        flow = None
        if bulletin:
            if not re.fullmatch(BULLETIN_ID_PATTERN, bulletin):
                raise ConsolePage(400, "error.bad_field", field="bulletin", hint="hint.bulletin")
            flow = figures.bulletin_flow(api.registry, bulletin)
            record(who, "flow", {"bulletin": bulletin}, flow["events"])
        return render(
            request,
            "flow.html",
            {"bulletin": bulletin or "", "flow": flow},
            session=who,
        )

    return router
