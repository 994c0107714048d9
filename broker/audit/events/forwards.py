"""Forwarding with consent (ADR 20): asked, answered, and done.

Every event names the original bulletin (``bulletin_id``), so the originator's trail
(``istmo audit search --bulletin <original>``) shows who asked to pass it on, what the
originator answered and which forward went out. Reasons are the agencies' free text: only
their digest and length are kept.
"""

from __future__ import annotations

import hashlib

from schemas.audit import AuditEvent, DataValue

__all__ = ["bulletin_forwarded", "forward_granted", "forward_refused", "forward_requested"]


def _text(value: str | None) -> dict[str, str | int]:
    if value is None:
        return {}
    return {"reason_sha256": hashlib.sha256(value.encode()).hexdigest(), "reason_chars": len(value)}


def forward_requested(
    request_id: str,
    *,
    bulletin_id: str,
    originator: str,
    forwarder: str,
    recipient: str,
    reason: str | None,
    at: int,
) -> AuditEvent:
    """A recipient asked the originator's consent to pass a bulletin on."""
    return AuditEvent(
        event_id=f"{request_id}:requested",
        type="forward.requested",
        time=at,
        actor=forwarder,
        subject=request_id,
        bulletin_id=bulletin_id,
        data={"originator": originator, "recipient": recipient, **_text(reason)},
    )


def forward_granted(
    request_id: str,
    *,
    bulletin_id: str,
    originator: str,
    forwarder: str,
    recipient: str,
    kid: str,
    expires_at: int,
    at: int,
) -> AuditEvent:
    """The originator signed its consent to one forward (the grant's key and expiry)."""
    return AuditEvent(
        event_id=f"{request_id}:decided",
        type="forward.granted",
        time=at,
        actor=originator,
        subject=request_id,
        bulletin_id=bulletin_id,
        data={"forwarder": forwarder, "recipient": recipient, "kid": kid,
              "expires_at": expires_at},
    )  # fmt: skip


def forward_refused(
    request_id: str,
    *,
    bulletin_id: str,
    originator: str,
    forwarder: str,
    recipient: str,
    refusal: str,
    at: int,
) -> AuditEvent:
    """The originator refused one forward."""
    return AuditEvent(
        event_id=f"{request_id}:decided",
        type="forward.refused",
        time=at,
        actor=originator,
        subject=request_id,
        bulletin_id=bulletin_id,
        data={"forwarder": forwarder, "recipient": recipient, **_text(refusal)},
    )


def bulletin_forwarded(
    forward_id: str,
    *,
    bulletin_id: str,
    originator: str,
    forwarder: str,
    recipient: str,
    consent: str,
    policy_ids: tuple[str, ...],
    at: int,
    files: int = 0,
) -> AuditEvent:
    """The relay accepted a forward of ``bulletin_id``: filed under the original, naming
    the new bulletin (``forward_id``), how consent was given (``originator``: a signed
    grant; ``policy``: the forward policy, with its deciding ``policy_ids``), and how many
    of the original's files it passes on (``files``, written only when there are any)."""
    data: dict[str, DataValue] = {"originator": originator, "recipient": recipient,
                               "consent": consent, "policy_ids": policy_ids}  # fmt: skip
    if files:
        data["files"] = files
    return AuditEvent(
        event_id=f"{forward_id}:forwarded",
        type="bulletin.forwarded",
        time=at,
        actor=forwarder,
        subject=forward_id,
        bulletin_id=bulletin_id,
        data=data,
    )
