"""The relay's checks on an ingest message: pure, every input passed in.

``parse_ingest`` and ``check_ingest`` are the gate between NATS and the policy. Their
numbered steps are the
order a reviewer ticks off; each failure raises EnvelopeError (or SignatureError) whose
``code`` goes to the audit log and the publisher.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass

from schemas.directory import AgencyRecord
from schemas.envelope import Envelope, Header
from schemas.errors import EnvelopeError, SignatureError
from schemas.ids import AgencyId
from schemas.labels import Labels
from schemas.sealing import EnvelopeBytes, check_envelope_shape, parse_envelope, verify_envelope
from schemas.subjects import agency_of_gated

__all__ = [
    "IngestLimits",
    "check_ingest",
    "check_labels",
    "check_supersedes",
    "check_window",
    "parse_ingest",
    "sender_of",
]


DEFAULT_MAX_QUEUE_AGE_S = 7 * 86400


@dataclass(frozen=True)
class IngestLimits:
    """``max_clock_skew_s``: how far ``created_at`` may be from when a gate first stored
    the bulletin; ``max_queue_age_s``: how long before the hub stored it a gate may have
    (a state node cut off from the hub holds what its agencies publish; ADR 0034)."""

    max_envelope_bytes: int
    max_clock_skew_s: int
    max_queue_age_s: int = DEFAULT_MAX_QUEUE_AGE_S


def parse_ingest(raw: bytes, *, subject: str, limits: IngestLimits) -> tuple[AgencyId, Envelope]:
    """Steps 1-2: who sent it, and a strict parse.

    Raises:
        EnvelopeError: not an ingest subject, oversized or malformed.
    """
    # 1. The subject names the sending agency: nats-server let only that agency publish on
    #    istmo.ingest.<agency>, and the gate stored it on istmo.gated.ingest.<agency>.
    sender = agency_of_gated(subject, "ingest")
    # 2. Size, then a strict parse (no duplicate keys, unknown fields or labels).
    env = parse_envelope(raw, max_bytes=limits.max_envelope_bytes)
    check_envelope_shape(env)
    return sender, env


def check_labels(
    labels: Labels, records: Mapping[str, AgencyRecord], jurisdictions: Set[str]
) -> None:
    """Every label names something the directory knows (EnvelopeError otherwise)."""
    # The messages name the label's position, never its value (no echo of the input).
    for i, code in enumerate(labels.rel_to):
        if code not in jurisdictions:
            raise EnvelopeError(
                f"label not allowed: rel_to[{i}] is not a jurisdiction of the directory",
                code="unknown_label",
            )
    for i, named in enumerate(labels.named):
        if named not in records:
            raise EnvelopeError(
                f"label not allowed: named[{i}] is not an agency of the directory",
                code="unknown_recipient",
            )


def check_window(
    created_at: int, *, stored_at: int, gated_at: int | None, limits: IngestLimits
) -> int:
    """Step 6a (ADR 0034): the claimed creation time was fresh when a gate first stored the
    bulletin, and that was not too long before the hub stored it.

    Args:
        created_at: the signed creation time, epoch seconds (the agency's clock).
        stored_at: when the hub's JetStream stored it, epoch seconds (the hub's clock).
        gated_at: the gate's stamp, epoch seconds (``schemas.subjects.gated_at_of``), or
            None when the message has none.
        limits: ``max_clock_skew_s`` and ``max_queue_age_s``.

    Returns:
        The time it is judged by: the stamp, but never later than ``stored_at`` (a gate
        stores before the hub does, so a later stamp is only a clock ahead: it cannot move
        the window forwards), and ``stored_at`` without a stamp (the check before ADR 0034).

    Raises:
        EnvelopeError: ``queued_too_long``, or ``timestamp_out_of_window``.
    """
    judged_at = stored_at if gated_at is None else min(gated_at, stored_at)
    # The queue's age is measured against the hub's store, not the relay's clock, so that
    # a relay that was down for a while does not refuse the backlog it finds (as before).
    queued = stored_at - judged_at
    if queued > limits.max_queue_age_s:
        raise EnvelopeError(
            f"held {queued} s on a state node before the hub stored it "
            f"(allowed {limits.max_queue_age_s} s): publish it anew",
            code="queued_too_long",
        )
    skew = created_at - judged_at
    if abs(skew) > limits.max_clock_skew_s:
        direction = "ahead of" if skew > 0 else "behind"
        raise EnvelopeError(
            f"created_at is {abs(skew)} s {direction} the broker clock "
            f"(allowed {limits.max_clock_skew_s} s)",
            code="timestamp_out_of_window",
        )
    return judged_at


def check_ingest(
    env: Envelope,
    *,
    sender: AgencyId,
    stored_at: int,
    now: int,
    limits: IngestLimits,
    records: Mapping[str, AgencyRecord],
    jurisdictions: Set[str],
    gated_at: int | None = None,
) -> EnvelopeBytes:
    """Steps 3-8 on a parsed envelope, before any policy decision.

    Args:
        env: the parsed envelope.
        sender: the agency whose ingest subject it arrived on.
        stored_at: when the hub's JetStream stored it (server clock, epoch seconds).
        now: the relay's clock, epoch seconds.
        limits: size and clock limits.
        records: the directory, by agency id.
        jurisdictions: known state and community codes.
        gated_at: when a gate first stored it (its stamp, epoch seconds), if stamped.

    Returns:
        The envelope's canonical encodings, made to verify its signature (its digest).

    Raises:
        EnvelopeError: with ``code`` naming the failed step.
    """
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
    # 4. The signing key is registered to the originator and was not revoked when stored
    #    on the hub. (Not the gate's stamp: a node's clock and stamps are its operator's,
    #    and the holder of a stolen key would backdate at will. A bulletin queued on a
    #    cut-off node whose key was revoked meanwhile is refused: the cautious side.)
    key = next((k for k in originator.signing_keys if k.kid == env.sig.kid), None)
    if key is None:
        raise SignatureError(
            f"signed by a key not registered to {sender}", code="key_not_bound_to_sender"
        )
    if key.revoked_at is not None and key.revoked_at <= stored_at:
        raise SignatureError(f"signed by a key of {sender} revoked before", code="key_revoked")
    # 5. The signature covers header, ciphertext digest and wraps.
    encoded = verify_envelope(env, key.verify_key())
    # 6. Clock: (a) the claimed creation time is near when a gate first stored it (on a
    #    state node that may be long before the hub did: check_window), and (b) it is not
    #    expired by the relay's clock. (Stored times, so a relay that was down for a
    #    while does not reject the backlog it finds.)
    check_window(header.created_at, stored_at=stored_at, gated_at=gated_at, limits=limits)
    if header.expires_at is not None and header.expires_at <= now:
        raise EnvelopeError(f"bulletin expired {now - header.expires_at} s ago", code="expired")
    # 7. Every label names something the directory knows.
    check_labels(header.labels, records, jurisdictions)
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
    return encoded


def check_supersedes(header: Header, superseded_originator: str | None) -> None:
    """Step 9, for a correction (ADR 15): the bulletin it supersedes was accepted, from the
    same originator. One refusal for an unknown id and for another agency's bulletin, so a
    correction is no way to learn which ids exist.

    Args:
        header: the correction's signed header.
        superseded_originator: the recorded originator of ``header.supersedes`` (None: no
            such bulletin was accepted).

    Raises:
        EnvelopeError: ``unknown_superseded``.
    """
    if header.supersedes is None:
        return
    if superseded_originator != header.originator:
        raise EnvelopeError(
            "supersedes no accepted bulletin of yours: correct a bulletin once the relay "
            "accepted it (`istmo status`)",
            code="unknown_superseded",
        )


def sender_of(subject: str, kind: str) -> AgencyId | None:
    """The agency of a stored ``istmo.gated.<kind>.<agency>`` subject, or None if it is
    not one."""
    try:
        return agency_of_gated(subject, kind)
    except EnvelopeError:
        return None
