"""Named constructors of the broker's audit events: one shape per kind of event.

Each function builds one ``schemas.audit.AuditEvent`` with its id, actor, subject and data
laid out the same way wherever it is written (``key.registered`` is written by the demo
loader, enrolment, rotation and the administrators' registration). Pure: the time is an
argument (``at``, epoch milliseconds, from the caller's ``broker.clock.Clock``); only the
one-off events whose id must be unique draw a random UUID. Free text (notes, messages,
operator names) is cut to the schema's 200 characters here, so callers need not.

Left to others: writing the events (``broker.store.registry.Registry.record`` and
``change``, in the same transaction as what they describe), their Merkle log
(``broker.audit.log``), and what may go into them: metadata only, never a title, a body,
a key or a token (the schema's docstring).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Literal

from schemas.audit import AuditEvent, EventType
from schemas.directory import Status
from schemas.labels import Labels

__all__ = [
    "KeyUse",
    "Refusal",
    "agency_created",
    "agency_enrolled",
    "agency_status_changed",
    "audit_queried",
    "bulletin_accepted",
    "bulletin_denied",
    "bulletin_received",
    "bulletin_rejected",
    "bulletin_routed",
    "console_login",
    "console_logout",
    "console_refused",
    "delivery_dead_lettered",
    "delivery_redriven",
    "delivery_republished",
    "delivery_unrecoverable",
    "demo_agency_enrolled",
    "enrolment_token_issued",
    "http_refused",
    "ingest_dead_lettered",
    "ingest_redriven",
    "key_registered",
    "key_revoked",
    "key_rotated",
    "policy_adopted",
    "policy_rejected",
    "receipt_rejected",
    "request_rejected",
    "subscription_added",
    "subscription_removed",
    "token_issued",
]

_MAX = 200  # the schema's limit on actor, subject, reason and every string in data
KeyUse = Literal["signing", "encryption", "nats"]
Refusal = Literal["auth.refused", "request.rejected"]
_Value = str | int | bool | None | tuple[str, ...]  # what an event's data may hold
_STATUS_EVENT: dict[Status, EventType] = {
    "active": "agency.reinstated",
    "suspended": "agency.suspended",
    "revoked": "agency.revoked",
}


def _one_off(prefix: str) -> str:
    """A fresh id for an event that happens once and has no natural key."""
    return f"{prefix}:{uuid.uuid4()}"


# ---------------------------------------------------------------------------- bulletins
def bulletin_accepted(
    bulletin_id: str,
    *,
    originator: str,
    labels: Labels,
    envelope_digest: str,
    recipients: Sequence[str],
    policy_version: str,
    directory_version: str,
    policy_ids: Sequence[str],
    at: int,
) -> AuditEvent:
    """The relay accepted a bulletin: its labels, digest, signed recipients and the
    publish decision's versions and policies."""
    return AuditEvent(
        event_id=f"{bulletin_id}:accepted",
        type="bulletin.accepted",
        time=at,
        actor=originator,
        subject=bulletin_id,
        bulletin_id=bulletin_id,
        data={
            "topic": labels.topic,
            "classification": labels.classification.value,
            "tlp": labels.tlp.value,
            "rel_to": labels.rel_to,
            "envelope_digest": envelope_digest,
            "recipients": tuple(recipients),
            "policy_version": policy_version,
            "directory_version": directory_version,
            "policy_ids": tuple(policy_ids),
        },
    )


def bulletin_routed(
    bulletin_id: str,
    recipient: str,
    *,
    originator: str,
    policy_version: str,
    directory_version: str,
    policy_ids: Sequence[str],
    at: int,
) -> AuditEvent:
    """The policy let ``recipient`` receive the bulletin, and it was addressed to it."""
    return AuditEvent(
        event_id=f"{bulletin_id}:routed:{recipient}",
        type="bulletin.routed",
        time=at,
        actor="relay",
        subject=recipient,
        bulletin_id=bulletin_id,
        data={
            "originator": originator,
            "policy_version": policy_version,
            "directory_version": directory_version,
            "policy_ids": tuple(policy_ids),
        },
    )


