"""Who looked and who was let in: audit queries, tokens, HTTP and console refusals, sign-ins."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from broker.audit.events._common import (
    MAX,
    Refusal,
    Value,
    one_off,
)
from schemas.audit import AuditEvent

__all__ = [
    "audit_queried",
    "console_login",
    "console_logout",
    "console_refused",
    "http_refused",
    "refusals_summarized",
    "token_issued",
]


# ---------------------------------------------------------------------------- audit log
def audit_queried(
    actor: str,
    subject: str,
    query: Mapping[str, Value],
    rows: int,
    *,
    at: int,
) -> AuditEvent:
    """One auditor query: who asked, what (``subject``, e.g. ``audit.search``), the filter
    (None values left out) and how many rows it returned. Record it before the rows are
    shown: no access without an audit event."""
    data: dict[str, Value] = {k: v for k, v in query.items() if v is not None}
    data["rows"] = rows
    return AuditEvent(
        event_id=one_off("audit-query"),
        type="audit.queried",
        time=at,
        actor=actor[:MAX],
        subject=subject[:MAX],
        data=dict(data),
    )


# ---------------------------------------------------------------------------- HTTP and console
def token_issued(
    client_id: str,
    token_id: str,
    *,
    scope: str,
    expires_at: int,
    assertion_kid: str,
    at: int,
) -> AuditEvent:
    """An access token was issued (its id and scope, never the token)."""
    return AuditEvent(
        event_id=f"token:{token_id}",
        type="token.issued",
        time=at,
        actor=client_id,
        subject=client_id,
        data={
            "scope": scope,
            "token_id": token_id,
            "expires_at": expires_at,
            "assertion_kid": assertion_kid,
        },
    )


def http_refused(
    type_: Refusal,
    client: str | None,
    *,
    method: str,
    route: str,
    reason: str,
    status: int,
    message: str,
    peer: str | None,
    at: int,
) -> AuditEvent:
    """The HTTP API refused a request (every 401 and 403, and what else it audits):
    who, which route, why; never the credential."""
    return AuditEvent(
        event_id=one_off("http"),
        type=type_,
        time=at,
        actor=client or "unknown",
        subject=f"{method} {route}"[:MAX],
        reason=reason[:MAX],
        data={"status": status, "message": message[:MAX], "peer": peer},
    )


def refusals_summarized(
    first: AuditEvent,
    *,
    count: int,
    first_at: int,
    last_at: int,
    at: int,
) -> AuditEvent:
    """``count`` more refusals like ``first`` (of its kind, from the same client address)
    within one aggregation window, written once the window closed instead of one entry
    each. The window ran from ``first_at`` (``first``'s refusal) to ``last_at``, epoch
    milliseconds."""
    return AuditEvent(
        event_id=f"{first.event_id}:more"[:160],
        type=first.type,
        time=at,
        actor=first.actor,
        subject=first.subject,
        reason=first.reason,
        data={
            "peer": first.data.get("peer"),
            "count": count,
            "first_at": first_at,
            "last_at": last_at,
            "summary_of": first.event_id,
        },
    )


def console_refused(
    type_: Refusal,
    who: str | None,
    *,
    method: str,
    route: str,
    reason: str,
    at: int,
    status: int | None = None,
    message: str | None = None,
    peer: str | None = None,
) -> AuditEvent:
    """The web console refused a page (``auth.refused``) or a form (``request.rejected``)."""
    data = {"status": status, "message": None if message is None else message[:MAX], "peer": peer}
    return AuditEvent(
        event_id=one_off("console"),
        type=type_,
        time=at,
        actor=(who or "unknown")[:MAX],
        subject=f"{method} {route}"[:MAX],
        reason=reason[:MAX],
        data={k: v for k, v in data.items() if v is not None},
    )


def console_login(
    who: str, *, where: str, via: str, scopes: Sequence[str], peer: str | None, at: int
) -> AuditEvent:
    """Someone signed in to the console at ``where`` (its path), ``via`` a sign-in link
    or OAuth, with ``scopes``."""
    data = {"via": via, "scope": " ".join(sorted(scopes)), "peer": peer}
    return AuditEvent(
        event_id=one_off("console"),
        type="console.login",
        time=at,
        actor=who[:MAX],
        subject=where[:MAX],
        data={k: v for k, v in data.items() if v is not None},
    )


def console_logout(who: str, *, where: str, at: int) -> AuditEvent:
    """Someone signed out of the console at ``where``."""
    return AuditEvent(
        event_id=one_off("console"),
        type="console.logout",
        time=at,
        actor=who[:MAX],
        subject=where[:MAX],
        data={},
    )
