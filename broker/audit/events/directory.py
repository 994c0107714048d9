"""The directory: agencies, enrolment, keys, status, subscriptions, policy sets."""

from __future__ import annotations

from collections.abc import Sequence

from broker.audit.events._common import (
    MAX,
    STATUS_EVENT,
    KeyUse,
    one_off,
)
from schemas.agency_status import Status
from schemas.audit import AuditEvent, DataValue
from schemas.keylog import key_sha256

__all__ = [
    "agency_created",
    "agency_enrolled",
    "agency_status_changed",
    "demo_agency_enrolled",
    "enrolment_token_issued",
    "jurisdiction_added",
    "key_registered",
    "key_revoked",
    "key_rotated",
    "policy_adopted",
    "policy_rejected",
    "subscription_added",
    "subscription_removed",
]


# ---------------------------------------------------------------------------- directory
def jurisdiction_added(code: str, kind: str, name: str, *, actor: str, at: int) -> AuditEvent:
    """An administrator added the jurisdiction ``code`` (a partner region, ADR 33)."""
    return AuditEvent(
        event_id=f"jurisdiction-added:{code}",
        type="jurisdiction.added",
        time=at,
        actor=actor[:MAX],
        subject=code,
        data={"kind": kind, "name": name[:MAX]},
    )


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
        actor=actor[:MAX],
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
        actor=actor[:MAX],
        subject=agency,
        data={"stage": "token_issued", "token_id": token_id, "expires_at": expires_at},
    )


def agency_enrolled(agency: str, *, token_id: str, at: int) -> AuditEvent:
    """The agency redeemed its token and registered its keys (stage ``keys_registered``)."""
    return AuditEvent(
        # One per token: a re-enrolled agency enrols again.
        event_id=f"enrolled:{agency}:{token_id}",
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
    public: bytes | None = None,
    how: str | None = None,
) -> AuditEvent:
    """A public key (signing, encryption or NATS user) was registered to ``agency`` (or
    to an administrator: ``role="admin"``). ``kem`` names an encryption key's KEM.

    ``public``: the key's bytes (a NATS user's: its public nkey's text), committed to as
    ``key_sha256`` so that an SDK can check a directory record's key is the logged one
    (ADR 28). ``how="backfill"``: logged at a broker's start for a key registered before
    ADR 28 (another event id, as the key's own ``key:<kid>`` may exist already)."""
    data: dict[str, str] = {"kid": kid, "use": use}
    if kem is not None:
        data["kem"] = kem
    if role is not None:
        data["role"] = role
    if public is not None:
        data["key_sha256"] = key_sha256(public)
    if how is not None:
        data["how"] = how
    return AuditEvent(
        event_id=f"key:{kid}"
        if how is None
        else f"key-{how}:{kid}:{data.get('key_sha256', '')[:16]}",
        type="key.registered",
        time=at,
        actor=actor[:MAX],
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


def key_revoked(
    agency: str, kid: str, *, revoked_at: int, actor: str, at: int, use: KeyUse = "signing"
) -> AuditEvent:
    """A key was revoked from ``revoked_at`` (epoch seconds) on: a signing key (``use``
    absent from the data, as in events before re-enrolment existed), or, when an agency
    is re-enrolled, its encryption key or NATS user (``use`` says which)."""
    data: dict[str, DataValue] = {"kid": kid, "revoked_at": revoked_at}
    if use != "signing":
        data["use"] = use
    return AuditEvent(
        event_id=f"key-revoked:{kid}",
        type="key.revoked",
        time=at,
        actor=actor[:MAX],
        subject=agency,
        data=data,
    )


def agency_status_changed(
    agency: str, status: Status, *, note: str, actor: str, at: int
) -> AuditEvent:
    """``agency.suspended``, ``agency.reinstated`` (status ``active``) or
    ``agency.revoked``, with the administrator's note."""
    return AuditEvent(
        event_id=one_off("status"),
        type=STATUS_EVENT[status],
        time=at,
        actor=actor[:MAX],
        subject=agency,
        data={"status": status, "note": note[:MAX]},
    )


def subscription_added(agency: str, topic: str, *, actor: str, at: int) -> AuditEvent:
    """``agency`` now follows ``topic``."""
    return AuditEvent(
        event_id=one_off("subscription"),
        type="subscription.added",
        time=at,
        actor=actor[:MAX],
        subject=agency,
        data={"topic": topic},
    )


def subscription_removed(agency: str, topic: str, *, actor: str, at: int) -> AuditEvent:
    """``agency`` no longer follows ``topic``."""
    return AuditEvent(
        event_id=one_off("subscription"),
        type="subscription.removed",
        time=at,
        actor=actor[:MAX],
        subject=agency,
        data={"topic": topic},
    )


def policy_adopted(
    version: str, *, previous_version: str, files: Sequence[str], actor: str, at: int
) -> AuditEvent:
    """Policy set ``version`` is in force now, replacing ``previous_version``."""
    return AuditEvent(
        event_id=one_off("policy-adopted"),
        type="policy.adopted",
        time=at,
        actor=actor[:MAX],
        subject=version,
        data={"previous_version": previous_version, "version": version, "files": tuple(files)},
    )


def policy_rejected(
    candidate: str, *, active_version: str, problems: Sequence[str], actor: str, at: int
) -> AuditEvent:
    """A candidate policy set was refused (the first 20 problems are kept)."""
    return AuditEvent(
        event_id=one_off("policy-rejected"),
        type="policy.rejected",
        time=at,
        actor=actor[:MAX],
        subject=candidate[:MAX],
        reason="policy_invalid",
        data={
            "active_version": active_version,
            "problems": tuple(p[:MAX] for p in problems[:20]),
        },
    )