def bulletin_denied(
    bulletin_id: str,
    agency: str,
    *,
    reason: str,
    originator: str,
    policy_version: str,
    directory_version: str,
    policy_ids: Sequence[str],
    at: int,
) -> AuditEvent:
    """The policy refused ``agency`` the bulletin; ``reason`` is ``policy_deny``,
    ``default_deny`` or ``policy_error``."""
    return AuditEvent(
        event_id=f"{bulletin_id}:denied:{agency}",
        type="bulletin.denied",
        time=at,
        actor="relay",
        subject=agency,
        bulletin_id=bulletin_id,
        reason=reason,
        data={
            "originator": originator,
            "policy_version": policy_version,
            "directory_version": directory_version,
            "policy_ids": tuple(policy_ids),
        },
    )


def bulletin_rejected(
    ingest_seq: int,
    *,
    sender: str,
    bulletin_id: str | None,
    reason: str,
    message: str,
    size: int,
    at: int,
) -> AuditEvent:
    """The relay refused an ingest message (``reason`` is the refusal code). Filed under
    the stream sequence: a forged bulletin id never touches another agency's bulletin."""
    return AuditEvent(
        event_id=f"ingest:{ingest_seq}:rejected",
        type="bulletin.rejected",
        time=at,
        actor=sender,
        subject=bulletin_id or f"ingest:{ingest_seq}",
        bulletin_id=bulletin_id,
        reason=reason,
        data={"message": message[:_MAX], "ingest_seq": ingest_seq, "size": size},
    )


def bulletin_received(
    bulletin_id: str, recipient: str, *, received_at: int, envelope_digest: str, at: int
) -> AuditEvent:
    """``recipient``'s signed receipt was verified."""
    return AuditEvent(
        event_id=f"{bulletin_id}:received:{recipient}",
        type="bulletin.received",
        time=at,
        actor=recipient,
        subject=bulletin_id,
        bulletin_id=bulletin_id,
        data={"received_at": received_at, "envelope_digest": envelope_digest},
    )


def receipt_rejected(
    receipt_seq: int, *, sender: str, reason: str, message: str, at: int
) -> AuditEvent:
    """The relay refused a receipt (stream sequence ``receipt_seq``)."""
    return AuditEvent(
        event_id=f"receipt:{receipt_seq}:rejected",
        type="receipt.rejected",
        time=at,
        actor=sender,
        subject=f"receipt:{receipt_seq}",
        reason=reason,
        data={"message": message[:_MAX]},
    )


def request_rejected(caller: str, op: str, *, reason: str, message: str, at: int) -> AuditEvent:
    """An agency's request over NATS (``istmo.api.<caller>.<op>``) was refused."""
    return AuditEvent(
        event_id=_one_off("request"),
        type="request.rejected",
        time=at,
        actor=caller,
        subject=f"api.{op}",
        reason=reason,
        data={"message": message[:_MAX]},
    )


# ---------------------------------------------------------------------------- dead letters
def delivery_dead_lettered(
    deliver_seq: int,
    recipient: str,
    *,
    bulletin_id: str | None,
    reason: str,
    deliveries: int,
    dead_seq: int | None,
    at: int,
) -> AuditEvent:
    """A delivery ran out of attempts; ``dead_seq`` is its copy in the dead-letter stream
    (None when the message was gone before it could be copied)."""
    data: dict[str, str | int | None] = {
        "recipient": recipient,
        "deliveries": deliveries,
        "deliver_seq": deliver_seq,
    }
    if dead_seq is not None:
        data["dead_seq"] = dead_seq
    return AuditEvent(
        event_id=f"dead:deliver:{deliver_seq}",
        type="delivery.dead_lettered",
        time=at,
        actor="relay",
        subject=recipient,
        bulletin_id=bulletin_id,
        reason=reason,
        data=dict(data),
    )


