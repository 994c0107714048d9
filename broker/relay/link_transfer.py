"""One bulletin across a partner link (ADR 33): the sending side's transfer, and the
receiving side's checks of one, audited.

The sending side's guard (``broker.relay.federation.guard``) decides and audits first;
``transfer_for`` then wraps the envelope, unchanged, with this region's signed directory
record of its originator and signs it with the link key. The receiving side's
``receive`` checks the transfer's signature, the directory record's and the
originator's, and only then runs the link's rules under its own link file
(``broker.relay.federation.arrive``), which audits ``federation.arrived`` or
``federation.blocked``; a transfer refused before that is audited as
``federation.refused`` and never counted as arrived.

The network (HTTP, the JetStream consumer and the hand-on to this side's delivery
stream) is ``broker.runtime.federation``'s.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

from broker.audit import events
from broker.directory.service import DirectoryService
from broker.relay.federation import arrive
from broker.relay.guard import Link
from broker.store.registry import Registry
from schemas.directory import SignedExcerpt, verify_excerpt
from schemas.envelope import Envelope
from schemas.errors import EnvelopeError, SignatureError
from schemas.keys import SigningKey, VerifyKey
from schemas.link_transfer import (
    encode_transfer,
    max_transfer_bytes,
    parse_transfer,
    sign_transfer,
    verify_transfer,
)
from schemas.sealing import parse_envelope, verify_envelope

__all__ = ["MAX_RECORD_AGE_S", "Arrival", "receive", "transfer_for"]

# A transfer is signed, with a fresh directory record, each time it is sent (a retry
# too): one older than this is a replay of stale keys, refused.
MAX_RECORD_AGE_S = 3600
Outcome = Literal["arrived", "blocked", "refused"]


def transfer_for(
    directory: DirectoryService, link: Link, env: Envelope, raw: bytes, key: SigningKey, now: int
) -> bytes:
    """The signed transfer of ``raw`` (the envelope ``env``, as delivered) over ``link``,
    with this region's signed directory record of its originator.

    Raises:
        ValueError: the directory does not list the originator (it was enrolled here:
            the relay verified it; the caller rebuilds the directory and asks again).
    """
    excerpt = directory.signed_excerpt([env.header.originator], now)
    if not excerpt.excerpt.agencies:
        raise ValueError(f"the directory does not list {env.header.originator}")
    transfer = sign_transfer(
        link=link.name,
        bulletin_id=env.header.bulletin_id,
        envelope=raw,
        directory=excerpt,
        issued_at=now,
        key=key,
    )
    return encode_transfer(transfer)


@dataclass(frozen=True)
class Arrival:
    """What the receiving side made of one transfer.

    Attributes:
        outcome: ``arrived`` (hand it on to ``to``), ``blocked`` (the link's rules said no)
            or ``refused`` (it did not parse or a signature did not verify).
        reasons: why not, when not arrived (reason codes).
        raw: the envelope's bytes (empty when refused).
        envelope: the parsed envelope (None when refused).
        to: this side's link agencies it is addressed to.
        record: the sending region's signed excerpt listing the originator, checked
            (None when refused): handed on with the delivery, so that the agency's SDK
            can check the originator's signature itself (``schemas.partner_delivery``).
    """

    outcome: Outcome
    reasons: tuple[str, ...] = ()
    raw: bytes = b""
    envelope: Envelope | None = None
    to: tuple[str, ...] = ()
    record: SignedExcerpt | None = None


class _Refused(Exception):
    def __init__(self, reason: str, claimed: str | None = None) -> None:
        super().__init__(reason)
        self.reason, self.claimed = reason, claimed


def receive(
    registry: Registry,
    link: Link,
    body: bytes,
    *,
    sender_key: VerifyKey,
    directory_key: VerifyKey,
    at_ms: int,
) -> Arrival:
    """Check one transfer received over ``link`` and audit the outcome.

    Steps, each refusing (``federation.refused`` with the reason) before the next:
      1. it parses strictly and is no larger than the link carries (``malformed``);
      2. it names this link (``wrong_link``);
      3. the sending side's pinned link key signed it (``link_signature``);
      4. the envelope parses and is the bulletin the transfer names (``malformed``);
      5. the directory excerpt is signed by the sending region's pinned directory key
         (``directory_signature``), at most ``MAX_RECORD_AGE_S`` old (``stale_record``),
         and lists the originator, active (``unknown_originator``);
      6. the record lists the signing key the envelope names, not revoked when the
         bulletin was created (``unknown_key``, ``key_revoked``);
      7. the originator's signature verifies (``originator_signature``);
      8. the link's rules under this side's link file (``arrive``: audited
         ``federation.arrived`` or ``federation.blocked``).

    Raises:
        AuditStoreError: the outcome could not be recorded (answer "try again").
    """
    try:
        raw, env, record = _checked(link, body, sender_key, directory_key, at_ms // 1000)
    except _Refused as r:
        digest = hashlib.sha256(body).hexdigest()
        actor = f"link:{link.name}"
        event = events.federation_refused(
            link.name, r.reason, digest, claimed=r.claimed, actor=actor, at=at_ms
        )
        registry.record([], [event])
        return Arrival("refused", (r.reason,))
    d = arrive(registry, link, raw, at_ms=at_ms)  # 8
    if not d.passed:
        return Arrival("blocked", d.reasons, raw, d.envelope, d.to)
    return Arrival("arrived", (), raw, env, d.to, record)


def _checked(
    link: Link, body: bytes, sender_key: VerifyKey, directory_key: VerifyKey, now: int
) -> tuple[bytes, Envelope, SignedExcerpt]:
    """Steps 1 to 7 of ``receive``: the envelope's bytes, the envelope and the signed
    excerpt that listed its originator."""
    try:  # 1
        t = parse_transfer(body, max_bytes=max_transfer_bytes(link.max_envelope_bytes))
    except EnvelopeError as exc:
        raise _Refused("malformed") from exc
    claimed = t.bulletin_id
    if t.link != link.name:  # 2
        raise _Refused("wrong_link", claimed)
    try:  # 3
        raw = verify_transfer(t, sender_key, max_envelope_bytes=link.max_envelope_bytes)
    except (SignatureError, EnvelopeError) as exc:
        raise _Refused("link_signature", claimed) from exc
    try:  # 4
        env = parse_envelope(raw, max_bytes=link.max_envelope_bytes)
    except EnvelopeError as exc:
        raise _Refused("malformed", claimed) from exc
    h = env.header
    if h.bulletin_id != t.bulletin_id:
        raise _Refused("malformed", claimed)
    try:  # 5
        excerpt = verify_excerpt(t.directory, directory_key)
    except (SignatureError, EnvelopeError) as exc:
        raise _Refused("directory_signature", claimed) from exc
    if excerpt.issued_at < now - MAX_RECORD_AGE_S:
        raise _Refused("stale_record", claimed)
    record = next((a for a in excerpt.agencies if a.id == h.originator), None)
    if record is None or record.status != "active":
        raise _Refused("unknown_originator", claimed)
    key = next((k for k in record.signing_keys if k.kid == env.sig.kid), None)  # 6
    if key is None:
        raise _Refused("unknown_key", claimed)
    if key.revoked_at is not None and key.revoked_at <= h.created_at:
        raise _Refused("key_revoked", claimed)
    try:  # 7
        verify_envelope(env, key.verify_key())
    except (SignatureError, EnvelopeError) as exc:
        raise _Refused("originator_signature", claimed) from exc
    return raw, env, t.directory
