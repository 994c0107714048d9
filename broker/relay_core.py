"""The relay's checks on an ingest message: pure, every input passed in.

``verify_ingest`` is the gate between NATS and the policy. Its numbered steps are the
order a reviewer ticks off; each failure raises EnvelopeError (or SignatureError) whose
``code`` goes to the audit log and the publisher.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass

from schemas.directory import AgencyRecord
from schemas.envelope import Envelope
from schemas.errors import EnvelopeError, SignatureError
from schemas.ids import AgencyId
from schemas.sealing import check_envelope_shape, parse_envelope, verify_envelope
from schemas.subjects import agency_of_subject

__all__ = ["IngestLimits", "verify_ingest"]


@dataclass(frozen=True)
class IngestLimits:
    max_envelope_bytes: int
    max_clock_skew_s: int


def verify_ingest(
    raw: bytes,
    *,
    subject: str,
    stored_at: int,
    now: int,
    limits: IngestLimits,
    records: Mapping[str, AgencyRecord],
    jurisdictions: Set[str],
) -> Envelope:
    """Check an ingest message before any policy decision.

    Args:
        raw: the message payload as JetStream stored it.
        subject: the subject it arrived on (``istmo.ingest.<agency>``).
        stored_at: when JetStream stored it (server clock, epoch seconds).
        now: the relay's clock, epoch seconds.
        limits: size and clock limits.
        records: the directory, by agency id.
        jurisdictions: known state and community codes.

    Returns:
        The parsed, signature-checked envelope.

    Raises:
        EnvelopeError: with ``code`` naming the failed step.
    """
    # 1. The subject names the sending agency; nats-server let only that agency publish.
    sender = agency_of_subject(subject, "ingest")
    # 2. Size, then a strict parse (no duplicate keys, unknown fields or labels).
    env = parse_envelope(raw, max_bytes=limits.max_envelope_bytes)
    check_envelope_shape(env)
    header = env.header
    # 3. The signed originator is the agency whose credentials published it.
    if header.originator != sender:
        raise EnvelopeError(
            f"originator {header.originator} differs from the publishing agency {sender}",
            code="originator_mismatch",
        )
    originator = records.get(sender)
    if originator is None:
        raise EnvelopeError(f"unknown agency {sender}", code="unknown_agency")
    # 4. The signing key is registered to the originator and was not revoked when stored.
    key = next((k for k in originator.signing_keys if k.kid == env.sig.kid), None)
    if key is None:
        raise SignatureError(
            f"signed by a key not registered to {sender}", code="key_not_bound_to_sender"
        )
    if key.revoked_at is not None and key.revoked_at <= stored_at:
        raise SignatureError(f"signed by a key of {sender} revoked before", code="key_revoked")
    # 5. The signature covers header, ciphertext digest and wraps.
    verify_envelope(env, key.verify_key())
    # 6. Clock: the claimed creation time is near when JetStream stored it, and it is
    #    not expired by the relay's clock. (Stored time, so a relay that was down for a
    #    while does not reject the backlog it finds.)
    skew = header.created_at - stored_at
    if abs(skew) > limits.max_clock_skew_s:
        direction = "ahead of" if skew > 0 else "behind"
        raise EnvelopeError(
            f"created_at is {abs(skew)} s {direction} the broker clock "
            f"(allowed {limits.max_clock_skew_s} s)",
            code="timestamp_out_of_window",
        )
    if header.expires_at is not None and header.expires_at <= now:
        raise EnvelopeError(f"bulletin expired {now - header.expires_at} s ago", code="expired")
    # 7. Every label names something the directory knows.
    for code in header.labels.rel_to:
        if code not in jurisdictions:
            raise EnvelopeError(f"releasable to unknown jurisdiction {code}", code="unknown_label")
    for named in header.labels.named:
        if named not in records:
            raise EnvelopeError(f"names unknown agency {named}", code="unknown_recipient")
    # 8. Every wrap is for a known agency, under its current encryption key.
    for wrap in env.wraps:
        rec = records.get(wrap.recipient)
        if rec is None:
            raise EnvelopeError(
                f"wrap list names unknown agency {wrap.recipient}", code="unknown_recipient"
            )
        if rec.encryption_key is None or rec.encryption_key.kid != wrap.kid:
            raise EnvelopeError(
                f"wrap for {wrap.recipient} uses a key that is not its current one",
                code="recipient_key_unknown",
            )
    return env


def sender_of(subject: str) -> AgencyId | None:
    """The agency of an ingest subject, or None if the subject is not one."""
    try:
        return agency_of_subject(subject, "ingest")
    except EnvelopeError:
        return None