def ingest_dead_lettered(
    ingest_seq: int,
    sender: str,
    *,
    bulletin_id: str | None,
    deliveries: int,
    dead_seq: int,
    at: int,
) -> AuditEvent:
    """No relay could process an ingest message; ``dead_seq`` is its copy."""
    return AuditEvent(
        event_id=f"dead:ingest:{ingest_seq}",
        type="ingest.dead_lettered",
        time=at,
        actor="relay",
        subject=sender,
        bulletin_id=bulletin_id,
        reason="max_attempts",
        data={"ingest_seq": ingest_seq, "deliveries": deliveries, "dead_seq": dead_seq},
    )


def _redriven(
    type_: EventType,
    dead_seq: int | None,
    agency: str,
    *,
    bulletin_id: str | None,
    stream: str,
    new_seq: int,
    actor: str,
    at: int,
) -> AuditEvent:
    return AuditEvent(
        event_id=f"redrive:{dead_seq}",
        type=type_,
        time=at,
        actor=actor[:_MAX],
        subject=agency,
        bulletin_id=bulletin_id,
        data={"dead_seq": dead_seq, "stream": stream, "new_seq": new_seq},
    )


def delivery_redriven(
    dead_seq: int | None,
    agency: str,
    *,
    bulletin_id: str | None,
    stream: str,
    new_seq: int,
    actor: str,
    at: int,
) -> AuditEvent:
    """An operator re-delivered dead letter ``dead_seq`` to its recipient ``agency`` (now
    ``new_seq`` of ``stream``)."""
    return _redriven(
        "delivery.redriven",
        dead_seq,
        agency,
        bulletin_id=bulletin_id,
        stream=stream,
        new_seq=new_seq,
        actor=actor,
        at=at,
    )


def ingest_redriven(
    dead_seq: int | None,
    agency: str,
    *,
    bulletin_id: str | None,
    stream: str,
    new_seq: int,
    actor: str,
    at: int,
) -> AuditEvent:
    """An operator put dead ingest letter ``dead_seq`` of its publisher ``agency`` back on
    ingest (now ``new_seq`` of ``stream``)."""
    return _redriven(
        "ingest.redriven",
        dead_seq,
        agency,
        bulletin_id=bulletin_id,
        stream=stream,
        new_seq=new_seq,
        actor=actor,
        at=at,
    )


def delivery_republished(
    bulletin_id: str,
    recipient: str,
    *,
    deliver_seq: int,
    same_msg_id: bool,
    actor: str,
    at: int,
) -> AuditEvent:
    """Reconciliation found a routed delivery missing from the stream and published it
    again from the archive."""
    return AuditEvent(
        event_id=f"republished:{bulletin_id}:{recipient}:{deliver_seq}",
        type="delivery.republished",
        time=at,
        actor=actor[:_MAX],
        subject=recipient,
        bulletin_id=bulletin_id,
        reason="missing_from_stream",
        data={"deliver_seq": deliver_seq, "same_msg_id": same_msg_id},
    )


def delivery_unrecoverable(bulletin_id: str, recipient: str, *, actor: str, at: int) -> AuditEvent:
    """Reconciliation found a routed delivery missing and no copy to publish again."""
    return AuditEvent(
        event_id=f"unrecoverable:{bulletin_id}:{recipient}",
        type="delivery.unrecoverable",
        time=at,
        actor=actor[:_MAX],
        subject=recipient,
        bulletin_id=bulletin_id,
        reason="no_copy",
        data={},
    )


