"""What one side of a partner link hands the other for one bulletin (ADR 33).

A *transfer* carries one sealed envelope, unchanged, across a link, with what the
receiving side needs to check it without trusting the wire or the sender's guard alone:

- ``envelope``: the envelope's bytes as they were delivered to the link's gateway here
  (base64), end to end encrypted for the partner's gateway agencies;
- ``directory``: this region's signed directory excerpt (ADR 14) listing the bulletin's
  originator, signed by this region's directory key, which the partner pins: the
  partner checks the originator's signature against it;
- ``link``, ``bulletin_id`` and ``issued_at``: which link, which bulletin, and when;
- ``kid``/``sig``: the sending side's link key (the key its signed daily counts carry,
  ADR 32) over ``"istmo/v1/federation-transfer" 0 canonical(every field but sig)``.

A transfer sent twice is the same bulletin twice: the receiving side keeps it once (by
``bulletin_id``), so a replay or a retry adds nothing. Nothing here is content.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from schemas.canonical import b64d, b64e, canonical_json
from schemas.directory import SignedExcerpt
from schemas.envelope import Kid, Timestamp, parse_model
from schemas.errors import EnvelopeError
from schemas.ids import AGENCY_ID_PATTERN, BulletinIdStr
from schemas.keys import SigningKey, VerifyKey
from schemas.selfsigned import sign_document, verify_document

__all__ = [
    "MAX_TRANSFER_ENVELOPE_BYTES",
    "TRANSFER_DOMAIN",
    "LinkTransfer",
    "encode_transfer",
    "max_transfer_bytes",
    "parse_transfer",
    "sign_transfer",
    "verify_transfer",
]

TRANSFER_DOMAIN = "federation-transfer"
MAX_TRANSFER_ENVELOPE_BYTES = 16 * 1024 * 1024  # the largest a link file allows
_EXCERPT_ROOM = 256 * 1024  # one agency's record (64 signing keys at most) and more


class LinkTransfer(BaseModel):
    """One bulletin handed across a link, signed by the sending side's link key."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    v: Literal[1]
    link: Annotated[str, StringConstraints(pattern=AGENCY_ID_PATTERN)]
    bulletin_id: BulletinIdStr
    issued_at: Timestamp
    envelope: Annotated[
        str, StringConstraints(max_length=(MAX_TRANSFER_ENVELOPE_BYTES + 2) // 3 * 4)
    ]
    directory: SignedExcerpt
    kid: Kid
    sig: Annotated[str, Field(max_length=128)] = ""


def max_transfer_bytes(max_envelope_bytes: int) -> int:
    """The largest transfer a link that carries envelopes of ``max_envelope_bytes`` takes."""
    return (max_envelope_bytes + 2) // 3 * 4 + _EXCERPT_ROOM


def sign_transfer(
    *,
    link: str,
    bulletin_id: str,
    envelope: bytes,
    directory: SignedExcerpt,
    issued_at: int,
    key: SigningKey,
) -> LinkTransfer:
    """The transfer of ``envelope`` over ``link``, signed by this side's link ``key``."""
    unsigned = LinkTransfer(
        v=1,
        link=link,
        bulletin_id=bulletin_id,
        issued_at=issued_at,
        envelope=b64e(envelope),
        directory=directory,
        kid=key.verify_key.kid,
    )
    return sign_document(TRANSFER_DOMAIN, unsigned, key)


def encode_transfer(transfer: LinkTransfer) -> bytes:
    """Canonical JSON."""
    return canonical_json(transfer.model_dump(mode="json"))


def parse_transfer(raw: bytes, *, max_bytes: int) -> LinkTransfer:
    """Parse a transfer strictly (signature not checked: ``verify_transfer``).

    Raises:
        EnvelopeError: malformed, an unknown field, or larger than ``max_bytes``.
    """
    return parse_model(LinkTransfer, raw, max_bytes=max_bytes, what="transfer")


def verify_transfer(transfer: LinkTransfer, key: VerifyKey, *, max_envelope_bytes: int) -> bytes:
    """Check the transfer's signature with the sending side's pinned link ``key``; return
    the envelope's bytes.

    Raises:
        SignatureError: not signed by ``key``.
        EnvelopeError: the signature or envelope is not canonical base64, or the
            envelope is larger than ``max_envelope_bytes``.
    """
    verify_document(TRANSFER_DOMAIN, transfer, kid=transfer.kid, sig=transfer.sig, key=key)
    raw = b64d(transfer.envelope, field="envelope", max_bytes=max_envelope_bytes)
    if not raw:
        raise EnvelopeError("the transfer carries no envelope", code="malformed")
    return raw