# ---------------------------------------------------------------------------- directory
def agency_created(
    agency: str,
    *,
    sector: str,
    state: str | None,
    communities: Sequence[str],
    clearance: str,
    topics: Sequence[str],
    actor: str,
    at: int,
) -> AuditEvent:
    """An administrator added an agency (stage ``created`` of ``agency.enrolled``); it
    has no keys until it enrols."""
    return AuditEvent(
        event_id=f"enrol-created:{agency}",
        type="agency.enrolled",
        time=at,
        actor=actor[:_MAX],
        subject=agency,
        data={
            "stage": "created",
            "sector": sector,
            "state": state,
            "communities": tuple(communities),
            "clearance": clearance,
            "topics": tuple(topics),
        },
    )


def enrolment_token_issued(
    agency: str, token_id: str, *, expires_at: int, actor: str, at: int
) -> AuditEvent:
    """A one-time enrolment token was issued (stage ``token_issued``); never the token."""
    return AuditEvent(
        event_id=f"enrol-token:{token_id}",
        type="agency.enrolled",
        time=at,
        actor=actor[:_MAX],
        subject=agency,
        data={"stage": "token_issued", "token_id": token_id, "expires_at": expires_at},
    )


def agency_enrolled(agency: str, *, token_id: str, at: int) -> AuditEvent:
    """The agency redeemed its token and registered its keys (stage ``keys_registered``)."""
    return AuditEvent(
        event_id=f"enrolled:{agency}",
        type="agency.enrolled",
        time=at,
        actor=agency,
        subject=agency,
        data={"stage": "keys_registered", "token_id": token_id, "how": "token"},
    )


def demo_agency_enrolled(agency: str, *, sector: str, state: str | None, at: int) -> AuditEvent:
    """The demo directory was loaded with this agency and keys made for it."""
    return AuditEvent(
        event_id=f"enrolled:{agency}",
        type="agency.enrolled",
        time=at,
        actor="system",
        subject=agency,
        data={"sector": sector, "state": state, "how": "demo"},
    )


def key_registered(
    agency: str,
    kid: str,
    use: KeyUse,
    *,
    at: int,
    actor: str,
    kem: str | None = None,
    role: str | None = None,
) -> AuditEvent:
    """A public key (signing, encryption or NATS user) was registered to ``agency`` (or
    to an administrator: ``role="admin"``). ``kem`` names an encryption key's KEM."""
    data: dict[str, str] = {"kid": kid, "use": use}
    if kem is not None:
        data["kem"] = kem
    if role is not None:
        data["role"] = role
    return AuditEvent(
        event_id=f"key:{kid}",
        type="key.registered",
        time=at,
        actor=actor[:_MAX],
        subject=agency,
        data=dict(data),
    )


def key_rotated(
    agency: str, *, old_kid: str, new_kid: str, encryption_kid: str, at: int
) -> AuditEvent:
    """The agency rotated its keys (the new ones are registered beside this event)."""
    return AuditEvent(
        event_id=f"key-rotated:{new_kid}",
        type="key.rotated",
        time=at,
        actor=agency,
        subject=agency,
        data={"old_kid": old_kid, "new_kid": new_kid, "encryption_kid": encryption_kid},
    )


def key_revoked(agency: str, kid: str, *, revoked_at: int, actor: str, at: int) -> AuditEvent:
    """A signing key was revoked from ``revoked_at`` (epoch seconds) on."""
    return AuditEvent(
        event_id=f"key-revoked:{kid}",
        type="key.revoked",
        time=at,
        actor=actor[:_MAX],
        subject=agency,
        data={"kid": kid, "revoked_at": revoked_at},
    )


def agency_status_changed(
    agency: str, status: Status, *, note: str, actor: str, at: int
) -> AuditEvent:
    """``agency.suspended``, ``agency.reinstated`` (status ``active``) or
    ``agency.revoked``, with the administrator's note."""
    return AuditEvent(
        event_id=_one_off("status"),
        type=_STATUS_EVENT[status],
        time=at,
        actor=actor[:_MAX],
        subject=agency,
        data={"status": status, "note": note[:_MAX]},
    )


def subscription_added(agency: str, topic: str, *, actor: str, at: int) -> AuditEvent:
    """``agency`` now follows ``topic``."""
    return AuditEvent(
        event_id=_one_off("subscription"),
        type="subscription.added",
        time=at,
        actor=actor[:_MAX],
        subject=agency,
        data={"topic": topic},
    )


def subscription_removed(agency: str, topic: str, *, actor: str, at: int) -> AuditEvent:
    """``agency`` no longer follows ``topic``."""
    return AuditEvent(
        event_id=_one_off("subscription"),
        type="subscription.removed",
        time=at,
        actor=actor[:_MAX],
        subject=agency,
        data={"topic": topic},
    )


def policy_adopted(
    version: str, *, previous_version: str, files: Sequence[str], actor: str, at: int
) -> AuditEvent:
    """Policy set ``version`` is in force now, replacing ``previous_version``."""
    return AuditEvent(
        event_id=_one_off("policy-adopted"),
        type="policy.adopted",
        time=at,
        actor=actor[:_MAX],
        subject=version,
        data={"previous_version": previous_version, "version": version, "files": tuple(files)},
    )


def policy_rejected(
    candidate: str, *, active_version: str, problems: Sequence[str], actor: str, at: int
) -> AuditEvent:
    """A candidate policy set was refused (the first 20 problems are kept)."""
    return AuditEvent(
        event_id=_one_off("policy-rejected"),
        type="policy.rejected",
        time=at,
        actor=actor[:_MAX],
        subject=candidate[:_MAX],
        reason="policy_invalid",
        data={
            "active_version": active_version,
            "problems": tuple(p[:_MAX] for p in problems[:20]),
        },
    )


# ---------------------------------------------------------------------------- audit log
def audit_queried(
    actor: str,
    subject: str,
    query: Mapping[str, _Value],
    rows: int,
    *,
    at: int,
) -> AuditEvent:
    """One auditor query: who asked, what (``subject``, e.g. ``audit.search``), the filter
    (None values left out) and how many rows it returned. Record it before the rows are
    shown: no access without an audit event."""
    data: dict[str, _Value] = {k: v for k, v in query.items() if v is not None}
    data["rows"] = rows
    return AuditEvent(
        event_id=_one_off("audit-query"),
        type="audit.queried",
        time=at,
        actor=actor[:_MAX],
        subject=subject[:_MAX],
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
        event_id=_one_off("http"),
        type=type_,
        time=at,
        actor=client or "unknown",
        subject=f"{method} {route}"[:_MAX],
        reason=reason[:_MAX],
        data={"status": status, "message": message[:_MAX], "peer": peer},
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
    data = {"status": status, "message": None if message is None else message[:_MAX], "peer": peer}
    return AuditEvent(
        event_id=_one_off("console"),
        type=type_,
        time=at,
        actor=(who or "unknown")[:_MAX],
        subject=f"{method} {route}"[:_MAX],
        reason=reason[:_MAX],
        data={k: v for k, v in data.items() if v is not None},
    )


def console_login(
    who: str, *, where: str, via: str, scopes: Sequence[str], peer: str | None, at: int
) -> AuditEvent:
    """Someone signed in to the console at ``where`` (its path), ``via`` a sign-in link
    or OAuth, with ``scopes``."""
    data = {"via": via, "scope": " ".join(sorted(scopes)), "peer": peer}
    return AuditEvent(
        event_id=_one_off("console"),
        type="console.login",
        time=at,
        actor=who[:_MAX],
        subject=where[:_MAX],
        data={k: v for k, v in data.items() if v is not None},
    )


def console_logout(who: str, *, where: str, at: int) -> AuditEvent:
    """Someone signed out of the console at ``where``."""
    return AuditEvent(
        event_id=_one_off("console"),
        type="console.logout",
        time=at,
        actor=who[:_MAX],
        subject=where[:_MAX],
        data={},
    )
